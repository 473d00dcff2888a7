from __future__ import annotations

import numpy as np
import pytest
import torch

from deepvibe.model.inference import encode_and_score
from deepvibe.model.vae import HybridVAE, VAEArch, audio_profile


@pytest.mark.parametrize("n_features", [0, 1, 12, 30])
def test_runs_with_any_number_of_features(n_features: int) -> None:
    model = HybridVAE(VAEArch(50, n_features, (32, 16), 8))
    x = (torch.rand(4, 50) > 0.8).float()
    profile = torch.randn(4, n_features)
    scores, recon, mu, logvar = model(x, profile)
    assert scores.shape == (4, 50)
    assert recon.shape == (4, n_features)
    assert mu.shape == logvar.shape == (4, 8)


def test_lecun_normal_initialisation() -> None:
    torch.manual_seed(0)
    model = HybridVAE(VAEArch(2000, 12, (512,), 64))
    first = model.encoder[0]
    assert first.weight.std().item() == pytest.approx(1 / np.sqrt(2012), rel=0.05)
    assert torch.all(first.bias == 0)


def test_alpha_dropout_between_selu_layers() -> None:
    model = HybridVAE(VAEArch(20, 2, (16, 8), 4, dropout=0.1))
    assert any(isinstance(m, torch.nn.AlphaDropout) for m in model.encoder)


def test_audio_profile_is_play_weighted_mean_and_ignores_dropped_tracks() -> None:
    feats = torch.tensor([[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]])
    plays = torch.tensor([[np.e - 1, np.e - 1, 0.0]])  # log1p weights 1, 1, 0
    assert torch.allclose(audio_profile(plays, feats), torch.tensor([[0.5, 0.5]]))
    empty = audio_profile(torch.zeros(1, 3), feats)
    assert torch.all(empty == 0)


def test_inference_is_deterministic_posterior_mean() -> None:
    torch.manual_seed(0)
    model = HybridVAE(VAEArch(30, 3, (16,), 4))
    plays = np.zeros((2, 30), dtype=np.float32)
    plays[0, :5] = 2
    plays[1, 10:20] = 1
    feats = np.random.default_rng(0).normal(size=(30, 3)).astype(np.float32)
    mu1, s1 = encode_and_score(model, plays, feats)
    mu2, s2 = encode_and_score(model, plays, feats)
    assert np.array_equal(s1, s2) and np.array_equal(mu1, mu2)
    x = torch.from_numpy((plays > 0).astype(np.float32))
    prof = audio_profile(torch.from_numpy(plays), torch.from_numpy(feats))
    expected_mu, _ = model.encode(x, prof)
    assert np.allclose(mu1, expected_mu.detach().numpy())
