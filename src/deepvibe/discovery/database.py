"""The track database: parsed once, chunk by chunk, into a Parquet cache that scans read back.

Shapes: m database tracks (m can be ~10^7; never held in memory as a whole), f features.

The cache (``<source>.dvcache``) holds the tracks' raw features as float32 columns (so one
cache serves every checkpoint), popularity (NaN where the source has none), names and artists,
one row group per 65,536 rows. Its metadata holds per-feature quantiles for the DNA
percentiles, the warnings from parsing (repeated whenever the cache is used) and the key that
says which source it was built from: the cache-format version, the column settings, and the
source's inode, size, mtime, ctime and a SHA-256 of the whole file, computed while it was
parsed. ctime cannot be set back by ``cp -p`` or ``rsync -t``; when the stat fields differ
but the size does not, the file is hashed again and the cache is kept only if the content is
the same.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from deepvibe.data.tables import TrackReadStats, TrackTable, iter_track_table
from deepvibe.errors import DataError, DeepVibeError
from deepvibe.fileio import (
    atomic_path,
    file_sha256,
)

log = logging.getLogger(__name__)

CACHE_SUFFIX = ".dvcache"
CACHE_VERSION = 2  # 2: streamed build, whole-file hash key, blank popularity kept
WHAT = "track database"
PARSE_ROWS = 100_000  # source rows parsed at a time when the cache is built
_ROW_GROUP = 65_536  # rows per Parquet row group in the cache (the unit of random access)
_QUANTILES = np.linspace(0.0, 1.0, 1001)  # stored per feature for the DNA percentiles
_QUANTILE_SAMPLE = 262_144  # rows behind the quantiles (a uniform sample; exact below this)
_HASH_BLOCK = 1 << 20


# ----------------------------------------------------------------------------- source identity


def _stat_key(path: Path) -> dict[str, int]:
    st = path.stat()
    return {
        "inode": st.st_ino,
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
    }


def cache_path_for(source: str | Path) -> Path:
    """``<source>.dvcache`` beside the source; a per-user cache folder when that folder is
    read-only (e.g. a shared data set)."""
    src = Path(source)
    if os.access(src.resolve().parent, os.W_OK):
        return src.with_name(src.name + CACHE_SUFFIX)
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "deepvibe"
    digest = hashlib.sha1(str(src.resolve()).encode("utf-8")).hexdigest()[:16]
    return base / f"{src.name}.{digest}{CACHE_SUFFIX}"


# ----------------------------------------------------------------------------- streamed parse


@dataclass(frozen=True)
class TrackColumnNames:
    """Which source columns hold what; optional ones absent from the file are ignored."""

    track: str
    features: tuple[str, ...]
    popularity: str | None = "popularity"
    name: str | None = "track_name"
    artist: str | None = "artists"

    def as_key(self) -> dict[str, object]:
        return {
            "track": self.track,
            "features": list(self.features),
            "popularity": self.popularity,
            "name": self.name,
            "artist": self.artist,
        }


@dataclass
class _ParseLedger:
    """What the streamed parse skipped, summed over chunks."""

    rows: int = 0
    incomplete: int = 0
    first_bad: tuple[int, str, str] | None = None  # (file row, column, what is wrong)
    duplicates: int = 0
    unknown_popularity: int = 0
    seen: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint64))

    def note(self, bad: np.ndarray, offset: int, column: str, problem: str) -> None:
        if bad.any():
            row = offset + int(np.flatnonzero(bad)[0]) + 2  # + header, 1-based
            if self.first_bad is None or row < self.first_bad[0]:
                self.first_bad = (row, column, problem)

    def new_ids(self, ids: np.ndarray) -> np.ndarray:
        """Mask of ids not seen in this or an earlier chunk (first occurrence kept).

        Ids are compared by a 64-bit hash kept in one sorted array (8 bytes per track), not
        as strings; two different ids share a hash with probability ~m^2 / 2^65.
        """
        hashes = pd.util.hash_array(ids.astype(object))
        fresh = ~pd.Series(hashes).duplicated().to_numpy()
        if len(self.seen):
            pos = np.searchsorted(self.seen, hashes)
            known = self.seen[np.minimum(pos, len(self.seen) - 1)] == hashes
            fresh &= ~known
        self.duplicates += int((~fresh).sum())
        self.seen = np.sort(np.concatenate([self.seen, hashes[fresh]]), kind="stable")
        return fresh


def iter_track_chunks(
    path: str | Path, cols: TrackColumnNames, ledger: _ParseLedger, digest: hashlib._Hash
) -> Iterator[TrackTable]:
    """The database's complete, unique tracks, ``PARSE_ROWS`` source rows at a time: the one
    track-table reader (:func:`deepvibe.data.tables.iter_track_table`: incomplete rows skipped
    and counted, a blank popularity kept as unknown, the first row of a repeated id kept, by
    the ledger's 64-bit id hashes) while ``digest`` hashes the whole file."""
    stats = TrackReadStats()
    try:
        for table in iter_track_table(
            path, cols.track, cols.features, cols.popularity, cols.name, cols.artist,
            what=WHAT, drop_incomplete=True, blank_popularity_unknown=True, stats=stats,
            digest=digest, rows=PARSE_ROWS, new_ids=ledger.new_ids,
        ):  # fmt: skip
            if table.popularity is not None:
                ledger.unknown_popularity += int(np.isnan(table.popularity).sum())
            yield table
    finally:
        ledger.rows, ledger.incomplete = stats.n_rows, stats.n_incomplete
        if stats.first_bad is not None:
            ledger.first_bad = stats.first_bad[1:]


def _ledger_notes(path: Path, ledger: _ParseLedger) -> list[str]:
    """The parse's warnings (also an error when no row was complete)."""
    notes = []
    if ledger.incomplete and ledger.first_bad is not None:
        row, col, problem = ledger.first_bad
        where = f"first: column {col!r} row {row} {problem.split(';')[0]}"
        if ledger.incomplete == ledger.rows:
            raise DataError(
                f"{path}: {ledger.incomplete} of {ledger.rows} {WHAT} rows have missing or "
                f"non-numeric values ({where}); check the file and data.feature_columns"
            )
        notes.append(
            f"{path}: skipped {ledger.incomplete} of {ledger.rows} rows with missing or "
            f"non-numeric values ({where})"
        )
    if ledger.duplicates:
        notes.append(f"{path}: {ledger.duplicates} duplicate track ids; kept the first row of each")
    return notes


# ----------------------------------------------------------------------------- cache file


def _feature_name(j: int) -> str:
    return f"f{j}"


class _Reservoir:
    """A uniform sample of at most ``size`` rows of a stream (Algorithm R, seeded)."""

    def __init__(self, size: int, n_features: int) -> None:
        self.rows = np.empty((size, n_features), dtype=np.float32)
        self.seen = 0
        self.rng = np.random.default_rng(0)

    def add(self, feats: np.ndarray) -> None:
        size = len(self.rows)
        take = max(0, min(size - self.seen, len(feats)))
        self.rows[self.seen : self.seen + take] = feats[:take]
        later = np.arange(self.seen + take, self.seen + len(feats))
        self.seen += len(feats)
        if len(later):
            slot = self.rng.integers(0, later + 1)  # each later row replaces slot < size
            hit = np.flatnonzero(slot < size)
            # A slot drawn twice keeps the later row, as the sequential algorithm would.
            last = len(hit) - 1 - np.unique(slot[hit][::-1], return_index=True)[1]
            self.rows[slot[hit][last]] = feats[take + hit[last]]

    def quantiles(self) -> np.ndarray:
        """(f, len(_QUANTILES)) quantiles of the sample, float64."""
        sample = self.rows[: min(self.seen, len(self.rows))]
        return np.stack(
            [
                np.quantile(sample[:, j].astype(np.float64), _QUANTILES)
                for j in range(sample.shape[1])
            ]
        )


def _arrow_schema(table: TrackTable):  # noqa: ANN202 - a pyarrow.Schema
    import pyarrow as pa

    fields = [pa.field("track_id", pa.string())]
    fields += [pa.field(_feature_name(j), pa.float32()) for j in range(len(table.feature_columns))]
    if table.popularity is not None:
        fields.append(pa.field("popularity", pa.float32()))
    if table.names is not None:
        fields.append(pa.field("track_name", pa.string()))
    if table.artists is not None:
        fields.append(pa.field("artists", pa.string()))
    return pa.schema(fields)


def _arrow_table(table: TrackTable, schema):  # noqa: ANN001, ANN202 - pyarrow types
    import pyarrow as pa

    feats = np.asarray(table.features, dtype=np.float32)
    arrays = [pa.array(np.asarray(table.track_ids, dtype=object), pa.string())]
    arrays += [pa.array(feats[:, j]) for j in range(feats.shape[1])]
    if table.popularity is not None:
        arrays.append(pa.array(np.asarray(table.popularity, dtype=np.float32)))
    for text in (table.names, table.artists):
        if text is not None:
            arrays.append(pa.array(np.asarray(text, dtype=object), pa.string()))
    return pa.Table.from_arrays(arrays, schema=schema), feats


def write_database_cache(
    path: str | Path,
    chunks: Iterator[TrackTable] | list[TrackTable],
    key: dict[str, object],
    notes: list[str] | None = None,
) -> Path:
    """Write tracks (raw features, float32) to a Parquet cache, atomically, one row group per
    ``_ROW_GROUP`` rows, with per-feature quantiles for the DNA percentiles in its metadata.

    ``chunks`` may be a generator, so a database larger than memory is written piece by piece;
    the quantiles come from a uniform sample of at most ``_QUANTILE_SAMPLE`` rows. ``key`` and
    ``notes`` (warnings about the source) are read only after the last chunk, so a generator
    may still fill them in.
    """
    import pyarrow.parquet as pq

    writer = None
    n_rows = unknown_popularity = 0
    sample: _Reservoir | None = None
    first: TrackTable | None = None
    with atomic_path(path) as tmp:
        try:
            for table in chunks:
                if writer is None:
                    first, schema = table, _arrow_schema(table)
                    sample = _Reservoir(_QUANTILE_SAMPLE, len(table.feature_columns))
                    writer = pq.ParquetWriter(
                        tmp, schema, compression="none", use_dictionary=False,
                        write_statistics=False,
                    )  # fmt: skip
                arrow, feats = _arrow_table(table, schema)
                writer.write_table(arrow, _ROW_GROUP)
                sample.add(feats)
                n_rows += len(table.track_ids)
                if table.popularity is not None:
                    unknown_popularity += int(np.isnan(table.popularity).sum())
            if writer is None or first is None or sample is None or n_rows == 0:
                raise DataError("the track database has no rows")
            meta = {
                "key": key,
                "n_rows": n_rows,
                "feature_columns": list(first.feature_columns),
                "has": {
                    "popularity": first.popularity is not None,
                    "names": first.names is not None,
                    "artists": first.artists is not None,
                },
                "unknown_popularity": unknown_popularity,
                "quantiles": sample.quantiles().tolist(),
                "notes": list(notes or []),
            }
            writer.add_key_value_metadata({"deepvibe": json.dumps(meta)})
        finally:
            if writer is not None:
                writer.close()
    return Path(path)


def pq_file(path: Path):  # noqa: ANN201 - a pyarrow.parquet.ParquetFile
    """The cache opened for plain reads (no memory map, no pre-buffering of the file)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path, memory_map=False, pre_buffer=False)


def percentiles_from_quantiles(quantiles: np.ndarray, raw_values: np.ndarray) -> np.ndarray:
    """quantiles: (f, q) sorted per row; values: (f,) or (B, f) -> percentiles in 0..100, mid-rank
    (a value shared by many tracks lands in the middle of its tie)."""
    values = np.atleast_2d(np.asarray(raw_values, dtype=np.float64))
    q = quantiles.shape[1] - 1
    out = np.empty(values.shape)
    for j in range(values.shape[1]):
        lo = np.searchsorted(quantiles[j], values[:, j], side="left")
        hi = np.searchsorted(quantiles[j], values[:, j], side="right")
        out[:, j] = 100.0 * np.minimum(q, (lo + hi) / 2.0) / q
    return out if np.ndim(raw_values) == 2 else out[0]


# ----------------------------------------------------------------------------- the database


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
    unknown_popularity: int = 0  # tracks with a blank popularity (gems mode cannot rank them)
    _row_groups: np.ndarray | None = None  # cumulative row offsets of the row groups
    _samples: dict[int, tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)

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
        """Open the cache for ``source``, building it first when it is missing or stale."""
        src = Path(source)
        if not src.exists():
            raise DataError(
                f"{src}: track database file not found; check data.database in your config "
                "or use --source catalogue"
            )
        if src.is_dir():
            raise DataError(f"{src}: track database path is a directory, expected a file")
        cols = TrackColumnNames(
            track_column, tuple(feature_columns), popularity_column, name_column, artist_column
        )
        identity = {"version": CACHE_VERSION, "source": str(src.resolve()), **cols.as_key()}
        cache_file = Path(cache) if cache is not None else cache_path_for(src)
        db = cls._read(cache_file, src, identity)
        if db is None:
            log.info("database: parsing %s (first use or changed; cached in %s)", src, cache_file)
            db = cls._build(src, cols, identity, cache_file)
        for note in db.notes:  # parsing warnings are facts about the source: say them each time
            log.warning("%s", note)
        log.debug("database: %d tracks from cache %s", db.n_tracks, cache_file)
        return db

    @classmethod
    def _build(
        cls, src: Path, cols: TrackColumnNames, identity: dict[str, object], cache_file: Path
    ) -> TrackDatabase:
        before = _stat_key(src)
        digest = hashlib.sha256()
        ledger = _ParseLedger()
        key: dict[str, object] = {"identity": identity}
        notes: list[str] = []

        def chunks() -> Iterator[TrackTable]:
            yield from iter_track_chunks(src, cols, ledger, digest)
            notes.extend(_ledger_notes(src, ledger))  # raises when no row was complete
            if _stat_key(src) != before:
                raise DataError(f"{src}: changed while it was being read; run again")
            key["file"] = {**before, "sha256": digest.hexdigest()}

        try:
            write_database_cache(cache_file, chunks(), key, notes)
        except DataError:
            raise
        except DeepVibeError as exc:
            raise DataError(
                f"{src}: cannot write the database cache ({exc}); make the folder "
                "writable or set XDG_CACHE_HOME"
            ) from exc
        db = cls._read(cache_file, src, identity)
        if db is None:  # pragma: no cover - only if the file changed right after the check
            raise DataError(f"{src}: changed while it was being read; run again")
        return db

    @classmethod
    def _read(
        cls, cache_file: Path, source: Path, identity: dict[str, object] | None
    ) -> TrackDatabase | None:
        """The cache if it exists, is readable and was built from this very source (``identity``
        None: trust it, for benchmarks); None otherwise."""
        import pyarrow.parquet as pq

        if not cache_file.exists():
            return None
        try:
            meta = pq.read_metadata(cache_file)
            info = json.loads(meta.metadata[b"deepvibe"])
            key = info["key"]
        except Exception as exc:  # corrupt, truncated or foreign file: rebuild it
            log.warning("%s: unreadable database cache (%s); rebuilding it", cache_file, exc)
            return None
        if identity is not None and not _key_matches(key, identity, source):
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
            unknown_popularity=int(info.get("unknown_popularity", 0)),
            _row_groups=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
        )

    @classmethod
    def from_cache(cls, cache_file: str | Path) -> TrackDatabase:
        """Open a cache file directly, without a source to check it against (benchmarks)."""
        p = Path(cache_file)
        db = cls._read(p, p, None)
        if db is None:
            raise DataError(f"{p}: not a deepvibe database cache")
        return db

    def chunks(self, chunk_size: int) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """Yield (first_row, raw features (c, f) float32, popularity (c,) or None; NaN where
        unknown) for consecutive chunks of ``chunk_size`` rows (the last may be shorter). The
        features are a transposed view of a contiguous (f, c) block.

        Reads one Parquet row group at a time (only the feature and popularity columns), so
        memory is O(chunk_size + row group), whatever the database size. (pyarrow's
        ``iter_batches`` was measured to grow with the file, so it is not used.)
        """
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        n_feat = len(self.feature_columns)
        names = [_feature_name(j) for j in range(n_feat)]
        names += ["popularity"] if self.has_popularity else []

        # A fresh (f, chunk) block per chunk, so a caller may keep what it was given.
        def new_block(start: int) -> tuple[np.ndarray, np.ndarray | None]:
            size = min(chunk_size, self.n_tracks - start)
            pop = np.empty(size, dtype=np.float32) if self.has_popularity else None
            return np.empty((n_feat, size), dtype=np.float32), pop

        start = fill = 0
        feats, pop = new_block(0)
        with pq_file(self.path) as pf:
            for g in range(pf.num_row_groups):
                table = pf.read_row_group(g, columns=names, use_threads=False)
                offset = 0
                while offset < table.num_rows:
                    take = min(feats.shape[1] - fill, table.num_rows - offset)
                    for j in range(n_feat):
                        feats[j, fill : fill + take] = table.column(j).slice(offset, take)
                    if pop is not None:
                        part = table.column(n_feat).slice(offset, take).to_numpy()
                        pop[fill : fill + take] = part
                    fill += take
                    offset += take
                    if fill == feats.shape[1]:
                        yield start, feats.T, pop
                        start += fill
                        fill = 0
                        if start < self.n_tracks:
                            feats, pop = new_block(start)
                del table

    def sample(self, size: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Raw features (f, s) float32 and popularity (s,) of ``size`` rows spread evenly over
        the database (every row when it is smaller); read once, then kept (s * f floats)."""
        if size not in self._samples:
            step = max(1, self.n_tracks // max(1, size))
            feats, pops = [], []
            for start, raw, pop in self.chunks(_ROW_GROUP):
                keep = np.arange((-start) % step, raw.shape[0], step)  # rows 0, step, 2 step...
                feats.append(raw[keep].T)
                pops.append(None if pop is None else pop[keep])
            both = np.concatenate(feats, axis=1)[:, :size], None
            if self.has_popularity:
                both = both[0], np.concatenate(pops)[:size]  # type: ignore[arg-type]
            self._samples[size] = (np.ascontiguousarray(both[0]), both[1])
        return self._samples[size]

    def take(self, rows: np.ndarray, columns: list[str] | None = None) -> pd.DataFrame:
        """Selected rows (database row numbers) in the order given; reads only the row groups
        that hold them. Columns: track_id and whichever of track_name, artists, popularity
        exist (default), or ``columns`` (``feature_columns`` name the raw features)."""
        rows = np.asarray(rows, dtype=np.int64)
        uniq, where = np.unique(rows, return_inverse=True)
        table = self.take_arrow(uniq, columns)
        frame = (
            table.to_pandas()
            if table.num_rows
            else pd.DataFrame({c: [] for c in table.column_names})
        )
        return frame.iloc[where].reset_index(drop=True)

    def take_arrow(self, rows: np.ndarray, columns: list[str] | None = None):  # noqa: ANN201
        """:meth:`take` for sorted distinct ``rows``, as a ``pyarrow.Table`` (no pandas)."""
        import pyarrow as pa

        if columns is None:
            columns = ["track_id"]
            columns += ["track_name"] if self.has_names else []
            columns += ["artists"] if self.has_artists else []
            columns += ["popularity"] if self.has_popularity else []
        stored = {c: _feature_name(j) for j, c in enumerate(self.feature_columns)}
        read = list(dict.fromkeys(stored.get(c, c) for c in columns))
        rows = np.asarray(rows, dtype=np.int64)
        assert self._row_groups is not None
        group_of = np.searchsorted(self._row_groups, rows, side="right") - 1
        parts = []
        with pq_file(self.path) as pf:
            for g in np.unique(group_of):
                local = rows[group_of == g] - self._row_groups[g]
                group = pf.read_row_group(int(g), columns=read)
                # sorted distinct rows as many as the group's: all of them, in order (no copy)
                whole = len(local) == group.num_rows
                parts.append(group if whole else group.take(pa.array(local)))
        if not parts:
            schema = pq_file(self.path).schema_arrow
            return pa.table({c: pa.array([], schema.field(stored.get(c, c)).type)
                             for c in columns})  # fmt: skip
        table = pa.concat_tables(parts)
        return table.rename_columns([{v: k for k, v in stored.items()}.get(c, c)
                                     for c in table.column_names]).select(columns)  # fmt: skip

    def percentiles(self, raw_values: np.ndarray) -> np.ndarray:
        """Where values (f,) or (B, f) in original units sit in the database: 0..100 per
        feature."""
        return percentiles_from_quantiles(self.quantiles, raw_values)


def _key_matches(key: dict[str, object], identity: dict[str, object], source: Path) -> bool:
    """Whether a cache built under ``key`` still describes ``source`` (see the module doc)."""
    if key.get("identity") != identity or not isinstance(key.get("file"), dict):
        return False
    built: dict[str, object] = dict(key["file"])  # type: ignore[arg-type]
    now = _stat_key(source)
    if all(built.get(name) == value for name, value in now.items()):
        return True
    if built.get("size") != now["size"]:
        return False
    same = built.get("sha256") == file_sha256(source)
    log.debug("database: %s has new file times; content %s", source, "same" if same else "new")
    return same


def read_all_names(db: TrackDatabase, piece: int = 1_000_000) -> TrackTable:
    """Every track's id, name, artists and popularity (no features), for matching account-data
    histories by name. Memory grows with the database: used only for such histories."""
    if not (db.has_names and db.has_artists):  # NameIndex.build then says what is missing
        return TrackTable(np.empty(0, dtype=object), np.zeros((0, 0)), ())
    columns = ["track_id", "track_name", "artists"] + (["popularity"] if db.has_popularity else [])
    frames = [
        db.take(np.arange(s, min(s + piece, db.n_tracks)), columns)
        for s in range(0, db.n_tracks, piece)
    ]
    frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    pop = frame["popularity"].to_numpy(np.float64) if db.has_popularity else None
    return TrackTable(
        frame["track_id"].to_numpy(dtype=object), np.zeros((len(frame), 0)), (),
        pop, frame["track_name"].fillna("").to_numpy(dtype=object),
        frame["artists"].fillna("").to_numpy(dtype=object),
    )  # fmt: skip
