"""Discovery protocols: rank every database track for users with part of their tracks held out.

Definitions: /work/shared/design/discovery-protocols.md (docs/ copy: the database-ranking and
new-artist protocols). In short:

- **database ranking**: pairs deduplicated; every user with >= 5 tracks holds out
  ``int(0.2 * n)`` random tracks, the rest is the fold-in (users with fewer are fold-in only);
  every database track is ranked with the fold-in masked; NDCG@100 and truncated Recall@k over
  users with held-out tracks; a user the method cannot score counts as 0.
- **new artist**: the held-out set keeps only tracks with no artist among the fold-in
  tracks' artists, and every track by a fold-in artist leaves the candidates.

The split's random stream is ``numpy.random.default_rng([seed, 4])``, one permutation per user
in row order, the first ``int(0.2 n)`` of it held out. With rows in sorted playlist-id order and
columns in the database's order this reproduces the doc's reference figures at seed 98765
(content 0.137, artist share 0.361 on spotify-2024).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

from deepvibe.ranking.metrics import mask_seen, ndcg_at_k, recall_at_k, top_k

# The second word of the split's seed sequence: default_rng([seed, SPLIT_STREAM]).
SPLIT_STREAM = 4


@dataclass(frozen=True)
class DatabaseSplit:
    """Rows align with ``user_ids``; columns are database tracks."""

    user_ids: np.ndarray  # (U,)
    foldin: sp.csr_matrix  # (U, n_db) float32 binary: what the method is shown
    heldout: sp.csr_matrix  # (U, n_db) float32 binary: empty rows for users with < min_tracks


def binary_pairs(user_tracks: sp.spmatrix) -> sp.csr_matrix:
    """Deduplicated (user, track) pairs as a float32 binary CSR with sorted indices."""
    m = sp.csr_matrix(user_tracks, dtype=np.float32, copy=True)
    m.sum_duplicates()
    m.eliminate_zeros()
    m.data[:] = 1.0
    m.sort_indices()
    return m


def _csr(rows: list[np.ndarray], cols: list[np.ndarray], shape: tuple[int, int]) -> sp.csr_matrix:
    r = np.concatenate(rows) if rows else np.zeros(0, np.int64)
    c = np.concatenate(cols) if cols else np.zeros(0, np.int64)
    return sp.csr_matrix((np.ones(len(r), np.float32), (r, c)), shape=shape)


def database_split(
    user_tracks: sp.spmatrix,
    user_ids: np.ndarray,
    seed: int,
    holdout_fraction: float = 0.2,
    min_tracks: int = 5,
) -> DatabaseSplit:
    """(U, n_db) plays -> fold-in / held-out per the database-ranking protocol. The caller has
    already dropped tracks without audio features (step 1) from the columns."""
    matrix = binary_pairs(user_tracks)
    if len(user_ids) != matrix.shape[0]:
        raise ValueError(f"{len(user_ids)} user ids for {matrix.shape[0]} rows")
    rng = np.random.default_rng([seed, SPLIT_STREAM])
    fold_r, fold_c, held_r, held_c = [], [], [], []
    for u in range(matrix.shape[0]):
        cols = matrix.indices[matrix.indptr[u] : matrix.indptr[u + 1]]
        n_held = int(holdout_fraction * len(cols)) if len(cols) >= min_tracks else 0
        perm = rng.permutation(len(cols)) if n_held else np.arange(len(cols))
        held_r.append(np.full(n_held, u))
        held_c.append(cols[perm[:n_held]])
        fold_r.append(np.full(len(cols) - n_held, u))
        fold_c.append(cols[perm[n_held:]])
    return DatabaseSplit(
        np.asarray(user_ids),
        _csr(fold_r, fold_c, matrix.shape),
        _csr(held_r, held_c, matrix.shape),
    )


def credit_matrix(track_artists: sp.spmatrix) -> sp.csr_matrix:
    """(n_db, A) per-artist -> (n_db, n_credits): one column per distinct set of artists, so a
    whole credit ("A, B") counts as one artist. Tracks without artists have an empty row."""
    ta = binary_pairs(track_artists)
    keys = [ta.indices[ta.indptr[t] : ta.indptr[t + 1]].tobytes() for t in range(ta.shape[0])]
    has = np.diff(ta.indptr) > 0
    _, codes = np.unique(np.array(keys, dtype=object), return_inverse=True)
    rows = np.flatnonzero(has)
    codes_used, cols = np.unique(codes[rows], return_inverse=True)
    return sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, cols)), shape=(ta.shape[0], len(codes_used))
    )


def tracks_by_artists_of(foldin: sp.spmatrix, track_artists: sp.spmatrix) -> sp.csr_matrix:
    """(U, n_db) binary: tracks sharing at least one artist with the user's fold-in tracks."""
    ta = binary_pairs(track_artists)
    user_artists = (sp.csr_matrix(foldin) @ ta) > 0  # (U, A)
    return binary_pairs((user_artists.astype(np.float32) @ ta.T) > 0)


def new_artist_view(
    foldin: sp.spmatrix,
    heldout: sp.spmatrix,
    track_artists: sp.spmatrix,
    unit: Literal["credit", "artist"] = "artist",
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """(heldout_filtered, candidate_exclusion), both (U, n_db) binary CSR.

    ``unit="credit"``: an artist is the track's whole credit (the doc's reference figures,
    measured with the unsplit artist string); ``"artist"``: each credited artist on its own,
    so a track featuring a fold-in artist is not new."""
    if unit not in ("credit", "artist"):
        raise ValueError(f"unit must be 'credit' or 'artist', got {unit!r}")
    ta = credit_matrix(track_artists) if unit == "credit" else binary_pairs(track_artists)
    exclusion = tracks_by_artists_of(foldin, ta)
    held = binary_pairs(heldout)
    filtered = binary_pairs(held - held.multiply(exclusion))
    return filtered, exclusion


@dataclass(frozen=True)
class DiscoveryResult:
    metrics: dict[str, float]  # e.g. {"ndcg@100": ..., "recall@50": ...}, mean over users
    n_users: int  # users with >= 1 held-out track (all counted)
    n_unscored: int  # of those, users the method could not score (counted as 0)
    per_user: dict[str, np.ndarray]  # metric -> (n_users,)
    users: np.ndarray  # (n_users,) row indices


# Scores database tracks for a set of rows: (n,) row indices -> (n, n_db); an all-NaN (or
# all-infinite) row means "cannot score this user".
RowScoreFn = Callable[[np.ndarray], np.ndarray]


def evaluate_database(
    score_rows: RowScoreFn,
    foldin: sp.spmatrix,
    heldout: sp.spmatrix,
    exclusion: sp.spmatrix | None = None,
    names: tuple[str, ...] = ("ndcg@100", "recall@20", "recall@50"),
    chunk_size: int = 256,
) -> DiscoveryResult:
    """Rank every database track for users with held-out tracks, fold-in (and exclusion)
    masked. Non-finite scores rank last; users whose row is entirely non-finite score 0."""
    foldin, heldout = sp.csr_matrix(foldin), binary_pairs(heldout)
    exclusion = None if exclusion is None else sp.csr_matrix(exclusion)
    users = np.flatnonzero(np.diff(heldout.indptr) > 0)
    k_max = max(int(n.split("@")[1]) for n in names)
    per_user = {n: np.zeros(len(users)) for n in names}
    n_unscored = 0
    for start in range(0, len(users), chunk_size):
        rows = users[start : start + chunk_size]
        scores = np.array(score_rows(rows), dtype=np.float64)  # (n, n_db) copy
        scorable = np.isfinite(scores).any(axis=1)
        n_unscored += int((~scorable).sum())
        scores[~np.isfinite(scores)] = -np.inf
        mask_seen(scores, foldin[rows])
        if exclusion is not None:
            mask_seen(scores, exclusion[rows])
        ranked = top_k(scores, k_max)
        held = heldout[rows]
        for name in names:
            metric, k = name.split("@")
            fn = {"ndcg": ndcg_at_k, "recall": recall_at_k}[metric]
            per_user[name][start : start + len(rows)] = fn(ranked, held, int(k)) * scorable
    means = {n: float(v.mean()) if len(v) else float("nan") for n, v in per_user.items()}
    return DiscoveryResult(means, len(users), n_unscored, per_user, users)
