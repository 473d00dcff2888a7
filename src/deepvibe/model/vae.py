"""The hybrid VAE.

Input per user: the interaction vector x (n_tracks,) and the audio profile a (n_features,),
the play-weighted mean of the standardised features of the tracks in x. The encoder maps
[normalise(x), a] through a SELU stack to the mean and log-variance of a ``latent``-d Gaussian;
the decoder mirrors the stack and returns one score per catalogue track plus a reconstruction
of the audio profile.

x may be a dense (B, n_tracks) tensor or :class:`~deepvibe.model.sparse.SparseRows`; the sparse
form skips the zeros in the first layer (training and inference use it).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deepvibe.model.sparse import SparseRows


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


class SparseInputLinear(nn.Module):
    """``nn.Linear`` for a sparse input: x @ W.T + b over [sparse rows | dense columns].

    The weight is held transposed, (in, out), so the rows that a sparse input selects are
    contiguous in memory (an EmbeddingBag-style weighted sum). In ``state_dict`` it appears as
    ``weight`` (out, in), exactly as ``nn.Linear`` stores it, so checkpoints do not change.
    """

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight_t = nn.Parameter(linear.weight.detach().t().contiguous())  # (in, out)
        self.bias = nn.Parameter(linear.bias.detach().clone())  # (out,)

    @property
    def weight(self) -> torch.Tensor:
        """(out, in) view, as ``nn.Linear.weight``."""
        return self.weight_t.t()

    def forward(self, x: SparseRows | torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
        """x: (B, n_sparse) sparse or dense; dense: (B, in - n_sparse) -> (B, out)."""
        if not isinstance(x, SparseRows):
            return torch.addmm(self.bias, torch.cat([x, dense], dim=1), self.weight_t)
        indices, values, offsets = x.indices, x.values, x.crow
        if dense.shape[1]:  # append the dense columns to each row as extra entries
            indices, values, offsets = _append_dense(x, dense)
        out = F.embedding_bag(
            indices, self.weight_t, offsets, mode="sum", per_sample_weights=values,
            include_last_offset=True,
        )  # fmt: skip
        return out + self.bias

    def _save_to_state_dict(self, destination: dict, prefix: str, keep_vars: bool) -> None:
        w = self.weight_t if keep_vars else self.weight_t.detach()
        destination[prefix + "weight"] = w.t()  # a view: saving it writes no copy
        destination[prefix + "bias"] = self.bias if keep_vars else self.bias.detach()

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        stored = state_dict.pop(prefix + "weight", None)
        if stored is not None:  # contiguous (in, out) again, whichever layout was saved
            state_dict[prefix + "weight_t"] = stored.t().contiguous()
        super()._load_from_state_dict(state_dict, prefix, *args)


def _append_dense(x: SparseRows, dense: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Indices, values and offsets of [x | dense] as one sparse input: row r's own entries,
    then its f dense values at columns n_cols .. n_cols + f - 1."""
    n_rows, f = dense.shape
    crow = x.crow + torch.arange(n_rows + 1, device=x.device) * f  # f more entries per row
    own = torch.arange(x.nnz, device=x.device) + x.row_ids() * f
    extra = (crow[1:] - f)[:, None] + torch.arange(f, device=x.device)  # (B, f)
    indices = torch.empty(x.nnz + n_rows * f, dtype=torch.int64, device=x.device)
    values = torch.empty(x.nnz + n_rows * f, dtype=x.values.dtype, device=x.device)
    indices[own], values[own] = x.indices, x.values
    indices[extra.ravel()] = (x.n_cols + torch.arange(f, device=x.device)).repeat(n_rows)
    values[extra.ravel()] = dense.reshape(-1).to(values.dtype)
    return indices, values, crow


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
        # Same initial weights as a plain Linear (same seed, same draws), stored transposed.
        self.encoder[0] = SparseInputLinear(self.encoder[0])

    def transposed_parameters(self) -> list[nn.Parameter]:
        """Parameters held transposed relative to their ``state_dict`` layout."""
        return [self.encoder[0].weight_t]

    def _init(self, module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            if self.arch.activation == "selu":
                # LeCun normal: std = 1/sqrt(fan_in), what SELU's fixed point assumes.
                nn.init.normal_(module.weight, 0.0, 1.0 / math.sqrt(module.in_features))
            else:
                nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)

    @staticmethod
    def normalise(x: torch.Tensor | SparseRows) -> torch.Tensor | SparseRows:
        """L2-normalise each row (Mult-VAE's input normalisation); zero rows stay zero."""
        if not isinstance(x, SparseRows):
            return F.normalize(x, p=2.0, dim=1)
        norms = x.row_sums(x.values.square()).sqrt().clamp_min(1e-12)  # as F.normalize
        return x.with_values(x.values / norms[x.row_ids()])

    def encode(
        self, x: torch.Tensor | SparseRows, profile: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, n_tracks) binary, dense or sparse; profile: (B, n_features)
        -> mu, logvar: (B, latent)."""
        h = self.encoder[0](self.normalise(x), profile)
        for layer in itertools.islice(self.encoder, 1, None):
            h = layer(h)
        mu, logvar = h.chunk(2, dim=1)
        return mu, logvar.clamp(-12.0, 12.0)

    def decode(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """z: (B, latent) -> track scores (B, n_tracks), profile reconstruction (B, n_features)."""
        out = self.decoder(z)
        return out[:, : self.arch.n_tracks], out[:, self.arch.n_tracks :]

    def forward(
        self, x: torch.Tensor | SparseRows, profile: torch.Tensor, sample: bool | None = None
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
    plays: torch.Tensor | SparseRows, track_features: torch.Tensor, eps: float = 1e-8
) -> torch.Tensor:
    """Play-weighted mean of standardised track features.

    plays: (B, n_tracks) non-negative weights, dense or sparse (already denoised, so dropped
    tracks are absent); track_features: (n_tracks, f). Rows with no plays get the zero vector
    (the catalogue mean). Weights are log(1 + plays) so one obsessively replayed track does not
    swamp the profile.
    """
    if isinstance(plays, SparseRows):
        if track_features.shape[1] == 0:
            return plays.values.new_zeros((plays.n_rows, 0))
        w = torch.log1p(plays.values)
        weighted = F.embedding_bag(
            plays.indices, track_features, plays.crow, mode="sum", per_sample_weights=w,
            include_last_offset=True,
        )  # fmt: skip
        return weighted / plays.row_sums(w).clamp_min(eps)[:, None]
    if track_features.shape[1] == 0:
        return plays.new_zeros((plays.shape[0], 0))
    w = torch.log1p(plays)
    total = w.sum(dim=1, keepdim=True)
    return (w @ track_features) / total.clamp_min(eps)
