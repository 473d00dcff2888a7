from __future__ import annotations

import math

import pytest
import torch

from deepvibe.model.loss import kl_divergence, multinomial_nll, profile_mse, vae_loss, weighted_mse


def test_weighted_mse_hand_computed() -> None:
    target = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 1.0]])
    scores = torch.tensor([[0.5, 0.2, -0.1], [0.0, 2.0, 1.0]])
    # user 1: 40*(0.5)^2 + 0.2^2 + 0.1^2 = 10 + 0.04 + 0.01 = 10.05
    # user 2: 0 + 40*1^2 + 40*0 = 40 ; mean over users = 25.025
    assert weighted_mse(scores, target, 40.0).item() == pytest.approx(25.025)


def test_kl_hand_computed() -> None:
    mu = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)], [0.0, 0.0]])
    # user 1: 0.5*(1+1-1-0) + 0.5*(0+2-1-ln2) = 0.5 + 0.5*(1-ln2); user 2: 0
    expected = (0.5 + 0.5 * (1 - math.log(2.0))) / 2
    assert kl_divergence(mu, logvar).item() == pytest.approx(expected)


def test_multinomial_hand_computed() -> None:
    scores = torch.tensor([[0.0, math.log(3.0)]])  # softmax = [1/4, 3/4]
    target = torch.tensor([[1.0, 2.0]])
    expected = -(math.log(0.25) + 2 * math.log(0.75))
    assert multinomial_nll(scores, target).item() == pytest.approx(expected)


def test_total_combines_terms_with_beta_and_audio_weight() -> None:
    target = torch.tensor([[1.0, 0.0]])
    scores = torch.tensor([[0.0, 0.0]])
    recon = torch.tensor([[1.0, 2.0]])
    profile = torch.tensor([[0.0, 0.0]])
    mu = torch.tensor([[2.0]])
    logvar = torch.tensor([[0.0]])
    parts = vae_loss(scores, target, recon, profile, mu, logvar, 0.5, "weighted_mse", 40.0, 0.1)
    assert parts.reconstruction.item() == pytest.approx(40.0)
    assert parts.audio.item() == pytest.approx(5.0)
    assert parts.kl.item() == pytest.approx(2.0)
    assert parts.total.item() == pytest.approx(40.0 + 0.1 * 5.0 + 0.5 * 2.0)


def test_profile_term_is_zero_without_features() -> None:
    assert profile_mse(torch.zeros(3, 0), torch.zeros(3, 0)).item() == 0.0
