"""Loss terms. Every term is summed over tracks / features / latent dimensions for each user,
then averaged over the users of the batch, so beta weighs one user's KL (in nats) against one
user's reconstruction error whatever the batch size (the convention of Liang et al. 2018).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from deepvibe.model.sparse import SparseRows

Target = torch.Tensor | SparseRows  # (B, n_tracks), dense or its nonzeros only


def weighted_mse(scores: torch.Tensor, target: Target, positive_weight: float) -> torch.Tensor:
    """sum_i w_i (target_i - score_i)^2 per user, mean over users; w = positive_weight where
    target > 0, else 1. scores, target: (B, n_tracks)."""
    if isinstance(target, SparseRows):
        return _SparseWeightedMSE.apply(
            scores, target.row_ids(), target.indices, target.values, positive_weight
        )
    weights = torch.where(target > 0, positive_weight, 1.0)
    return (weights * (target - scores) ** 2).sum(dim=1).mean()


class _SparseWeightedMSE(torch.autograd.Function):
    """weighted_mse for a sparse positive target, without a dense target or weight matrix:
    sum over all tracks of s^2, corrected at the positives to w (t - s)^2. Its backward writes
    the (B, n_tracks) gradient once (autograd through the same formula would allocate four)."""

    @staticmethod
    def forward(
        ctx: Any,
        scores: torch.Tensor,
        rows: torch.Tensor,
        cols: torch.Tensor,
        target: torch.Tensor,
        positive_weight: float,
    ) -> torch.Tensor:
        s_pos = scores[rows, cols]
        at_positives = positive_weight * (target - s_pos).square() - s_pos.square()
        total = torch.linalg.vector_norm(scores).square() + at_positives.sum()
        ctx.save_for_backward(scores, rows, cols, target, s_pos)
        ctx.positive_weight = positive_weight
        return total / scores.shape[0]

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        scores, rows, cols, target, s_pos = ctx.saved_tensors
        scale = 2.0 * grad / scores.shape[0]
        out = scores * scale  # d/ds s^2 everywhere ...
        out[rows, cols] = (ctx.positive_weight * scale) * (s_pos - target)  # ... w (t - s)^2 here
        return out, None, None, None, None


def multinomial_nll(scores: torch.Tensor, target: Target) -> torch.Tensor:
    """-sum_i target_i log softmax(scores)_i per user, mean over users (Mult-VAE)."""
    log_p = F.log_softmax(scores, dim=1)
    if isinstance(target, SparseRows):
        return -(log_p[target.row_ids(), target.indices] * target.values).sum() / scores.shape[0]
    return -(log_p * target).sum(dim=1).mean()


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
    target: Target,
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
