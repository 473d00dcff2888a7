"""The chunked scan of a track database: the best k tracks per user in one pass over the file.

Shapes: B users in a block, m database tracks read c at a time, scored w at a time (a tile),
f features.

The scan is generic in what a score is. A :class:`ChunkScorer` gives, for one chunk of tracks,

- ``approximate``: (B, w) float32 scores of a tile, within ``tolerance`` of the exact ones
  (a fast matrix product), used only to find the candidates that can enter a user's top k;
- ``exact``: float64 scores of given (user, track) pairs, plus their named parts (for the
  report), computed so that a pair's score never depends on the batch it is computed in.

So a later score made of several parts (decoder score, artist affinity, DNA similarity, a
gems penalty) plugs in as one more scorer whose parts are computed in the same pass.
:class:`DnaScorer` is today's: similarity to the Vibe DNA, minus lambda * popularity / 100 in
hidden-gems mode.

The top k is kept by :class:`deepvibe.ranking.topk.StreamingTopK`: score descending, then
database row ascending, whatever the chunk, tile or block sizes. Memory is
O(c * f + B * (w + k)), whatever the database size.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from deepvibe.data.tables import FeatureScaler
from deepvibe.discovery.database import TrackDatabase
from deepvibe.discovery.dna import Method, pair_dots, unit_columns
from deepvibe.errors import DataError
from deepvibe.ranking.topk import StreamingTopK

log = logging.getLogger(__name__)

_TILE_CELLS = 1 << 19  # (users x tracks) float32 cells scored at once (2 MiB: stays in cache)
_TILE_USERS = 256  # users per tile (then 2,048 tracks)
_MAX_WORKERS = 8
_MIN_USERS_PER_WORKER = 64
_PAIR_PIECE = 1 << 18  # (user, track) pairs scored exactly at once
_SAMPLE = 16_384  # database rows behind each user's estimated floor
# the floor aims at _MARGIN * k tracks: falling short of k is rare (about 1 user in 10^4)
_MARGIN = 2
_SIM_TOLERANCE = 4e-6  # bound on |float32 - exact| similarity of two unit 12-vectors, with margin


@dataclass(frozen=True)
class TrackChunk:
    """Consecutive database tracks (or any selection of them)."""

    start: int  # database row of column 0
    features: np.ndarray  # (f, c) raw features, float32
    popularity: np.ndarray | None  # (c,) 0..100, NaN where unknown

    @classmethod
    def from_frame(cls, frame: pd.DataFrame, feature_columns: tuple[str, ...]) -> TrackChunk:
        """Rows read with ``TrackDatabase.take`` (features by name, popularity if any)."""
        feats = np.ascontiguousarray(frame[list(feature_columns)].to_numpy(np.float32).T)
        pop = frame["popularity"].to_numpy(np.float32) if "popularity" in frame else None
        return cls(0, feats, pop)


class ChunkScorer(Protocol):
    """Scores one block of users against chunks of tracks (see the module doc)."""

    n_users: int
    tolerance: float | np.ndarray  # max |approximate - exact score|, or one per user (B,)

    def select(self, users: np.ndarray) -> ChunkScorer:
        """The same scorer for a subset of its users."""

    def prepare(self, chunk: TrackChunk) -> Any:
        """Per-chunk work shared by every tile and user (e.g. standardised features)."""

    def approximate(
        self, prepared: Any, users: slice, c0: int, c1: int, out: np.ndarray
    ) -> np.ndarray:
        """(b, c1 - c0) float32 scores of ``users`` for the chunk's columns c0:c1, written into
        ``out``; -inf for a track a user must never get."""

    def exact(self, prepared: Any, users: np.ndarray, cols: np.ndarray) -> dict[str, np.ndarray]:
        """Exact float64 ``score`` (and named parts) of each (users[i], cols[i]) pair."""


class DnaScorer:
    """Similarity to each user's Vibe DNA; with ``gems_lambda``, minus lambda * popularity / 100
    (a track of unknown popularity, or above ``popularity_ceiling``, is never returned).

    Vectors are unit length on the exact grid of :mod:`deepvibe.discovery.dna`, so the exact
    score of a pair is the same whatever else is in the block.
    """

    def __init__(
        self,
        profiles: np.ndarray,
        scaler: FeatureScaler,
        method: Method = "cosine",
        gems_lambda: float | None = None,
        popularity_ceiling: float | None = None,
    ) -> None:
        profiles = np.atleast_2d(np.asarray(profiles, dtype=np.float64))  # (B, f) standardised
        self.profiles = profiles
        self.scaler = scaler
        self.n_users = profiles.shape[0]
        self.method = method
        self.units = np.ascontiguousarray(unit_columns(profiles.T, method).T)  # (B, f) on the grid
        self.units32 = self.units.astype(np.float32)  # exact: grid values fit a float32
        self.mean = np.asarray(scaler.mean, dtype=np.float64)[:, None]
        self.std = np.asarray(scaler.std, dtype=np.float64)[:, None]
        self.gems_lambda = gems_lambda
        self.popularity_ceiling = popularity_ceiling
        self.tolerance = _SIM_TOLERANCE * (1.0 + (gems_lambda or 0.0))

    def signature(self) -> tuple[object, ...]:
        """What :meth:`prepare` depends on: chunks prepared for an equal signature are equal."""
        scaler = (self.mean.tobytes(), self.std.tobytes())
        return (type(self).__name__, self.method, scaler, self.gems_lambda, self.popularity_ceiling)

    def similarity_of(self, score: np.ndarray, popularity: np.ndarray) -> np.ndarray:
        """The similarity part of final scores: the score plus the gems penalty, if any."""
        if self.gems_lambda is None:
            return score
        return score + self.gems_lambda * popularity.astype(np.float32).astype(np.float64) / 100

    def select(self, users: np.ndarray) -> DnaScorer:
        return DnaScorer(
            self.profiles[users], self.scaler, self.method, self.gems_lambda,
            self.popularity_ceiling,
        )  # fmt: skip

    def prepare(self, chunk: TrackChunk) -> dict[str, np.ndarray | None]:
        raw = np.asarray(chunk.features, dtype=np.float64)
        units = unit_columns((raw - self.mean) / self.std, self.method)  # (f, c)
        penalty = None
        if self.gems_lambda is not None:
            if chunk.popularity is None:
                raise ValueError("gems scoring needs popularity")
            pop = np.asarray(chunk.popularity, dtype=np.float64)
            penalty = self.gems_lambda * pop / 100.0
            never = np.isnan(pop)
            if self.popularity_ceiling is not None:
                never |= pop > self.popularity_ceiling
            penalty[never] = np.inf
        pen32 = None if penalty is None else penalty.astype(np.float32)
        return {
            "units": np.ascontiguousarray(units.T),  # (c, f): one row per track, for gathers
            "units32": units.astype(np.float32),  # (f, c) for the matrix product
            "penalty": penalty,
            "penalty32": pen32,
        }

    def approximate(
        self, prepared: dict[str, np.ndarray | None], users: slice, c0: int, c1: int,
        out: np.ndarray,
    ) -> np.ndarray:  # fmt: skip
        return penalised_product(self.units32[users], prepared, c0, c1, out)

    def exact(
        self, prepared: dict[str, np.ndarray | None], users: np.ndarray, cols: np.ndarray
    ) -> dict[str, np.ndarray]:
        units = prepared["units"]
        assert units is not None
        # exact on the grid, so the order of the sum over features does not matter
        sims = pair_dots(self.units, units, users, cols, _PAIR_PIECE)
        penalty = prepared["penalty"]
        score = sims if penalty is None else sims - penalty[cols]
        return {"similarity": sims, "score": score}


def penalised_product(
    users32: np.ndarray, prepared: dict[str, Any], c0: int, c1: int, out: np.ndarray
) -> np.ndarray:
    """(b, f) float32 user vectors @ the chunk's ``units32`` (f, c) columns c0:c1, minus its
    ``penalty32`` there when it has one, written into ``out`` (b, c1 - c0)."""
    units32 = prepared["units32"]
    assert units32 is not None
    np.matmul(users32, units32[:, c0:c1], out=out)
    pen32 = prepared["penalty32"]
    if pen32 is not None:
        out -= pen32[c0:c1]
    return out


def rounded_down(x: np.ndarray) -> np.ndarray:
    """float64 -> the largest float32 not above it (-inf stays -inf)."""
    y = x.astype(np.float32)
    return np.where(y > x, np.nextafter(y, np.float32(-np.inf)), y)


def _estimated_floor(db: TrackDatabase, scorer: ChunkScorer, k: int) -> np.ndarray:
    """Per user, a score that about ``_MARGIN * k`` database tracks reach, from a sample.

    Only candidates at least this good are kept, so the scan scores about that many tracks
    exactly instead of k * ln(m / tile). It is a guess: a user for whom fewer than k tracks
    reach it is scanned again without one (see :func:`scan`).
    """
    sample_size = min(db.n_tracks, _SAMPLE)
    rank = int(np.ceil(_MARGIN * k * sample_size / db.n_tracks))
    if rank > sample_size:
        return np.full(scorer.n_users, -np.inf)
    feats, pop = db.sample(sample_size)
    prepared = scorer.prepare(TrackChunk(0, feats, pop))
    floor = np.empty(scorer.n_users)
    step = _TILE_USERS  # users per piece: (256 x sample) float32 cells, 32 MiB at most
    for u0 in range(0, scorer.n_users, step):
        users = slice(u0, min(u0 + step, scorer.n_users))
        out = np.empty((users.stop - u0, sample_size), dtype=np.float32)
        approx = scorer.approximate(prepared, users, 0, sample_size, out)
        kth = np.partition(approx, sample_size - rank, axis=1)[:, sample_size - rank]
        floor[users] = kth.astype(np.float64) - scorer.tolerance
    return np.where(np.isfinite(floor), floor, -np.inf)


class PreparedChunks:
    """Prepared database chunks kept across the scans of one Discoverer, for scorers of one
    ``signature()``, as long as they fit in ``max_bytes`` (256 MiB: a 1,000,000-track database
    takes about 150); a bigger database is prepared afresh in every pass, so memory stays
    bounded."""

    def __init__(self, max_bytes: int = 256 << 20) -> None:
        self.max_bytes = max_bytes
        self.chunks: dict[tuple[int, int], Any] = {}
        self.bytes = 0
        self.full = False

    def get(self, start: int, size: int, make: Any) -> Any:
        if (start, size) in self.chunks:
            return self.chunks[start, size]
        prepared = make()
        if not self.full:
            nbytes = sum(getattr(v, "nbytes", 0) for v in prepared.values())
            if self.bytes + nbytes <= self.max_bytes:
                self.chunks[start, size] = prepared
                self.bytes += nbytes
            else:
                self.full = True
                self.chunks.clear()
        return prepared


def _chunks(db: TrackDatabase, chunk_size: int, scorer: ChunkScorer, cache: PreparedChunks | None):
    """(start, size, prepared) per chunk; from ``cache`` when it holds them (no read)."""
    if cache is not None and not cache.full and cache.chunks:
        starts = sorted(cache.chunks)
        if sum(size for _, size in starts) == db.n_tracks and all(
            size == min(chunk_size, db.n_tracks - start) for start, size in starts
        ):
            for start, size in starts:
                yield start, size, cache.chunks[start, size]
            return
    for start, raw, pop in db.chunks(chunk_size):
        chunk = TrackChunk(start, raw.T, pop)
        if cache is None:
            yield start, len(raw), scorer.prepare(chunk)
        else:
            yield start, len(raw), cache.get(start, len(raw), lambda c=chunk: scorer.prepare(c))


def user_groups(n_users: int) -> list[tuple[int, int]]:
    """The scan's split of a block's users between its worker threads: (u0, u1) each."""
    n_workers = max(1, min(workers(), n_users // _MIN_USERS_PER_WORKER))
    bounds = np.linspace(0, n_users, n_workers + 1).astype(int)
    return [(int(a), int(b)) for a, b in itertools.pairwise(bounds)]


def group_top_k(n_users: int, k: int, ordered: bool = True) -> StreamingTopK:
    """A worker group's streaming top k. k + 1,024 places: a compaction (which raises the
    bar to the k-th best) after every 1,024 new entries per user, not 2,024 (StreamingTopK's
    default 2k + 1,024, less the k it keeps). On a Zipf catalogue, k = 1,000: the hybrid
    scored 22% fewer pairs exactly, the DNA-only scan 7%; k + 512 spent more in compactions
    than it saved."""
    return StreamingTopK(n_users, k, width=k + 1024, ordered=ordered)


def _one_pass(
    db: TrackDatabase,
    scorer: ChunkScorer,
    k: int,
    chunk_size: int,
    floor: np.ndarray,
    bar: Any,
    cache: PreparedChunks | None = None,
    tops: list[StreamingTopK] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The scan proper: every chunk once; its users split between worker threads (each with
    its own streaming top k: ``tops``, one per group of :func:`user_groups`, where given),
    each scoring tiles of (users x tracks) that stay in cache."""
    bounds = user_groups(scorer.n_users)
    if tops is not None and len(tops) != len(bounds):
        raise ValueError(f"tops: one per user group ({len(bounds)}), got {len(tops)}")
    ordered = not hasattr(scorer, "row_ids")
    groups = [
        _UserGroup(a, b, k, floor[a:b], ordered, None if tops is None else tops[i])
        for i, (a, b) in enumerate(bounds)
    ]
    with single_threaded_blas(), ThreadPoolExecutor(len(groups)) as pool:
        for start, size, prepared in _chunks(db, chunk_size, scorer, cache):
            jobs = [pool.submit(g.score_chunk, scorer, prepared, start, size) for g in groups]
            for job in jobs:
                job.result()
            bar.update(size)
            del prepared  # before the next chunk is read: peak = one chunk (or the cache)
        # each group's final top k (a sort of its buffers) in its own thread too
        results = [job.result() for job in [pool.submit(g.best.result) for g in groups]]
    return np.concatenate([r[0] for r in results]), np.concatenate([r[1] for r in results])


class _UserGroup:
    """Users u0:u1 of a scan and their streaming top k (one worker thread's share).

    A scorer may add ``candidates(prepared, users, c0, c1, approx, bound, hits)`` (the (rows,
    cols) of a tile to score exactly, rows ascending, when its bar is not one per user;
    ``hits``: a (b, c1 - c0) bool scratch array),
    ``row_ids(prepared, cols)`` (database rows of chunk columns, when a chunk is not a run of
    consecutive rows; the top k then takes ids in any order) and ``live(prepared, users, c0,
    c1, bound)`` (positions within ``users`` of those that may have a candidate in the tile,
    or None for all: the tile's product is then made for those users only, none at all when
    there are none). With ``live``, ``approximate`` and ``candidates`` also take ``users`` as
    an index array."""

    def __init__(
        self, u0: int, u1: int, k: int, floor: np.ndarray, ordered: bool = True,
        best: StreamingTopK | None = None,
    ) -> None:  # fmt: skip
        self.u0, self.u1 = u0, u1
        self.users_per_tile = min(u1 - u0, _TILE_USERS)
        self.width = max(256, _TILE_CELLS // self.users_per_tile)
        if best is not None and (len(best.fill) != u1 - u0 or best.k != k):
            raise ValueError(f"a group's top k: {u1 - u0} users and k = {k}")
        self.best = group_top_k(u1 - u0, k, ordered) if best is None else best
        self.best.raise_floor(floor)
        # one tile's scores and hits, reused: a fresh 2 MiB array per tile costs page faults
        self._cells = np.empty(self.users_per_tile * self.width, dtype=np.float32)
        self._hits = np.empty(self.users_per_tile * self.width, dtype=bool)

    def score_chunk(self, scorer: ChunkScorer, prepared: Any, start: int, size: int) -> None:
        candidates = getattr(scorer, "candidates", None)
        row_ids = getattr(scorer, "row_ids", None)
        live = getattr(scorer, "live", None)
        for a in range(self.u0, self.u1, self.users_per_tile):
            b = min(self.u1, a + self.users_per_tile)
            local = slice(a - self.u0, b - self.u0)
            tolerance = scorer.tolerance
            if np.ndim(tolerance):  # one per user
                tolerance = tolerance[a:b]  # type: ignore[index]
            for c0 in range(0, size, self.width):
                c1 = min(size, c0 + self.width)
                bound = np.maximum(self.best.threshold[local], self.best.floor[local])
                users: slice | np.ndarray = slice(a, b)
                tol = tolerance
                some = None if live is None else live(prepared, users, c0, c1, bound)
                if some is not None:  # (n,) positions in a:b: only they can have candidates
                    if not len(some):
                        continue
                    users, bound = some + a, bound[some]
                    tol = tolerance[some] if np.ndim(tolerance) else tolerance  # type: ignore[index]
                shape = (len(bound), c1 - c0)
                out = self._cells[: shape[0] * shape[1]].reshape(shape)
                approx = scorer.approximate(prepared, users, c0, c1, out)
                hits = self._hits[: out.size].reshape(shape)
                if candidates is None:
                    bar = rounded_down(bound - tol)[:, None]
                    hit = np.greater_equal(approx, bar, out=hits)
                    rows, cols = np.divmod(np.flatnonzero(hit), c1 - c0)
                else:
                    rows, cols = candidates(prepared, users, c0, c1, approx, bound, hits)
                if some is not None:
                    rows = some[rows]
                if len(rows):
                    exact = scorer.exact(prepared, rows + a, cols + c0)["score"]
                    ids = start + c0 + cols if row_ids is None else row_ids(prepared, cols + c0)
                    self.best.push(rows + local.start, ids, exact)


def workers() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, _MAX_WORKERS))


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """OpenBLAS threads inside each thin (users x 12) @ (12 x tile) product made the scan 2-4
    times slower on a shared 2-core machine (docs/BENCHMARKS.md); the scan runs its own
    threads over users instead. A no-op where numpy's OpenBLAS cannot be found."""
    lib = _openblas()
    if lib is None:
        yield
        return
    get, set_ = lib
    before = get()
    set_(1)
    try:
        yield
    finally:
        set_(before)


@functools.cache
def _openblas() -> tuple[Any, Any] | None:
    """(get_num_threads, set_num_threads) of the OpenBLAS loaded by numpy (Linux), or None."""
    import ctypes

    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line.lower()}
    except OSError:
        return None
    for path in sorted(paths):
        try:
            lib = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix, suffix in (("scipy_openblas_", "64_"), ("openblas_", "64_"), ("openblas_", "")):
            get = getattr(lib, f"{prefix}get_num_threads{suffix}", None)
            set_ = getattr(lib, f"{prefix}set_num_threads{suffix}", None)
            if get is not None and set_ is not None:
                get.restype = ctypes.c_int
                set_.argtypes = [ctypes.c_int]
                return get, set_
    return None


def scan(
    db: TrackDatabase,
    scorer: ChunkScorer,
    k: int,
    chunk_size: int = 262_144,
    progress: bool | None = None,
    cache: PreparedChunks | None = None,
    floor: np.ndarray | None = None,
    tops: list[StreamingTopK] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k best database rows for each of the scorer's users, in one pass over ``db``.

    Returns (rows, scores), each (B, k'), k' = min(k, m), best first: exact score descending,
    then row ascending. A user with fewer than k' rows of finite score gets row -1 and -inf.
    Without ``floor``, each user's is estimated from a sample, and a user whose estimate
    turned out too high (rare) is scanned once more without it; a given ``floor`` (B,) drops
    every score below it, and checking that none was needed is the caller's. ``tops``: the
    streaming top k of each group of :func:`user_groups` (:func:`group_top_k`), holding
    what the caller found before the scan (rows the scorer's ``exact`` then gives -inf): in
    the result as if scanned.
    """
    from tqdm.auto import tqdm

    k = max(1, min(int(k), db.n_tracks))
    given = floor is not None
    if tops is not None and not given:  # a user scanned again would lose what they hold
        raise ValueError("scan: tops need the floor they were filled above")
    if floor is None:
        with single_threaded_blas():
            floor = _estimated_floor(db, scorer, k)
    bar = tqdm(
        total=db.n_tracks, desc="scan", unit="track", unit_scale=True, delay=1.0,
        disable=None if progress is None else not progress, leave=False,
    )  # fmt: skip
    try:
        rows, scores = _one_pass(db, scorer, k, chunk_size, floor, bar, cache, tops)
        redo = np.flatnonzero(np.isfinite(floor) & (rows[:, -1] < 0) & (not given))
        if len(redo):
            log.debug("scan: %d users again without an estimated floor", len(redo))
            bar.reset()
            rows[redo], scores[redo] = _one_pass(
                db, scorer.select(redo), k, chunk_size, np.full(len(redo), -np.inf), bar, cache
            )
    finally:
        bar.close()
    return rows, scores


def check_database(db: TrackDatabase, scaler: FeatureScaler, gems: bool) -> None:
    """The database fits the checkpoint (same features) and the mode (gems: popularity)."""
    if tuple(db.feature_columns) != tuple(scaler.columns):
        raise DataError(
            f"{db.source}: database features {list(db.feature_columns)} differ from the "
            f"checkpoint's {list(scaler.columns)}"
        )
    if gems and not db.has_popularity:
        raise DataError(
            f"{db.source}: hidden-gems mode needs a popularity column, and this database has "
            "none; set data.popularity_column to its name or run without --gems"
        )


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
    """The best ``n + extra`` rows per profile (B, f) by similarity to it (minus the gems
    penalty when ``gems_lambda`` is given), with their similarity: a :class:`DnaScorer` scan.
    ``extra`` leaves room to drop history tracks afterwards."""
    check_database(db, scaler, gems_lambda is not None)
    scorer = DnaScorer(profiles, scaler, method, gems_lambda, popularity_ceiling)
    rows, scores = scan(db, scorer, max(1, n + extra), chunk_size, progress)
    parts = score_rows(db, scorer, rows)
    out = []
    for u in range(scorer.n_users):
        found = rows[u] >= 0
        out.append(ScanHits(rows[u][found], parts["similarity"][u][found], scores[u][found]))
    return out


def score_rows(db: TrackDatabase, scorer: ChunkScorer, rows: np.ndarray) -> dict[str, np.ndarray]:
    """The scorer's exact parts for each user's rows (B, k) (-1 = none: NaN parts)."""
    columns = list(db.feature_columns) + (["popularity"] if db.has_popularity else [])
    found = rows >= 0
    uniq, cols = np.unique(rows[found], return_inverse=True)
    chunk = TrackChunk.from_frame(db.take(uniq, columns), db.feature_columns)
    users = np.nonzero(found)[0]
    parts = scorer.exact(scorer.prepare(chunk), users, cols.ravel())
    out = {}
    for name, values in parts.items():
        full = np.full(rows.shape, np.nan)
        full[found] = values
        out[name] = full
    return out
