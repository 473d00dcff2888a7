"""Discovery: a trained model and a track database, loaded once, turned into recommendations
for users in blocks.

Shapes: B users, b in a block, n catalogue tracks (the model's outputs), f audio features,
m database tracks.

Per block of users (``discover.user_block``):

1. the model encodes each listening vector to its posterior mean and decodes one score per
   catalogue track (deterministic: no sampling);
2. the scores become the Vibe DNA (:mod:`deepvibe.discovery.dna`);
3. ``db`` source: one pass over the database scores every track against every DNA of the
   block (:mod:`deepvibe.discovery.scan`); ``catalogue`` source: the decoder's scores rank the
   catalogue;
4. the metadata of all the block's hits is read once, each user's history is removed, and
   the block becomes one long table (:class:`DiscoveryBlock`), written by the writers of
   :mod:`deepvibe.discovery.report`.

Memory is set by the block and the scan's chunk, never by the number of users. The model runs
on fixed 64-row batches and the scan's similarities are exact (see ``dna.on_grid``), so a
user's report is the same whether they are discovered alone or with 100,000 others.
"""

from __future__ import annotations

import functools
import itertools
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pandas.api.types import union_categoricals

from deepvibe.config import Config, DiscoverConfig, config_from_dict
from deepvibe.data.artists import split_artist_column
from deepvibe.data.ids import id_index
from deepvibe.data.tables import FeatureScaler, TrackTable
from deepvibe.discovery.database import TrackDatabase, percentiles_from_quantiles
from deepvibe.discovery.dna import pair_dots, vibe_dna
from deepvibe.discovery.hybrid import (
    PARTS,
    HybridWeights,
    strongest_part,
)
from deepvibe.discovery.hybrid_scan import PairScorer, rank_database
from deepvibe.discovery.report import (
    Discovery,
    DiscoveryBlock,
    LongTableWriter,
    Mode,
    ReportWriter,
    track_table,
)
from deepvibe.discovery.scan import (
    DnaScorer,
    PreparedChunks,
    check_database,
    scan,
    single_threaded_blas,
    workers,
)
from deepvibe.discovery.signals import (
    TILE,
    HybridScorer,
    TrackSpace,
    UserInputs,
    one_torch_thread,
    padded_rows,
)
from deepvibe.discovery.space_cache import (
    IndexFiles,
    load_space_arrays,
    save_space_arrays,
    space_key,
)
from deepvibe.discovery.users import HistoryNames, UserBatch
from deepvibe.discovery.validation import mode_anchor, mode_weights
from deepvibe.errors import DataError
from deepvibe.model.artist_cf import ArtistCF
from deepvibe.model.inference import encode_and_score
from deepvibe.model.vae import HybridVAE
from deepvibe.ranking.topk import top_k
from deepvibe.training.checkpoint import Checkpoint, load_checkpoint

if TYPE_CHECKING:
    import pyarrow as pa

log = logging.getLogger(__name__)

MODEL_ROWS = 64  # users per model call, padded: one fixed shape, so one user's scores never
# depend on who else is in the batch (BLAS kernels sum differently for other shapes)
_MIN_TAIL = 128  # users: a last block of at least twice this many is split (block_bounds)
_BUFFER_CELLS = 1 << 23  # (users x candidates) cells of a scan's top-k buffers per block
_QUANTILES = np.linspace(0.0, 1.0, 1001)
# users per group of _reasons, the groups shared by the worker threads: each group's (pairs,)
# arrays a few MiB, not the block's hundreds (the same time on 1,024 users, less memory)
_REASON_USERS = 128
_PAIR_ROWS = 65_536  # pairs per step of the cosine column (10^6 pairs: 29 ms at once, 23 so)
MODES: tuple[Mode, ...] = ("standard", "gems", "new-artists", "gems-new-artists")


class Discoverer:
    """A trained model plus (optionally) a track database, loaded once and reused per user.

    ``recommend(user_plays, N, mode) -> (track_ids, scores)`` in implicit's style;
    ``discover`` returns the per-user results; ``discover_blocks`` the same, a block of users
    at a time, for many users.
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
        self._catalogue_index = id_index(self.track_ids)
        # The hybrid score over the database (source db); None: the Vibe DNA alone ranks it.
        self.hybrid: HybridScorer | None = None
        self.new_artist_weights: HybridWeights | None = None  # fitted for --new-artists
        self.new_artist_anchor: float | None = None  # its Vibe DNA anchor (None: the scorer's)
        # Standardised database chunks, kept across blocks while they fit (per scorer setup).
        self._prepared: dict[tuple[object, ...], PreparedChunks] = {}
        # (a batch's history_ids, their rows in the hybrid's space): looked up once per batch,
        # not per block (each lookup of a few ids hashed the database's ids: 37 ms a block
        # over 1,000,000 tracks)
        self._history_rows: tuple[np.ndarray, np.ndarray] | None = None

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path | Checkpoint,
        cfg: Config | None = None,
        source: Literal["auto", "db", "catalogue", "dna"] | None = None,
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
        hybrid = chosen == "db"  # "dna": the database ranked by the Vibe DNA alone
        chosen = "db" if chosen == "dna" else chosen
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
        found = cls(
            ck.model, ck.track_ids, ck.scaler, ck.track_features, settings, database, meta,
            progress,
        )  # fmt: skip
        if hybrid and database is not None:
            found.hybrid = hybrid_scorer(ck, cfg, database)
            found.new_artist_weights = mode_weights(cfg, ck.extras, "new-artists")
            found.new_artist_anchor = mode_anchor(cfg, ck.extras, "new-artists")
        return found

    # -- pieces

    @property
    def source(self) -> Literal["db", "catalogue"]:
        return "db" if self.database is not None else "catalogue"

    def history_names(self) -> HistoryNames:
        """The catalogue's and the database's names, for matching account-data histories."""
        m = self.catalogue_meta
        catalogue = TrackTable(
            self.track_ids, np.zeros((len(self.track_ids), 0)), (), m.get("popularity"),
            m.get("names"), m.get("artists"),
        )  # fmt: skip
        return HistoryNames(catalogue, self.database)

    def scores(self, user_plays: sp.csr_matrix | np.ndarray) -> np.ndarray:
        """Decoder scores (B, n) at the posterior mean of each user (deterministic)."""
        plays = _as_rows(user_plays, len(self.track_ids))
        out = np.empty((plays.shape[0], len(self.track_ids)), dtype=np.float32)
        for a in range(0, plays.shape[0], MODEL_ROWS):
            rows = padded_rows(plays[a : a + MODEL_ROWS], MODEL_ROWS)
            with one_torch_thread():
                scores = encode_and_score(self.model, rows, self.track_features)[1]
            out[a : a + MODEL_ROWS] = scores[: min(MODEL_ROWS, plays.shape[0] - a)]
        return out

    def dna(self, scores: np.ndarray) -> np.ndarray:
        """(B, n) decoder scores -> (B, f) Vibe DNA with the configured temperature and top-k."""
        s = self.settings
        out = np.empty((scores.shape[0], self.track_features.shape[1]))
        for a in range(0, scores.shape[0], MODEL_ROWS):
            rows = scores[a : a + MODEL_ROWS]
            full = np.zeros((MODEL_ROWS, scores.shape[1]), dtype=scores.dtype)
            full[: len(rows)] = rows
            dna = vibe_dna(full, self.track_features, s.temperature, s.top_k)
            out[a : a + len(rows)] = dna[: len(rows)]
        return out

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
        batch = self.batch_from_plays(user_plays, exclude, users)
        return [d for block in self.discover_blocks(batch, N, mode) for d in block.discoveries()]

    def batch_from_plays(
        self,
        user_plays: sp.csr_matrix | np.ndarray,
        exclude: list[set[str]] | None = None,
        users: list[str] | np.ndarray | None = None,
    ) -> UserBatch:
        """Rows of plays over the catalogue as a :class:`UserBatch`; a user's history is their
        catalogue tracks plus ``exclude``."""
        plays = _as_rows(user_plays, len(self.track_ids))
        n_users = plays.shape[0]
        if exclude is not None and len(exclude) != n_users:
            raise ValueError(f"exclude has {len(exclude)} sets for {n_users} users")
        pairs_user = [np.repeat(np.arange(n_users), np.diff(plays.indptr))]
        pairs_id = [self.track_ids[plays.indices]]
        for u, extra in enumerate(exclude or []):
            pairs_user.append(np.full(len(extra), u))
            pairs_id.append(np.asarray(list(extra), dtype=object))
        codes, ids = pd.factorize(pd.Series(np.concatenate(pairs_id), dtype=object))
        history = sp.csr_matrix(
            (np.ones(len(codes), dtype=np.float32), (np.concatenate(pairs_user), codes)),
            shape=(n_users, len(ids)),
        )
        history.data[:] = 1.0
        history.sort_indices()
        labels = np.array([str(u) for u in (users if users is not None else range(n_users))])
        return UserBatch(
            labels.astype(object), plays, history, np.asarray(ids, dtype=object),
            np.zeros(n_users, dtype=np.int64),
        )  # fmt: skip

    def discover_blocks(
        self,
        batch: UserBatch,
        N: int | None = None,  # noqa: N803
        mode: Mode = "standard",
    ) -> Iterator[DiscoveryBlock]:
        """:class:`DiscoveryBlock` after block of ``batch``'s users (memory set by the block)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if "new-artists" in mode and self.hybrid is None:
            raise DataError(
                "--new-artists needs the hybrid database scan (artists of the database's "
                "tracks): use --source db with a track database"
            )
        n = self.settings.top_n if N is None else int(N)
        if n < 1:
            raise ValueError(f"N must be >= 1, got {n}")
        if self.database is not None:
            check_database(self.database, self.scaler, mode.startswith("gems"))
        elif mode == "gems" and self.catalogue_meta.get("popularity") is None:
            raise DataError(
                "hidden-gems mode needs track popularity, and this model's catalogue has none "
                "(data.popularity_column); run without --gems"
            )
        size = self._block_size(n, batch)
        granule = TILE if self.hybrid is not None else 1
        for a, b in block_bounds(len(batch.users), size, granule):
            yield self._block(batch.select(slice(a, b)), n, mode)

    def _block_size(self, n: int, batch: UserBatch) -> int:
        """Users per block: the configured size, fewer when the top-k buffers would be big."""
        k = n + int(np.diff(batch.history_matrix.indptr).max(initial=0))
        size = max(1, min(self.settings.user_block, _BUFFER_CELLS // (2 * k + 1024)))
        # whole hybrid tiles, so a user's place in its tile does not depend on the blocks
        return size - size % TILE if self.hybrid is not None and size > TILE else size

    # -- one block

    def _block(self, batch: UserBatch, n: int, mode: Mode) -> DiscoveryBlock:
        if self.hybrid is not None:  # its own model pass and DNA (HybridScorer.user_inputs)
            with single_threaded_blas():  # thin products: BLAS threads only spin (see scan)
                tracks, hits, dna = self._from_hybrid(batch, n, mode)
            dna_raw = self.scaler.inverse(dna)
            assert self.database is not None
            pct = self.database.percentiles(dna_raw)
            return self._assemble(batch, n, mode, tracks, hits, dna, dna_raw, pct, "similarity")
        scores = self.scores(batch.plays)  # (b, n)
        has_features = self.track_features.shape[1] > 0
        dna = self.dna(scores) if has_features else np.zeros((len(batch.users), 0))
        dna_raw = self.scaler.inverse(dna) if has_features else dna
        if self.database is not None:
            tracks, hits = self._from_database(dna, n, mode, batch)
            pct = self.database.percentiles(dna_raw)
            base = "similarity"
        else:
            tracks, hits = self._from_catalogue(scores, n, mode, batch)
            pct = self._catalogue_percentiles(dna_raw)
            base = "decoder_score"
        return self._assemble(batch, n, mode, tracks, hits, dna, dna_raw, pct, base)

    def _assemble(
        self, batch: UserBatch, n: int, mode: Mode, tracks: pa.Table, hits: _Hits,
        dna: np.ndarray, dna_raw: np.ndarray, pct: np.ndarray, base: str,
    ) -> DiscoveryBlock:  # fmt: skip
        """Each user's first n hits as a block (offsets into the long table)."""
        first = _first_n_per_user(hits, len(batch.users), n)
        counts = np.bincount(first.users, minlength=len(batch.users))
        offsets = np.concatenate([[0], np.cumsum(counts)])  # (b + 1,)
        return DiscoveryBlock(
            batch.users, mode, self.source, dna, dna_raw, pct, tracks, first.track, base,
            first.base, first.score, offsets, first.why,
        )  # fmt: skip

    def _from_database(
        self, dna: np.ndarray, n: int, mode: Mode, batch: UserBatch
    ) -> tuple[pa.Table, _Hits]:
        """The block's distinct hits (one metadata read) and each user's ranked hits."""
        db = self.database
        assert db is not None
        s = self.settings
        scorer = DnaScorer(
            dna, self.scaler, s.similarity, s.gems_lambda if mode == "gems" else None,
            s.popularity_ceiling,
        )  # fmt: skip
        extra = int(np.diff(batch.history_matrix.indptr).max(initial=0))
        cache = self._prepared.setdefault(scorer.signature(), PreparedChunks())
        rows, scores = scan(db, scorer, n + extra, s.chunk_size, self.progress, cache)  # (b, k)
        found = rows >= 0
        users, _ = np.nonzero(found)
        uniq, where = np.unique(rows[found], return_inverse=True)
        tracks = track_table(db.take_arrow(uniq))  # one metadata read for the whole block
        ids = tracks.column("track_id").to_numpy(zero_copy_only=False)
        code = id_index(batch.history_ids).get_indexer(id_index(ids))[where]  # hash lookups
        keep = ~_in_history(batch, users, code)
        score = scores[found][keep]
        pop = tracks.column("popularity").to_numpy(zero_copy_only=False).astype(np.float64)
        return tracks, _Hits(
            users[keep], where[keep], scorer.similarity_of(score, pop[where[keep]]), score
        )

    def _from_hybrid(
        self, batch: UserBatch, n: int, mode: Mode
    ) -> tuple[pa.Table, _Hits, np.ndarray]:
        """The hybrid score over the database: the k best unseen tracks per user, with the
        part that drove each one (``why``); (the block's distinct tracks, each user's ranked
        hits, (b, f) standardised DNA)."""
        scorer, db = self.hybrid, self.database
        assert scorer is not None and db is not None
        space, s = scorer.space, self.settings
        history = self._history_in_space(batch)  # (b, m) binary
        anchor = self.new_artist_anchor if "new-artists" in mode else None
        inputs = scorer.user_inputs(history, batch.plays, anchor)
        artists = None  # --new-artists: every track crediting an artist of the history
        if "new-artists" in mode:
            artists = sp.csr_matrix(history @ space.artists)
            artists.data[:] = 1.0
        penalty = None
        if mode.startswith("gems"):
            penalty = gems_penalty(space.popularity, s.gems_lambda, s.popularity_ceiling)
        weights = self.new_artist_weights if "new-artists" in mode else None
        rows, scores = rank_database(
            scorer, inputs, n, history, penalty, s.chunk_size, weights, artists
        )
        found = np.isfinite(scores) & inputs.usable[:, None]
        users, slot = np.nonzero(found)
        picked = rows[users, slot]  # space rows are database rows
        uniq, where = np.unique(picked, return_inverse=True)
        tracks = track_table(db.take_arrow(uniq))  # one metadata read for the whole block
        reasons, similarity = _reasons(scorer, inputs, rows, found, space, weights)
        score = scores[users, slot].astype(np.float64)
        hits = _Hits(users, where, similarity.astype(np.float64), score, reasons)
        return tracks, hits, inputs.dna_raw.astype(np.float64)

    def _history_in_space(self, batch: UserBatch) -> sp.csr_matrix:
        """:func:`_history_in_space`, the rows of the batch's history ids looked up once."""
        assert self.hybrid is not None
        ids = batch.history_ids  # the whole batch's, shared by its blocks
        if self._history_rows is None or self._history_rows[0] is not ids:
            self._history_rows = (ids, self.hybrid.space.rows_of(ids))
        return _history_in_space(batch, self.hybrid.space, self._history_rows[1])

    def _from_catalogue(
        self, scores: np.ndarray, n: int, mode: Mode, batch: UserBatch
    ) -> tuple[pa.Table, _Hits]:
        s = self.settings
        raw = scores.astype(np.float64)  # (b, n)
        final = raw.copy()
        if mode == "gems":
            pop = np.asarray(self.catalogue_meta["popularity"], dtype=np.float64)
            # Decoder scores are unbounded; scale them to [-1, 1] by the user's largest |score|
            # so lambda means the same trade-off as with similarities.
            top = np.abs(raw).max(axis=1, keepdims=True)
            final = np.divide(raw, top, out=raw.copy(), where=top > 0) - s.gems_lambda * pop / 100
            never = np.isnan(pop)
            if s.popularity_ceiling is not None:
                never |= pop > s.popularity_ceiling
            final[:, never] = -np.inf
        hist = batch.history_matrix.tocoo()
        column = self._catalogue_index.get_indexer(batch.history_ids)  # hash lookups
        inside = column[hist.col] >= 0
        final[hist.row[inside], column[hist.col[inside]]] = -np.inf
        order = top_k(final, n)  # (b, n) catalogue columns, best first, ties by column
        ok = np.isfinite(np.take_along_axis(final, order, axis=1))
        users, slot = np.nonzero(ok)
        cols = order[users, slot]
        return self._catalogue_tracks, _Hits(users, cols, raw[users, cols], final[users, cols])

    @functools.cached_property
    def _catalogue_tracks(self):  # noqa: ANN202 - a pyarrow.Table
        import pyarrow as pa

        m = self.catalogue_meta
        columns = {"track_id": pa.array(self.track_ids.astype(str), pa.string())}
        named = {"names": "track_name", "artists": "artists"}
        for key, col in named.items():
            if m.get(key) is not None:
                columns[col] = pa.array(np.asarray(m[key], dtype=object).astype(str), pa.string())
        if m.get("popularity") is not None:
            columns["popularity"] = pa.array(np.asarray(m["popularity"], dtype=np.float64))
        return track_table(pa.table(columns))

    def _catalogue_percentiles(self, raw_values: np.ndarray) -> np.ndarray:
        if self._catalogue_quantiles is None:
            raw = self.scaler.inverse(self.track_features.astype(np.float64))
            self._catalogue_quantiles = np.quantile(raw, _QUANTILES, axis=0).T
        return percentiles_from_quantiles(self._catalogue_quantiles, raw_values)


def block_bounds(n_users: int, size: int, granule: int = 1) -> list[tuple[int, int]]:
    """(first, stop) user of each block: ``size`` users each, the last block split in two
    (whole ``granule``s: the hybrid's tiles) when it has at least ``2 * _MIN_TAIL`` users. The
    last block's write overlaps no computation (see :func:`write_discoveries`), so a short
    last block shortens the run."""
    bounds = [(a, min(a + size, n_users)) for a in range(0, n_users, size)]
    if bounds and bounds[-1][1] - bounds[-1][0] >= 2 * _MIN_TAIL:
        a, b = bounds.pop()
        half = a + ((b - a) // 2 + granule - 1) // granule * granule
        bounds += [(a, half), (half, b)] if half < b else [(a, b)]
    return bounds


def _in_history(batch: UserBatch, users: np.ndarray, code: np.ndarray) -> np.ndarray:
    """Whether each (users[i], history column code[i]) pair is in that user's history (code
    -1: the track is in nobody's history), by a sorted search of (user, column) keys."""
    hist = batch.history_matrix
    if hist.nnz == 0:
        return np.zeros(len(users), dtype=bool)
    width = hist.shape[1]
    owner = np.repeat(np.arange(hist.shape[0]), np.diff(hist.indptr))
    keys = np.sort(owner.astype(np.int64) * width + hist.indices)
    probe = users.astype(np.int64) * width + code
    pos = np.minimum(np.searchsorted(keys, probe), len(keys) - 1)
    return (code >= 0) & (keys[pos] == probe)


def hybrid_scorer(ck: Checkpoint, cfg: Config, database: TrackDatabase) -> HybridScorer:
    """The checkpoint's model, artist model and fitted weights (``discover.weights`` in the
    config override them part by part) over the whole database held in memory."""
    meta = [
        c for c, has in (("track_name", database.has_names), ("artists", database.has_artists),
                         ("popularity", database.has_popularity)) if has
    ]  # fmt: skip
    key = space_key(database.path, ck.scaler, ck.track_ids)
    kept = load_space_arrays(database.path, key)  # None: first run over this database
    if kept is not None:  # only the ids and names are read
        meta = [c for c in meta if c == "track_name"]
    # straight from Arrow, column by column: a DataFrame of the whole database cost a copy of
    # every column and another of the features (0.4 s at 1,000,000 tracks)
    features_read = [] if kept is not None else list(ck.scaler.columns)
    arrow = database.take_arrow(np.arange(database.n_tracks), ["track_id", *features_read, *meta])

    def text(column: str) -> np.ndarray:  # (n,) object, missing as pandas reads it
        return arrow.column(column).to_pandas().to_numpy(dtype=object)

    names = text("track_name") if "track_name" in meta else None
    if kept is not None:
        space = TrackSpace.from_arrays(kept, text("track_id"), names)
    else:
        # (n, f) float64, column-major: each column written once, chunk by chunk, where a
        # whole column's to_numpy() would first join its chunks (a copy of every column more)
        features = np.empty((arrow.num_rows, len(ck.scaler.columns)), order="F")
        for j, column in enumerate(ck.scaler.columns):
            at = 0
            for chunk in arrow.column(column).chunks:
                features[at : at + len(chunk), j] = chunk.to_numpy(zero_copy_only=False)  # NaN
                at += len(chunk)
        table = TrackTable(
            text("track_id"),
            features,
            tuple(ck.scaler.columns),
            arrow.column("popularity").to_numpy() if "popularity" in meta else None,
            names,
            None,  # the artist cells as shown: reports read them for the tracks they show
            split_artist_column(arrow.column("artists").to_pandas()) if "artists" in meta else None,
        )
        space = TrackSpace.from_table(table, ck.scaler, ck.track_ids)
        save_space_arrays(database.path, key, space.arrays())
    extras = ck.extras or {}
    weights = mode_weights(cfg, ck.extras, "standard")
    cf_state = extras.get("artist_cf")
    artist_cf = ArtistCF.from_state(cf_state) if cf_state else None
    anchor = mode_anchor(cfg, ck.extras, "standard")
    log.info(
        "hybrid discovery: %s, DNA anchor %g%s", weights, anchor,
        "" if artist_cf else " (no artist model)",
    )  # fmt: skip
    settings = cfg.discover.model_copy(update={"dna_anchor": anchor})
    scorer = HybridScorer.from_settings(
        ck.model, ck.track_features, space, weights, settings, artist_cf
    )
    scorer.index_files = IndexFiles(database.path, key)
    return scorer


def gems_penalty(popularity: np.ndarray, lam: float, ceiling: float | None) -> np.ndarray:
    """(m,) lambda * popularity / 100; inf (never recommended) where popularity is unknown or
    above the ceiling."""
    pop = np.asarray(popularity, dtype=np.float64)
    penalty = lam * pop / 100.0
    never = np.isnan(pop) if ceiling is None else np.isnan(pop) | (pop > ceiling)
    penalty[never] = np.inf
    return penalty


def _history_in_space(
    batch: UserBatch, space: TrackSpace, rows: np.ndarray | None = None
) -> sp.csr_matrix:
    """(b, m): every track each user played (catalogue or not) that the database holds;
    ``rows``: the space rows of ``batch.history_ids``, where the caller has them."""
    hist = space.to_space(batch.history_matrix, batch.history_ids, rows)
    hist.data[:] = 1.0
    return hist


def _reasons(
    scorer: HybridScorer, inputs: UserInputs, rows: np.ndarray, found: np.ndarray,
    space: TrackSpace, weights: HybridWeights | None = None,
) -> tuple[pd.Categorical, np.ndarray]:  # fmt: skip
    """The ``why`` of each found (user, track), users in order: the part that added most
    under ``weights`` (those that ranked the tracks; default the scorer's), as
    :func:`deepvibe.discovery.hybrid.why` says it; and each pair's DNA cosine (the
    report's similarity column), float64. For groups of ``_REASON_USERS`` users shared by
    the scan's worker threads (one thread took 0.1-0.2 s per 1,024 users while the other
    core waited).

    Parts are computed pair by pair, so a user's reasons do not depend on who else is in
    the block."""
    n_users = found.shape[0]
    w = weights or scorer.weights
    if n_users <= _REASON_USERS:
        return _reasons_of(scorer, inputs, rows, found, space, w)
    bounds = np.append(np.arange(0, n_users, _REASON_USERS), n_users)

    def part(a: int, b: int) -> tuple[pd.Categorical, np.ndarray]:
        mine = inputs.select(slice(a, b))
        return _reasons_of(scorer, mine, rows[a:b], found[a:b], space, w)

    with ThreadPoolExecutor(min(workers(), len(bounds) - 1)) as pool:
        why, cosine = zip(*pool.map(part, bounds[:-1], bounds[1:]), strict=True)
    return union_categoricals(why), np.concatenate(cosine)


def _reasons_of(
    scorer: HybridScorer, inputs: UserInputs, rows: np.ndarray, found: np.ndarray,
    space: TrackSpace, w: HybridWeights,
) -> tuple[pd.Categorical, np.ndarray]:  # fmt: skip
    """:func:`_reasons` in one thread, under weights ``w``."""
    users, slot = np.nonzero(found)
    picked = rows[users, slot]
    cosine = pair_dots(inputs.dna, space.units, users, picked, _PAIR_ROWS)
    parts = _pair_parts(scorer, inputs, users, picked, cosine, w)
    names = [p for p in PARTS if p in parts]
    out = _Texts(len(users))
    if not names or not len(users):
        return out.categorical(), cosine
    weights = w.to_dict()
    contrib = np.empty((len(names), len(users)))  # (P, H), written once: no stacked copies
    for i, p in enumerate(names):
        np.multiply(parts[p], weights[p], out=contrib[i], dtype=np.float64)
    history = inputs.history
    played = [r[space.has_features[r]] for r in np.split(history.indices, history.indptr[1:-1])]
    no_history = np.array([len(h) == 0 for h in played], bool)[users]
    best, said = strongest_part(contrib, names, no_history)  # (H,) each
    if "artist" in names:
        pick = np.flatnonzero(said & (best == names.index("artist")))
        n_history = np.diff(history.indptr).astype(np.float32)[users[pick]]
        counts = np.rint(parts["artist"][pick] * n_history).astype(np.int64)  # round(): even
        out.put(pick, counts, lambda c: f"artist: {c} of your tracks")
    if "dna" in names:
        pick = np.flatnonzero(said & (best == names.index("dna")))
        nearest = _nearest_played(users[pick], picked[pick], played, space)
        shown = np.asarray(space.names if space.names is not None else space.track_ids, object)
        out.put(pick, nearest, lambda t: f"sounds like: {shown[t]}")
    others = [names.index(p) for p in ("collab", "decoder") if p in names]
    pick = np.flatnonzero(said & np.isin(best, others))
    out.put(pick, np.zeros(len(pick), np.int64), lambda _: "listeners like you")
    return out.categorical(), cosine


def _pair_parts(
    scorer: HybridScorer, inputs: UserInputs, users: np.ndarray, picked: np.ndarray,
    cosine: np.ndarray, w: HybridWeights,
) -> dict[str, np.ndarray]:  # fmt: skip
    """(H,) float32 value of each part for each (users[i], picked[i]) pair, pair by pair (so
    a user's reasons do not depend on the block): the artist, decoder and collab parts as
    :meth:`HybridScorer.parts` gives them, the DNA part as the pairs' ``cosine`` (NaN where
    the track has no features). A part of weight 0 in ``w`` is 0 for every pair, not looked
    up: it adds 0, and a part is said only when it adds more than 0."""
    unit = HybridWeights(dna=0.0, artist=1.0, collab=1.0, decoder=1.0)
    weights = w.to_dict()
    unused = [p for p in ("artist", "collab", "decoder") if weights[p] == 0]
    out = PairScorer(scorer, inputs, unit, None).parts(users, picked, unused)
    cos = np.array(cosine, np.float32)  # a copy: the caller's column keeps its values
    cos[~scorer.space.has_features[picked]] = np.nan
    out["dna"] = cos
    return out


def _nearest_played(
    users: np.ndarray, tracks: np.ndarray, played: list[np.ndarray], space: TrackSpace
) -> np.ndarray:
    """Per (user, track) pair, the space row of the user's played track (with features) most
    similar to the track (the first played one when the user has none)."""
    out = np.zeros(len(users), dtype=np.int64)
    starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else []
    for a, b in itertools.pairwise([*starts, len(users)]):
        mine = played[users[a]]
        if len(mine) == 0:
            out[a:b] = 0
            continue
        sims = space.units[tracks[a:b]] @ space.units[mine].T  # (k, h)
        out[a:b] = mine[np.argmax(sims, axis=1)]
    return out


class _Texts:
    """(H,) texts as codes into the distinct ones ("" where nothing is said), each distinct
    key formatted once: no object array of a million strings, made and then copied."""

    def __init__(self, n: int) -> None:
        self.codes = np.zeros(n, np.int64)
        self.texts = [""]

    def put(self, at: np.ndarray, keys: np.ndarray, text: Callable[[int], str]) -> None:
        """Rows ``at`` say ``text(key)`` for their (len(at),) int keys."""
        if not len(at):
            return
        where, uniq = pd.factorize(keys)  # a hash pass: a sort of 10^6 keys took 5x longer
        self.codes[at] = len(self.texts) + where
        self.texts += [text(int(u)) for u in uniq]

    def categorical(self) -> pd.Categorical:
        # two keys may say the same (two played tracks of one name): one category each
        texts, back = np.unique(np.asarray(self.texts, dtype=object), return_inverse=True)
        return pd.Categorical.from_codes(back.ravel()[self.codes], categories=texts)


@dataclass(frozen=True)
class _Hits:
    """Each user's ranked results, grouped by user (ascending), best first."""

    users: np.ndarray  # (H,) user within the block
    track: np.ndarray  # (H,) row of the block's distinct tracks
    base: np.ndarray  # (H,) similarity or decoder score
    score: np.ndarray  # (H,) final score
    why: pd.Categorical | None = None  # (H,) the hybrid's reason (None: no such column)


def _first_n_per_user(hits: _Hits, n_users: int, n: int) -> _Hits:
    """Each user's first n hits, base and score rounded to the 6 decimals that float32 inputs
    support."""
    counts = np.bincount(hits.users, minlength=n_users)
    start = np.cumsum(counts) - counts
    keep = np.arange(len(hits.users)) - start[hits.users] < n
    return _Hits(
        hits.users[keep], hits.track[keep], np.round(hits.base[keep], 6),
        np.round(hits.score[keep], 6), None if hits.why is None else hits.why[keep],
    )  # fmt: skip


def _as_rows(user_plays: sp.csr_matrix | np.ndarray, n_tracks: int) -> sp.csr_matrix:
    plays = sp.csr_matrix(np.atleast_2d(user_plays)) if not sp.issparse(user_plays) else user_plays
    plays = plays.tocsr().astype(np.float32)
    if plays.shape[1] != n_tracks:
        raise ValueError(f"user_plays has {plays.shape[1]} columns; the catalogue has {n_tracks}")
    return plays


def write_discoveries(
    found: Discoverer,
    batch: UserBatch,
    mode: Mode,
    label: str,
    out_dir: str | Path,
    long_table: str | Path | None = None,
) -> Iterator[tuple[DiscoveryBlock, list[tuple[Path, Path]]]]:
    """Discover ``batch`` block by block and write each block: per-user report and DNA files
    under ``out_dir``, or, with ``long_table``, one Parquet table for everyone (renamed into
    place after the last block). Yields each block and its files (none for the long table).

    A block is written by a second thread while the next one is computed (at most two blocks
    in memory); blocks are written, and yielded, in order.
    """
    columns = tuple(found.scaler.columns)
    if long_table is None:
        writer = ReportWriter(out_dir, label, columns)
        yield from _overlapped(found.discover_blocks(batch, None, mode), writer.write_block)
        return
    with LongTableWriter(long_table).open() as table:

        def write(block: DiscoveryBlock) -> list[tuple[Path, Path]]:
            table.write_block(block)
            return []

        yield from _overlapped(found.discover_blocks(batch, None, mode), write)


def _overlapped(
    blocks: Iterator[DiscoveryBlock], write: Callable[[DiscoveryBlock], list[tuple[Path, Path]]]
) -> Iterator[tuple[DiscoveryBlock, list[tuple[Path, Path]]]]:
    """``(block, write(block))`` for each block, each write overlapping the next block's
    computation."""
    with ThreadPoolExecutor(1) as pool:
        pending: tuple[DiscoveryBlock, Future] | None = None
        for block in blocks:
            job = pool.submit(write, block)
            if pending is not None:
                yield pending[0], pending[1].result()
            pending = (block, job)
        if pending is not None:
            yield pending[0], pending[1].result()
