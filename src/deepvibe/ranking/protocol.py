"""The strong-generalization protocol (Liang et al. 2018): users, not interactions, are held
out; a held-out user's tracks are split into a fold-in part the model sees and a part it must
rank."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp


def split_users(
    user_ids: np.ndarray, fractions: tuple[float, ...], rng: np.random.Generator
) -> list[np.ndarray]:
    """Shuffle users once and cut them into groups: the first group gets what the fractions
    leave over, then one group per fraction (e.g. (0.1, 0.1) -> train, validation, test)."""
    users = np.asarray(user_ids)
    perm = rng.permutation(len(users))
    sizes = [int(round(f * len(users))) for f in fractions]
    n_first = len(users) - sum(sizes)
    if n_first <= 0:
        raise ValueError(f"fractions {fractions} leave no training users out of {len(users)}")
    bounds = np.cumsum([0, n_first, *sizes])
    return [users[perm[a:b]] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


@dataclass(frozen=True)
class FoldIn:
    """Held-out users' vectors split in two; rows align with ``users``."""

    users: np.ndarray  # (n,) user ids
    foldin: sp.csr_matrix  # (n, n_tracks) what the model is shown (plays)
    heldout: sp.csr_matrix  # (n, n_tracks) what it must rank (plays)


def foldin_split(
    users: np.ndarray,
    matrix: sp.csr_matrix,
    holdout_fraction: float,
    rng: np.random.Generator,
    min_items: int = 5,
) -> FoldIn:
    """For each row with >= ``min_items`` tracks hold out n - int((1 - f) n) random tracks
    (Liang et al.'s rule); rows with fewer are dropped, since they cannot be scored."""
    matrix = matrix.tocsr()
    counts = np.diff(matrix.indptr)
    keep = np.flatnonzero(counts >= min_items)
    fold_rows: list[np.ndarray] = []
    fold_cols: list[np.ndarray] = []
    fold_vals: list[np.ndarray] = []
    held_rows: list[np.ndarray] = []
    held_cols: list[np.ndarray] = []
    held_vals: list[np.ndarray] = []
    for new_r, r in enumerate(keep):
        start, end = matrix.indptr[r], matrix.indptr[r + 1]
        cols = matrix.indices[start:end]
        vals = matrix.data[start:end]
        n = end - start
        n_fold = int((1.0 - holdout_fraction) * n)
        perm = rng.permutation(n)
        f_idx, h_idx = perm[:n_fold], perm[n_fold:]
        fold_rows.append(np.full(len(f_idx), new_r))
        fold_cols.append(cols[f_idx])
        fold_vals.append(vals[f_idx])
        held_rows.append(np.full(len(h_idx), new_r))
        held_cols.append(cols[h_idx])
        held_vals.append(vals[h_idx])
    shape = (len(keep), matrix.shape[1])

    def build(
        rows: list[np.ndarray], cols: list[np.ndarray], vals: list[np.ndarray]
    ) -> sp.csr_matrix:
        if not rows:
            return sp.csr_matrix(shape, dtype=np.float32)
        return sp.csr_matrix(
            (np.concatenate(vals).astype(np.float32), (np.concatenate(rows), np.concatenate(cols))),
            shape=shape,
        )

    return FoldIn(
        np.asarray(users)[keep],
        build(fold_rows, fold_cols, fold_vals),
        build(held_rows, held_cols, held_vals),
    )
