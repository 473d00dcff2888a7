"""The one top-k: exact order (score desc, id asc), ties resolved the same way whatever the
chunking, and the streaming form equal to the dense one."""

from __future__ import annotations

import numpy as np
import pytest

from deepvibe.ranking import metrics
from deepvibe.ranking.topk import StreamingTopK, top_k


def _reference(scores: np.ndarray, k: int, ids: np.ndarray | None = None) -> np.ndarray:
    """A full sort per row: the definition the fast version must match."""
    ids = np.broadcast_to(np.arange(scores.shape[1]), scores.shape) if ids is None else ids
    return np.array([np.lexsort((ids[r], -scores[r]))[:k] for r in range(scores.shape[0])])


def test_top_k_matches_a_full_sort_with_many_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 4, size=(50, 200)).astype(np.float64)  # ties everywhere
    scores[rng.random(scores.shape) < 0.1] = -np.inf
    for k in (1, 7, 60, 199, 200, 500):
        assert np.array_equal(top_k(scores, k), _reference(scores, k)), k
    ids = np.argsort(rng.random(scores.shape), axis=1)  # a different unique id per column
    assert np.array_equal(top_k(scores, 30, ids), _reference(scores, 30, ids))


def test_top_k_ties_at_the_boundary_go_to_the_lowest_id() -> None:
    scores = np.zeros((1, 100))
    assert top_k(scores, 10).tolist() == [list(range(10))]
    scores[0, [90, 3, 50]] = 1.0
    assert top_k(scores, 5).tolist() == [[3, 50, 90, 0, 1]]


def test_top_k_refuses_nan_and_bad_shapes() -> None:
    with pytest.raises(ValueError, match="NaN"):
        top_k(np.array([[0.0, np.nan]]), 1)
    with pytest.raises(ValueError, match="2-d"):
        top_k(np.zeros(3), 1)
    assert top_k(np.zeros((2, 5)), 0).shape == (2, 0)


def test_metrics_uses_the_one_top_k() -> None:
    assert metrics.top_k is top_k


@pytest.mark.parametrize("piece", [1, 3, 16, 64, 1000])
def test_streaming_top_k_equals_dense_whatever_the_pieces(piece: int) -> None:
    rng = np.random.default_rng(1)
    scores = np.round(rng.normal(size=(20, 700)), 1)  # rounded: many ties across pieces
    scores[:, 100:200] = 5.0  # 100 identical best entries per row
    scores[3] = -np.inf  # a row with nothing finite
    stream = StreamingTopK(20, 40, 41 + piece % 7)  # little room: many compactions
    for start in range(0, 700, piece):
        block = scores[:, start : start + piece]
        rows, cols = np.nonzero(np.isfinite(block))
        stream.push(rows, cols + start, block[rows, cols])
    ids, best = stream.result()
    want = _reference(np.where(np.isfinite(scores), scores, -np.inf), 40)
    for r in range(20):
        if r == 3:
            assert (ids[r] == -1).all() and np.isneginf(best[r]).all()
            continue
        assert ids[r].tolist() == want[r].tolist()
        assert ids[r, :40].tolist() == list(range(100, 140))  # the ties, lowest rows first
        assert np.array_equal(best[r], scores[r, ids[r]])


def test_streaming_top_k_keeps_memory_bounded() -> None:
    stream = StreamingTopK(4, 10, 26)
    for start in range(0, 10_000, 8):
        rows = np.repeat(np.arange(4), 8)
        ids = np.tile(np.arange(start, start + 8), 4)
        stream.push(rows, ids, np.sin(ids.astype(np.float64)))
    assert stream.scores.shape == (4, 26)
    ids, best = stream.result()
    order = np.lexsort((np.arange(10_000), -np.sin(np.arange(10_000.0))))[:10]
    assert ids[0].tolist() == order.tolist()
    stream.push(np.zeros(60, dtype=np.int64), np.arange(60) + 20_000, np.full(60, 9.0))
    ids, best = stream.result()  # 60 candidates at once into room for 26: pushed in parts
    assert ids[0].tolist() == list(range(20_000, 20_010)) and (best[0] == 9.0).all()
    with pytest.raises(ValueError, match="more than k"):
        StreamingTopK(1, 10, 10)


def test_unordered_streaming_top_k_with_settles_equals_dense() -> None:
    """ids in any order, ties across pieces, compactions (which keep the k best unsorted) and
    settles in between: the same k as a full sort, and each settle's bar the k-th best so far."""
    rng = np.random.default_rng(2)
    n_rows, n, k = 12, 600, 30
    scores = np.round(rng.normal(size=(n_rows, n)), 1)  # many ties
    scores[5, :] = 1.0  # a row of nothing but ties
    scores[7, 20:] = -np.inf  # a row with fewer than k candidates
    order = rng.permutation(n)  # ids arrive in no order
    stream = StreamingTopK(n_rows, k, k + 13, ordered=False)
    for i, start in enumerate(range(0, n, 45)):
        cols = order[start : start + 45]
        block = scores[:, cols]
        rows, at = np.nonzero(np.isfinite(block))
        stream.push(rows, cols[at], block[rows, at])
        if i % 3 == 1:
            stream.settle(np.arange(n_rows))
            seen = np.full((n_rows, n), -np.inf)
            seen[:, order[: start + 45]] = scores[:, order[: start + 45]]
            kth = -np.sort(-seen, axis=1)[:, k - 1]
            assert np.array_equal(stream.threshold, kth)
    ids, best = stream.result()
    want = _reference(scores, k)
    for r in range(n_rows):
        finite = np.isfinite(best[r])
        assert ids[r, finite].tolist() == want[r, : finite.sum()].tolist()
    assert ids[5].tolist() == list(range(k))  # all tied: the lowest ids
    assert (ids[7, 20:] == -1).all() and np.isfinite(best[7, :20]).all()
