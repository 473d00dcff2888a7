"""Deterministic inference: users are encoded to their posterior mean (no sampling).

Everything runs on the model's device; inputs are moved there and results come back as NumPy.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import torch

from deepvibe.model.device import model_device
from deepvibe.model.sparse import SparseRows
from deepvibe.model.vae import HybridVAE, audio_profile


def model_inputs(
    plays: sp.csr_matrix | np.ndarray, track_features: torch.Tensor
) -> tuple[SparseRows, torch.Tensor]:
    """(B, n_tracks) plays -> sparse binary interaction rows and the audio profile, on the
    device of ``track_features``, as the encoder wants."""
    rows = SparseRows.from_csr(plays).to(track_features.device)
    return rows.binary(), audio_profile(rows, track_features)


@torch.no_grad()
def score_rows(
    model: HybridVAE, x: SparseRows, profile: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean (B, latent) and decoder scores (B, n_tracks), in eval mode, on the
    model's device (inputs must already be there)."""
    was_training = model.training
    model.eval()
    mu, _ = model.encode(x, profile)
    scores, _ = model.decode(mu)
    model.train(was_training)
    return mu, scores


def _features(track_features: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    if isinstance(track_features, torch.Tensor):
        return track_features.to(device=device, dtype=torch.float32)
    return torch.from_numpy(np.asarray(track_features, dtype=np.float32)).to(device)


def encode_and_score(
    model: HybridVAE, plays: sp.csr_matrix | np.ndarray, track_features: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Posterior mean (B, latent) and decoder scores (B, n_tracks) for rows of plays."""
    feats = _features(track_features, model_device(model))
    mu, scores = score_rows(model, *model_inputs(plays, feats))
    return mu.cpu().numpy(), scores.cpu().numpy()


def scorer(model: HybridVAE, track_features: np.ndarray) -> Callable[[sp.csr_matrix], np.ndarray]:
    """A ``metrics.ScoreFn`` for this model (features moved to its device once)."""
    feats = _features(track_features, model_device(model))

    def score(plays: sp.csr_matrix) -> np.ndarray:
        return score_rows(model, *model_inputs(plays, feats))[1].cpu().numpy()

    return score
