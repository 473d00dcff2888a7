"""Batches cut from the CSR arrays equal what the dense loop built, entry for entry."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from deepvibe.model.vae import audio_profile
from deepvibe.training.batches import TrainingRows


def _user_items(n_rows: int = 50, n_tracks: int = 80, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    plays = rng.integers(1, 20, size=(n_rows, n_tracks)) * (rng.random((n_rows, n_tracks)) < 0.15)
    plays[7] = 0  # a row without plays
    return sp.csr_matrix(plays.astype(np.float32))


def test_batch_equals_the_dense_construction() -> None:
    user_items = _user_items()
    feats = np.random.default_rng(1).normal(size=(80, 4)).astype(np.float32)
    rows = TrainingRows(user_items, feats, torch.device("cpu"))
    picked = np.array([5, 7, 0, 49, 12])
    batch = rows.batch(picked, torch.Generator().manual_seed(3), 0.3)

    dense = torch.from_numpy(user_items[picked].toarray())
    target = (dense > 0).float()
    # the keep mask is one draw per played entry, in row-major order
    draws = torch.rand(int(target.sum()), generator=torch.Generator().manual_seed(3))
    keep = torch.zeros_like(target)
    keep[target > 0] = (draws >= 0.3).float()
    noised = dense * keep
    assert torch.equal(batch.target.to_dense(), target)
    assert torch.equal(batch.x.to_dense(), (noised > 0).float())
    t_feats = torch.from_numpy(feats)
    assert torch.allclose(batch.profile, audio_profile(noised, t_feats), atol=1e-6)
    assert torch.allclose(batch.profile_target, audio_profile(dense, t_feats), atol=1e-6)
    assert batch.size == 5 and batch.x.n_rows == 5


def test_same_noise_same_batch_and_dropout_rate() -> None:
    user_items = _user_items(400, 300, seed=2)
    rows = TrainingRows(user_items, np.zeros((300, 0), np.float32), torch.device("cpu"))
    picked = np.arange(400)
    a = rows.batch(picked, torch.Generator().manual_seed(9), 0.25)
    b = rows.batch(picked, torch.Generator().manual_seed(9), 0.25)
    assert torch.equal(a.x.indices, b.x.indices) and torch.equal(a.x.crow, b.x.crow)
    share_dropped = 1 - a.x.nnz / a.target.nnz
    assert abs(share_dropped - 0.25) < 0.02  # ~18,000 entries
    assert a.profile.shape == (400, 0)
