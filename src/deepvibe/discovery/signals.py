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

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from deepvibe.config import DiscoverConfig
from deepvibe.data.artists import artist_matrix
from deepvibe.data.tables import FeatureScaler, TrackTable
from deepvibe.discovery.dna import vibe_dna
from deepvibe.discovery.hybrid import (
    HybridWeights,
    artist_share_matrix,
    chunk_parts,
    collab_part,
    score_direct,
    unit_rows,
    zscore_rows,
)
from deepvibe.model.artist_cf import ArtistCF
from deepvibe.model.inference import score_rows
from deepvibe.model.sparse import SparseRows
from deepvibe.model.vae import HybridVAE
from deepvibe.ranking.topk import top_k

TILE = 64  # users per model call and per scoring tile (padded: one fixed shape)


@dataclass(frozen=True)
class TrackSpace:
    """Every track the hybrid may rank; rows are the space's own order."""

    track_ids: np.ndarray  # (n,) str
    units: np.ndarray  # (n, f) float32 unit rows of the standardised features (0 if unknown)
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
        if raw.shape[1]:
            z[has] = scaler.transform(raw[has]).astype(np.float32)
        lists = table.artist_lists if table.artist_lists is not None else [()] * n
        keys, incidence = artist_matrix(lists)
        popularity = (
            np.full(n, np.nan, np.float32)
            if table.popularity is None
            else np.asarray(table.popularity, np.float32)
        )
        return cls(
            track_ids=np.asarray(table.track_ids, dtype=object),
            units=unit_rows(z),
            standardised=z,
            has_features=has,
            artists=incidence.tocsr(),
            artist_keys=keys,
            catalogue_index=pd.Index(np.asarray(catalogue_ids, dtype=object))
            .get_indexer(table.track_ids)
            .astype(np.int64),
            popularity=popularity,
            names=table.names,
        )

    def __len__(self) -> int:
        return len(self.track_ids)

    def rows_of(self, track_ids: np.ndarray) -> np.ndarray:
        """Space row of each id, -1 where the space does not hold it (a hash lookup)."""
        return pd.Index(self.track_ids).get_indexer(np.asarray(track_ids, dtype=object))

    def to_space(self, plays: sp.csr_matrix, track_ids: np.ndarray) -> sp.csr_matrix:
        """(U, len(track_ids)) plays -> (U, n) over the space's rows; unknown tracks drop."""
        rows = self.rows_of(track_ids)
        known = np.flatnonzero(rows >= 0)
        pick = sp.csr_matrix(
            (np.ones(len(known), np.float32), (known, rows[known])),
            shape=(len(track_ids), len(self)),
        )
        return sp.csr_matrix(sp.csr_matrix(plays, dtype=np.float32) @ pick)

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
        self.cf_artists: sp.csr_matrix | None = None  # (n, A_cf) the space in CF columns
        if artist_cf is not None:
            cols = pd.Index(artist_cf.vocabulary).get_indexer(space.artist_keys)
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
        weights.data = np.log1p(weights.data)
        weights = sp.csr_matrix(weights @ sp.diags(self.space.has_features.astype(np.float32)))
        total = np.asarray(weights.sum(axis=1)).ravel()
        mean = (weights @ self.space.standardised) / np.maximum(total, 1e-8)[:, None]
        return torch.from_numpy(np.asarray(mean, dtype=np.float32))

    def score(
        self, users: UserInputs, rows: slice, weights: HybridWeights | None = None
    ) -> np.ndarray:
        """(U, rows) hybrid scores for a contiguous slice of the space (no exclusions), with
        the scorer's weights unless others are given."""
        w, s = weights or self.weights, self.space
        total = score_direct(
            replace(w, collab=0.0),
            user_dna=users.dna,
            track_units=s.units[rows],
            has_features=s.has_features[rows],
            user_shares=users.shares,
            chunk_artists=s.artists[rows],
            catalogue_index=s.catalogue_index[rows],
            user_decoder_z=users.decoder_z,
        )
        if w.collab > 0 and users.collab is not None and self.cf_artists is not None:
            total += collab_part(np.float32(w.collab) * users.collab, self.cf_artists[rows])
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
    (score descending, then row ascending: the result never depends on ``chunk``).

    ``excluded`` (U, n) pairs are never returned (a user's history, new-artist exclusions);
    ``penalty`` (n,) is subtracted from every user's scores (inf: never returned). Slots a
    user cannot fill hold -inf. Memory: U x (chunk + k), whatever the space's size."""
    n_users = users.dna.shape[0]
    rows_out = np.full((n_users, k), -1, np.int64)
    scores_out = np.full((n_users, k), -np.inf, np.float32)
    excluded = None if excluded is None else sp.csr_matrix(excluded)
    for a in range(0, n_users, TILE):  # fixed tiles: the same arithmetic for a user alone
        b = min(a + TILE, n_users)
        tile = users.padded(a, b, TILE)
        masked = None if excluded is None else padded_rows(excluded[a:b], TILE)
        r, v = _rank_tile(scorer, tile, k, masked, penalty, chunk, weights)
        width = r.shape[1]
        rows_out[a:b, :width], scores_out[a:b, :width] = r[: b - a], v[: b - a]
    return rows_out, scores_out


def _rank_tile(
    scorer: HybridScorer,
    users: UserInputs,
    k: int,
    excluded: sp.csr_matrix | None,
    penalty: np.ndarray | None,
    chunk: int,
    weights: HybridWeights | None,
) -> tuple[np.ndarray, np.ndarray]:
    n_users = users.dna.shape[0]
    best_scores = np.full((n_users, 0), -np.inf, np.float32)
    best_rows = np.zeros((n_users, 0), np.int64)
    for start in range(0, len(scorer.space), chunk):
        rows = slice(start, min(start + chunk, len(scorer.space)))
        scores = scorer.score(users, rows, weights)
        if penalty is not None:
            scores -= penalty[rows].astype(np.float32)
        if excluded is not None:
            seen = excluded[:, rows].tocoo()
            scores[seen.row, seen.col] = -np.inf
        ids = np.broadcast_to(np.arange(rows.start, rows.stop, dtype=np.int64), scores.shape)
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_rows = np.concatenate([best_rows, ids], axis=1)
        keep = top_k(best_scores, k, best_rows)
        best_scores = np.take_along_axis(best_scores, keep, axis=1)
        best_rows = np.take_along_axis(best_rows, keep, axis=1)
    return best_rows, best_scores


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
