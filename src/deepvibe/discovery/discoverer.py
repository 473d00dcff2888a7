"""Discovery: a user's Vibe DNA and the scan of a track database for the tracks nearest to it.

Shapes used throughout: B users, n catalogue tracks (the model's outputs), f audio features,
m database tracks (m can be ~10^7; the database is never held in memory as a whole).

1. The trained model encodes the user's listening vector to its posterior mean and decodes
   one score per catalogue track (deterministic: no sampling).
2. **Vibe DNA** = sum_i softmax(scores / T)_i * standardised features of track i: one point in
   the standardised feature space. T -> 0 gives the top-scored track's features, T -> inf the
   catalogue mean (0 in standardised units).
3. **Scan**: every database track is standardised with the checkpoint's scaler and scored by
   its similarity to the DNA, chunk by chunk, keeping only the best candidates per user.
   The parsed database lives in a Parquet sidecar (``<source>.dvcache``) that is rebuilt when
   the source file changes, so repeat scans never re-parse the CSV.

Similarity: cosine (the default) or Pearson correlation, both in the standardised space.
Cosine compares directions from the catalogue mean (the origin of the standardised space), so
"more danceable and quieter than usual" matches tracks that differ from the typical track in
the same way. Pearson also subtracts each vector's mean over its f features first, which mixes
unrelated units (a z-score of tempo minus a z-score of valence) and throws away the one
direction in which all features rise together. Both ignore the DNA's length, which shrinks
towards 0 as T grows. On spotify-2024 cosine was as good as or slightly better than Pearson
(docs/BENCHMARKS.md, "Discovery scan"), which is how the defaults T = 0.1, top-k = 30 and
cosine were chosen.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp

from deepvibe.config import Config, DataConfig, DiscoverConfig, config_from_dict
from deepvibe.data.ids import is_spotify_id
from deepvibe.data.tables import (
    FeatureScaler,
    Interactions,
    TrackTable,
    interactions_from_long,
    load_interactions,
    load_track_table,
)
from deepvibe.errors import DataError, DeepVibeError
from deepvibe.fileio import (
    atomic_path,
    check_input_file,
    neutralise_formula,
    path_inside,
    read_csv_header,
    read_table,
    safe_path_component,
    write_csv_atomic,
)
from deepvibe.model.inference import encode_and_score
from deepvibe.model.vae import HybridVAE
from deepvibe.training.checkpoint import Checkpoint, load_checkpoint

log = logging.getLogger(__name__)

Method = Literal["pearson", "cosine"]
Mode = Literal["standard", "gems"]

CACHE_SUFFIX = ".dvcache"
CACHE_VERSION = 1
_ROW_GROUP = 65_536  # rows per Parquet row group in the cache (the unit of random access)
_QUANTILES = np.linspace(0.0, 1.0, 1001)  # stored per feature for the DNA percentiles
_QUANTILE_SAMPLE = 1_000_000  # rows behind the quantiles of very large databases
_SCORE_BLOCK = 1 << 24  # float32 cells of one (users x chunk) similarity block (64 MiB)


# ----------------------------------------------------------------------------- Vibe DNA


def dna_weights(scores: np.ndarray, temperature: float, top_k: int | None = None) -> np.ndarray:
    """softmax(scores / T) per row, over the top-k scores only when ``top_k`` is given.

    scores: (n,) or (B, n) decoder scores -> weights of the same shape, float64, rows sum to 1.
    Computed as exp(s/T - max(s/T)), so any T > 0 is stable; ties at the top share the weight.
    """
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    logits = s / temperature
    if top_k is not None and top_k < s.shape[1]:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        kth = np.partition(s, s.shape[1] - top_k, axis=1)[:, s.shape[1] - top_k]
        logits = np.where(s >= kth[:, None], logits, -np.inf)
    logits = logits - logits.max(axis=1, keepdims=True)
    w = np.exp(logits)
    w /= w.sum(axis=1, keepdims=True)
    return w if np.ndim(scores) == 2 else w[0]


def vibe_dna(
    scores: np.ndarray, track_features: np.ndarray, temperature: float, top_k: int | None = None
) -> np.ndarray:
    """Temperature-weighted mean of the catalogue's standardised features.

    scores: (n,) or (B, n); track_features: (n, f) standardised -> (f,) or (B, f) float64.
    """
    w = dna_weights(scores, temperature, top_k)
    return w @ np.asarray(track_features, dtype=np.float64)


# ----------------------------------------------------------------------------- similarity


def _unit_rows(x: np.ndarray, method: Method) -> np.ndarray:
    """Rows centred over their features (Pearson only) and scaled to unit length; a row with
    no spread or length stays all-zero, so its similarity to anything is 0."""
    if method not in ("pearson", "cosine"):
        raise ValueError(f"similarity must be 'pearson' or 'cosine', got {method!r}")
    if method == "pearson":
        x = x - x.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 1e-12)
    return x * scale[:, None]


def similarity_to(
    profile: np.ndarray, features_std: np.ndarray, method: Method = "cosine"
) -> np.ndarray:
    """Similarity of each track to each profile in the standardised feature space.

    profile: (f,) or (B, f); features_std: (n, f) -> (n,) or (B, n), values in [-1, 1].
    ``pearson`` correlates the two f-vectors (each centred over its own features);
    ``cosine`` compares directions from the catalogue mean (the origin). Zero-spread rows
    score 0. Float32 inputs give float32 output.
    """
    dtype = np.result_type(np.asarray(features_std).dtype, np.float32)
    p = np.atleast_2d(np.asarray(profile, dtype=dtype))
    feats = np.asarray(features_std, dtype=dtype)
    if p.shape[1] != feats.shape[1]:
        raise ValueError(f"profile has {p.shape[1]} features but the tracks have {feats.shape[1]}")
    sims = _unit_rows(p, method) @ _unit_rows(feats, method).T
    return sims if np.ndim(profile) == 2 else sims[0]


# ----------------------------------------------------------------------------- database cache


def _fingerprint(path: Path) -> dict[str, object]:
    """What identifies a source file's contents cheaply: path, size, mtime and a hash of its
    first and last MiB (catches a same-size rewrite within one mtime tick)."""
    st = path.stat()
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if st.st_size > 2 << 20:
            fh.seek(-(1 << 20), os.SEEK_END)
            h.update(fh.read(1 << 20))
    return {
        "source": str(path.resolve()),
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "sha1_ends": h.hexdigest(),
    }


def _cache_key(source: Path, columns: dict[str, object]) -> dict[str, object]:
    return {"version": CACHE_VERSION, **_fingerprint(source), "columns": columns}


def cache_path_for(source: str | Path) -> Path:
    """``<source>.dvcache`` beside the source; a per-user cache folder when that folder is
    read-only (e.g. a shared data set)."""
    src = Path(source)
    if os.access(src.resolve().parent, os.W_OK):
        return src.with_name(src.name + CACHE_SUFFIX)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deepvibe"
    digest = hashlib.sha1(str(src.resolve()).encode("utf-8")).hexdigest()[:16]
    return base / f"{src.name}.{digest}{CACHE_SUFFIX}"


class _WarningCollector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def _collect_warnings(logger_name: str) -> Iterator[list[str]]:
    handler = _WarningCollector()
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


def _feature_name(j: int) -> str:
    return f"f{j}"


def write_database_cache(
    path: str | Path,
    chunks: Iterator[TrackTable] | list[TrackTable],
    key: dict[str, object],
    n_total: int | None = None,
    notes: list[str] | None = None,
) -> Path:
    """Write tracks (raw features, float32) to a Parquet cache, atomically, one row group per
    ``_ROW_GROUP`` rows, with per-feature quantiles for the DNA percentiles in its metadata.

    ``chunks`` may be a generator, so a database larger than memory can be written piece by
    piece; quantiles then come from a strided sample of at most ~1M rows (exact below that).
    ``n_total`` (rows in all chunks) sets the stride; ``notes`` are warnings from parsing the
    source, repeated whenever the cache is used.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    stride = max(1, math.ceil((n_total or 0) / _QUANTILE_SAMPLE))
    sample: list[np.ndarray] = []
    n_rows = 0
    writer = None
    schema = None
    has: dict[str, bool] = {}
    columns: tuple[str, ...] = ()
    with atomic_path(path) as tmp:
        try:
            for table in chunks:
                if writer is None:
                    columns = table.feature_columns
                    has = {
                        "popularity": table.popularity is not None,
                        "names": table.names is not None,
                        "artists": table.artists is not None,
                    }
                    f32 = pa.float32()
                    fields = [pa.field("track_id", pa.string())]
                    fields += [pa.field(_feature_name(j), f32) for j in range(len(columns))]
                    if has["popularity"]:
                        fields.append(pa.field("popularity", pa.float32()))
                    if has["names"]:
                        fields.append(pa.field("track_name", pa.string()))
                    if has["artists"]:
                        fields.append(pa.field("artists", pa.string()))
                    schema = pa.schema(fields)
                    writer = pq.ParquetWriter(
                        tmp, schema, compression="none", use_dictionary=False,
                        write_statistics=False,
                    )  # fmt: skip
                arrays = [pa.array(np.asarray(table.track_ids, dtype=object), pa.string())]
                feats = np.asarray(table.features, dtype=np.float32)
                arrays += [pa.array(feats[:, j]) for j in range(feats.shape[1])]
                if has["popularity"]:
                    arrays.append(pa.array(np.asarray(table.popularity, dtype=np.float32)))
                if has["names"]:
                    arrays.append(pa.array(np.asarray(table.names, dtype=object), pa.string()))
                if has["artists"]:
                    arrays.append(pa.array(np.asarray(table.artists, dtype=object), pa.string()))
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema), _ROW_GROUP)
                offset = (-n_rows) % stride  # keep global rows 0, stride, 2*stride, ...
                sample.append(feats[offset::stride])
                n_rows += len(table.track_ids)
            if writer is None:
                raise DataError("the track database has no rows")
            feats_sample = np.concatenate(sample).astype(np.float64)
            quantiles = np.quantile(feats_sample, _QUANTILES, axis=0).T  # (f, 1001)
            meta = {
                "key": key,
                "n_rows": n_rows,
                "feature_columns": list(columns),
                "has": has,
                "quantiles": quantiles.tolist(),
                "notes": list(notes or []),
            }
            writer.add_key_value_metadata({"deepvibe": json.dumps(meta)})
        finally:
            if writer is not None:
                writer.close()
    return Path(path)


@dataclass
class TrackDatabase:
    """A parsed track database on disk (the Parquet cache), read in chunks.

    Features are stored raw (original units) so one cache serves every checkpoint; each scan
    standardises a chunk with its own checkpoint's scaler.
    """

    path: Path  # the cache file
    source: Path
    feature_columns: tuple[str, ...]
    n_tracks: int
    has_popularity: bool
    has_names: bool
    has_artists: bool
    quantiles: np.ndarray  # (f, 1001) raw-unit quantiles at 0.0%, 0.1%, ..., 100%
    notes: list[str] = field(default_factory=list)
    _row_groups: np.ndarray | None = None  # cumulative row offsets of the row groups

    @classmethod
    def open(
        cls,
        source: str | Path,
        feature_columns: tuple[str, ...],
        track_column: str = "track_id",
        popularity_column: str | None = "popularity",
        name_column: str | None = "track_name",
        artist_column: str | None = "artists",
        cache: str | Path | None = None,
    ) -> TrackDatabase:
        """Open the cache for ``source``, building it first when it is missing or stale.

        The cache is valid only for the same source path, size, mtime, content hash of its
        ends and the same column settings; anything else rebuilds it.
        """
        src = Path(source)
        if not src.exists():
            raise DataError(
                f"{src}: track database file not found; check data.database in your config "
                "or use --source catalogue"
            )
        if src.is_dir():
            raise DataError(f"{src}: track database path is a directory, expected a file")
        columns = {
            "track": track_column,
            "features": list(feature_columns),
            "popularity": popularity_column,
            "name": name_column,
            "artist": artist_column,
        }
        key = _cache_key(src, columns)
        cache_file = Path(cache) if cache is not None else cache_path_for(src)
        db = cls._read(cache_file, src, key)
        if db is None:
            log.info("database: parsing %s (first use or changed; cached in %s)", src, cache_file)
            with _collect_warnings("deepvibe.data.tables") as notes:
                table = load_track_table(
                    src, track_column, tuple(feature_columns), popularity_column, name_column,
                    artist_column, what="track database", drop_incomplete=True,
                )  # fmt: skip
            try:
                write_database_cache(cache_file, [table], key, len(table.track_ids), notes)
            except DeepVibeError as exc:
                raise DataError(
                    f"{src}: cannot write the database cache ({exc}); make the folder "
                    "writable or set XDG_CACHE_HOME"
                ) from exc
            db = cls._read(cache_file, src, key)
            if db is None:  # pragma: no cover - only if the file changed while we parsed it
                raise DataError(f"{src}: changed while it was being read; run again")
        else:
            for note in db.notes:  # parsing warnings are facts about the source: say them again
                log.warning("%s", note)
            log.debug("database: %d tracks from cache %s", db.n_tracks, cache_file)
        return db

    @classmethod
    def _read(cls, cache_file: Path, source: Path, key: dict[str, object]) -> TrackDatabase | None:
        """The cache if it exists, is readable and matches ``key``; None otherwise."""
        import pyarrow.parquet as pq

        if not cache_file.exists():
            return None
        try:
            meta = pq.read_metadata(cache_file)
            info = json.loads(meta.metadata[b"deepvibe"])
        except Exception as exc:  # corrupt, truncated or foreign file: rebuild it
            log.warning("%s: unreadable database cache (%s); rebuilding it", cache_file, exc)
            return None
        if info.get("key") != key:
            return None
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        return cls(
            path=cache_file,
            source=source,
            feature_columns=tuple(info["feature_columns"]),
            n_tracks=int(info["n_rows"]),
            has_popularity=bool(info["has"]["popularity"]),
            has_names=bool(info["has"]["names"]),
            has_artists=bool(info["has"]["artists"]),
            quantiles=np.asarray(info["quantiles"], dtype=np.float64),
            notes=list(info.get("notes", [])),
            _row_groups=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        )

    @classmethod
    def from_cache(cls, cache_file: str | Path) -> TrackDatabase:
        """Open a cache file directly, without a source to check it against (benchmarks)."""
        import pyarrow.parquet as pq

        p = Path(cache_file)
        info = json.loads(pq.read_metadata(p).metadata[b"deepvibe"])
        db = cls._read(p, Path(info["key"]["source"]), info["key"])
        if db is None:
            raise DataError(f"{p}: not a deepvibe database cache")
        return db

    def chunks(self, chunk_size: int) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """Yield (first_row, raw features (c, f) float32, popularity (c,) or None) for
        consecutive chunks of ``chunk_size`` rows (the last may be shorter). The features are
        a transposed view of a column-major (f, c) block.

        Reads one Parquet row group at a time (only the feature and popularity columns), so
        memory is O(chunk_size + row group), whatever the database size. (pyarrow's
        ``iter_batches`` was measured to grow with the file, so it is not used.)
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        n_feat = len(self.feature_columns)
        names = [_feature_name(j) for j in range(n_feat)]
        if self.has_popularity:
            names.append("popularity")

        # Features are filled column by column into an (f, chunk) block: each copy is
        # contiguous, and the scan works on contiguous columns. A fresh block per chunk, so a
        # caller may keep what it was given.
        def new_block() -> tuple[np.ndarray, np.ndarray | None]:
            size = min(chunk_size, self.n_tracks - start)
            pop = np.empty(size, dtype=np.float32) if self.has_popularity else None
            return np.empty((n_feat, size), dtype=np.float32), pop

        start = 0
        feats, pop = new_block()
        fill = 0
        with pq_file(self.path) as pf:
            for g in range(pf.num_row_groups):
                table = pf.read_row_group(g, columns=names, use_threads=False)
                offset = 0
                while offset < table.num_rows:
                    take = min(feats.shape[1] - fill, table.num_rows - offset)
                    for j in range(n_feat):
                        feats[j, fill : fill + take] = table.column(j).slice(offset, take)
                    if pop is not None:
                        pop[fill : fill + take] = table.column(n_feat).slice(offset, take)
                    fill += take
                    offset += take
                    if fill == feats.shape[1]:
                        yield start, feats.T, pop
                        start += fill
                        fill = 0
                        if start < self.n_tracks:
                            feats, pop = new_block()
                del table

    def take(self, rows: np.ndarray, columns: list[str] | None = None) -> pd.DataFrame:
        """Selected rows (database row numbers) in the order given; reads only the row
        groups that hold them. Columns: track_id and whichever of track_name, artists,
        popularity exist (default), or ``columns``."""

        rows = np.asarray(rows, dtype=np.int64)
        if columns is None:
            columns = ["track_id"]
            columns += ["track_name"] if self.has_names else []
            columns += ["artists"] if self.has_artists else []
            columns += ["popularity"] if self.has_popularity else []
        uniq = np.unique(rows)
        assert self._row_groups is not None
        group_of = np.searchsorted(self._row_groups, uniq, side="right") - 1
        parts: list[pd.DataFrame] = []
        with pq_file(self.path) as pf:
            for g in np.unique(group_of):
                local = uniq[group_of == g] - self._row_groups[g]
                frame = pf.read_row_group(int(g), columns=columns).take(local).to_pandas()
                frame.index = uniq[group_of == g]
                parts.append(frame)
        if not parts:
            return pd.DataFrame({c: [] for c in columns})
        found = pd.concat(parts)
        return found.loc[rows].reset_index(drop=True)

    def percentiles(self, raw_values: np.ndarray) -> np.ndarray:
        """Where values (f,) in original units sit in the database: 0..100 per feature
        (mid-rank, so a value shared by many tracks lands in the middle of its tie)."""
        return percentiles_from_quantiles(self.quantiles, raw_values)


def pq_file(path: Path):  # noqa: ANN201 - a pyarrow.parquet.ParquetFile
    """The cache opened for plain reads (no memory map, no pre-buffering of the file)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path, memory_map=False, pre_buffer=False)


def percentiles_from_quantiles(quantiles: np.ndarray, raw_values: np.ndarray) -> np.ndarray:
    """quantiles: (f, q) sorted per row; values: (f,) -> (f,) percentiles in 0..100."""
    q = quantiles.shape[1] - 1
    out = np.empty(len(raw_values))
    for j, v in enumerate(raw_values):
        lo = np.searchsorted(quantiles[j], v, side="left")
        hi = np.searchsorted(quantiles[j], v, side="right")
        out[j] = 100.0 * min(q, (lo + hi) / 2.0) / q
    return out


# ----------------------------------------------------------------------------- the scan


@dataclass(frozen=True)
class ScanHits:
    """One user's best database rows, best first."""

    rows: np.ndarray  # (k,) int64 database row numbers
    similarity: np.ndarray  # (k,) float
    score: np.ndarray  # (k,) final score (= similarity in standard mode)


def scan_database(
    db: TrackDatabase,
    scaler: FeatureScaler,
    profiles: np.ndarray,
    n: int,
    method: Method = "cosine",
    gems_lambda: float | None = None,
    popularity_ceiling: float | None = None,
    chunk_size: int = 262_144,
    extra: int = 0,
    progress: bool | None = None,
) -> list[ScanHits]:
    """Score every database track against each profile and keep the best ``n + extra``.

    profiles: (B, f) in the scaler's standardised units. ``gems_lambda`` switches to
    score = similarity - lambda * popularity / 100 (and applies ``popularity_ceiling``).
    Memory is O(chunk_size * f + B * (n + extra)) plus one (users x chunk) block of scores,
    whatever the database size. ``extra`` leaves room to drop history tracks afterwards.
    The result is deterministic: hits are ordered by score, then database row.
    """
    from tqdm.auto import tqdm

    if tuple(db.feature_columns) != tuple(scaler.columns):
        raise DataError(
            f"{db.source}: database features {list(db.feature_columns)} differ from the "
            f"checkpoint's {list(scaler.columns)}"
        )
    gems = gems_lambda is not None
    if gems and not db.has_popularity:
        raise DataError(
            f"{db.source}: hidden-gems mode needs a popularity column, and this database has "
            "none; set data.popularity_column to its name or run without --gems"
        )
    profiles = np.atleast_2d(np.asarray(profiles, dtype=np.float32))
    n_users = profiles.shape[0]
    k = max(1, n + extra)
    unit = _unit_rows(profiles, method)  # (B, f)
    mean = scaler.mean.astype(np.float32)
    inv_std = (1.0 / scaler.std).astype(np.float32)
    best_score = np.full((n_users, 0), -np.inf, dtype=np.float32)
    best_sim = np.empty((n_users, 0), dtype=np.float32)
    best_row = np.empty((n_users, 0), dtype=np.int64)
    users_per_block = max(1, _SCORE_BLOCK // max(1, chunk_size))
    bar = tqdm(
        total=db.n_tracks, desc="scan", unit="track", unit_scale=True, delay=1.0,
        disable=None if progress is None else not progress, leave=False,
    )  # fmt: skip
    try:
        for start, raw, pop in db.chunks(chunk_size):
            feats = _unit_columns(raw.T, mean, inv_std, method)  # (f, c) float32
            penalty = None
            allowed = None
            if gems:
                assert pop is not None
                penalty = (np.float32(gems_lambda / 100.0) * pop).astype(np.float32)
                if popularity_ceiling is not None:
                    allowed = pop <= popularity_ceiling
            new_score, new_sim, new_row = [], [], []
            for b0 in range(0, n_users, users_per_block):
                sims = unit[b0 : b0 + users_per_block] @ feats  # (ub, c)
                score = sims if penalty is None else sims - penalty
                if allowed is not None:
                    score = np.where(allowed, score, -np.inf)
                if score.shape[1] > k:
                    part = np.argpartition(-score, k - 1, axis=1)[:, :k]
                else:
                    part = np.broadcast_to(np.arange(score.shape[1]), score.shape)
                new_score.append(np.take_along_axis(score, part, axis=1))
                new_sim.append(np.take_along_axis(sims, part, axis=1))
                new_row.append(part + start)
            cand_score = np.concatenate([best_score, np.concatenate(new_score)], axis=1)
            cand_sim = np.concatenate([best_sim, np.concatenate(new_sim)], axis=1)
            cand_row = np.concatenate([best_row, np.concatenate(new_row)], axis=1)
            if cand_score.shape[1] > k:
                keep = _top_rows(cand_score, cand_row, k)
                cand_score = np.take_along_axis(cand_score, keep, axis=1)
                cand_sim = np.take_along_axis(cand_sim, keep, axis=1)
                cand_row = np.take_along_axis(cand_row, keep, axis=1)
            best_score, best_sim, best_row = cand_score, cand_sim, cand_row
            bar.update(raw.shape[0])
            # Drop this chunk's arrays before the next chunk is read: peak = one chunk.
            del raw, pop, feats, penalty, allowed, sims, score, part, new_score, new_sim, new_row
    finally:
        bar.close()
    out = []
    for u in range(n_users):
        order = np.lexsort((best_row[u], -best_score[u]))
        order = order[np.isfinite(best_score[u][order])]
        out.append(ScanHits(best_row[u][order], best_sim[u][order], best_score[u][order]))
    return out


def _unit_columns(
    raw: np.ndarray, mean: np.ndarray, inv_std: np.ndarray, method: Method
) -> np.ndarray:
    """Raw features (f, c) -> standardised, centred over features (Pearson) and scaled to
    unit length per track (column); the scan's hot loop, so in place on one new array."""
    x = raw - mean[:, None]
    x *= inv_std[:, None]
    if method == "pearson":
        x -= x.mean(axis=0)
    norms = np.sqrt(np.einsum("ij,ij->j", x, x))
    x *= np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 1e-12)
    return x


def _top_rows(score: np.ndarray, row: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the k best (highest score, then lowest row) entries per row."""
    out = np.empty((score.shape[0], k), dtype=np.int64)
    for u in range(score.shape[0]):
        out[u] = np.lexsort((row[u], -score[u]))[:k]
    return out


# ----------------------------------------------------------------------------- users


def load_history(
    path: str | Path, data: DataConfig | None = None, tracks: TrackTable | None = None
) -> Interactions:
    """A listening history for users outside the training data.

    Long format, one row per (user, track): ``user_id, track_id[, plays]`` (the column names
    of ``data`` when given and present in the file). Without a plays column each row counts
    one play; repeated rows are summed; all of a user's rows form one listening vector.
    Track ids may be Spotify URIs or URLs.

    A Spotify download (zip, folder or history JSON) is read as one user by
    :func:`deepvibe.data.history.read_history_file`; ``tracks`` (with names and artists) matches
    account-data plays, which carry no track ids.
    """
    from deepvibe.data.spotify import looks_like_export

    if looks_like_export(path):
        from deepvibe.data.history import read_history_file

        return read_history_file(path, tracks)
    data = data or DataConfig()
    p = check_input_file(path, "history")
    header = read_csv_header(p, "history")
    user_col = data.user_column if data.user_column in header else "user_id"
    track_col = data.track_column if data.track_column in header else "track_id"
    missing = [c for c in (user_col, track_col) if c not in header]
    if missing:
        raise DataError(
            f"{p}: history file needs columns user_id and track_id (and optionally plays); "
            f"it has {', '.join(header[:8]) or 'none'}"
        )
    plays_col = None
    for c in (data.plays_column, "plays"):
        if c and c in header:
            plays_col = c
            break
    cols = [user_col, track_col] + ([plays_col] if plays_col else [])
    frame = read_table(p, "history", usecols=cols, dtype={user_col: str, track_col: str})
    return interactions_from_long(frame, user_col, track_col, plays_col, None, p)


@dataclass(frozen=True)
class UserBatch:
    """Users aligned to the model's catalogue."""

    users: np.ndarray  # (B,) user ids
    plays: sp.csr_matrix  # (B, n) current listening vector over the catalogue
    history: list[set[str]]  # every track id each user has played (never recommended back)
    unknown: np.ndarray  # (B,) distinct played tracks that are not in the catalogue


def align_users(
    inter: Interactions,
    catalogue_ids: np.ndarray,
    users: list[str] | np.ndarray | None = None,
    source: str = "interactions",
) -> UserBatch:
    """Current vectors (each user's latest row) mapped onto the catalogue columns.

    History = the union of all the user's rows. Unknown users and users with no catalogue
    track are errors that name them.
    """
    known = set(inter.row_users.tolist())
    wanted = list(inter.user_ids) if users is None else [str(u) for u in users]
    missing = [u for u in wanted if u not in known]
    if missing:
        shown = ", ".join(repr(u) for u in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(
            f"user {shown} not found in {source} ({len(known)} users); check the id, "
            "or pass --history FILE for users outside the training data"
        )
    wanted = list(dict.fromkeys(wanted))  # each user once, order kept
    ids, rows = inter.latest_rows(np.array(wanted, dtype=object))
    col_of = {t: i for i, t in enumerate(catalogue_ids)}
    mapping = np.array([col_of.get(t, -1) for t in inter.track_ids], dtype=np.int64)
    current = inter.matrix[rows].tocoo()
    keep = mapping[current.col] >= 0
    plays = sp.csr_matrix(
        (current.data[keep], (current.row[keep], mapping[current.col[keep]])),
        shape=(len(ids), len(catalogue_ids)),
        dtype=np.float32,
    )
    # Every row of each wanted user, found in one pass over the rows.
    codes, labels = pd.factorize(pd.Series(inter.row_users, dtype=object))
    position = {u: i for i, u in enumerate(labels)}
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(labels) + 1))
    history: list[set[str]] = []
    unknown = np.zeros(len(ids), dtype=np.int64)
    for i, u in enumerate(ids):
        c = position[u]
        user_rows = order[bounds[c] : bounds[c + 1]]
        cols = np.unique(inter.matrix[user_rows].indices)
        history.append(set(inter.track_ids[cols].tolist()))
        unknown[i] = int((mapping[cols] < 0).sum())
    empty = np.flatnonzero(np.diff(plays.indptr) == 0)
    if len(empty):
        shown = ", ".join(repr(ids[i]) for i in empty[:5])
        raise DataError(
            f"{source}: user {shown} has no track in the model's catalogue "
            f"({len(catalogue_ids)} tracks), so the model cannot place them; give a history "
            "with some of the tracks it was trained on"
        )
    return UserBatch(np.asarray(ids, dtype=object), plays, history, unknown)


# ----------------------------------------------------------------------------- discoverer


@dataclass(frozen=True)
class Discovery:
    """One user's result: the DNA and the ranked tracks, best first."""

    user: str
    mode: Mode
    source: Literal["db", "catalogue"]
    dna: np.ndarray  # (f,) standardised
    dna_raw: np.ndarray  # (f,) original units
    dna_percentile: np.ndarray  # (f,) 0..100 within the database (or catalogue)
    # rank, track_id, track_name, artists, popularity, similarity (or decoder_score), score,
    # spotify_url
    table: pd.DataFrame


class Discoverer:
    """A trained model plus (optionally) a track database, loaded once and reused per user.

    ``recommend(user_plays, N, mode) -> (track_ids, scores)`` in implicit's style; ``discover``
    returns the full per-user result that the reports are written from.
    """

    def __init__(
        self,
        model: HybridVAE,
        track_ids: np.ndarray,
        scaler: FeatureScaler,
        track_features: np.ndarray,
        settings: DiscoverConfig | None = None,
        database: TrackDatabase | None = None,
        catalogue_meta: dict[str, np.ndarray | None] | None = None,
        progress: bool | None = None,
    ) -> None:
        self.model = model
        self.track_ids = np.asarray(track_ids, dtype=object)  # (n,)
        self.scaler = scaler
        self.track_features = np.asarray(track_features, dtype=np.float32)  # (n, f) standardised
        self.settings = settings or DiscoverConfig()
        self.database = database
        self.catalogue_meta = catalogue_meta or {}
        self.progress = progress
        self._catalogue_quantiles: np.ndarray | None = None

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path | Checkpoint,
        cfg: Config | None = None,
        source: Literal["auto", "db", "catalogue"] | None = None,
        progress: bool | None = None,
    ) -> Discoverer:
        """Load the model (and the database when the source is ``db``) once.

        ``cfg`` defaults to the config stored in the checkpoint; its ``data`` section says
        where the database is and its ``discover`` section holds the settings.
        """
        ck = checkpoint if isinstance(checkpoint, Checkpoint) else load_checkpoint(checkpoint)
        if cfg is None:
            cfg = config_from_dict(ck.config, source=f"{ck.path} (stored config)")
        settings = cfg.discover
        chosen = source or settings.source
        has_features = ck.track_features.shape[1] > 0
        db_path = cfg.data.database
        if chosen == "auto":
            chosen = "db" if (db_path and has_features and Path(db_path).exists()) else "catalogue"
            if db_path and has_features and chosen == "catalogue":
                log.warning("database %s not found; ranking the catalogue instead", db_path)
        database = None
        if chosen == "db":
            if not has_features:
                raise DataError(
                    f"{ck.path}: this model was trained without audio features, so it cannot "
                    "scan a track database; use --source catalogue"
                )
            if not db_path:
                raise DataError(
                    "no track database configured (data.database is null); set it or use "
                    "--source catalogue"
                )
            database = TrackDatabase.open(
                db_path, ck.scaler.columns, cfg.data.feature_track_column,
                cfg.data.popularity_column, cfg.data.name_column, cfg.data.artist_column,
            )  # fmt: skip
        settings = settings.model_copy(update={"source": chosen})
        meta = {"popularity": ck.popularity, "names": ck.names, "artists": ck.artists}
        return cls(
            ck.model, ck.track_ids, ck.scaler, ck.track_features, settings, database, meta,
            progress,
        )  # fmt: skip

    # -- pieces

    @property
    def source(self) -> Literal["db", "catalogue"]:
        return "db" if self.database is not None else "catalogue"

    def scores(self, user_plays: sp.csr_matrix | np.ndarray) -> np.ndarray:
        """Decoder scores (B, n) at the posterior mean of each user (deterministic)."""
        plays = _as_rows(user_plays, len(self.track_ids))
        return encode_and_score(self.model, plays, self.track_features)[1]

    def dna(self, scores: np.ndarray) -> np.ndarray:
        """(B, n) decoder scores -> (B, f) Vibe DNA with the configured temperature and top-k."""
        return vibe_dna(scores, self.track_features, self.settings.temperature, self.settings.top_k)

    # -- the main entry points

    def recommend(
        self,
        user_plays: sp.csr_matrix | np.ndarray,
        N: int = 10,  # noqa: N803 - implicit's name
        mode: Mode = "standard",
        exclude: list[set[str]] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Track ids and final scores, best first: (N,) each for one user (1-d input) or
        (B, N') for a batch, N' = the shortest user's list (only shorter than N when the
        source has fewer unseen tracks). The user's catalogue tracks (and ``exclude``) are
        never returned."""
        single = not sp.issparse(user_plays) and np.ndim(user_plays) == 1
        plays = _as_rows(user_plays, len(self.track_ids))
        results = self.discover(plays, N, mode, exclude)
        if single:
            t = results[0].table
            return t["track_id"].to_numpy(dtype=object), t["score"].to_numpy()
        width = min(len(r.table) for r in results)
        ids = np.array([r.table["track_id"].to_numpy(dtype=object)[:width] for r in results])
        scores = np.array([r.table["score"].to_numpy()[:width] for r in results])
        return ids.reshape(len(results), width), scores.reshape(len(results), width)

    def discover(
        self,
        user_plays: sp.csr_matrix | np.ndarray,
        N: int | None = None,  # noqa: N803
        mode: Mode = "standard",
        exclude: list[set[str]] | None = None,
        users: list[str] | np.ndarray | None = None,
    ) -> list[Discovery]:
        """Everything a report needs, one :class:`Discovery` per row of ``user_plays``."""
        if mode not in ("standard", "gems"):
            raise ValueError(f"mode must be 'standard' or 'gems', got {mode!r}")
        n = self.settings.top_n if N is None else int(N)
        if n < 1:
            raise ValueError(f"N must be >= 1, got {n}")
        plays = _as_rows(user_plays, len(self.track_ids))
        n_users = plays.shape[0]
        seen = [set(self.track_ids[plays[u].indices].tolist()) for u in range(n_users)]
        if exclude is not None:
            if len(exclude) != n_users:
                raise ValueError(f"exclude has {len(exclude)} sets for {n_users} users")
            seen = [s | set(e) for s, e in zip(seen, exclude, strict=True)]
        labels = [str(u) for u in (users if users is not None else range(n_users))]
        scores = self.scores(plays)  # (B, n)
        dna = self.dna(scores) if self.track_features.shape[1] else np.zeros((n_users, 0))
        dna_raw = self.scaler.inverse(dna) if dna.shape[1] else dna
        if self.database is not None:
            tables = self._from_database(dna, n, mode, seen)
            pct = [self.database.percentiles(r) for r in dna_raw]
        else:
            tables = self._from_catalogue(scores, n, mode, seen)
            pct = [self._catalogue_percentiles(r) for r in dna_raw]
        return [
            Discovery(labels[u], mode, self.source, dna[u], dna_raw[u], pct[u], tables[u])
            for u in range(n_users)
        ]

    # -- sources

    def _from_database(
        self, dna: np.ndarray, n: int, mode: Mode, seen: list[set[str]]
    ) -> list[pd.DataFrame]:
        db = self.database
        assert db is not None
        s = self.settings
        hits = scan_database(
            db, self.scaler, dna, n, s.similarity,
            gems_lambda=s.gems_lambda if mode == "gems" else None,
            popularity_ceiling=s.popularity_ceiling, chunk_size=s.chunk_size,
            extra=max((len(x) for x in seen), default=0), progress=self.progress,
        )  # fmt: skip
        all_rows = np.unique(np.concatenate([h.rows for h in hits]))
        meta = db.take(all_rows)
        meta.index = all_rows
        tables = []
        for h, user_seen in zip(hits, seen, strict=True):
            m = meta.loc[h.rows].reset_index(drop=True)
            fresh = ~m["track_id"].isin(user_seen).to_numpy()
            m = m[fresh].head(n).reset_index(drop=True)
            m["similarity"] = h.similarity[fresh][:n].astype(np.float64)
            m["score"] = h.score[fresh][:n].astype(np.float64)
            tables.append(_finish_table(m, "similarity"))
        return tables

    def _from_catalogue(
        self, scores: np.ndarray, n: int, mode: Mode, seen: list[set[str]]
    ) -> list[pd.DataFrame]:
        s = self.settings
        pop = self.catalogue_meta.get("popularity")
        if mode == "gems" and pop is None:
            raise DataError(
                "hidden-gems mode needs track popularity, and this model's catalogue has none "
                "(data.popularity_column); run without --gems"
            )
        tables = []
        for u in range(scores.shape[0]):
            raw = scores[u].astype(np.float64)
            final = raw.copy()
            if mode == "gems":
                # Decoder scores are unbounded; scale them to [-1, 1] by the user's largest
                # |score| so lambda means the same trade-off as with similarities.
                top = np.abs(raw).max()
                final = (raw / top if top > 0 else raw) - s.gems_lambda * pop / 100.0
                if s.popularity_ceiling is not None:
                    final[pop > s.popularity_ceiling] = -np.inf
            final[np.isin(self.track_ids, list(seen[u]))] = -np.inf
            order = np.lexsort((np.arange(len(final)), -final))
            order = order[np.isfinite(final[order])][:n]
            frame = pd.DataFrame({"track_id": self.track_ids[order]})
            for key, col in (("names", "track_name"), ("artists", "artists")):
                values = self.catalogue_meta.get(key)
                if values is not None:
                    frame[col] = np.asarray(values, dtype=object)[order]
            if pop is not None:
                frame["popularity"] = np.asarray(pop, dtype=np.float64)[order]
            frame["decoder_score"] = raw[order]
            frame["score"] = final[order]
            tables.append(_finish_table(frame, "decoder_score"))
        return tables

    def _catalogue_percentiles(self, raw_values: np.ndarray) -> np.ndarray:
        if self._catalogue_quantiles is None:
            raw = self.scaler.inverse(self.track_features.astype(np.float64))
            self._catalogue_quantiles = np.quantile(raw, _QUANTILES, axis=0).T
        return percentiles_from_quantiles(self._catalogue_quantiles, raw_values)


def _as_rows(user_plays: sp.csr_matrix | np.ndarray, n_tracks: int) -> sp.csr_matrix:
    plays = sp.csr_matrix(np.atleast_2d(user_plays)) if not sp.issparse(user_plays) else user_plays
    plays = plays.tocsr().astype(np.float32)
    if plays.shape[1] != n_tracks:
        raise ValueError(f"user_plays has {plays.shape[1]} columns; the catalogue has {n_tracks}")
    return plays


def spotify_url(track_id: str) -> str:
    """``https://open.spotify.com/track/<id>`` for a Spotify id, else ''."""
    tid = str(track_id)
    if tid.startswith("spotify:track:"):
        tid = tid[len("spotify:track:") :]
    return f"https://open.spotify.com/track/{tid}" if is_spotify_id(tid) else ""


def _finish_table(frame: pd.DataFrame, base: str) -> pd.DataFrame:
    """Report columns in a fixed order: rank, ids and text, numbers, the Spotify link."""
    frame = frame.copy()
    for col in ("track_name", "artists"):
        if col not in frame:
            frame[col] = ""
    if "popularity" not in frame:
        frame["popularity"] = np.nan
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    for col in (base, "score"):  # float32 arithmetic: 6 decimals is all the precision there is
        frame[col] = np.round(frame[col].astype(np.float64), 6)
    frame["spotify_url"] = [spotify_url(t) for t in frame["track_id"]]
    cols = ["rank", "track_id", "track_name", "artists", "popularity", base, "score", "spotify_url"]
    return frame[cols]


# ----------------------------------------------------------------------------- reports


def user_folder_name(user_id: str) -> str:
    """A user id as a folder/file name. When cleaning changed it, a short hash of the real id
    is added so two ids never share a report (``a/b`` and ``a_b``)."""
    safe = safe_path_component(str(user_id))
    if safe != str(user_id):
        safe = f"{safe}-{hashlib.sha1(str(user_id).encode('utf-8')).hexdigest()[:8]}"
    return safe


def write_report(
    result: Discovery, out_dir: str | Path, label: str, feature_columns: tuple[str, ...]
) -> tuple[Path, Path]:
    """Write ``{out}/{user}/{user}_{label}_{mode}.csv`` and ``..._dna.csv`` atomically.

    Text cells are neutralised against spreadsheet formula injection; the user id is made a
    safe path component and the result is checked to stay inside ``out_dir``.
    """
    name = user_folder_name(result.user)
    stem = f"{name}_{label}_{result.mode}"
    report_path = path_inside(out_dir, name, f"{stem}.csv")
    dna_path = path_inside(out_dir, name, f"{stem}_dna.csv")
    table = result.table.copy()
    for col in ("track_id", "track_name", "artists"):
        table[col] = [neutralise_formula(v) for v in table[col]]
    write_csv_atomic(table, report_path)
    dna = pd.DataFrame(
        {
            "feature": list(feature_columns),
            "value": result.dna_raw,
            "standardised": result.dna,
            "percentile": result.dna_percentile,
        }
    )
    write_csv_atomic(dna, dna_path)
    return report_path, dna_path


def _fmt_value(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3f}"


def format_dna(result: Discovery, feature_columns: tuple[str, ...], where: str) -> str:
    """The DNA as a readable profile: value in original units, a bar, the percentile."""
    if len(feature_columns) == 0:
        return f"Vibe DNA of {result.user}: the model has no audio features"
    lines = [f"Vibe DNA of {result.user} (percentile within the {where}):"]
    width = max(len(c) for c in feature_columns)
    for name, v, p in zip(feature_columns, result.dna_raw, result.dna_percentile, strict=True):
        filled = int(round(p / 5))
        bar = "#" * filled + "." * (20 - filled)
        lines.append(f"  {name:<{width}} {_fmt_value(v):>10}  [{bar}] {p:5.1f}%")
    return "\n".join(lines)


def format_top(result: Discovery, k: int = 10) -> str:
    """The top ``k`` rows as a plain-text table."""
    t = result.table.head(k)
    if t.empty:
        return "  (no tracks left to recommend)"
    base = "similarity" if "similarity" in t.columns else "decoder_score"
    head = "similarity" if base == "similarity" else "decoder"

    def cut(s: object, w: int) -> str:
        text = str(s)
        return text if len(text) <= w else text[: w - 1] + "~"

    lines = [f"  {'#':>3}  {'track':<28} {'artists':<22} {'pop':>4} {head:>10} {'score':>7}"]
    for r in t.itertuples(index=False):
        name = r.track_name or r.track_id
        pop = "" if pd.isna(r.popularity) else f"{r.popularity:.0f}"
        lines.append(
            f"  {r.rank:>3}  {cut(name, 28):<28} {cut(r.artists, 22):<22} {pop:>4} "
            f"{getattr(r, base):>10.4f} {r.score:>7.4f}"
        )
    return "\n".join(lines)


def checkpoint_label(ck_path: Path, best_name: str, epoch: int) -> str:
    """``best`` for the best checkpoint, else the checkpoint's epoch number."""
    return "best" if ck_path.name == best_name else str(int(epoch))


def load_training_users(data: DataConfig) -> Interactions:
    """The training interactions named in the config (for users given by id)."""
    return load_interactions(data)
