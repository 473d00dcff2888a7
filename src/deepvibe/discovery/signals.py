"""What the hybrid score needs, on both sides of the product user x track.

``TrackSpace`` is the track database as the hybrid sees it (standardised unit features, the
track x artist incidence, where each track sits in the catalogue). ``HybridScorer`` turns a
block of users' histories into the user-side inputs of :func:`hybrid.score_direct` (Vibe DNA,
artist shares, collaborative artist scores, decoder z-scores) and scores any slice of the
space. Discovery, database validation and the evaluation harness all score through it, so the
number a user sees, the number an epoch is chosen by and the number ``evaluate`` reports are
one computation.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from deepvibe.config import DiscoverConfig
from deepvibe.data.artists import artist_matrix
from deepvibe.data.ids import id_index
from deepvibe.data.tables import FeatureScaler, TrackTable
from deepvibe.discovery.dna import on_grid, vibe_dna
from deepvibe.discovery.hybrid import (
    HybridWeights,
    artist_share_matrix,
    chunk_parts,
    collab_part,
    score_direct,
    unit_rows,
    zscore_rows,
)
from deepvibe.discovery.scan import single_threaded_blas, workers
from deepvibe.discovery.space_cache import IndexFiles
from deepvibe.model.artist_cf import ArtistCF
from deepvibe.model.inference import score_rows
from deepvibe.model.sparse import SparseRows
from deepvibe.model.vae import HybridVAE
from deepvibe.ranking.topk import StreamingTopK, top_k

TILE = 64  # users per model call and per scoring tile (padded: one fixed shape)
SLICE = 16_384  # space rows per scoring tile: (TILE x SLICE) float32, 4 MiB per worker
_ROWS = 65_536  # tracks standardised at once (one pass over 1,000,000: 0.5 s of page faults)
# fewer ids than the space's size over this are looked up without the space's own hash table
# (building it for 1,000,000 ids takes 0.3 s; one user's history needs it once)
_FEW_IDS = 64


def space_units(z: np.ndarray) -> np.ndarray:
    """(n, f) float32 unit rows of standardised features on the grid of
    :func:`~deepvibe.discovery.dna.on_grid` (exact in float32; the exact pair scores need
    them there, so the scan's arrays are a gather, not a rounding pass per run), ``_ROWS``
    rows at a time (row by row: the same as in one pass; 0 rows stay 0)."""
    units = np.zeros_like(z)
    for a in range(0, len(z) if z.shape[1] else 0, _ROWS):
        units[a : a + _ROWS] = on_grid(unit_rows(z[a : a + _ROWS]))
    return units


@dataclass(frozen=True)
class TrackSpace:
    """Every track the hybrid may rank; rows are the space's own order."""

    track_ids: np.ndarray  # (n,) str
    units: np.ndarray  # (n, f) float32 unit rows of the standardised features (0 if unknown),
    # on dna.on_grid's grid
    standardised: np.ndarray  # (n, f) float32 standardised features (0 if unknown)
    has_features: np.ndarray  # (n,) bool
    artists: sp.csr_matrix  # (n, A) binary track x artist incidence
    artist_keys: np.ndarray  # (A,) normalised artist names (data.artists.artist_key)
    catalogue_index: np.ndarray  # (n,) int64: the track's catalogue column, -1 outside it
    popularity: np.ndarray  # (n,) float32, NaN where unknown
    names: np.ndarray | None = None  # (n,) display names

    @classmethod
    def from_table(
        cls, table: TrackTable, scaler: FeatureScaler, catalogue_ids: np.ndarray
    ) -> TrackSpace:
        n = len(table.track_ids)
        raw = np.asarray(table.features, dtype=np.float64)
        has = np.isfinite(raw).all(axis=1) if raw.shape[1] else np.zeros(n, bool)
        if table.complete is not None:
            has &= np.asarray(table.complete, bool)
        z = np.zeros((n, raw.shape[1]), dtype=np.float32)
        for a in range(0, n if raw.shape[1] else 0, _ROWS):  # temporaries that stay in cache
            b = min(a + _ROWS, n)
            known = has[a:b]
            z[a:b][known] = scaler.transform(raw[a:b][known]).astype(np.float32)
        lists = table.artist_lists if table.artist_lists is not None else [()] * n
        keys, incidence = artist_matrix(lists)
        popularity = (
            np.full(n, np.nan, np.float32)
            if table.popularity is None
            else np.asarray(table.popularity, np.float32)
        )
        return cls(
            track_ids=np.asarray(table.track_ids, dtype=object),
            units=space_units(z),
            standardised=z,
            has_features=has,
            artists=incidence.tocsr(),
            artist_keys=keys,
            catalogue_index=id_index(catalogue_ids)
            .get_indexer(id_index(table.track_ids))
            .astype(np.int64),
            popularity=popularity,
            names=table.names,
        )

    def arrays(self) -> dict[str, np.ndarray]:
        """Its numeric arrays, without ids and names (what :mod:`space_cache` keeps): plain
        dtypes only, the artist keys as fixed-width text."""
        keys = [str(k) for k in self.artist_keys]
        return {
            "standardised": self.standardised, "has_features": self.has_features,
            "artist_indptr": self.artists.indptr, "artist_indices": self.artists.indices,
            "artist_keys": np.array(keys, dtype=str) if keys else np.zeros(0, dtype="<U1"),
            "catalogue_index": self.catalogue_index, "popularity": self.popularity,
        }  # fmt: skip

    @classmethod
    def from_arrays(
        cls, arrays: dict[str, np.ndarray], track_ids: np.ndarray, names: np.ndarray | None
    ) -> TrackSpace:
        """The space :meth:`arrays` came from, given its ids and names."""
        z = arrays["standardised"]
        keys = arrays["artist_keys"]
        artists = sp.csr_matrix(
            (np.ones(len(arrays["artist_indices"]), np.float32), arrays["artist_indices"],
             arrays["artist_indptr"]),
            shape=(len(z), len(keys)),
        )  # fmt: skip
        return cls(
            track_ids=np.asarray(track_ids, dtype=object), units=space_units(z), standardised=z,
            has_features=arrays["has_features"], artists=artists,
            artist_keys=np.array([str(k) for k in keys], dtype=object),
            catalogue_index=arrays["catalogue_index"], popularity=arrays["popularity"],
            names=names,
        )  # fmt: skip

    def __len__(self) -> int:
        return len(self.track_ids)

    def rows_of(self, track_ids: np.ndarray) -> np.ndarray:
        """Space row of each id, -1 where the space does not hold it: a hash lookup, or, for
        a few distinct ids before the space's own table exists (one user's history), one
        pass of the space's ids over a table of theirs."""
        wanted = id_index(track_ids)
        if "_index" in self.__dict__ or len(wanted) * _FEW_IDS > len(self):
            return self._index.get_indexer(wanted)
        if not wanted.is_unique:
            uniq, back = np.unique(np.asarray(track_ids, dtype=object), return_inverse=True)
            return self.rows_of(uniq)[back.ravel()]
        at = wanted.get_indexer(id_index(self.track_ids))  # (n,) each row's place in wanted
        rows = np.full(len(wanted), -1, np.int64)
        hit = np.flatnonzero(at >= 0)
        rows[at[hit]] = hit
        return rows

    @functools.cached_property
    def _index(self) -> pd.Index:
        """The ids' hash table, built once (a 1,000,000-id index takes 0.3 s)."""
        return id_index(self.track_ids)

    def to_space(
        self, plays: sp.csr_matrix, track_ids: np.ndarray, rows: np.ndarray | None = None
    ) -> sp.csr_matrix:
        """(U, len(track_ids)) plays -> (U, n) over the space's rows; unknown tracks drop.
        ``rows``: the space rows of ``track_ids`` (``rows_of``), where the caller has them."""
        plays = sp.csr_matrix(plays, dtype=np.float32)
        if rows is None:
            used = np.unique(plays.indices)  # only the ids someone played are looked up
            rows = np.full(len(track_ids), -1, np.int64)
            rows[used] = self.rows_of(np.asarray(track_ids, dtype=object)[used])
        known = np.flatnonzero(rows >= 0)
        pick = sp.csr_matrix(
            (np.ones(len(known), np.float32), (known, rows[known])),
            shape=(len(track_ids), len(self)),
        )
        return sp.csr_matrix(plays @ pick)

    def same_artist_tracks(self, history: sp.csr_matrix) -> sp.csr_matrix:
        """(U, n) history -> (U, n) bool: tracks crediting any artist of the history (each
        artist of a multi-artist credit counts: the new-artist mode's exclusion)."""
        user_artists = sp.csr_matrix(history, dtype=np.float32) @ self.artists
        out = sp.csr_matrix(user_artists @ self.artists.T)
        out.data[:] = 1.0
        return out


@dataclass
class UserInputs:
    """The user side of the hybrid for a block of U users."""

    dna: np.ndarray  # (U, f) unit Vibe DNA (standardised space); 0 rows: no DNA
    dna_raw: np.ndarray  # (U, f) DNA in standardised units, before normalising
    shares: sp.csr_matrix  # (U, A) history tracks by each artist / |history|
    collab: np.ndarray | None  # (U, A_cf) ArtistCF scores, None without an artist model
    decoder_z: np.ndarray  # (U, n_catalogue) decoder z-scores
    history: sp.csr_matrix  # (U, n) binary: the users' history over the space
    usable: np.ndarray  # (U,) bool: something to score by (features, artists or catalogue)

    def select(self, which: np.ndarray | slice) -> UserInputs:
        """The users ``which`` (an index array, in that order; or a slice, whose dense
        inputs are views, not copies)."""
        return UserInputs(
            self.dna[which], self.dna_raw[which], self.shares[which],
            None if self.collab is None else self.collab[which], self.decoder_z[which],
            self.history[which], self.usable[which],
        )  # fmt: skip

    def padded(self, a: int, b: int, size: int) -> UserInputs:
        """Users a:b padded with empty users to ``size`` rows."""

        def dense(x: np.ndarray) -> np.ndarray:
            out = np.zeros((size, *x.shape[1:]), dtype=x.dtype)
            out[: b - a] = x[a:b]
            return out

        return UserInputs(
            dense(self.dna), dense(self.dna_raw), padded_rows(self.shares[a:b], size),
            None if self.collab is None else dense(self.collab), dense(self.decoder_z),
            padded_rows(self.history[a:b], size), dense(self.usable),
        )  # fmt: skip


class HybridScorer:
    """One model, one track space, one set of weights -> scores for blocks of users."""

    def __init__(
        self,
        model: HybridVAE,
        catalogue_features: np.ndarray,
        space: TrackSpace,
        weights: HybridWeights,
        temperature: float,
        top_k: int | None,
        artist_cf: ArtistCF | None = None,
        dna_anchor: float = 0.0,
    ) -> None:
        self.model = model
        self.dna_anchor = dna_anchor
        self.features = torch.from_numpy(np.asarray(catalogue_features, np.float32))
        self.space = space
        self.weights = weights
        self.temperature = temperature
        self.top_k = top_k
        self.artist_cf = artist_cf
        # where the hybrid scan keeps its index of this space between runs (None: built by
        # each process that needs it; see hybrid_scan.ScanIndex)
        self.index_files: IndexFiles | None = None
        self.cf_artists: sp.csr_matrix | None = None  # (n, A_cf) the space in CF columns
        self.cf_columns: np.ndarray | None = None  # (A,) CF column of each space artist, -1
        if artist_cf is not None:
            cols = pd.Index(artist_cf.vocabulary).get_indexer(space.artist_keys)
            self.cf_columns = cols.astype(np.int64)
            known = np.flatnonzero(cols >= 0)
            remap = sp.csr_matrix(
                (np.ones(len(known), np.float32), (known, cols[known])),
                shape=(len(space.artist_keys), artist_cf.n_artists),
            )
            self.cf_artists = sp.csr_matrix(space.artists @ remap)

    @classmethod
    def from_settings(
        cls,
        model: HybridVAE,
        catalogue_features: np.ndarray,
        space: TrackSpace,
        weights: HybridWeights,
        settings: DiscoverConfig,
        artist_cf: ArtistCF | None = None,
    ) -> HybridScorer:
        """The scorer with the DNA settings of a config's ``discover`` section."""
        s = settings
        return cls(
            model, catalogue_features, space, weights, s.temperature, s.top_k, artist_cf,
            s.dna_anchor,
        )  # fmt: skip

    def user_inputs(
        self,
        history: sp.csr_matrix,
        catalogue_plays: sp.csr_matrix,
        dna_anchor: float | None = None,
    ) -> UserInputs:
        """history: (U, n) plays over the space; catalogue_plays: (U, n_catalogue) plays;
        ``dna_anchor``: this call's anchor (a mode's own), else the scorer's.

        The model and the DNA run on fixed tiles of ``TILE`` users (padded), so a user's
        inputs, and so their report, never depend on who else is in the block."""
        history = sp.csr_matrix(history, dtype=np.float32)
        catalogue_plays = sp.csr_matrix(catalogue_plays, dtype=np.float32)
        binary = history.copy()
        binary.data[:] = 1.0
        n_users = history.shape[0]
        scores = np.empty((n_users, self.features.shape[0]), np.float32)
        dna_raw = np.empty((n_users, self.features.shape[1]), np.float32)
        device = next(self.model.parameters()).device
        anchor = self.dna_anchor if dna_anchor is None else dna_anchor
        for a in range(0, n_users, TILE):
            b = min(a + TILE, n_users)
            profile = self._profile(padded_rows(history[a:b], TILE))
            x = SparseRows.from_csr(padded_rows(catalogue_plays[a:b], TILE)).to(device)
            with one_torch_thread():
                _, tile = score_rows(self.model, x.binary(), profile.to(device))
            tile_np = tile.float().cpu().numpy()
            scores[a:b] = tile_np[: b - a]
            dna_tile = _vibe_dna(tile_np, self.features.numpy(), self.temperature, self.top_k)
            # anchored in what the user played: (1 - a) * model DNA + a * history profile
            dna_tile = (1.0 - anchor) * dna_tile + anchor * profile.numpy()
            dna_raw[a:b] = dna_tile[: b - a]
        collab = None
        if self.artist_cf is not None and self.cf_artists is not None:
            user_artists = sp.csr_matrix(binary @ self.cf_artists)
            user_artists.data[:] = 1.0
            collab = self.artist_cf.user_scores(user_artists)
        has_history = np.diff(binary.indptr) > 0
        has_catalogue = np.diff(catalogue_plays.indptr) > 0
        return UserInputs(
            dna=unit_rows(dna_raw),
            dna_raw=dna_raw,
            shares=artist_share_matrix(binary, self.space.artists),
            collab=collab,
            decoder_z=zscore_rows(scores),
            history=binary,
            usable=has_history | has_catalogue,
        )

    def _profile(self, history: sp.csr_matrix) -> torch.Tensor:
        """(U, f) log(1 + plays)-weighted mean of the standardised features of every history
        track with features (catalogue or not): what places a user the catalogue cannot."""
        weights = history.copy()
        # 0 where a track has no features, and dropped: a product with an (n, n) diagonal did
        # the same at the cost of building it per tile (2 x 8 MB per 64 users at n = 10^6)
        weights.data = np.log1p(weights.data) * self.space.has_features[weights.indices]
        weights.eliminate_zeros()
        total = np.asarray(weights.sum(axis=1)).ravel()
        mean = (weights @ self.space.standardised) / np.maximum(total, 1e-8)[:, None]
        return torch.from_numpy(np.asarray(mean, dtype=np.float32))

    def prepare_rows(self, rows: slice) -> dict[str, object]:
        """The track side of a contiguous slice of the space, shared by every user tile that
        scores it (sliced and converted once per chunk, not once per tile)."""
        s = self.space
        artists = sp.csr_matrix(s.artists[rows], dtype=np.float32)
        cf = None if self.cf_artists is None else sp.csr_matrix(self.cf_artists[rows])
        if cf is not None:
            cf.sort_indices()
        units = s.units[rows]  # on the grid already (see space_units)
        return {
            "units": units, "has_features": s.has_features[rows], "artists": artists,
            "catalogue_index": s.catalogue_index[rows], "cf_artists": cf,
            "grid_units": np.ascontiguousarray(units.T, np.float64),  # (f, C)
            "all_features": bool(s.has_features[rows].all()),
        }  # fmt: skip

    def score(
        self,
        users: UserInputs,
        rows: slice,
        weights: HybridWeights | None = None,
        prepared: dict[str, object] | None = None,
    ) -> np.ndarray:
        """(U, rows) hybrid scores for a contiguous slice of the space (no exclusions), with
        the scorer's weights unless others are given; ``prepared``: :meth:`prepare_rows` of
        the same slice.

        The parts of :func:`hybrid.score_direct`, with the DNA cosine computed exactly (unit
        vectors on the grid of :func:`dna.on_grid`, float64 sums without rounding) and then
        rounded to float32: a float32 product's rounding depended on the user's row in the
        tile, so a user's report could differ in the 6th decimal between ``discover --all``
        and ``discover user`` (2 of 20 users at 1,000,000 tracks)."""
        w = weights or self.weights
        p = self.prepare_rows(rows) if prepared is None else prepared
        total = score_direct(
            replace(w, dna=0.0, collab=0.0),
            user_shares=users.shares,
            chunk_artists=p["artists"],
            catalogue_index=p["catalogue_index"],
            user_decoder_z=users.decoder_z,
        )  # type: ignore[arg-type]
        if w.dna > 0:
            total += _dna_part(users.dna, p, np.float32(w.dna))
        if w.collab > 0 and users.collab is not None and p["cf_artists"] is not None:
            total += collab_part(np.float32(w.collab) * users.collab, p["cf_artists"])
        return total

    def parts(self, users: UserInputs, rows: slice) -> dict[str, np.ndarray]:
        """Each part alone, (U, rows) float32 (for weight fitting and the ``why`` column)."""
        s = self.space
        out = chunk_parts(
            user_dna=users.dna,
            track_units=s.units[rows],
            has_features=s.has_features[rows],
            user_shares=users.shares,
            chunk_artists=s.artists[rows],
            catalogue_index=s.catalogue_index[rows],
            user_decoder_z=users.decoder_z,
            only=("dna", "artist", "decoder"),
        )
        if users.collab is not None and self.cf_artists is not None:
            out["collab"] = collab_part(users.collab, self.cf_artists[rows])
        return out


def rank_space(
    scorer: HybridScorer,
    users: UserInputs,
    k: int,
    excluded: sp.csr_matrix | None = None,
    penalty: np.ndarray | None = None,
    chunk: int = 65_536,
    weights: HybridWeights | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k best space rows per user: (U, k) rows and (U, k) float32 scores, best first
    (score descending, then row ascending). Scores are computed on (``TILE``, ``SLICE``)
    tiles at fixed places, so neither they nor the ranking depend on ``chunk`` (rounded to
    whole slices) or on the other users.

    ``excluded`` (U, n) pairs are never returned (a user's history, new-artist exclusions);
    ``penalty`` (n,) is subtracted from every user's scores (inf: never returned). Slots a
    user cannot fill with a finite score hold -inf, on the lowest rows left (as a full sort
    would put them); slots beyond the space's size hold row -1. Memory: U x (2k + 1,024)
    plus the track side of one chunk, whatever the space's size.

    Chunk by chunk, every tile of ``TILE`` users (padded: the same arithmetic for a user
    alone) is scored and only the scores above the tile's current k-th best enter a
    streaming top k, so most of the chunk is compared once and never sorted."""
    n_users, n_space = users.dna.shape[0], len(scorer.space)
    k = int(k)
    excluded = None if excluded is None else sp.csr_matrix(excluded)
    tiles = [(a, min(a + TILE, n_users)) for a in range(0, n_users, TILE)]
    padded = [users.padded(a, b, TILE) for a, b in tiles]
    masks = [None if excluded is None else _by_column(excluded[a:b]) for a, b in tiles]
    best = [StreamingTopK(TILE, max(1, min(k, n_space))) for _ in tiles]
    with single_threaded_blas():  # thin products: BLAS threads only spin (see scan)
        _rank_chunks(scorer, padded, masks, best, penalty, chunk, weights)
    rows_out = np.full((n_users, k), -1, np.int64)
    scores_out = np.full((n_users, k), -np.inf, np.float32)
    for (a, b), top in zip(tiles, best, strict=True):
        ids, values = top.result()
        width = ids.shape[1]
        rows_out[a:b, :width], scores_out[a:b, :width] = ids[: b - a], values[: b - a]
    _fill_unscored(rows_out, scores_out, min(k, n_space))
    return rows_out, scores_out


def _rank_chunks(
    scorer: HybridScorer,
    padded: list[UserInputs],
    masks: list[tuple[np.ndarray, np.ndarray] | None],
    best: list[StreamingTopK],
    penalty: np.ndarray | None,
    chunk: int,
    weights: HybridWeights | None,
) -> None:
    """Every chunk of the space once, for every tile of users (see :func:`rank_space`); the
    tiles are shared between worker threads (numpy and scipy release the GIL in the large
    steps), each tile computed exactly as alone."""
    n_space = len(scorer.space)
    chunk = max(SLICE, chunk - chunk % SLICE)  # whole slices: the same tiles for any chunk
    n_workers = max(1, min(workers(), len(padded)))
    groups = [list(range(w, len(padded), n_workers)) for w in range(n_workers)]

    def run(group: list[int], pieces: list[slice], prepared: list[dict[str, object]]) -> None:
        for t in group:
            for rows, track_side in zip(pieces, prepared, strict=True):
                scores = scorer.score(padded[t], rows, weights, track_side)
                if penalty is not None:
                    scores -= penalty[rows].astype(np.float32)
                if masks[t] is not None:  # (user, row) pairs sorted by row
                    users, cols = masks[t]  # type: ignore[misc]
                    a, b = np.searchsorted(cols, (rows.start, rows.stop))
                    scores[users[a:b], cols[a:b] - rows.start] = -np.inf
                _push_chunk(best[t], scores, rows.start)

    with ThreadPoolExecutor(n_workers) as pool:
        for start in range(0, n_space, chunk):
            stop = min(start + chunk, n_space)
            # (TILE, SLICE) float32 scores stay in cache while every step of the score runs
            # (1,000,000 tracks x 256 users: 0.89 CPU s with 8,192, 0.78 with 16,384 or more)
            pieces = [slice(a, min(a + SLICE, stop)) for a in range(start, stop, SLICE)]
            prepared = [scorer.prepare_rows(rows) for rows in pieces]  # once for every tile
            jobs = [pool.submit(run, g, pieces, prepared) for g in groups]
            for job in jobs:
                job.result()


def _by_column(rows: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """(b, n) sparse pairs -> (user, column) int arrays sorted by column."""
    coo = sp.coo_matrix(rows)
    order = np.argsort(coo.col, kind="stable")
    return coo.row[order].astype(np.int64), coo.col[order].astype(np.int64)


def _push_chunk(top: StreamingTopK, scores: np.ndarray, start: int) -> None:
    """The (TILE, C) finite scores of a slice that can still enter each user's top k: above
    the user's k-th best so far (a tie loses to the lower row kept); a user without a k-th
    best yet takes the slice's own top k (the rest of the slice is beaten by k of it)."""
    bar = top.threshold.astype(np.float32)  # exact: the kept scores are float32 values
    short = np.isneginf(bar)
    if short.any() and scores.shape[1] > top.k:
        users = np.flatnonzero(short)
        cols = top_k(scores[users], top.k)  # (short, k), best first, ties by column
        rows = np.repeat(users, top.k)
        cols = cols.ravel()
        values = scores[rows, cols]
        ok = values > -np.inf
        top.push(rows[ok], start + cols[ok], values[ok])
        top.settle(users)  # their k-th best from now on: the next slices are compared to it
        bar[users] = np.inf  # done for this slice
    hits = np.flatnonzero(scores > bar[:, None])  # -inf never passes
    if len(hits):
        rows, cols = np.divmod(hits, scores.shape[1])
        top.push(rows, start + cols, scores[rows, cols])


def _fill_unscored(rows: np.ndarray, scores: np.ndarray, width: int) -> None:
    """Slots past a user's finite scores (up to ``width``) get the lowest rows not already
    listed, score -inf: where a full sort (score, then row) puts them."""
    for u in np.flatnonzero(~np.isfinite(scores[:, :width]).all(axis=1)):
        finite = int(np.isfinite(scores[u]).sum())
        taken = rows[u, :finite]
        free = np.setdiff1d(np.arange(width + finite), taken)[: width - finite]
        rows[u, finite:width] = free
        scores[u, finite:width] = -np.inf


def _dna_part(user_dna: np.ndarray, prepared: dict[str, object], weight: np.float32) -> np.ndarray:
    """(U, C) float32 weight x cosine, 0 for a track without features or a user without a
    finite DNA; each cosine is exact on the grid, whatever the tile (see HybridScorer.score).
    Costs a float64 product: +0.4 ms per (64 x 16,384) tile against a float32 one."""
    dna = np.asarray(user_dna, np.float32)
    finite = np.isfinite(dna).all(axis=1)
    grid = on_grid(np.where(finite[:, None], dna, 0.0))  # (U, f) float64
    exact = grid @ prepared["grid_units"]  # type: ignore[operator]  # (U, C) float64, exact
    cos = exact.astype(np.float32)
    cos *= weight
    if not prepared["all_features"]:
        cos[:, ~np.asarray(prepared["has_features"], bool)] = 0.0
    return cos


@contextlib.contextmanager
def one_torch_thread() -> Iterator[None]:
    """Torch on one CPU thread for a 64-row model call: a call is a few small ops, and with
    torch's default two threads on a loaded 2-core machine each op waited for the second
    thread to be scheduled: discover's model calls took 70 ms each instead of 0.5 ms
    (1,024 users: 1.1 s against 0.01 s; docs/BENCHMARKS.md). No effect on other devices."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def padded_rows(rows: sp.csr_matrix, size: int) -> sp.csr_matrix:
    """(b, m) -> (size, m): empty rows appended."""
    rows = sp.csr_matrix(rows)
    if rows.shape[0] == size:
        return rows
    pad = sp.csr_matrix((size - rows.shape[0], rows.shape[1]), dtype=rows.dtype)
    return sp.vstack([rows, pad], format="csr")


def _vibe_dna(
    scores: np.ndarray, features: np.ndarray, temperature: float, top_k: int | None
) -> np.ndarray:
    """(U, n_catalogue) decoder scores -> (U, f) temperature-weighted mean of the top-k
    catalogue tracks' standardised features (the Vibe DNA)."""
    return np.asarray(vibe_dna(scores, features, temperature, top_k), dtype=np.float32)
