"""Training batches, cut from the training users' plays without densifying a row.

The CSR arrays, the catalogue features and every user's target audio profile are turned into
tensors once per run; a batch is then a gather of its users' entries, the input-dropout mask
over those entries, and the audio profile of what survives.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch

from deepvibe.model.sparse import SparseRows
from deepvibe.model.vae import audio_profile


@dataclass(frozen=True)
class Batch:
    x: SparseRows  # (B, n_tracks) binary input: the played tracks that survived input dropout
    profile: torch.Tensor  # (B, f) audio profile of the surviving tracks
    target: SparseRows  # (B, n_tracks) binary: every played track
    profile_target: torch.Tensor  # (B, f) audio profile of every played track
    size: int  # B


class TrainingRows:
    """The training rows of the interaction matrix, ready to be cut into batches.

    ``user_items``: (n_rows, n_tracks) plays; entries <= 0 are not plays and are dropped.
    ``track_features``: (n_tracks, f) standardised. Batches are built on the CPU (their random
    mask comes from a CPU generator, so a seed gives the same batches on any device) and moved
    to ``device``.
    """

    def __init__(
        self, user_items: sp.csr_matrix, track_features: np.ndarray, device: torch.device
    ) -> None:
        rows = SparseRows.from_csr(user_items)
        self.crow, self.indices, self.plays = rows.crow, rows.indices, rows.values
        self.n_rows, self.n_tracks = rows.shape
        self.device = device
        self.features = torch.from_numpy(np.asarray(track_features, dtype=np.float32))
        self.profiles = audio_profile(rows, self.features).to(device)  # (n_rows, f), once
        self.features = self.features.to(device)

    def batch(self, rows: np.ndarray, noise: torch.Generator, input_dropout: float) -> Batch:
        """The batch of training rows ``rows`` (int array); each played track is dropped from
        the input with probability ``input_dropout``, drawn from ``noise``."""
        picked = torch.from_numpy(np.asarray(rows, dtype=np.int64))
        starts = self.crow[picked]
        lengths = self.crow[picked + 1] - starts
        crow = torch.zeros(len(picked) + 1, dtype=torch.int64)
        torch.cumsum(lengths, dim=0, out=crow[1:])
        nnz = int(crow[-1])
        # entry k of row r sits at starts[r] + k in the full arrays
        shift = torch.repeat_interleave(starts - crow[:-1], lengths, output_size=nnz)
        where = torch.arange(nnz) + shift
        plays = SparseRows(crow, self.indices[where], self.plays[where], self.n_tracks)
        # Denoising: drop whole tracks from the input; the profile is built from what
        # survives, so a dropped track cannot leak back in through the audio.
        kept = plays.keep(torch.rand(nnz, generator=noise) >= input_dropout)
        plays, kept = plays.to(self.device), kept.to(self.device)
        return Batch(
            x=kept.binary(),
            profile=audio_profile(kept, self.features),
            target=plays.binary(),
            profile_target=self.profiles[picked.to(self.device)],
            size=len(picked),
        )
