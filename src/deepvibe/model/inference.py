"""Deterministic inference: users are encoded to their posterior mean (no sampling)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from deepvibe.model.vae import HybridVAE, audio_profile


def model_inputs(
    plays: sp.csr_matrix | np.ndarray, track_features: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, n_tracks) plays -> binary interaction vector and audio profile, as the encoder wants."""
    dense = plays.toarray() if sp.issparse(plays) else np.asarray(plays)
    p = torch.from_numpy(dense.astype(np.float32, copy=False))
    return (p > 0).float(), audio_profile(p, track_features)


@torch.no_grad()
def encode_and_score(
    model: HybridVAE, plays: sp.csr_matrix | np.ndarray, track_features: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean (B, latent) and decoder scores (B, n_tracks) for rows of plays."""
    was_training = model.training
    model.eval()
    feats = torch.from_numpy(np.asarray(track_features, dtype=np.float32))
    x, profile = model_inputs(plays, feats)
    mu, _ = model.encode(x, profile)
    scores, _ = model.decode(mu)
    model.train(was_training)
    return mu.numpy(), scores.numpy()


def scorer(model: HybridVAE, track_features: np.ndarray):  # noqa: ANN201 - returns ScoreFn
    """A ``metrics.ScoreFn`` for this model."""

    def score(plays: sp.csr_matrix) -> np.ndarray:
        return encode_and_score(model, plays, track_features)[1]

    return score
