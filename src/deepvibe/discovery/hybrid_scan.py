"""The hybrid's exact top k over a large database, without scoring every (user, track) pair.

A hybrid score is s(u, t) = dna(u, t) + lift(u, t) - penalty(t): the weighted DNA cosine (at
most w_dna), the artist, collab and decoder parts (together the lift, >= 0; zero for most
tracks and most users) and the gems penalty. :func:`rank_database` ranks a block of users so:

1. From a fixed sample of the space, per user: ``F``, the DNA part minus the penalty that
   about ``_MARGIN * k`` tracks reach (a float32 product, as the DNA-only scan's floor).
   Every lift is >= 0, so at least as many tracks reach F by their hybrid score: a guess at
   a floor under the k-th best.
2. The space is scanned in :class:`ArtistOrder`: single-artist tracks artist by artist, then
   the others by their most prolific artist, then the catalogue; cut into segments of
   ``_SEGMENT`` positions (:class:`Segments`: which artists each one credits). Per user and
   segment, a room at least the lift of any of its tracks (:func:`_segment_rooms`): the
   share part (a sum over a track's artists) and the collab part (the largest over them),
   each bounded by a per-user cap plus the largest excess over it among the segment's
   artists, found by sparse products of the user's few excess artists and the segments.
3. Before the scan, by products rather than a gather per pair: each user's highest-lift
   artists with many tracks, until k of them, then those where the scan would score at
   least ``_PRODUCT_SHARE`` of the tracks one by one, and the catalogue when the decoder
   counts (its part varies track by track). Then, with the rooms known, every segment
   outside the catalogue where the scan would score at least ``_DENSE_SHARE`` of a user's
   pairs one by one (the short runs and multi-artist tracks of the artists the user's lift
   favours, which :class:`ArtistOrder` keeps together): :func:`_rank_dense_segments`.
   Their best k seed the scan's top k and floor, a true lower bound; what they ranked gets
   no room (-inf).
4. The scan of :mod:`deepvibe.discovery.scan` (a float32 DNA product per cache-sized tile)
   scores a pair exactly only when its DNA part reaches the bar less its segment's room: one
   pass over the tile, each column held to its segment's bar, as the DNA-only scan holds it
   to one bar per user.

The best k of steps 3 and 4 are the best k of the whole space whenever the k-th of them is at
least ``F``; a user for whom it is not (the sample misled) is ranked again by
:func:`signals.rank_space`, which scores every pair; so is a whole space under
``_MIN_SPACE`` tracks, where one pass over every pair is as fast, and a block of at most
``_FEW_USERS`` before the structures of step 2 (a :class:`ScanIndex`) exist, in memory or
saved by an earlier run. Scores are those of
:meth:`HybridScorer.score` bit for bit (the same float32 steps: :class:`PairScorer`,
:class:`_ArtistRuns`), so the ranking (score descending, then row ascending) is rank_space's,
and a user's result never depends on the other users of the block.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import threading
from collections.abc import Callable, Collection, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import pandas as pd
import scipy.sparse as sp

from deepvibe.discovery.dna import on_grid
from deepvibe.discovery.hybrid import HybridWeights
from deepvibe.discovery.scan import (
    TrackChunk,
    group_top_k,
    penalised_product,
    rounded_down,
    scan,
    single_threaded_blas,
    user_groups,
)
from deepvibe.discovery.signals import HybridScorer, TrackSpace, UserInputs, rank_space
from deepvibe.discovery.space_cache import IndexFiles
from deepvibe.ranking.topk import StreamingTopK

log = logging.getLogger(__name__)
T = TypeVar("T")
_BUILDING = threading.Lock()  # see _kept_on

_SAMPLE = 8192  # space rows behind each user's F
_MARGIN = 3  # F aims at _MARGIN * k tracks, so falling short of k is rare
_MIN_SPACE = 65_536  # smaller spaces: rank_space (every pair) is as fast
# so few users that rank_space is faster than building the ScanIndex first (one user over
# 1,000,000 tracks: 0.2-0.26 s against 0.45-0.6 s; `discover user_1` builds none, and takes
# the pruned steps, 0.1 s, where an earlier batch saved one)
_FEW_USERS = 2
_SAMPLE_USERS = 256  # users per sample tile: (256 x 8,192) float32, 8 MiB
_INDEX_VERSION = 1  # bump when what ScanIndex holds, or how it is built, changes
_REL_TOL = 1e-5  # float32 rounding of a few parts, relative to their size, with margin

_LONG_RUN = 256  # an artist with this many tracks is scored by a product before the scan
_SEGMENT = 256  # scan positions sharing one lift room per user (see _segment_rooms)
_EXCESS = 256  # per user, about this many collab artists get their own room; c_u the rest
_EXCESS_SHARES = 32  # per user, this many share artists get their own room
_POWER = 16  # the p of _add_most's p-norm
_BAND_CELLS = 1 << 16  # float64 cells per band of _outer_sums (512 KiB)
_PRODUCT_SHARE = 0.05  # step 3 scores a run by a product if the scan would score this share
_EXCESS_SAMPLE = 1024  # ArtistCF columns behind each user's c_u
_BAR_SEGMENTS = 32  # segments whose bars are made at once (see HybridChunkScorer._held_bars)
_DENSE_SEGMENTS = 16  # segments scored by one product at most (4,096 positions)
_DENSE_SHARE = 0.1  # a segment is scored by products where the scan would score this share
# (of 0.02-0.2, the fastest on both Zipf catalogues of docs/BENCHMARKS.md)


@dataclass(frozen=True)
class ArtistOrder:
    """The space sorted for the scan: the single-artist tracks outside the catalogue artist by
    artist (rows ascending within one; artists in :func:`_artist_rank` order), then the other
    tracks outside it by their primary artist (:func:`_primary`), then the catalogue's tracks
    (whose decoder part varies track by track)."""

    rows: np.ndarray  # (n,) int64: space row at each position
    artist: np.ndarray  # (n,) int64: the single artist at each position, -1 for the others
    catalogue: np.ndarray  # (n,) int64: catalogue column at each position, -1 outside
    grid: np.ndarray  # (n, f) float32 the space's unit features (on the grid of dna.on_grid:
    # exact cosines) in this order, by row: a pair's 12 values in one cache line; the scan's
    # DNA side
    first: np.ndarray  # (A,) int64: each artist's first position (outside the catalogue)
    count: np.ndarray  # (A,) int64: its number of positions there
    position: np.ndarray  # (n,) int64: the position of each space row

    @functools.cached_property
    def first_catalogue(self) -> int:
        """The first catalogue position: the catalogue is the order's tail."""
        return int(len(self.rows) - np.count_nonzero(self.catalogue >= 0))

    @property
    def mean_run(self) -> float:
        """Mean number of single-artist tracks (outside the catalogue) per such artist."""
        runs = self.count[self.count > 0]
        return float(runs.mean()) if len(runs) else 0.0

    @classmethod
    def of(cls, space: TrackSpace, favoured: np.ndarray | None = None) -> ArtistOrder:
        """``favoured``: (A,) bool, artists whose tracks may get a lift for many users (the
        ArtistCF vocabulary): a track crediting several artists sits with the multi-artist
        tracks of its favoured artist when it has one (see _primary)."""
        artists = space.artists
        n, n_artists = artists.shape
        single = np.diff(artists.indptr) == 1
        rank = _artist_rank(artists, favoured)
        primary = _primary(artists, rank)
        artist = np.where(single, primary, -1)
        place = np.where(primary >= 0, rank[np.maximum(primary, 0)], -1)  # -1: no artist
        # the place in the order, then the row: single-artist runs in rank order (the
        # favoured together), then the others by their primary artist's rank (none first),
        # then the catalogue the same way
        code = np.where(single, place, n_artists + 1 + place)
        catalogue = space.catalogue_index >= 0
        code[catalogue] = 2 * n_artists + 2 + place[catalogue]
        # one sort of distinct int64 keys (code * n + row): 10x faster than a stable argsort
        rows = np.sort(code * n + np.arange(n)) % n
        runs = single & ~catalogue
        by_rank = np.bincount(code[runs], minlength=n_artists).astype(np.int64)
        count, first = by_rank[rank], (np.cumsum(by_rank) - by_rank)[rank]  # by artist
        grid = np.take(space.units, rows, axis=0)  # already on the grid (see TrackSpace)
        position = np.empty(len(rows), np.int64)
        position[rows] = np.arange(len(rows))
        return cls(
            rows, artist[rows], space.catalogue_index[rows].astype(np.int64, copy=False), grid,
            first, count, position,
        )  # fmt: skip


def _artist_rank(artists: sp.csr_matrix, favoured: np.ndarray | None = None) -> np.ndarray:
    """(A,) int64 rank of each artist: the favoured first, then by track count, most first
    (the lower index on a tie)."""
    n_tracks = np.bincount(artists.indices, minlength=artists.shape[1])
    first = np.zeros(artists.shape[1], bool) if favoured is None else np.asarray(favoured, bool)
    rank = np.empty(artists.shape[1], np.int64)
    rank[np.lexsort((np.arange(artists.shape[1]), -n_tracks, ~first))] = np.arange(len(rank))
    return rank


def _primary(artists: sp.csr_matrix, rank: np.ndarray | None = None) -> np.ndarray:
    """(n,) int64: each track's artist of the lowest ``rank`` (default :func:`_artist_rank`:
    the one with the most tracks; -1 for none), so that the multi-artist tracks of one artist
    sit together and a segment of them credits few artists (see _segment_rooms). Ranking the
    ArtistCF vocabulary first puts the tracks that can carry a collab part together: on a
    catalogue of Zipf-sized artists, second credits of known artists scattered over the runs
    of prolific ones made rooms for 38,000 of 49,000 exactly scored pairs per user."""
    rank = _artist_rank(artists) if rank is None else rank
    counts = np.diff(artists.indptr)
    out = np.full(artists.shape[0], -1, np.int64)
    one = np.flatnonzero(counts == 1)
    out[one] = artists.indices[artists.indptr[one]]
    several = np.flatnonzero(counts > 1)  # a reduction over their credits only
    if len(several):
        lengths = counts[several]
        first = np.cumsum(lengths) - lengths
        at = np.repeat(artists.indptr[several] - first, lengths) + np.arange(lengths.sum())
        best = np.minimum.reduceat(rank[artists.indices[at]], first)
        by_rank = np.empty_like(rank)
        by_rank[rank] = np.arange(len(rank))
        out[several] = by_rank[best]
    return out


class SpaceChunks:
    """The track space in :class:`ArtistOrder`, read like a
    :class:`~deepvibe.discovery.database.TrackDatabase` by the scan."""

    def __init__(self, order: ArtistOrder) -> None:
        self.order = order
        self.n_tracks = len(order.rows)

    def chunks(self, size: int) -> Iterator[tuple[int, np.ndarray, None]]:
        for start in range(0, self.n_tracks, size):
            yield start, self.order.grid[start : start + size], None


@dataclass(frozen=True)
class StrongArtists:
    """Per user block, the artists step 3 may rank (see _long_artists): (U, S) their lift
    (artist share + collab, weighted) and each space artist's column (-1: not one)."""

    lift: np.ndarray  # (U, S) float32
    column: np.ndarray  # (A,) int64


class HybridChunkScorer:
    """A :class:`~deepvibe.discovery.scan.ChunkScorer` for step 4 of :func:`rank_database`:
    ``approximate`` is the DNA part minus the penalty (float32 product), ``candidates`` adds
    each user's room over the tile's segments (see :func:`_segment_rooms`), ``exact`` is the
    full hybrid score, -inf for excluded pairs and for those ranked before the scan (its
    seed)."""

    def __init__(
        self,
        scorer: HybridScorer,
        users: UserInputs,
        weights: HybridWeights,
        penalty: np.ndarray | None,
        excluded: Exclusions,
        pairs: PairScorer,
        tolerance: np.ndarray,
        rooms: np.ndarray,
        strong: StrongArtists,
        order: ArtistOrder,
        done: np.ndarray | None = None,
        catalogue_done: bool = False,
        floor: np.ndarray | None = None,
    ) -> None:
        self.scorer, self.users, self.weights = scorer, users, weights
        n_users = users.dna.shape[0]
        # (U,) the scan's floor: a score below it never enters the top k
        self.floor = np.full(n_users, -np.inf) if floor is None else floor
        self.penalty = penalty
        self.pairs = pairs  # the same users' exact pair scores
        self.excluded = excluded
        self.tolerance = tolerance  # (U,) float32 rounding
        self.rooms = rooms  # (U, G) the most a lift can add in each segment (-inf: nothing)
        self.strong, self.order = strong, order
        self.done = done  # (U, S) bool: a strong artist's tracks outside the catalogue ranked
        self.catalogue_done = catalogue_done  # the catalogue's tracks ranked for every user
        self.n_users = users.dna.shape[0]
        self._held: dict[tuple[int, int], tuple[int, np.ndarray]] = {}  # see _held_bars
        dna = np.asarray(users.dna, np.float32)
        finite = np.isfinite(dna).all(axis=1)
        w = np.float32(weights.dna)
        self.dna32 = np.where(finite[:, None], dna * w, 0.0).astype(np.float32)  # (U, f)
        # (U,) the most a DNA part less the penalty can be: unit tracks, the lowest penalty,
        # with margin for float32 rounding (see live)
        norm = np.linalg.norm(self.dna32.astype(np.float64), axis=1)
        low = 0.0
        if penalty is not None:
            low = float(np.min(penalty, where=np.isfinite(penalty), initial=0.0))
        self.reach = (norm - low) + 1e-5 * (norm + abs(low))
        # whether live can find anything: some user's floor is out of the DNA part's reach
        # where a segment has no room (otherwise, bars rising during the scan aside, every
        # tile is live for every user and the test only costs time)
        with np.errstate(invalid="ignore"):
            self.pruning_tiles = bool((self.reach < self.floor - tolerance).any())

    def select(self, users: np.ndarray) -> HybridChunkScorer:
        strong = StrongArtists(self.strong.lift[users], self.strong.column)
        return HybridChunkScorer(
            self.scorer, self.users.select(users), self.weights, self.penalty,
            self.excluded.select(users), self.pairs.select(users), self.tolerance[users],
            self.rooms[users], strong, self.order,
            None if self.done is None else self.done[users], self.catalogue_done,
            self.floor[users],
        )  # fmt: skip

    def prepare(self, chunk: TrackChunk) -> dict[str, np.ndarray | int | None]:
        """The chunk's first position, rows, features, penalty and strong-artist column at
        each position."""
        size = chunk.features.shape[1]
        at = slice(chunk.start, chunk.start + size)
        rows, artist = self.order.rows[at], self.order.artist[at]
        column = np.where(artist >= 0, self.strong.column[np.maximum(artist, 0)], -1)
        pen = None if self.penalty is None else self.penalty[rows].astype(np.float32)
        return {
            "start": chunk.start, "rows": rows, "units32": chunk.features, "penalty32": pen,
            "column": column,
        }  # fmt: skip

    def approximate(
        self, prepared: dict[str, np.ndarray | None], users: slice | np.ndarray, c0: int, c1: int,
        out: np.ndarray,
    ) -> np.ndarray:  # fmt: skip
        return penalised_product(self.dna32[users], prepared, c0, c1, out)

    def live(
        self, prepared: dict[str, np.ndarray], users: slice, c0: int, c1: int, bound: np.ndarray
    ) -> np.ndarray | None:
        """Positions in ``users`` whose DNA part can reach the lowest of their bars over the
        tile's segments (None: all of them). Where the lifts ranked before the scan already
        put a user's k-th best above w_dna plus the tile's rooms, the tile's product is not
        made for that user: a lift that outweighs the DNA part prunes by itself."""
        if not self.pruning_tiles:
            return None
        _, g0, g1 = _tile_segments(prepared, c0, c1)
        # fmin: a segment with no room (NaN bar under a -inf bound) does not hide the others
        lowest = np.fmin.reduce(self._bars(users, g0, g1, bound), axis=1)
        alive = self.reach[users] >= lowest
        return None if alive.all() else np.flatnonzero(alive)

    def _bars(self, users: slice | np.ndarray, g0: int, g1: int, bound: np.ndarray) -> np.ndarray:
        """(b, g1 - g0) float32: each user's bar in segments g0:g1, the bound less the
        rounding tolerance and the segment's room, rounded down to a float32 (a float32 value
        reaches x exactly when it reaches the largest float32 not above x). +inf where the
        room is -inf (nothing there can be a candidate), NaN where the bound is -inf too."""
        top = np.asarray(bound - self.tolerance[users], np.float64)
        with np.errstate(invalid="ignore"):
            return rounded_down(top[:, None] - self.rooms[users, g0:g1])

    def candidates(
        self, prepared: dict[str, np.ndarray], users: slice | np.ndarray, c0: int, c1: int,
        approx: np.ndarray, bound: np.ndarray, hits: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """(rows, cols) of the tile's pairs whose DNA part could lift them to ``bound``: one
        bar per (user, segment), the bound less the segment's room, compared with the tile
        segment by segment in one pass (``hits``: (b, c1 - c0) bool scratch), as the DNA-only
        scan compares it with one bar per user."""
        p0, g0, g1 = _tile_segments(prepared, c0, c1)
        _reaching(approx, self._held_bars(users, g0, g1, bound), p0 % _SEGMENT, hits)
        return np.divmod(np.flatnonzero(hits), c1 - c0)

    def _held_bars(
        self, users: slice | np.ndarray, g0: int, g1: int, bound: np.ndarray
    ) -> np.ndarray:
        """:meth:`_bars` of segments g0:g1, from those made for the next ``_BAR_SEGMENTS``
        segments at once (per tile, the few small steps cost as much as the comparison).
        Bounds only rise during a scan (and a scorer serves one: rank_database makes one per
        call), so bars made with an earlier bound are at most the current ones: a few more
        pairs scored exactly, never one missed. One entry per worker's users."""
        if not isinstance(users, slice):  # some users only (live): made for the tile
            return self._bars(users, g0, g1, bound)
        key = (users.start, users.stop)
        held = self._held.get(key)
        if held is None or g0 < held[0] or g1 > held[0] + held[1].shape[1]:
            end = max(g1, min(g0 + _BAR_SEGMENTS, self.rooms.shape[1]))
            held = self._held[key] = (g0, self._bars(users, g0, end, bound))
        return held[1][:, g0 - held[0] : g1 - held[0]]

    def row_ids(self, prepared: dict[str, np.ndarray], cols: np.ndarray) -> np.ndarray:
        return prepared["rows"][cols]

    def exact(
        self, prepared: dict[str, np.ndarray], users: np.ndarray, cols: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Scores below the user's floor are left unchecked (the top k drops them anyway)."""
        rows = prepared["rows"][cols]
        score = self.pairs(users, rows, prepared["start"] + cols)
        live = np.flatnonzero(score >= self.floor[users])
        users, rows, cols = users[live], rows[live], cols[live]
        out = score[live]
        out[self.excluded.mask(users, rows)] = -np.inf
        catalogue = cols >= self.order.first_catalogue - prepared["start"]  # the order's tail
        if self.catalogue_done:  # in the seed already
            out[catalogue] = -np.inf
        if self.done is not None:
            column = prepared["column"][cols]
            strong = np.flatnonzero((column >= 0) & ~catalogue)
            seeded = strong[self.done[users[strong], column[strong]]]
            out[seeded] = -np.inf
        score[live] = out
        return {"score": score.astype(np.float64)}


def _tile_segments(prepared: dict[str, np.ndarray], c0: int, c1: int) -> tuple[int, int, int]:
    """(first position, first segment, end segment) of a chunk's columns c0:c1."""
    p0 = int(prepared["start"]) + c0  # type: ignore[call-overload]
    return p0, p0 // _SEGMENT, (p0 + c1 - c0 - 1) // _SEGMENT + 1


def _reaching(approx: np.ndarray, bars: np.ndarray, offset: int, out: np.ndarray) -> None:
    """``out`` (b, w) = ``approx`` (b, w) >= the bar of each column's segment: ``bars`` (b, g)
    for the segments the tile touches, its first column ``offset`` positions into the first.
    A partial first segment, whole segments as one (b, n, _SEGMENT) view, a partial last."""
    b, w = approx.shape
    head = min(w, (_SEGMENT - offset) % _SEGMENT)
    if head:
        np.greater_equal(approx[:, :head], bars[:, :1], out=out[:, :head])
    first = 1 if head else 0
    full = (w - head) // _SEGMENT
    end = head + full * _SEGMENT
    if full:  # splitting the contiguous last axis: views, so ``out`` is written in place
        shape = (b, full, _SEGMENT)
        np.greater_equal(
            approx[:, head:end].reshape(shape), bars[:, first : first + full, None],
            out=out[:, head:end].reshape(shape),
        )  # fmt: skip
    if end < w:
        last = first + full
        np.greater_equal(approx[:, end:], bars[:, last : last + 1], out=out[:, end:])


@dataclass(frozen=True)
class Segments:
    """The artists credited in each segment of ``_SEGMENT`` consecutive positions of an
    :class:`ArtistOrder` (G segments; the same for every user, built once per space)."""

    artists: sp.csr_matrix  # (A, G) float64 1: the artist is credited in the segment
    first: sp.csr_matrix  # (A, G) 1: the artist is some track's most prolific there
    second: sp.csr_matrix  # (A, G) 1: the artist is credited there, not as the most prolific
    cf: sp.csr_matrix | None  # (A_cf, G) the same in ArtistCF columns (None without a model)
    has_cf: np.ndarray  # (G,) bool: some track of the segment has an ArtistCF artist
    pure: sp.csr_matrix  # (A, G) 1: the segment is only that artist's single-artist tracks
    catalogue: np.ndarray  # (G,) bool: every position of the segment is in the catalogue
    credits: np.ndarray  # (G,) float64: the most artists a track of the segment credits
    outside: np.ndarray  # (G,) bool: no position of the segment is in the catalogue

    @classmethod
    def of(cls, scorer: HybridScorer, order: ArtistOrder) -> Segments:
        n = len(order.rows)
        n_seg = -(-n // _SEGMENT)
        starts = np.arange(0, n, _SEGMENT)

        def incidence(by_position: sp.csr_matrix) -> sp.csr_matrix:  # (n, X) -> (X, G)
            # positions are rows, so a segment's entries are one slice: (G, X) without a sort
            bounds = by_position.indptr[np.append(starts, n)]
            out = sp.csr_matrix(
                (np.ones(by_position.nnz), by_position.indices.copy(), bounds),  # sorted here
                shape=(n_seg, by_position.shape[1]),
            )
            out.sum_duplicates()
            out.data[:] = 1.0
            return out.T.tocsr()

        by_position = sp.csr_matrix(scorer.space.artists[order.rows])
        artists = incidence(by_position)
        primary = _primary(by_position)  # each track's most prolific artist, -1 none
        has = primary >= 0
        first = incidence(sp.csr_matrix(
            (np.ones(np.count_nonzero(has)), primary[has], np.append(0, np.cumsum(has))),
            shape=by_position.shape,
        ))  # fmt: skip
        # every other credit (an artist is credited once per track)
        lengths = np.diff(by_position.indptr)
        other = by_position.indices != np.repeat(primary, lengths)
        kept = np.append(0, np.cumsum(other))[by_position.indptr]  # each row's first entry
        second = incidence(sp.csr_matrix(
            (np.ones(kept[-1]), by_position.indices[other], kept),
            shape=by_position.shape,
        ))  # fmt: skip
        cf = has_cf = None
        if scorer.cf_artists is not None:
            by_position = sp.csr_matrix(scorer.cf_artists[order.rows])
            cf = incidence(by_position)
            credited = (np.diff(by_position.indptr) > 0).astype(np.int64)
            has_cf = np.add.reduceat(credited, starts) > 0
        single = np.where(order.catalogue < 0, order.artist, -1)
        lo = np.minimum.reduceat(single, starts)
        hi = np.maximum.reduceat(single, starts)
        pure_of = np.flatnonzero((lo == hi) & (lo >= 0))
        pure = sp.csr_matrix(
            (np.ones(len(pure_of)), (lo[pure_of], pure_of)), shape=(artists.shape[0], n_seg)
        )
        inside = np.minimum.reduceat((order.catalogue >= 0).astype(np.int64), starts) > 0
        outside = np.maximum.reduceat((order.catalogue >= 0).astype(np.int64), starts) == 0
        indptr = scorer.space.artists.indptr
        credits = np.maximum.reduceat(indptr[order.rows + 1] - indptr[order.rows], starts)
        return cls(
            artists, first, second, cf, np.zeros(n_seg, bool) if has_cf is None else has_cf,
            pure, inside, credits.astype(np.float64), outside,
        )  # fmt: skip


@dataclass(frozen=True)
class ScanIndex:
    """What the scan of a batch needs of the space beyond its arrays, the same for every block
    and every run over one space and artist model: the :class:`ArtistOrder`, its
    :class:`Segments` and, with an artist model, which positions credit one of its artists.
    Built once per process (0.3-0.5 s at 1,000,000 tracks), or read back where a run saved
    it (:class:`~deepvibe.discovery.space_cache.IndexFiles`)."""

    order: ArtistOrder
    segments: Segments
    cf_at: np.ndarray | None  # (n,) bool by position (None without an artist model)

    @classmethod
    def of(cls, scorer: HybridScorer) -> ScanIndex:
        columns = scorer.cf_columns
        order = ArtistOrder.of(scorer.space, None if columns is None else columns >= 0)
        cf = scorer.cf_artists
        cf_at = None if cf is None else (np.diff(cf.indptr) > 0)[order.rows]
        return cls(order, Segments.of(scorer, order), cf_at)

    def arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays by name (a sparse matrix as its data, indices, indptr and shape)."""
        out = {} if self.cf_at is None else {"cf_at": self.cf_at}
        for prefix, part in (("order", self.order), ("segments", self.segments)):
            for field in dataclasses.fields(part):
                value = getattr(part, field.name)
                name = f"{prefix}.{field.name}"
                if sp.issparse(value):
                    out.update({f"{name}.data": value.data, f"{name}.indices": value.indices,
                                f"{name}.indptr": value.indptr,
                                f"{name}.shape": np.array(value.shape, np.int64)})  # fmt: skip
                elif value is not None:
                    out[name] = value
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray], scorer: HybridScorer) -> ScanIndex:
        """The index :meth:`arrays` gave, checked against ``scorer``'s space (ValueError: it
        is not that space's; KeyError: an array is missing)."""

        def part(kind: type[T], prefix: str) -> T:
            values = {}
            for field in dataclasses.fields(kind):  # type: ignore[arg-type]
                name = f"{prefix}.{field.name}"
                if f"{name}.shape" in arrays:
                    values[field.name] = sp.csr_matrix(
                        (np.array(arrays[f"{name}.data"]), np.array(arrays[f"{name}.indices"]),
                         np.array(arrays[f"{name}.indptr"])),
                        shape=tuple(int(x) for x in arrays[f"{name}.shape"]),
                    )  # fmt: skip
                elif name in arrays or "None" not in str(field.type):
                    values[field.name] = arrays[name]  # KeyError where one is missing
                else:
                    values[field.name] = None  # saved as nothing (Segments.cf without a model)
            return kind(**values)

        order, segments = part(ArtistOrder, "order"), part(Segments, "segments")
        space = scorer.space
        n, n_artists = space.artists.shape
        n_seg = -(-n // _SEGMENT)
        if (
            order.grid.shape != space.units.shape or len(order.rows) != n
            or len(order.first) != n_artists or segments.artists.shape != (n_artists, n_seg)
            or (scorer.cf_artists is None) != ("cf_at" not in arrays)
        ):  # fmt: skip
            raise ValueError("its shapes are not those of this track space")
        return cls(order, segments, arrays.get("cf_at"))


def pair_scores(
    scorer: HybridScorer,
    users: UserInputs,
    user_rows: np.ndarray,
    rows: np.ndarray,
    weights: HybridWeights | None = None,
    penalty: np.ndarray | None = None,
) -> np.ndarray:
    """(P,) float32 hybrid scores of the pairs (users row ``user_rows[i]``, space row
    ``rows[i]``): :meth:`HybridScorer.score` minus the penalty, bit for bit (the same float32
    steps in the same order, see there)."""
    return PairScorer(scorer, users, weights or scorer.weights, penalty)(user_rows, rows)


class PairScorer:
    """:func:`pair_scores` for one block of users, its user side prepared once."""

    def __init__(
        self, scorer: HybridScorer, users: UserInputs, weights: HybridWeights,
        penalty: np.ndarray | None,
    ) -> None:  # fmt: skip
        w = self.weights = weights
        self.scorer, self.users, self.penalty_in = scorer, users, penalty
        self.space = scorer.space
        self.share_keys = self.share_values = None
        if w.artist > 0:
            shares = sp.csr_matrix(users.shares, dtype=np.float32)
            if not shares.has_canonical_format:  # distinct keys, each row's artists sorted
                shares = shares.copy()
                shares.sum_duplicates()
            owner = np.repeat(np.arange(shares.shape[0], dtype=np.int64), np.diff(shares.indptr))
            self.width = shares.shape[1]
            self.share_keys = _key_index(owner * self.width + shares.indices)
            self.share_values = shares.data * np.float32(w.artist)
        self.decoder = None
        if w.decoder > 0:
            z = np.maximum(np.asarray(users.decoder_z, np.float32), 0)
            self.decoder = np.float32(w.decoder) * z  # (U, n_catalogue)
        self.grid = None
        if w.dna > 0:
            dna = np.asarray(users.dna, np.float32)
            finite = np.isfinite(dna).all(axis=1)
            self.grid = on_grid(np.where(finite[:, None], dna, 0.0))  # (U, f) float64
            self.order = _artist_order(scorer)  # its grid features, by position
        self.collab = self.cf_artists = None
        if w.collab > 0 and users.collab is not None and scorer.cf_artists is not None:
            self.collab = np.float32(w.collab) * np.asarray(users.collab, np.float32)
            self.cf_artists = scorer.cf_artists
        self.penalty = None if penalty is None else penalty.astype(np.float32)
        # units are 0 where a track has no features, so its DNA part is 0 without the mask
        self.all_features = bool(self.space.has_features.all())

    def __call__(
        self, user_rows: np.ndarray, rows: np.ndarray, positions: np.ndarray | None = None
    ) -> np.ndarray:
        """``positions``: the rows' places in :class:`ArtistOrder`, where the caller has them
        (the scan: a chunk's start plus its columns), saving a lookup per pair."""
        w, space = self.weights, self.space
        user_rows = np.asarray(user_rows, np.int64)
        rows = np.asarray(rows, np.int64)
        total = np.zeros(len(rows), np.float32)
        if self.share_keys is not None and len(self.share_keys):
            self._add_shares(total, user_rows, rows)
        order = None if positions is None else self._scan_order
        if self.decoder is not None:
            if order is None:
                cat = space.catalogue_index[rows]
                inside = np.flatnonzero(cat >= 0)
                total[inside] += self.decoder[user_rows[inside], cat[inside]]
            elif positions.max(initial=-1) >= order.first_catalogue:  # type: ignore[union-attr]
                inside = np.flatnonzero(positions >= order.first_catalogue)
                cat = order.catalogue[positions[inside]]  # type: ignore[index]
                total[inside] += self.decoder[user_rows[inside], cat]
        if self.grid is not None:
            if positions is None:
                positions = self.order.position[rows]
            track_grid = self.order.grid[positions]  # (P, f)
            # exact: grid values, float64 products and sums without rounding (einsum casts
            # the float32 side as it goes: 3x faster than a float64 copy of the gather)
            exact = np.einsum("ij,ij->i", self.grid[user_rows], track_grid)
            cos = exact.astype(np.float32)
            cos *= np.float32(w.dna)
            if not self.all_features:
                cos[~space.has_features[rows]] = 0.0
            total += cos
        if self.collab is not None and self.cf_artists is not None:
            if order is None:
                total += self._collab_maxima(user_rows, rows)
            else:  # only the pairs whose track credits an ArtistCF artist (+ 0 elsewhere)
                some = np.flatnonzero(self._cf_at[positions])
                if len(some):
                    total[some] += self._collab_maxima(user_rows[some], rows[some])
        if self.penalty is not None:
            total -= self.penalty[rows]
        return total

    @functools.cached_property
    def _scan_order(self) -> ArtistOrder:
        """The scan's order, where a caller gives positions in it."""
        return _artist_order(self.scorer)

    @functools.cached_property
    def _cf_at(self) -> np.ndarray:
        """(n,) bool by position: the track credits an artist of the ArtistCF vocabulary."""
        cf_at = _scan_index(self.scorer).cf_at
        assert cf_at is not None
        return cf_at

    def select(self, which: np.ndarray) -> PairScorer:
        """The same for the users ``which``."""
        return PairScorer(self.scorer, self.users.select(which), self.weights, self.penalty_in)

    def parts(
        self, user_rows: np.ndarray, rows: np.ndarray, zero: Collection[str] = ()
    ) -> dict[str, np.ndarray]:
        """(P,) float32 artist, decoder and collab parts of each pair, each times its weight
        (built with weight 1: the parts of HybridScorer.parts, pair by pair); those named in
        ``zero`` as 0 for every pair, not looked up."""
        user_rows = np.asarray(user_rows, np.int64)
        rows = np.asarray(rows, np.int64)
        out = {}
        if self.share_keys is not None:
            out["artist"] = np.zeros(len(rows), np.float32)
            if len(self.share_keys) and "artist" not in zero:
                self._add_shares(out["artist"], user_rows, rows)
        if self.decoder is not None:
            out["decoder"] = np.zeros(len(rows), np.float32)
            if "decoder" not in zero:
                cat = self.space.catalogue_index[rows]
                inside = np.flatnonzero(cat >= 0)
                out["decoder"][inside] = self.decoder[user_rows[inside], cat[inside]]
        if self.collab is not None and self.cf_artists is not None:
            out["collab"] = (
                np.zeros(len(rows), np.float32)
                if "collab" in zero
                else self._collab_maxima(user_rows, rows)
            )
        return out

    def _add_shares(self, total: np.ndarray, user_rows: np.ndarray, rows: np.ndarray) -> None:
        """+ the sum over the track's artists of weight * share, in ascending artist order
        (the order of the sparse product in score_direct, whose share rows are sorted)."""
        keys, values, artists = self.share_keys, self.share_values, self.space.artists
        assert keys is not None and values is not None
        start = artists.indptr[rows]
        n_artists = artists.indptr[rows + 1] - start
        for j in range(int(n_artists.max(initial=0))):
            has = np.flatnonzero(n_artists > j)
            pos = keys.get_indexer(user_rows[has] * self.width + artists.indices[start[has] + j])
            hit = pos >= 0
            total[has[hit]] += values[pos[hit]]

    def _collab_maxima(self, user_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """max over the track's artists of the weighted ArtistCF score (0 without one)."""
        cf, collab = self.cf_artists, self.collab
        assert cf is not None and collab is not None
        start = cf.indptr[rows]
        n_artists = cf.indptr[rows + 1] - start
        out = np.zeros(len(rows), np.float32)
        for j in range(int(n_artists.max(initial=0))):
            has = np.flatnonzero(n_artists > j)
            values = collab[user_rows[has], cf.indices[start[has] + j]]
            out[has] = np.maximum(out[has], values)
        return out


def _key_index(keys: np.ndarray) -> pd.Index:
    """Distinct int64 keys as a hash index, its table built here, not by the first lookup in a
    scan thread: a lookup takes a quarter of a binary search of the sorted keys."""
    index = pd.Index(np.asarray(keys, dtype=np.int64))
    index.get_indexer(index[:1])
    return index


def _member(keys: pd.Index, probe: np.ndarray) -> np.ndarray:
    if len(keys) == 0:
        return np.zeros(len(probe), bool)
    return keys.get_indexer(probe) >= 0


def _pair_keys(matrix: sp.spmatrix | None, n: int) -> np.ndarray:
    """(U, n) sparse pairs -> sorted user * n + column keys: a canonical CSR's own order (no
    sort of what can be millions of pairs: every track of a user's artists, --new-artists)."""
    if matrix is None:
        return np.empty(0, np.int64)
    csr = sp.csr_matrix(matrix, copy=True)
    csr.sum_duplicates()  # and sorts each row's columns
    owner = np.repeat(np.arange(csr.shape[0], dtype=np.int64), np.diff(csr.indptr))
    return owner * n + csr.indices


class Exclusions:
    """What a block's users must never get: (U, n) pairs (their history), and every track
    crediting one of (U, A) artists (``--new-artists``: the history's artists) without the
    millions of pairs that would take."""

    def __init__(
        self, space: TrackSpace, pairs: sp.csr_matrix | None, artists: sp.csr_matrix | None
    ) -> None:
        self.space = space
        self.pairs = None if pairs is None else sp.csr_matrix(pairs)
        self.artists = None if artists is None else sp.csr_matrix(artists)

    @functools.cached_property
    def _lookup(self) -> tuple[pd.Index, pd.Index, np.ndarray, np.ndarray]:
        """What :meth:`mask` looks pairs up in, built by its first call only (a block's
        per-thread selections never call it): the (user, row) and (user, artist) keys, and
        (n,) bool a row some user's pairs exclude, (A,) bool an artist some user's are (most
        pairs scored in the scan are neither: no lookup for them)."""
        n_artists = self.space.artists.shape[1]
        some_row, some_artist = np.zeros(len(self.space), bool), np.zeros(n_artists, bool)
        if self.pairs is not None:
            some_row[self.pairs.indices] = True
        if self.artists is not None:
            some_artist[self.artists.indices] = True
        return (
            _key_index(_pair_keys(self.pairs, len(self.space))),
            _key_index(_pair_keys(self.artists, n_artists)), some_row, some_artist,
        )  # fmt: skip

    def select(self, which: np.ndarray) -> Exclusions:
        return Exclusions(
            self.space, None if self.pairs is None else self.pairs[which],
            None if self.artists is None else self.artists[which],
        )  # fmt: skip

    def full(self) -> sp.csr_matrix | None:
        """Every excluded pair as one (U, n) matrix (for rank_space)."""
        if self.artists is None:
            return self.pairs
        by_artist = sp.csr_matrix(sp.csr_matrix(self.artists, dtype=np.float32)
                                  @ self.space.artists.T)  # fmt: skip
        by_artist.data[:] = 1.0
        return by_artist if self.pairs is None else sp.csr_matrix(by_artist + self.pairs)

    def mask(self, user_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """(P,) bool: whether each (user, space row) pair is excluded. Only pairs whose row
        (or one of whose artists) some user excludes are looked up: a lookup call has a
        fixed cost that made it a third of the scan's exact scoring."""
        pair_keys, artist_keys, some_row, some_artist = self._lookup
        out = np.zeros(len(rows), bool)
        maybe = np.flatnonzero(some_row[rows])
        if len(maybe):
            out[maybe] = _member(pair_keys, user_rows[maybe] * len(self.space) + rows[maybe])
        if len(artist_keys):
            artists, width = self.space.artists, self.space.artists.shape[1]
            start = artists.indptr[rows]
            n_artists = artists.indptr[rows + 1] - start
            for j in range(int(n_artists.max(initial=0))):
                has = np.flatnonzero(n_artists > j)
                artist = artists.indices[start[has] + j]
                has, artist = has[some_artist[artist]], artist[some_artist[artist]]
                if len(has):
                    out[has] |= _member(artist_keys, user_rows[has] * width + artist)
        return out

    def block(self, a: int, b: int, rows: np.ndarray) -> np.ndarray:
        """(b - a, len(rows)) bool: users a:b against the given space rows."""
        out = np.zeros((b - a, len(rows)), bool)
        if self.pairs is not None:
            coo = self.pairs[a:b][:, rows].tocoo()
            out[coo.row, coo.col] = True
        if self.artists is not None:
            hit = sp.csr_matrix(self.artists[a:b], dtype=np.float32) @ self.space.artists[rows].T
            coo = sp.coo_matrix(hit)
            out[coo.row, coo.col] = True
        return out


# --------------------------------------------------------------------------- the steps
def rank_database(
    scorer: HybridScorer,
    users: UserInputs,
    k: int,
    excluded: sp.csr_matrix | None = None,
    penalty: np.ndarray | None = None,
    chunk: int = 262_144,
    weights: HybridWeights | None = None,
    excluded_artists: sp.csr_matrix | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`signals.rank_space`'s result (same rows, same float32 scores, same order), by the
    steps of the module doc, for ``excluded`` (U, n) pairs and every track crediting one of
    ``excluded_artists`` (U, A) (rank_space's ``excluded`` is their union). Memory: the user
    block's inputs, its (users x segments) rooms, what step 3 ranks and one chunk of the scan,
    whatever the space's size."""
    n_users, n_space = users.dna.shape[0], len(scorer.space)
    w = weights or scorer.weights
    out = Exclusions(scorer.space, excluded, excluded_artists)
    few = n_users <= _FEW_USERS and not _index_at_hand(scorer)
    if n_space < _MIN_SPACE or n_users == 0 or few:
        return rank_space(scorer, users, k, out.full(), penalty, chunk, w)
    k_eff = max(1, min(int(k), n_space))
    rows = np.full((n_users, k_eff), -1, np.int64)
    scores = np.full((n_users, k_eff), -np.inf)
    floor, spread = _floor(scorer, users, k_eff, out, penalty, w)
    guessed = np.flatnonzero(np.isfinite(floor))
    if len(guessed):
        sub = users.select(guessed)
        r, s = _pruned(scorer, sub, k_eff, out.select(guessed), penalty, chunk, w,
                       floor[guessed], spread[guessed])  # fmt: skip
        rows[guessed], scores[guessed] = r, s
    # misled by the sample (the k-th best below F), or no guess at all: every pair
    again = np.flatnonzero(~(scores[:, -1] >= np.where(np.isfinite(floor), floor, np.inf)))
    if len(again):
        log.debug("hybrid scan: %d of %d users ranked over every pair", len(again), n_users)
        r, s = rank_space(
            scorer, users.select(again), k_eff, out.select(again).full(), penalty,
            chunk, w,
        )  # fmt: skip
        rows[again], scores[again] = r, s
    return _widen(rows, scores, int(k), n_space)


def _pruned(
    scorer: HybridScorer, users: UserInputs, k: int, out: Exclusions,
    penalty: np.ndarray | None, chunk: int, w: HybridWeights, floor: np.ndarray,
    spread: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Steps 2-4 of the module doc for users with a finite F: what step 3 ranks, seeding the
    scan."""
    order = _artist_order(scorer)
    strong = _long_artists(scorer, users, w, order)
    banned = None  # (user, strong column) of the users' excluded artists: none of their tracks
    if out.artists is not None:
        coo = sp.coo_matrix(out.artists)
        column = strong.column[coo.col]
        banned = coo.row[column >= 0], column[column >= 0]
        strong.lift[banned] = 0.0  # never ranked before the scan
    pairs = PairScorer(scorer, users, w, penalty)
    largest = strong.lift.max(axis=1, initial=0.0)
    if w.decoder > 0:
        largest = largest + w.decoder * np.maximum(users.decoder_z, 0).max(axis=1, initial=0.0)
    n_users, n_seg = users.dna.shape[0], len(_segments(scorer).catalogue)
    rooms = np.empty((n_users, n_seg))  # each thread fills its users' rows

    def before_scan(a: int, b: int) -> tuple[np.ndarray, bool, np.ndarray, StreamingTopK]:
        """Step 3 and the rooms of users a:b (one worker thread's share, as the scan's)."""
        mine = users.select(slice(a, b))  # views: select by index would copy 40 MB of collab
        sub = StrongArtists(strong.lift[a:b], strong.column)
        best = group_top_k(b - a, k, ordered=False)  # the scan goes on with it
        excluded = out.select(np.arange(a, b))
        runs = _ArtistRuns(PairScorer(scorer, mine, w, penalty), order, excluded, floor[a:b])
        done, catalogue_done = _rank_before_scan(
            best, scorer, mine, sub, order, k, excluded, runs, spread[a:b]
        )
        if banned is not None:  # nor candidates in the scan
            here = (banned[0] >= a) & (banned[0] < b)
            done[banned[0][here] - a, banned[1][here]] = True
        _segment_rooms(scorer, mine, w, sub, done, excluded.artists, catalogue_done, rooms[a:b])
        outside = _segments(scorer).outside
        _rank_dense_segments(best, runs, outside, rooms[a:b], spread[a:b], done, strong.column)
        top = np.max(rooms[a:b], axis=1, where=np.isfinite(rooms[a:b]), initial=0.0)
        best.settle(np.arange(b - a))  # its threshold: the k-th best found, -inf for fewer
        return done, catalogue_done, top, best

    groups = user_groups(n_users)
    with single_threaded_blas(), ThreadPoolExecutor(len(groups)) as pool:
        parts = list(pool.map(before_scan, *zip(*groups, strict=True)))
    done = np.concatenate([p[0] for p in parts])
    catalogue_done = parts[0][1]
    top = np.concatenate([p[2] for p in parts])
    tops = [p[3] for p in parts]
    tol = _REL_TOL * (1.0 + np.abs(floor) + w.dna + largest + 2.0 * top)
    if penalty is not None:
        tol += _REL_TOL * float(np.abs(penalty[np.isfinite(penalty)]).max(initial=0.0))
    # their k-th best: a lower bound
    start_floor = np.maximum(floor, np.concatenate([t.threshold for t in tops]))
    hybrid = HybridChunkScorer(
        scorer, users, w, penalty, out, pairs, tol, rooms, strong, order, done, catalogue_done,
        start_floor,
    )  # fmt: skip
    return scan(
        SpaceChunks(hybrid.order), hybrid, k, chunk, progress=False, floor=start_floor,  # type: ignore[arg-type]
        tops=tops,
    )  # fmt: skip


def _long_artists(
    scorer: HybridScorer, users: UserInputs, w: HybridWeights, order: ArtistOrder
) -> StrongArtists:
    """The artists with at least ``_LONG_RUN`` single-artist tracks outside the catalogue and
    a lift (weighted share + collab, float32) above 0 for some user: step 3's candidates."""
    n_users, n_artists = users.dna.shape[0], scorer.space.artists.shape[1]
    artists = np.flatnonzero(order.count >= _LONG_RUN)
    lift = np.zeros((n_users, len(artists)), np.float32)
    if w.artist > 0 and len(artists):
        shares = sp.csr_matrix(users.shares, dtype=np.float32) * np.float32(w.artist)
        lift += shares[:, artists].toarray()
    columns = scorer.cf_columns
    if w.collab > 0 and users.collab is not None and columns is not None and len(artists):
        cf = columns[artists]
        collab = np.asarray(users.collab, np.float32)
        lift[:, cf >= 0] += np.float32(w.collab) * collab[:, cf[cf >= 0]]
    keep = (lift > 0).any(axis=0)
    column = np.full(n_artists, -1, np.int64)
    column[artists[keep]] = np.arange(int(keep.sum()))
    return StrongArtists(np.ascontiguousarray(lift[:, keep]), column)


def _segment_rooms(
    scorer: HybridScorer, users: UserInputs, w: HybridWeights, strong: StrongArtists,
    done: np.ndarray, banned: sp.csr_matrix | None, catalogue_done: bool,
    out: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """(U, G) float64: per user and segment of the scan order, at least the lift (share and
    collab parts, weighted) of any track there that can still be a candidate; -inf where none
    can (the single-artist run of an artist ranked before the scan or excluded, the
    catalogue once ranked).

    A track's share part is the sum of its artists' shares, at most the sum over the
    segment's artists; its collab part, the largest of its artists' collab scores, at most
    c_u (about the ``_EXCESS``-th largest of the user's collab scores) plus the sum over the
    segment's artists of what exceeds c_u. Two sparse products: a user's few share artists
    and few excess collab artists against the segments that credit them."""
    segments = _segments(scorer)
    n_users, n_seg = users.dna.shape[0], len(segments.catalogue)
    # the caps, per user times per segment, summed into rooms first (a band of users at a
    # time: full (U, G) temporaries took 30-50 ms of a 1,024-user block in page faults);
    # the excesses over them after, by sparse products
    caps: list[tuple[np.ndarray, np.ndarray]] = []  # (U,) per user, (G,) per segment
    excesses: list[tuple[sp.csr_matrix, sp.csr_matrix, np.ndarray | None]] = []
    if w.artist > 0:
        shares = sp.csr_matrix(users.shares, dtype=np.float64) * w.artist
        if banned is not None:  # every track of theirs is excluded: no room needed
            shares = sp.csr_matrix(shares - shares.multiply(sp.csr_matrix(banned) != 0))
        cap, excess = _share_excess(shares)
        # a track's share part: the sum of its artists' shares, each at most the cap plus
        # its excess: `credits` caps, its most prolific artist's excess and at most
        # `credits` - 1 others'
        caps.append((cap, segments.credits))
        excesses.append((excess, segments.first, None))
        others = np.maximum(segments.credits - 1.0, 0.0)
        if others.any():
            excesses.append((excess, segments.second, others))
    if w.collab > 0 and users.collab is not None and segments.cf is not None:
        collab = np.asarray(users.collab, np.float32)
        cap32 = _collab_cap(collab)  # (U,) float32
        u, a = np.nonzero(collab > cap32[:, None])
        excess = sp.csr_matrix(
            ((collab[u, a] - cap32[u]).astype(np.float64) * w.collab, (u, a)),
            shape=collab.shape,
        )
        # a track's collab part: its artists' largest
        caps.append((w.collab * cap32.astype(np.float64), segments.has_cf.astype(np.float64)))
        excesses.append((excess, segments.cf, None))
    rooms = _outer_sums(caps, n_users, n_seg, out)
    for values, incidence, factor in excesses:
        _add_most(rooms, values, incidence, factor)
    ranked = np.flatnonzero(strong.column >= 0)[np.argsort(strong.column[strong.column >= 0])]
    u, c = np.nonzero(done)  # (user, strong column) ranked before the scan
    skip = sp.csr_matrix((np.ones(len(u)), (u, ranked[c])), shape=(n_users, segments.pure.shape[0]))
    if banned is not None:
        skip = skip + sp.csr_matrix(banned, dtype=np.float64)
    ranked_there = sp.coo_matrix(skip @ segments.pure)  # positive entries only
    rooms[ranked_there.row, ranked_there.col] = -np.inf
    if catalogue_done:
        rooms[:, segments.catalogue] = -np.inf
    return rooms


def _outer_sums(
    terms: list[tuple[np.ndarray, np.ndarray]], n_rows: int, n_cols: int,
    out: np.ndarray | None = None,
) -> np.ndarray:  # fmt: skip
    """(n_rows, n_cols) float64 (into ``out`` where given): the sum of the outer products of
    ``terms`` ((n_rows,), (n_cols,)), in their order, a band of rows at a time (temporaries
    that stay in cache)."""
    out = np.empty((n_rows, n_cols)) if out is None else out
    if not terms:
        out[:] = 0.0
        return out
    band = max(1, _BAND_CELLS // max(1, n_cols))
    (first_rows, first_cols), *rest = terms
    for a in range(0, n_rows, band):
        here = out[a : a + band]
        np.multiply(first_rows[a : a + band, None], first_cols, out=here)
        for by_row, by_col in rest:
            here += by_row[a : a + band, None] * by_col
    return out


def _add_most(
    rooms: np.ndarray, values: sp.csr_matrix, incidence: sp.csr_matrix,
    factor: np.ndarray | None = None,
) -> None:  # fmt: skip
    """rooms (U, G) += at least the largest of each user's values (U, X) >= 0 over each
    segment's columns (incidence (X, G) 0/1), times ``factor`` (G,), by one sparse product:
    max x <= (sum x^p)^(1/p), at most n^(1/p) times the largest of n values (``_POWER`` 16:
    1.28 for 50), a maximum where a product gives sums. Only the product's nonzeros are
    touched: most (user, segment) pairs have none (two thirds on the toy database), and a
    root of every cell cost as much as the rest of the rooms."""
    values = sp.csr_matrix(values, copy=True)
    owner = np.repeat(np.arange(values.shape[0]), np.diff(values.indptr))
    scale = np.zeros(values.shape[0])
    np.maximum.at(scale, owner, values.data)
    values.data = (values.data / scale[owner]) ** _POWER  # in (0, 1]: no overflow
    sums = sp.csr_matrix(values @ incidence)  # no duplicates: one entry per (user, segment)
    user = np.repeat(np.arange(sums.shape[0]), np.diff(sums.indptr))
    most = sums.data ** (1.0 / _POWER) * scale[user]
    if factor is not None:
        most *= factor[sums.indices]
    rooms.reshape(-1)[user * rooms.shape[1] + sums.indices] += most


def _share_excess(shares: sp.csr_matrix) -> tuple[np.ndarray, sp.csr_matrix]:
    """(U, A) weighted shares -> (U,) c_u, about the ``_EXCESS_SHARES``-th largest share of
    the user (0 for fewer), and (U, A) what exceeds it."""
    shares = sp.csr_matrix(shares)
    shares.eliminate_zeros()
    owner = np.repeat(np.arange(shares.shape[0]), np.diff(shares.indptr))
    by = np.lexsort((-shares.data, owner))  # each user's shares, largest first
    place = np.arange(len(by)) - shares.indptr[owner[by]]
    cap = np.zeros(shares.shape[0])
    at = by[place == _EXCESS_SHARES]
    cap[owner[at]] = shares.data[at]
    over = np.maximum(shares.data - cap[owner], 0.0)
    excess = sp.csr_matrix((over, shares.indices, shares.indptr), shape=shares.shape)
    excess.eliminate_zeros()
    return cap, excess


def _collab_cap(collab: np.ndarray) -> np.ndarray:
    """(U, A_cf) -> (U,) float32: per user about the ``_EXCESS``-th largest collab score (from
    a fixed sample of columns; 0 when the vocabulary is that small)."""
    n_cf = collab.shape[1]
    if n_cf <= _EXCESS:
        return np.zeros(collab.shape[0], np.float32)
    sample = _sample_rows(n_cf, _EXCESS_SAMPLE)
    rank = max(1, int(np.ceil(_EXCESS * len(sample) / n_cf)))
    values = collab[:, sample]
    # most scores are 0: distinct negatives instead, or the partition slows 2.5x on the ties
    # (any cap >= 0 is right: what exceeds it gets its own room)
    values = np.where(values > 0, values, -1.0 - np.arange(len(sample), dtype=np.float32))
    return np.maximum(_ranked(values, rank), 0.0).astype(np.float32)


def _floor(
    scorer: HybridScorer, users: UserInputs, k: int, excluded: Exclusions,
    penalty: np.ndarray | None, w: HybridWeights,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Per user, F: the DNA part minus the penalty that about _MARGIN * k tracks of a fixed
    sample reach (-inf when the sample cannot say). Every lift is >= 0, so at least as many
    tracks reach F by their hybrid score: a guess at a floor under the k-th best, checked
    after the scan. A float32 product, as the DNA-only scan's own floor. Also (U, S / 8)
    float32: each user's DNA parts of every 8th sample track, ascending (how many tracks
    reach a bar, for step 3)."""
    n_space, n_users = len(scorer.space), users.dna.shape[0]
    sample = _sample_rows(n_space, _SAMPLE)
    rank = int(np.ceil(_MARGIN * k * len(sample) / n_space))
    floor = np.full(n_users, -np.inf)
    spread = np.full((n_users, -(-len(sample) // 8)), -np.inf, np.float32)
    if rank > len(sample):
        return floor, spread
    dna = np.asarray(users.dna, np.float32)
    dna = np.where(np.isfinite(dna).all(axis=1)[:, None], dna * np.float32(w.dna), 0.0)
    units = np.ascontiguousarray(scorer.space.units[sample].T)  # (f, S)
    units[:, ~scorer.space.has_features[sample]] = 0.0
    pen = None if penalty is None else penalty[sample].astype(np.float32)
    for a in range(0, n_users, _SAMPLE_USERS):
        b = min(a + _SAMPLE_USERS, n_users)
        part = dna[a:b].astype(np.float32) @ units
        if pen is not None:
            part -= pen
        part[excluded.block(a, b, sample)] = -np.inf
        floor[a:b] = _ranked(part, rank) - _REL_TOL * (1.0 + w.dna)
        spread[a:b] = np.sort(part[:, ::8], axis=1)
    floor[~np.isfinite(floor)] = -np.inf
    return floor, spread


def _share_reaching(spread: np.ndarray, bar: np.ndarray) -> np.ndarray:
    """(U, S') ascending sample DNA parts, (U, L) bars -> (U, L) share of the sample at or
    above each bar."""
    out = np.empty(bar.shape)
    for u in range(bar.shape[0]):
        out[u] = spread.shape[1] - np.searchsorted(spread[u], bar[u], side="left")
    return out / max(1, spread.shape[1])


def _ranked(values: np.ndarray, rank: int) -> np.ndarray:
    """(b, S) -> (b,) float64: each row's rank-th largest value (np.partition: 9x faster
    than torch.topk on (256 x 8,192) float32 here)."""
    at = values.shape[1] - rank
    return np.partition(values, at, axis=1)[:, at].astype(np.float64)


@functools.cache
def _sample_rows(n_space: int, size: int) -> np.ndarray:
    """A fixed sample of space rows (the same for every block: a user's F and D depend only
    on the user)."""
    rng = np.random.default_rng(0)
    return np.sort(rng.choice(n_space, size=min(size, n_space), replace=False))


def _max_row(matrix: sp.csr_matrix) -> np.ndarray:
    out = np.asarray(matrix.max(axis=1).todense()).ravel() if matrix.nnz else None
    return np.zeros(matrix.shape[0]) if out is None else out.astype(np.float64)


def _kept_on(scorer: HybridScorer, name: str, build: Callable[[], T]) -> T:
    """``build()``, made once per scorer (one space) and kept on it for every block; once,
    too, when worker threads ask at the same time (two of them once built Segments in one
    first block). ``build`` must not ask for another kept value: the lock is not re-entrant."""
    out = getattr(scorer, name, None)
    if out is None:
        with _BUILDING:
            out = getattr(scorer, name, None)
            if out is None:
                out = build()
                setattr(scorer, name, out)
    return out


def _scan_index(scorer: HybridScorer) -> ScanIndex:
    """The scorer's :class:`ScanIndex`: read from its ``index_files`` where a run saved it,
    else built (and saved there)."""

    def build() -> ScanIndex:
        files = scorer.index_files
        key = None
        if files is not None:
            key = _index_key(scorer, files)
            stored = files.load(key)
            if stored is not None:
                try:
                    return ScanIndex.from_arrays(stored, scorer)
                except (KeyError, ValueError) as exc:
                    log.warning("%s: %s; building the scan index again", files.path(key), exc)
                    files.discard(key)
        index = ScanIndex.of(scorer)
        if files is not None and key is not None:
            files.save(key, index.arrays())
        return index

    return _kept_on(scorer, "_scan_index", build)


def _index_key(scorer: HybridScorer, files: IndexFiles) -> str:
    """What a scan index depends on beyond the space: the artist model's columns (the order
    favours its artists) and how it is built."""
    return files.key(_INDEX_VERSION, _SEGMENT, scorer.cf_columns)


def _index_at_hand(scorer: HybridScorer) -> bool:
    """Whether the scan index costs no build: made already, or saved by an earlier run (read
    back in milliseconds: its large arrays are mapped, not copied)."""
    if getattr(scorer, "_scan_index", None) is not None:
        return True
    files = scorer.index_files
    return files is not None and files.path(_index_key(scorer, files)).is_dir()


def _artist_order(scorer: HybridScorer) -> ArtistOrder:
    return _scan_index(scorer).order


def _segments(scorer: HybridScorer) -> Segments:
    return _scan_index(scorer).segments


def _rank_before_scan(
    best: StreamingTopK, scorer: HybridScorer, users: UserInputs, strong: StrongArtists,
    order: ArtistOrder, k: int, excluded: Exclusions, runs: _ArtistRuns, spread: np.ndarray,
) -> tuple[np.ndarray, bool]:  # fmt: skip
    """Score exactly, by products instead of a gather per pair, what the scan would find
    costly: per user, every track (single-artist, outside the catalogue) of the highest-lift
    artists with at least _LONG_RUN such tracks until k of them, then of those where the
    scan would score at least _PRODUCT_SHARE of the tracks exactly (the scan's rooms bound
    the others: scoring every run that could still reach the k-th best took 0.84 of 1.55 s
    in a profiled 512-user block of a Zipf catalogue); and, with a decoder weight, the
    catalogue. Pairs
    below ``floor`` (F) are never kept. Returns the (U, S) strong artists so ranked per
    user and whether the catalogue was."""
    done = np.zeros(strong.lift.shape, bool)
    artists = np.flatnonzero(strong.column >= 0)
    artists = artists[order.count[artists] >= _LONG_RUN]
    # a run is one artist's single-artist tracks and no excluded artist is chosen (lift 0),
    # so only excluded pairs can be in it
    w, penalty, floor = runs.pairs.weights, runs.pairs.penalty_in, runs.floor
    if len(artists):
        lift = strong.lift[:, strong.column[artists]]  # (U, L)
        ranked = np.argsort(-lift, axis=1, kind="stable")  # each user's artists, best first
        tracks = order.count[artists][ranked]
        before = np.cumsum(tracks, axis=1) - tracks
        take = np.zeros(lift.shape, bool)
        np.put_along_axis(take, ranked, before < k, axis=1)
        take &= lift > 0
        runs.push(best, artists, take)
        done[:, strong.column[artists]] = take
        # then the runs where the scan would score a large share of the tracks one by one:
        # a product costs about 1/20 of a pair scored exactly (docs/BENCHMARKS.md)
        best.settle(np.arange(best.fill.shape[0]))
        bar = np.maximum(best.threshold, floor)[:, None] - lift  # (U, L): the DNA part needed
        more = ~take & (lift > 0) & (_share_reaching(spread, bar) >= _PRODUCT_SHARE)
        runs.push(best, artists, more)
        done[:, strong.column[artists]] |= more
    catalogue = np.flatnonzero(scorer.space.catalogue_index >= 0)
    if w.decoder <= 0 or len(catalogue) == 0:
        return done, False
    prepared = scorer.prepare_rows(catalogue)  # type: ignore[arg-type]
    n_users = users.dna.shape[0]
    for a in range(0, n_users, _SAMPLE_USERS):
        b = min(a + _SAMPLE_USERS, n_users)
        scores = scorer.score(users.padded(a, b, b - a), catalogue, w, prepared)  # type: ignore[arg-type]
        if penalty is not None:
            scores -= penalty[catalogue].astype(np.float32)
        u = np.arange(a, b)
        scores[excluded.block(a, b, catalogue)] = -np.inf
        best.push(np.repeat(u, len(catalogue)), np.tile(catalogue, len(u)),
                  scores.ravel().astype(np.float64))  # fmt: skip
    return done, True


def _rank_dense_segments(
    best: StreamingTopK, runs: _ArtistRuns, outside: np.ndarray, rooms: np.ndarray,
    spread: np.ndarray, done: np.ndarray, strong_column: np.ndarray,
) -> None:  # fmt: skip
    """Step 3's rule for the segments outside the catalogue (``outside`` (G,)) that no long
    run covers (a catalogue's many short runs, its multi-artist tracks): where the scan would
    score at least ``_DENSE_SHARE`` of a user's pairs one by one, that is where the room
    reaches the DNA part that share of the sample passes (``spread``), the segment is scored
    for the user by products (a tenth to a fifteenth of the cost per pair) and its room set
    to -inf.
    Consecutive chosen segments are scored together, for every user who chose one of them
    (the others' pairs there cost little), but never a pair ranked before: a segment already
    -inf, or a track of a long run step 3 ranked for the user (``done`` (U, S),
    ``strong_column`` (A,) as in StrongArtists; such a run's first and last segments may be
    shared with other artists)."""
    n = len(runs.order.rows)
    at = spread.shape[1] - max(1, round(_DENSE_SHARE * spread.shape[1]))
    bar = np.maximum(best.threshold, runs.floor) - spread[:, at]  # (U,) the room that needs
    chosen = outside[None, :] & (rooms >= bar[:, None])  # -inf rooms: never
    segments = np.flatnonzero(chosen.any(axis=0))
    if not len(segments):
        return
    # runs of consecutive segments, at most _DENSE_SEGMENTS each: (U x 4,096) blocks
    cut = np.flatnonzero(
        (np.diff(segments) != 1) | (np.arange(1, len(segments)) % _DENSE_SEGMENTS == 0)
    )
    for piece in np.split(segments, cut + 1):
        g0, g1 = int(piece[0]), int(piece[-1]) + 1
        u = np.flatnonzero(chosen[:, g0:g1].any(axis=1))
        p0, p1 = g0 * _SEGMENT, min(g1 * _SEGMENT, n)
        ranked = ~np.isfinite(rooms[np.ix_(u, np.arange(g0, g1))])  # or excluded
        skip = np.repeat(ranked, _SEGMENT, axis=1)[:, : p1 - p0]
        artist = runs.order.artist[p0:p1]  # -1: several artists (never a long run's)
        column = np.where(artist >= 0, strong_column[np.maximum(artist, 0)], -1)
        if (column >= 0).any():
            skip |= (column >= 0) & done[np.ix_(u, np.maximum(column, 0))]
        runs.push_positions(best, p0, p1, u, skip)
        rooms[np.ix_(u, np.arange(g0, g1))] = -np.inf


class _ArtistRuns:
    """Exact scores of every (user, track) of chosen positions outside the catalogue (one
    artist's run of single-artist tracks, or consecutive segments of any tracks), by one
    product per block of positions: the float32 steps of pair_scores (artist share, no decoder
    part, DNA, collab, penalty) on a (users x positions) block."""

    def __init__(
        self, pairs: PairScorer, order: ArtistOrder, excluded: Exclusions, floor: np.ndarray
    ) -> None:
        """``pairs``: the block's user side (weighted collab, DNA on the grid, penalty);
        ``excluded``: the same users' exclusions; ``floor``: (U,) each user's F."""
        self.pairs, self.order, self.floor = pairs, order, floor
        # (U, A) float32 weighted shares, by artist (a run's column) and by user
        self.share_rows = sp.csr_matrix(
            sp.csr_matrix(pairs.users.shares, dtype=np.float32) * np.float32(pairs.weights.artist)
        )
        self.share_rows.sum_duplicates()
        self.shares = sp.csc_matrix(self.share_rows)
        self.banned = excluded.artists  # (U, A) --new-artists: every track of theirs is out
        # excluded pairs by position in the order: a run finds its own by two searches
        self.out_user = self.out_position = np.empty(0, np.int64)
        if excluded.pairs is not None and excluded.pairs.nnz:
            coo = sp.coo_matrix(excluded.pairs)
            position = order.position[coo.col]
            by = np.argsort(position, kind="stable")
            self.out_user, self.out_position = coo.row[by].astype(np.int64), position[by]

    def push(self, best: StreamingTopK, artists: np.ndarray, chosen: np.ndarray) -> None:
        """Score the runs of ``artists[j]`` for the users with ``chosen[:, j]`` (U, L); only
        scores that can enter a user's best k are pushed."""
        picked = np.flatnonzero(chosen.any(axis=0))
        # (U, J) float32 weighted shares of the runs' artists: one column lookup for all
        shares = (
            self.shares[:, artists[picked]].toarray() if self.pairs.weights.artist > 0 else None
        )
        for i, j in enumerate(picked):
            share = None if shares is None else shares[:, i : i + 1]
            self._push_run(best, int(artists[j]), np.flatnonzero(chosen[:, j]), share)

    def _push_run(
        self, best: StreamingTopK, a: int, u: np.ndarray, share: np.ndarray | None
    ) -> None:
        """``share``: (U, 1) every user's weighted share of artist ``a`` (None: no share part);
        an artist chosen here is none of the users' excluded ones (its lift is 0 for them)."""
        order, pairs, columns = self.order, self.pairs, self.pairs.scorer.cf_columns
        p0, p1 = int(order.first[a]), int(order.first[a] + order.count[a])
        collab = None
        if pairs.collab is not None and columns is not None and columns[a] >= 0:
            collab = pairs.collab[u, columns[a]][:, None]  # weighted already
        self._push(best, p0, p1, u, None if share is None else share[u], collab)

    def push_positions(
        self, best: StreamingTopK, p0: int, p1: int, u: np.ndarray, skip: np.ndarray
    ) -> None:
        """Score positions p0:p1 (tracks outside the catalogue, of any artists) for users
        ``u``, except where ``skip`` (len(u), p1 - p0) is True (ranked already). A track's
        share part is the sum over its artists in ascending order, its collab part the
        largest over them, as pair_scores adds them (credit slot by credit slot)."""
        pairs, columns, credits = self.pairs, self.pairs.scorer.cf_columns, self.pairs.space.artists
        rows = self.order.rows[p0:p1]
        by_track = sp.csr_matrix(credits[rows])  # (P, A)
        share = None
        if pairs.weights.artist > 0:  # a sparse product sums in ascending artist order
            share = np.asarray((self.share_rows[u] @ by_track.T).todense(), np.float32)
        skip = skip.copy()
        if self.banned is not None:
            skip |= np.asarray((self.banned[u] @ by_track.T).todense()) > 0
        collab = None  # the largest of 0 and the credits' weighted scores, credit by credit
        if pairs.collab is not None and columns is not None:
            start, n_credits = by_track.indptr[:-1], np.diff(by_track.indptr)
            for j in range(int(n_credits.max(initial=0))):
                has = np.flatnonzero(n_credits > j)
                cf = columns[by_track.indices[start[has] + j]]
                has, cf = has[cf >= 0], cf[cf >= 0]  # no ArtistCF artist: 0, adds nothing
                # each artist's column read once (runs: several tracks each), then spread
                # over every position, a column of 0 where the credit is none: whole rows,
                # no scatter into the (users x positions) block
                distinct, where = np.unique(cf, return_inverse=True)
                spot = np.full(len(rows), len(distinct))
                spot[has] = where
                value = np.zeros((len(u), len(distinct) + 1), np.float32)
                value[:, :-1] = pairs.collab[np.ix_(u, distinct)]
                spread = value[:, spot]  # (len(u), P)
                if collab is None:
                    collab = np.maximum(spread, np.float32(0.0), out=spread)
                else:
                    np.maximum(collab, spread, out=collab)
        self._push(best, p0, p1, u, share, collab, skip)

    def _push(
        self, best: StreamingTopK, p0: int, p1: int, u: np.ndarray, share: np.ndarray | None,
        collab: np.ndarray | None, skip: np.ndarray | None = None,
    ) -> None:  # fmt: skip
        """Positions p0:p1 for users ``u``: ``share`` and ``collab`` (len(u), 1 or p1 - p0)
        weighted parts, in pair_scores' order of float32 steps; only scores that can enter a
        user's best k are pushed."""
        pairs, order, space = self.pairs, self.order, self.pairs.space
        w = pairs.weights
        rows = order.rows[p0:p1]
        total = np.zeros((len(u), len(rows)), np.float32)
        if share is not None:
            total += share
        if w.dna > 0:
            assert pairs.grid is not None
            cos = (pairs.grid[u] @ order.grid[p0:p1].T.astype(np.float64)).astype(np.float32)
            cos *= np.float32(w.dna)
            without = ~space.has_features[rows]
            if without.any():
                cos[:, without] = 0.0
            total += cos
        if collab is not None:  # 0 where a track's artist has none: adding it changes nothing
            total += collab
        if pairs.penalty is not None:
            total -= pairs.penalty[rows]
        i0, i1 = np.searchsorted(self.out_position, (p0, p1))
        if i1 > i0:  # this run's excluded pairs, for the users scored here
            who = np.searchsorted(u, self.out_user[i0:i1])
            mine = (who < len(u)) & (u[np.minimum(who, len(u) - 1)] == self.out_user[i0:i1])
            total[who[mine], self.out_position[i0:i1][mine] - p0] = -np.inf
        if skip is not None:
            total[skip] = -np.inf
        # (b,) float32: below the k-th best so far or F, never in the top k (F: checked after
        # the scan)
        bar = rounded_down(np.maximum(best.threshold[u], self.floor[u]))
        hit = total >= bar[:, None]
        over = np.count_nonzero(hit, axis=1) > best.scores.shape[1] - best.k
        if over.any():  # more than a push takes at once: only what reaches the run's k-th best
            at = total.shape[1] - best.k
            kth = np.partition(total[over], at, axis=1)[:, at]  # 10x torch.topk's speed here
            bar[over] = np.maximum(bar[over], kth)
            hit[over] = total[over] >= bar[over, None]
        r, c = np.nonzero(hit)
        best.push(u[r], rows[c], total[r, c].astype(np.float64))


def _widen(
    rows: np.ndarray, scores: np.ndarray, k: int, n_space: int
) -> tuple[np.ndarray, np.ndarray]:
    """(U, min(k, n)) -> rank_space's (U, k) float32 layout (see there)."""
    from deepvibe.discovery.signals import _fill_unscored

    out_rows = np.full((rows.shape[0], k), -1, np.int64)
    out_scores = np.full((rows.shape[0], k), -np.inf, np.float32)
    out_rows[:, : rows.shape[1]] = rows
    out_scores[:, : rows.shape[1]] = scores
    _fill_unscored(out_rows, out_scores, min(k, n_space))
    return out_rows, out_scores
