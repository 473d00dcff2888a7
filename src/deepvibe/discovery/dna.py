"""The Vibe DNA: one point in the standardised audio-feature space that sums up a user, and the
similarity of tracks to it.

**Vibe DNA** = sum_i softmax(scores / T)_i * standardised features of track i, where the scores
are the decoder's scores over the catalogue and the softmax runs over the ``top_k`` best-scored
tracks only (all of them when ``top_k`` is None). T -> 0 gives the features of the top-scored
track; T -> infinity the plain mean of the top-k tracks (the catalogue mean, 0 in standardised
units, only when ``top_k`` is None).

Similarity: cosine (the default) or Pearson correlation, both in the standardised space.
Cosine compares directions from the catalogue mean (the origin of the standardised space), so
"more danceable and quieter than usual" matches tracks that differ from the typical track in
the same way. Pearson also subtracts each vector's mean over its f features first, which mixes
unrelated units (a z-score of tempo minus a z-score of valence) and throws away the one
direction in which all features rise together. Both ignore the DNA's length, which shrinks
towards 0 as T grows. On spotify-2024 cosine was as good as or slightly better than Pearson
(docs/BENCHMARKS.md, "Discovery scan"), which is how the defaults T = 0.1, top-k = 30 and
cosine were chosen.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

Method = Literal["pearson", "cosine"]

# Unit vectors are rounded to multiples of 2^-23 before the scan multiplies them: every product
# of two such numbers is an exact float64, and so is every partial sum of 12 of them, so a
# similarity is exact and does not depend on the order of the sum, i.e. on how many users or
# tracks a matrix product holds. That makes reports identical for one user or a batch.
_GRID = float(2**23)
_ROUNDER = 1.5 * 2.0**52  # x + this - this rounds |x| < 2^51 to the nearest integer (ties even)


def dna_weights(scores: np.ndarray, temperature: float, top_k: int | None = None) -> np.ndarray:
    """softmax(scores / T) per row, over the top-k scores only when ``top_k`` is given.

    scores: (n,) or (B, n) decoder scores -> weights of the same shape, float64, rows sum to 1.
    Computed as exp(s/T - max(s/T)), so any T > 0 is stable; ties at the top share the weight.
    """
    if not temperature > 0 or not math.isfinite(temperature):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")
    s = np.atleast_2d(np.asarray(scores, dtype=np.float64))
    logits = s / temperature
    if top_k is not None and top_k < s.shape[1]:
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1, got {top_k}")
        kth = np.partition(s, s.shape[1] - top_k, axis=1)[:, s.shape[1] - top_k]
        logits = np.where(s >= kth[:, None], logits, -np.inf)
    logits = logits - logits.max(axis=1, keepdims=True)
    w = np.exp(logits)
    w /= w.sum(axis=1, keepdims=True)
    return w if np.ndim(scores) == 2 else w[0]


def vibe_dna(
    scores: np.ndarray, track_features: np.ndarray, temperature: float, top_k: int | None = None
) -> np.ndarray:
    """Temperature-weighted mean of the catalogue's standardised features.

    scores: (n,) or (B, n); track_features: (n, f) standardised -> (f,) or (B, f) float64.
    """
    w = dna_weights(scores, temperature, top_k)
    return w @ np.asarray(track_features, dtype=np.float64)


def unit_rows(x: np.ndarray, method: Method) -> np.ndarray:
    """Rows centred over their features (Pearson only) and scaled to unit length; a row with
    no spread or length stays all-zero, so its similarity to anything is 0."""
    if method not in ("pearson", "cosine"):
        raise ValueError(f"similarity must be 'pearson' or 'cosine', got {method!r}")
    if method == "pearson":
        x = x - x.mean(axis=1, keepdims=True)
    norms = np.sqrt(np.einsum("ij,ij->i", x, x))
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 1e-12)
    return x * scale[:, None]


def unit_columns(standardised: np.ndarray, method: Method) -> np.ndarray:
    """Standardised features (f, c) -> unit columns on the exact grid, float64.

    Column-wise twin of :func:`unit_rows` for the scan: each column's sums run over its f
    features in a fixed order, so a track's vector does not depend on the chunk it is in.
    """
    x = np.array(standardised, dtype=np.float64)  # a copy: changed in place below
    if method == "pearson":
        x -= _ordered_sum(x) / x.shape[0]
    norms = np.sqrt(_ordered_sum(x * x))
    x *= np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 1e-12)
    return on_grid(x)


def _ordered_sum(x: np.ndarray) -> np.ndarray:
    """Sum over the first axis, one row after another: (f, c) -> (c,)."""
    total = x[0].copy()
    for row in x[1:]:
        total += row
    return total


def pair_dots(
    left: np.ndarray, right: np.ndarray, left_rows: np.ndarray, right_rows: np.ndarray,
    piece: int,
) -> np.ndarray:  # fmt: skip
    """(P,) the dot of ``left[left_rows[i]]`` and ``right[right_rows[i]]`` (rows of f values),
    pair by pair, ``piece`` pairs at a time (two (piece, f) gathers, not two (P, f) ones)."""
    out = np.empty(len(left_rows), np.result_type(left, right))
    for a in range(0, len(left_rows), piece):
        b = a + piece
        out[a:b] = np.einsum("ij,ij->i", left[left_rows[a:b]], right[right_rows[a:b]])
    return out


def on_grid(unit: np.ndarray) -> np.ndarray:
    """Values in [-1, 1] rounded to multiples of 2^-23 (see ``_GRID``), float64."""
    x = np.asarray(unit, dtype=np.float64) * _GRID
    x += _ROUNDER
    x -= _ROUNDER
    x /= _GRID
    return x


def similarity_to(
    profile: np.ndarray, features_std: np.ndarray, method: Method = "cosine"
) -> np.ndarray:
    """Similarity of each track to each profile in the standardised feature space.

    profile: (f,) or (B, f); features_std: (n, f) -> (n,) or (B, n), values in [-1, 1].
    ``pearson`` correlates the two f-vectors (each centred over its own features);
    ``cosine`` compares directions from the catalogue mean (the origin). Zero-spread rows
    score 0. Float32 inputs give float32 output.
    """
    dtype = np.result_type(np.asarray(features_std).dtype, np.float32)
    p = np.atleast_2d(np.asarray(profile, dtype=dtype))
    feats = np.asarray(features_std, dtype=dtype)
    if p.shape[1] != feats.shape[1]:
        raise ValueError(f"profile has {p.shape[1]} features but the tracks have {feats.shape[1]}")
    sims = unit_rows(p, method) @ unit_rows(feats, method).T
    return sims if np.ndim(profile) == 2 else sims[0]
