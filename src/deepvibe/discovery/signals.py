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
    ) -> None:
        self.model = model
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

    def user_inputs(self, history: sp.csr_matrix, catalogue_plays: sp.csr_matrix) -> UserInputs:
        """history: (U, n) plays over the space; catalogue_plays: (U, n_catalogue) plays."""
        history = sp.csr_matrix(history, dtype=np.float32)
        binary = history.copy()
        binary.data[:] = 1.0
        profile = self._profile(history)
        device = self.features.device
        x = SparseRows.from_csr(sp.csr_matrix(catalogue_plays, dtype=np.float32)).to(device)
        _, scores = score_rows(self.model, x.binary(), profile.to(device))
        scores_np = scores.float().cpu().numpy()
        dna_raw = _vibe_dna(scores_np, self.features.numpy(), self.temperature, self.top_k)
        has_history = np.diff(binary.indptr) > 0
        has_catalogue = np.diff(sp.csr_matrix(catalogue_plays).indptr) > 0
        collab = None
        if self.artist_cf is not None and self.cf_artists is not None:
            user_artists = sp.csr_matrix(binary @ self.cf_artists)
            user_artists.data[:] = 1.0
            collab = self.artist_cf.user_scores(user_artists)
        return UserInputs(
            dna=unit_rows(dna_raw),
            dna_raw=dna_raw,
            shares=artist_share_matrix(binary, self.space.artists),
            collab=collab,
            decoder_z=zscore_rows(scores_np),
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


def _vibe_dna(
    scores: np.ndarray, features: np.ndarray, temperature: float, top_k: int | None
) -> np.ndarray:
    """(U, n_catalogue) decoder scores -> (U, f) temperature-weighted mean of the top-k
    catalogue tracks' standardised features (the Vibe DNA)."""
    return np.asarray(vibe_dna(scores, features, temperature, top_k), dtype=np.float32)
