"""Each ranking metric against values worked out by hand on tiny matrices."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from deepvibe.ranking.metrics import (
    average_popularity_at_k,
    beyond_accuracy,
    coverage_at_k,
    evaluate_ranking,
    evaluate_scorer,
    long_tail_share_at_k,
    mask_seen,
    ndcg_at_k,
    novelty_at_k,
    rank_users,
    recall_at_k,
    recall_std_at_k,
    short_head,
    top_k,
)


def held(rows: list[list[int]], n_items: int = 6) -> sp.csr_matrix:
    """A binary (len(rows), n_items) held-out matrix from lists of item indices."""
    m = sp.lil_matrix((len(rows), n_items), dtype=np.float32)
    for r, items in enumerate(rows):
        for i in items:
            m[r, i] = 1.0
    return m.tocsr()


LOG2_3 = math.log2(3)


def test_ndcg_hand_values() -> None:
    ranked = np.array([[0, 1, 2], [0, 1, 2], [3, 4, 5]])
    h = held([[1], [0, 2], [0]])
    got = ndcg_at_k(ranked, h, 3)
    # user 0: one hit at rank 2 -> (1/log2 3) / 1
    # user 1: hits at ranks 1 and 3 -> (1 + 1/2) / (1 + 1/log2 3)
    # user 2: no hit -> 0
    assert got == pytest.approx([1 / LOG2_3, 1.5 / (1 + 1 / LOG2_3), 0.0])


def test_ndcg_ideal_is_capped_at_k() -> None:
    # 4 held-out items, k = 2: both top-2 slots are hits, which is the best possible -> 1.
    ranked = np.array([[0, 1, 2, 3]])
    h = held([[0, 1, 2, 3]])
    assert ndcg_at_k(ranked, h, 2) == pytest.approx([1.0])
    # Only the second slot hits: (1/log2 3) / (1 + 1/log2 3).
    assert ndcg_at_k(np.array([[5, 1]]), h, 2) == pytest.approx([(1 / LOG2_3) / (1 + 1 / LOG2_3)])


def test_recall_truncated_and_standard_with_fewer_heldout_than_k() -> None:
    ranked = np.array([[1, 0, 2, 4], [5, 4, 3, 2]])
    h = held([[1, 3], [0, 1, 2, 3, 4]])
    # k = 3: user 0 has 2 held-out (< k): 1 hit / min(3, 2) = 0.5; standard 1/2.
    #        user 1 has 5 held-out: hits {4, 3} = 2 / min(3, 5) = 2/3; standard 2/5.
    assert recall_at_k(ranked, h, 3) == pytest.approx([0.5, 2 / 3])
    assert recall_std_at_k(ranked, h, 3) == pytest.approx([0.5, 0.4])
    # k = 1: user 0's first item is a hit -> truncated 1/1, standard 1/2.
    assert recall_at_k(ranked, h, 1) == pytest.approx([1.0, 0.0])
    assert recall_std_at_k(ranked, h, 1) == pytest.approx([0.5, 0.0])
    # k larger than every list: all of user 0's held-out found -> 1.0 truncated and standard.
    assert recall_at_k(np.array([[1, 3, 0, 2, 4, 5]]), held([[1, 3]]), 20)[0] == 1.0


def test_evaluate_ranking_means_over_users_with_heldout_only() -> None:
    ranked = np.array([[0, 1], [0, 1], [2, 3]])
    h = held([[0], [], [5]])  # user 1 has nothing held out: not averaged in
    out = evaluate_ranking(ranked, h, ("recall@1", "recall_std@2", "ndcg@2"))
    assert out["recall@1"] == pytest.approx((1.0 + 0.0) / 2)
    assert out["recall_std@2"] == pytest.approx(0.5)
    assert out["ndcg@2"] == pytest.approx(0.5)


def test_top_k_order_and_ties() -> None:
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [3.0, 2.0, 1.0, 0.0]])
    assert top_k(scores, 3).tolist() == [[1, 3, 2], [0, 1, 2]]
    assert top_k(scores, 10).shape == (2, 4)  # never more than the catalogue


def test_rank_users_never_returns_foldin_or_excluded_items() -> None:
    foldin = held([[0, 1], [2]], n_items=5)
    exclude = held([[4], []], n_items=5)

    def loves_seen(rows: sp.csr_matrix) -> np.ndarray:
        # Fold-in items get the highest scores: masking must still remove them.
        return rows.toarray() * 100.0 + np.arange(5)[None, :]

    ranked = rank_users(loves_seen, foldin, 3, chunk_size=1, exclude=exclude)
    # user 0: items 0, 1 (fold-in) and 4 (excluded) are masked; 3 then 2 are all that is left
    assert ranked[0][:2].tolist() == [3, 2]
    # user 1: item 2 (fold-in) is masked although it scored highest
    assert ranked[1].tolist() == [4, 3, 1]


def test_mask_seen_sets_minus_infinity() -> None:
    scores = np.ones((2, 3))
    mask_seen(scores, held([[2], [0, 1]], n_items=3))
    assert np.isneginf(scores).tolist() == [[False, False, True], [True, True, False]]


def test_evaluate_scorer_perfect_and_popularity() -> None:
    foldin = held([[0], [1]], n_items=4)
    heldout = held([[2], [3]], n_items=4)

    def oracle(rows: sp.csr_matrix) -> np.ndarray:
        # knows that user 0 wants 2 and user 1 wants 3
        out = np.zeros((rows.shape[0], 4))
        for r in range(rows.shape[0]):
            out[r, 2 if rows[r, 0] else 3] = 1.0
        return out

    perfect = evaluate_scorer(oracle, foldin, heldout, ("ndcg@100", "recall@1"), chunk_size=1)
    assert perfect == {"ndcg@100": 1.0, "recall@1": 1.0}


# ----------------------------------------------------------------------------- beyond accuracy


def test_coverage() -> None:
    ranked = np.array([[0, 1, 4], [1, 2, 4]])
    assert coverage_at_k(ranked, 5, 2) == pytest.approx(3 / 5)  # {0, 1, 2}
    assert coverage_at_k(ranked, 5, 3) == pytest.approx(4 / 5)  # {0, 1, 2, 4}


def test_short_head_ties_and_size() -> None:
    counts = np.array([5, 1, 3, 3, 0])
    # ceil(0.4 * 5) = 2 items: item 0, then the tie 2/3 goes to the lower index 2.
    assert short_head(counts, 0.4).tolist() == [True, False, True, False, False]
    assert short_head(counts, 0.2).sum() == 1


def test_long_tail_share_and_average_popularity() -> None:
    head = np.array([True, False, True, False, False])
    ranked = np.array([[0, 1], [2, 0], [3, 4]])
    assert long_tail_share_at_k(ranked, head, 2).tolist() == [0.5, 0.0, 1.0]
    popularity = np.array([10.0, 20.0, 30.0, 40.0, 50.0])
    assert average_popularity_at_k(ranked, popularity, 2).tolist() == [15.0, 20.0, 45.0]
    assert average_popularity_at_k(ranked, popularity, 1).tolist() == [10.0, 30.0, 40.0]


def test_novelty_self_information() -> None:
    counts = np.array([3, 1, 0])
    # p = (count + 1) / (3 + 1): 1, 1/2, 1/4 -> 0, 1, 2 bits
    ranked = np.array([[0, 1], [1, 2]])
    assert novelty_at_k(ranked, counts, 3, 2).tolist() == [0.5, 1.5]


def test_beyond_accuracy_bundle() -> None:
    counts = np.array([4, 2, 1, 1, 0])  # 4 training users
    ranked = np.array([[0, 1], [0, 2]])
    out = beyond_accuracy(ranked, counts, 4, ks=(1, 2), popularity=np.array([90, 50, 10, 10, 0]))
    assert out["coverage@1"] == pytest.approx(1 / 5)
    assert out["coverage@2"] == pytest.approx(3 / 5)
    assert out["avg_pop@1"] == pytest.approx(1.0)  # item 0 was played by all 4 training users
    assert out["avg_pop@2"] == pytest.approx(((4 + 2) / 2 / 4 + (4 + 1) / 2 / 4) / 2)
    assert out["long_tail@2"] == pytest.approx(0.5)  # head = {item 0}
    assert out["novelty@1"] == pytest.approx(0.0)
    assert out["popularity@2"] == pytest.approx((70 + 50) / 2)
