"""Sparse rows: a batch of users' listening vectors in CSR form, as torch tensors.

The encoder's input is 99% zeros (a user plays a few dozen of thousands of tracks), so the
first layer gathers the weight rows of the played tracks instead of multiplying a dense
(B, n_tracks) matrix; see :class:`deepvibe.model.vae.SparseInputLinear`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class SparseRows:
    """Row r holds ``values[crow[r]:crow[r + 1]]`` at columns ``indices[crow[r]:crow[r + 1]]``.

    No column repeats within a row. All three tensors live on the same device.
    """

    crow: torch.Tensor  # (B + 1,) int64 row pointers, crow[0] == 0
    indices: torch.Tensor  # (nnz,) int64 column of each entry
    values: torch.Tensor  # (nnz,) float32
    n_cols: int

    @classmethod
    def from_csr(cls, matrix: sp.csr_matrix | np.ndarray, positive_only: bool = True) -> SparseRows:
        """From a scipy CSR matrix (or a dense array); entries <= 0 are dropped unless
        ``positive_only`` is False (then only explicit zeros are)."""
        m = sp.csr_matrix(matrix, dtype=np.float32)  # a copy only when the dtype differs
        if not m.has_canonical_format:
            m = m.copy()
            m.sum_duplicates()
        keep = m.data > 0 if positive_only else m.data != 0
        if not keep.all():
            m = m.copy()
            m.data = np.where(keep, m.data, 0).astype(np.float32)
            m.eliminate_zeros()
        return cls(
            torch.from_numpy(m.indptr.astype(np.int64)),
            torch.from_numpy(m.indices.astype(np.int64)),
            torch.from_numpy(np.ascontiguousarray(m.data, dtype=np.float32)),
            int(m.shape[1]),
        )

    @property
    def n_rows(self) -> int:
        return self.crow.numel() - 1

    @property
    def nnz(self) -> int:
        return self.indices.numel()

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_rows, self.n_cols

    @property
    def device(self) -> torch.device:
        return self.indices.device

    def lengths(self) -> torch.Tensor:
        """(B,) entries per row."""
        return self.crow[1:] - self.crow[:-1]

    def row_ids(self) -> torch.Tensor:
        """(nnz,) the row of each entry."""
        rows = torch.arange(self.n_rows, device=self.device)
        return torch.repeat_interleave(rows, self.lengths(), output_size=self.nnz)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> SparseRows:
        if torch.device(device) == self.device:
            return self
        move = dict(device=device, non_blocking=non_blocking)
        return SparseRows(
            self.crow.to(**move), self.indices.to(**move), self.values.to(**move), self.n_cols
        )

    def with_values(self, values: torch.Tensor) -> SparseRows:
        return SparseRows(self.crow, self.indices, values, self.n_cols)

    def binary(self) -> SparseRows:
        """The same entries with value 1 (the interaction vector)."""
        return self.with_values(torch.ones_like(self.values))

    def keep(self, mask: torch.Tensor) -> SparseRows:
        """Only the entries where ``mask`` (nnz,) bool is True; rows keep their positions."""
        kept_before = torch.zeros(self.nnz + 1, dtype=torch.int64, device=self.device)
        torch.cumsum(mask, dim=0, out=kept_before[1:])
        return SparseRows(
            kept_before[self.crow], self.indices[mask], self.values[mask], self.n_cols
        )

    def row_sums(self, values: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) sum of ``values`` (default: this batch's values) over each row's entries."""
        v = self.values if values is None else values
        # A bag sum over one weight of 1, not index_add_: on CUDA index_add_ adds with atomics in
        # no fixed order, so a user's sums (and scores) would depend on the rest of the batch.
        ones = torch.ones((1, 1), dtype=v.dtype, device=self.device)
        bags = F.embedding_bag(
            torch.zeros_like(self.indices), ones, self.crow, mode="sum", per_sample_weights=v,
            include_last_offset=True,
        )  # fmt: skip
        return bags[:, 0]

    def to_dense(self) -> torch.Tensor:
        """(B, n_cols) dense tensor (tests and small inputs only)."""
        out = torch.zeros(self.shape, dtype=self.values.dtype, device=self.device)
        out[self.row_ids(), self.indices] = self.values
        return out
