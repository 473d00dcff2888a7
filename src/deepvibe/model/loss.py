"""Loss terms. Every term is summed over tracks / features / latent dimensions for each user,
then averaged over the users of the batch, so beta weighs one user's KL (in nats) against one
user's reconstruction error whatever the batch size (the convention of Liang et al. 2018).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def weighted_mse(
    scores: torch.Tensor, target: torch.Tensor, positive_weight: float
) -> torch.Tensor:
    """sum_i w_i (target_i - score_i)^2 per user, mean over users; w = positive_weight where
    target > 0, else 1. scores, target: (B, n_tracks)."""
    weights = torch.where(target > 0, positive_weight, 1.0)
    return (weights * (target - scores) ** 2).sum(dim=1).mean()


def multinomial_nll(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """-sum_i target_i log softmax(scores)_i per user, mean over users (Mult-VAE)."""
    return -(F.log_softmax(scores, dim=1) * target).sum(dim=1).mean()


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) summed over latent dims, mean over users."""
    return (0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)).sum(dim=1).mean()


def profile_mse(recon: torch.Tensor, profile: torch.Tensor) -> torch.Tensor:
    """Squared error of the audio-profile reconstruction, summed over features, mean over users."""
    if profile.shape[1] == 0:
        return recon.new_zeros(())
    return (recon - profile).pow(2).sum(dim=1).mean()


@dataclass(frozen=True)
class LossParts:
    total: torch.Tensor
    reconstruction: torch.Tensor
    audio: torch.Tensor
    kl: torch.Tensor


def vae_loss(
    scores: torch.Tensor,
    target: torch.Tensor,
    profile_recon: torch.Tensor,
    profile: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    beta: float,
    likelihood: str,
    positive_weight: float,
    audio_weight: float,
) -> LossParts:
    if likelihood == "weighted_mse":
        rec = weighted_mse(scores, target, positive_weight)
    elif likelihood == "multinomial":
        rec = multinomial_nll(scores, target)
    else:
        raise ValueError(f"unknown likelihood {likelihood!r}")
    audio = profile_mse(profile_recon, profile)
    kl = kl_divergence(mu, logvar)
    return LossParts(rec + audio_weight * audio + beta * kl, rec, audio, kl)
