"""Discovery baselines exactly as /work/shared/design/discovery-protocols.md defines them.

Each scores every database track for a block of users from their fold-in tracks F and returns
(U, n_db) float64; pass a slice of rows to work in user chunks. Inputs:

- ``foldin``: (U, n_db) binary CSR of fold-in tracks;
- ``z_features``: (n_db, f) audio features standardised over the database
  (:func:`standardise`);
- ``track_artists``: (n_db, A) binary CSR; for the doc's reference figures pass the whole
  credit as one artist (``ranking.discovery_protocol.credit_matrix``);
- ``popularity``: (n_db,).

When a track has several artists, artist scores are summed over them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


def standardise(features: np.ndarray) -> np.ndarray:
    """(n_db, f) -> z-scores over the database; a constant column stays 0."""
    features = np.asarray(features, dtype=np.float64)
    mean, std = features.mean(axis=0), features.std(axis=0)
    return (features - mean) / np.where(std > 0, std, 1.0)


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _counts(foldin: sp.spmatrix) -> np.ndarray:
    return np.asarray(sp.csr_matrix(foldin).sum(axis=1)).ravel()  # (U,) |F|


def popularity_scores(foldin: sp.spmatrix, popularity: np.ndarray) -> np.ndarray:
    """(U, n_db): the track's popularity for every user."""
    pop = np.asarray(popularity, dtype=np.float64)
    return np.broadcast_to(pop, (foldin.shape[0], len(pop))).copy()


def content_mean_scores(foldin: sp.spmatrix, z_features: np.ndarray) -> np.ndarray:
    """(U, n_db): cosine(z_track, mean of z over F)."""
    foldin = sp.csr_matrix(foldin, dtype=np.float64)
    profile = (foldin @ z_features) / np.maximum(_counts(foldin), 1)[:, None]  # (U, f)
    return _unit_rows(profile) @ _unit_rows(z_features).T


def artist_share(foldin: sp.spmatrix, track_artists: sp.spmatrix) -> np.ndarray:
    """(U, n_db): tracks in F by the candidate's artist(s) / |F|."""
    foldin = sp.csr_matrix(foldin, dtype=np.float64)
    per_artist = foldin @ track_artists  # (U, A) tracks in F by each artist
    summed = (per_artist @ sp.csr_matrix(track_artists).T).toarray()  # (U, n_db)
    return summed / np.maximum(_counts(foldin), 1)[:, None]


def artist_share_scores(
    foldin: sp.spmatrix, z_features: np.ndarray, track_artists: sp.spmatrix
) -> np.ndarray:
    """(U, n_db): content mean + 100 x artist share (content is the tie-break)."""
    return content_mean_scores(foldin, z_features) + 100.0 * artist_share(foldin, track_artists)


@dataclass(frozen=True)
class ArtistCooccurrence:
    """C = AᵀA (zero diagonal) over the fold-in rows of ALL users, and users per artist."""

    counts: sp.csr_matrix  # (A, A) co-listener counts, zero diagonal
    users_per_artist: np.ndarray  # (A,)

    @classmethod
    def fit(cls, all_foldin: sp.spmatrix, track_artists: sp.spmatrix) -> ArtistCooccurrence:
        user_artists = ((sp.csr_matrix(all_foldin) @ track_artists) > 0).astype(np.float64)
        counts = sp.csr_matrix(user_artists.T @ user_artists)
        counts.setdiag(0.0)
        counts.eliminate_zeros()
        return cls(counts, np.asarray(user_artists.sum(axis=0)).ravel())


def cooccurrence_scores(
    foldin: sp.spmatrix, track_artists: sp.spmatrix, cooc: ArtistCooccurrence
) -> np.ndarray:
    """(U, n_db): sum over F's distinct artists a of C[a, b] / sqrt(1 + users of b), summed
    over the candidate's artists b."""
    user_artists = ((sp.csr_matrix(foldin) @ track_artists) > 0).astype(np.float64)  # (U, A)
    per_artist = (user_artists @ cooc.counts).toarray() / np.sqrt(1.0 + cooc.users_per_artist)
    return np.asarray(sp.csr_matrix(track_artists) @ per_artist.T).T  # (U, n_db)


def cooccurrence_blend_scores(
    foldin: sp.spmatrix,
    z_features: np.ndarray,
    track_artists: sp.spmatrix,
    cooc: ArtistCooccurrence,
    exclusion: sp.spmatrix | None = None,
) -> np.ndarray:
    """(U, n_db): content + co-occurrence / its maximum over the user's candidates (tracks not
    in F nor in ``exclusion``); a user whose maximum is <= 0 gets content + the raw score."""
    score = cooccurrence_scores(foldin, track_artists, cooc)
    masked = score.copy()
    masked[sp.csr_matrix(foldin).nonzero()] = -np.inf
    if exclusion is not None:
        masked[sp.csr_matrix(exclusion).nonzero()] = -np.inf
    top = masked.max(axis=1)
    top = np.where(np.isfinite(top) & (top > 0), top, 1.0)
    return content_mean_scores(foldin, z_features) + score / top[:, None]
