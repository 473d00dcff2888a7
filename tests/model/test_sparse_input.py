"""The sparse path (SparseRows through the first layer, the audio profile and the loss) gives
what the dense path gives, values and gradients, and checkpoints keep nn.Linear's layout."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from deepvibe.model import vae
from deepvibe.model.loss import multinomial_nll, vae_loss, weighted_mse
from deepvibe.model.sparse import SparseRows
from deepvibe.model.vae import HybridVAE, VAEArch, audio_profile


def _plays(n_rows: int = 7, n_cols: int = 40, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    plays = rng.integers(1, 9, size=(n_rows, n_cols)) * (rng.random((n_rows, n_cols)) < 0.2)
    plays[3] = 0  # a user with nothing left (e.g. everything dropped)
    return plays.astype(np.float32)


def test_sparse_rows_round_trip_and_keep() -> None:
    plays = _plays()
    plays[0, 0] = -2.0  # not a play: dropped
    rows = SparseRows.from_csr(sp.csr_matrix(plays))
    expected = np.where(plays > 0, plays, 0)
    assert rows.shape == plays.shape and rows.nnz == int((plays > 0).sum())
    assert np.array_equal(rows.to_dense().numpy(), expected)
    assert np.array_equal(rows.lengths().numpy(), (plays > 0).sum(1))
    mask = torch.arange(rows.nnz) % 3 != 0
    kept = rows.keep(mask)
    dense_mask = torch.zeros(plays.shape)
    dense_mask[rows.row_ids(), rows.indices] = mask.float()
    assert torch.equal(kept.to_dense(), rows.to_dense() * dense_mask)
    assert kept.n_rows == rows.n_rows  # emptied rows stay in place


@pytest.mark.parametrize("n_features", [0, 3])
def test_sparse_encoder_equals_dense_values_and_gradients(n_features: int) -> None:
    torch.manual_seed(0)
    model = HybridVAE(VAEArch(40, n_features, (16, 8), 4))
    x = torch.from_numpy((_plays() > 0).astype(np.float32))
    profile = torch.randn(x.shape[0], n_features)
    sparse = SparseRows.from_csr(sp.csr_matrix(x.numpy()))
    grads = []
    for inp in (x, sparse):
        model.zero_grad()
        mu, logvar = model.encode(inp, profile)
        (mu.sum() + logvar.square().sum()).backward()
        grads.append([p.grad.clone() for p in model.parameters() if p.grad is not None])
        if inp is x:
            dense_out = (mu.detach(), logvar.detach())
    assert torch.allclose(mu, dense_out[0], atol=1e-6)
    assert torch.allclose(logvar, dense_out[1], atol=1e-6)
    for a, b in zip(*grads, strict=True):
        assert torch.allclose(a, b, atol=1e-5)
    empty = model.encode(torch.zeros(1, 40), profile[3:4])[0]  # a user with no track left
    assert torch.allclose(mu[3], empty[0], atol=1e-6)


def test_first_layer_is_stored_as_nn_linear_would_store_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    torch.manual_seed(1)
    model = HybridVAE(VAEArch(30, 2, (16,), 4))
    state = model.state_dict()
    assert state["encoder.0.weight"].shape == (16, 32) and "encoder.0.weight_t" not in state
    # the same seed gives the same initial weights as the plain nn.Linear stack
    monkeypatch.setattr(vae, "SparseInputLinear", lambda linear: linear)
    torch.manual_seed(1)
    plain = HybridVAE(VAEArch(30, 2, (16,), 4))
    assert isinstance(plain.encoder[0], torch.nn.Linear)
    assert plain.state_dict().keys() == state.keys()
    assert all(torch.equal(state[k], v) for k, v in plain.state_dict().items())
    monkeypatch.undo()
    again = HybridVAE(VAEArch(30, 2, (16,), 4))
    again.load_state_dict(plain.state_dict())  # a checkpoint written before the sparse layer
    assert all(torch.equal(state[k], v) for k, v in again.state_dict().items())
    assert torch.equal(again.encoder[0].weight, state["encoder.0.weight"])


def test_sparse_audio_profile_equals_dense() -> None:
    plays = _plays()
    feats = torch.randn(plays.shape[1], 5)
    dense = audio_profile(torch.from_numpy(plays), feats)
    sparse = audio_profile(SparseRows.from_csr(sp.csr_matrix(plays)), feats)
    assert torch.allclose(dense, sparse, atol=1e-6)
    assert torch.all(sparse[3] == 0)


@pytest.mark.parametrize("likelihood", ["weighted_mse", "multinomial"])
def test_sparse_target_loss_equals_dense_values_and_gradients(likelihood: str) -> None:
    target = torch.from_numpy((_plays() > 0).astype(np.float32))
    sparse = SparseRows.from_csr(sp.csr_matrix(target.numpy()))
    base = torch.randn(target.shape, dtype=torch.float32)
    out = []
    for tgt in (target, sparse):
        scores = base.clone().requires_grad_(True)
        if likelihood == "weighted_mse":
            loss = weighted_mse(scores, tgt, 10.0)
        else:
            loss = multinomial_nll(scores, tgt)
        (3.0 * loss).backward()
        out.append((loss.detach(), scores.grad))
    assert torch.allclose(out[0][0], out[1][0], rtol=1e-5)
    assert torch.allclose(out[0][1], out[1][1], atol=1e-6)


def test_vae_loss_takes_a_sparse_target_on_a_strided_score_view() -> None:
    """With audio features the scores are a column slice of the decoder output."""
    out = torch.randn(4, 12, requires_grad=True)
    scores, recon = out[:, :10], out[:, 10:]
    target = torch.zeros(4, 10)
    target[0, 1] = target[2, 5] = target[2, 6] = 1
    args = (recon, torch.zeros(4, 2), torch.zeros(4, 3), torch.zeros(4, 3), 0.5)
    dense = vae_loss(scores, target, *args, "weighted_mse", 10.0, 1.0).total
    sparse_target = SparseRows.from_csr(sp.csr_matrix(target.numpy()))
    sparse = vae_loss(scores, sparse_target, *args, "weighted_mse", 10.0, 1.0).total
    assert sparse.item() == pytest.approx(dense.item(), rel=1e-6)
