"""The hybrid VAE.

Input per user: the interaction vector x (n_tracks,) and the audio profile a (n_features,),
the play-weighted mean of the standardised features of the tracks in x. The encoder maps
[normalise(x), a] through a SELU stack to the mean and log-variance of a ``latent``-d Gaussian;
the decoder mirrors the stack and returns one score per catalogue track plus a reconstruction
of the audio profile.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class VAEArch:
    """Everything needed to rebuild the network; stored in every checkpoint."""

    n_tracks: int
    n_features: int
    hidden: tuple[int, ...] = (1024, 512)
    latent: int = 256
    activation: str = "selu"
    dropout: float = 0.0

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, object]) -> VAEArch:
        return cls(
            n_tracks=int(d["n_tracks"]),  # type: ignore[arg-type]
            n_features=int(d["n_features"]),  # type: ignore[arg-type]
            hidden=tuple(int(h) for h in d["hidden"]),  # type: ignore[union-attr]
            latent=int(d["latent"]),  # type: ignore[arg-type]
            activation=str(d["activation"]),
            dropout=float(d["dropout"]),  # type: ignore[arg-type]
        )


def _stack(widths: list[int], activation: str, dropout: float) -> nn.Sequential:
    """Linear layers with the activation after each; no activation after the last."""
    layers: list[nn.Module] = []
    for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(w_in, w_out))
        if i < len(widths) - 2:
            layers.append(nn.SELU() if activation == "selu" else nn.Tanh())
            if dropout > 0:
                # AlphaDropout keeps SELU's self-normalising mean and variance.
                layers.append(
                    nn.AlphaDropout(dropout) if activation == "selu" else nn.Dropout(dropout)
                )
    return nn.Sequential(*layers)


class HybridVAE(nn.Module):
    def __init__(self, arch: VAEArch) -> None:
        super().__init__()
        self.arch = arch
        n_in = arch.n_tracks + arch.n_features
        enc = [n_in, *arch.hidden, 2 * arch.latent]
        dec = [arch.latent, *reversed(arch.hidden), n_in]
        self.encoder = _stack(enc, arch.activation, arch.dropout)
        self.decoder = _stack(dec, arch.activation, arch.dropout)
        self.apply(self._init)

    def _init(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            if self.arch.activation == "selu":
                # LeCun normal: std = 1/sqrt(fan_in), what SELU's fixed point assumes.
                nn.init.normal_(module.weight, 0.0, 1.0 / math.sqrt(module.in_features))
            else:
                nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)

    @staticmethod
    def normalise(x: torch.Tensor) -> torch.Tensor:
        """L2-normalise each row (Mult-VAE's input normalisation); zero rows stay zero."""
        return F.normalize(x, p=2.0, dim=1)

    def encode(self, x: torch.Tensor, profile: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, n_tracks) binary, profile: (B, n_features) -> mu, logvar: (B, latent)."""
        h = self.encoder(torch.cat([self.normalise(x), profile], dim=1))
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 12.0)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z: (B, latent) -> track scores (B, n_tracks), profile reconstruction (B, n_features)."""
        out = self.decoder(z)
        return out[:, : self.arch.n_tracks], out[:, self.arch.n_tracks :]

    def forward(
        self, x: torch.Tensor, profile: torch.Tensor, sample: bool | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Returns (track_scores, profile_recon, mu, logvar); samples z only when training."""
        mu, logvar = self.encode(x, profile)
        if self.training if sample is None else sample:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        else:
            z = mu  # posterior mean: deterministic inference
        scores, recon = self.decode(z)
        return scores, recon, mu, logvar


def audio_profile(
    plays: torch.Tensor, track_features: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Play-weighted mean of standardised track features.

    plays: (B, n_tracks) non-negative weights (already denoised, so dropped tracks are absent);
    track_features: (n_tracks, f). Rows with no plays get the zero vector (the catalogue mean).
    Weights are log(1 + plays) so one obsessively replayed track does not swamp the profile.
    """
    if track_features.shape[1] == 0:
        return plays.new_zeros((plays.shape[0], 0))
    w = torch.log1p(plays)
    total = w.sum(dim=1, keepdim=True)
    return (w @ track_features) / total.clamp_min(eps)
