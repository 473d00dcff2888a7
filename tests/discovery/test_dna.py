"""The Vibe DNA's limits as the README states them, and the exact grid of the scan."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from deepvibe.discovery.dna import on_grid, pair_dots, unit_columns, unit_rows, vibe_dna

README = Path(__file__).resolve().parents[2] / "README.md"


def test_defect10_readme_states_the_hot_limit_of_the_dna() -> None:
    """T -> infinity gives the mean of the top-k tracks, not the catalogue mean."""
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(3, 200))
    feats = rng.normal(size=(200, 12)) + 0.5
    top30 = np.argsort(-scores, axis=1)[:, :30]
    hot = vibe_dna(scores, feats, 1e9, top_k=30)
    assert np.allclose(hot, feats[top30].mean(axis=1))
    assert not np.allclose(hot, feats.mean(axis=0), atol=0.05)
    assert np.allclose(vibe_dna(scores, feats, 1e9, top_k=None), feats.mean(axis=0))
    text = " ".join(README.read_text(encoding="utf-8").split())
    assert "T → ∞ the plain mean of those top-k tracks" in text
    assert "T → ∞ the catalogue mean." not in text


def test_grid_vectors_make_exact_order_free_similarities() -> None:
    rng = np.random.default_rng(1)
    a = on_grid(unit_rows(rng.normal(size=(50, 12)), "cosine"))
    b = unit_columns(rng.normal(size=(12, 40)), "cosine")
    forward = sum(a[:, j : j + 1] * b[j] for j in range(12))
    backward = sum(a[:, j : j + 1] * b[j] for j in reversed(range(12)))
    assert np.array_equal(forward, backward)  # exact: the order of the sum does not matter
    assert np.array_equal(a @ b, forward)
    assert np.allclose(np.linalg.norm(b, axis=0), 1.0, atol=1e-6)
    assert np.array_equal(on_grid(b), b)


def test_pair_dots_known_answer_whatever_the_piece() -> None:
    """Row i of the answer is left[left_rows[i]] . right[right_rows[i]], in pieces or at once."""
    left = np.array([[1.0, 0.0], [0.0, 2.0]])
    right = np.array([[3.0, 4.0], [1.0, 1.0], [0.5, -1.0]])
    left_rows, right_rows = np.array([0, 1, 1, 0, 1]), np.array([0, 0, 2, 1, 1])
    for piece in (1, 2, 5, 100):
        np.testing.assert_array_equal(
            pair_dots(left, right, left_rows, right_rows, piece), [3.0, 8.0, -2.0, 1.0, 2.0]
        )
