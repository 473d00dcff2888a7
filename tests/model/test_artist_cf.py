"""ArtistCF: cosine co-occurrence over users x artists, bounded neighbours, scale-free user
scores and a checkpoint-safe state."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from deepvibe.model import artist_cf
from deepvibe.model.artist_cf import ArtistCF

VOCAB = np.array(["a", "b", "c", "d"], dtype=object)
# users x artists: u0 {a, b}, u1 {a, b, c}, u2 {c, d}; users per artist a2 b2 c2 d1
PLAYS = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 1, 1, 0], [0, 0, 1, 1]], dtype=np.float32))
# cos = co-listeners / sqrt(n_a n_b), zero diagonal
EXPECTED = np.array(
    [
        [0, 1.0, 0.5, 0],
        [1.0, 0, 0.5, 0],
        [0.5, 0.5, 0, 1 / np.sqrt(2)],
        [0, 0, 1 / np.sqrt(2), 0],
    ]
)


def test_cosine_similarity_matches_hand_computed_values() -> None:
    cf = ArtistCF.fit(PLAYS * 3.0, VOCAB)  # play counts are binarised
    np.testing.assert_allclose(cf.similarity.toarray(), EXPECTED, rtol=1e-6)


def test_max_neighbours_keeps_the_largest_with_ties_to_the_lower_artist() -> None:
    cf = ArtistCF.fit(PLAYS, VOCAB, max_neighbours=2)
    # row c: a 0.5, b 0.5 (tie), d 0.707 -> keeps d and a
    assert sorted(cf.similarity[2].indices.tolist()) == [0, 3]
    assert np.diff(cf.similarity.indptr).max() <= 2


def test_blocked_computation_equals_one_block(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(0)
    plays = sp.csr_matrix((rng.random((80, 60)) < 0.1).astype(np.float32))
    vocab = np.array([f"x{i}" for i in range(60)], dtype=object)
    whole = ArtistCF.fit(plays, vocab, max_neighbours=7).similarity
    monkeypatch.setattr(artist_cf, "_BLOCK_NNZ", 10)
    blocked = ArtistCF.fit(plays, vocab, max_neighbours=7).similarity
    assert (whole != blocked).nnz == 0


def test_user_scores_are_the_mean_over_distinct_artists() -> None:
    cf = ArtistCF.fit(PLAYS, VOCAB)
    users = sp.csr_matrix(np.array([[2, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]], np.float32))
    scores = cf.user_scores(users)
    assert scores.dtype == np.float32 and scores.shape == (3, 4)
    np.testing.assert_allclose(scores[0], EXPECTED[0], rtol=1e-6)
    np.testing.assert_allclose(scores[1], (EXPECTED[0] + EXPECTED[1]) / 2, rtol=1e-6)
    assert not scores[2].any()
    assert scores.min() >= 0 and scores.max() <= 1


def test_wrong_artist_columns_are_rejected() -> None:
    with pytest.raises(ValueError, match="3 artist columns, the vocabulary has 4"):
        ArtistCF.fit(PLAYS[:, :3], VOCAB)
    with pytest.raises(ValueError, match="max_neighbours"):
        ArtistCF.fit(PLAYS, VOCAB, max_neighbours=0)


def test_state_round_trips_through_torch_load_weights_only(tmp_path: Path) -> None:
    cf = ArtistCF.fit(PLAYS, VOCAB, max_neighbours=3)
    torch.save({"artist_cf": cf.to_state()}, tmp_path / "cf.pt")
    state = torch.load(tmp_path / "cf.pt", weights_only=True)["artist_cf"]
    back = ArtistCF.from_state(state)
    assert back.vocabulary.tolist() == VOCAB.tolist() and back.max_neighbours == 3
    assert (back.similarity != cf.similarity).nnz == 0
    users = sp.csr_matrix(np.array([[1, 0, 1, 0]], np.float32))
    np.testing.assert_array_equal(back.user_scores(users), cf.user_scores(users))


def test_malformed_state_is_rejected() -> None:
    state = ArtistCF.fit(PLAYS, VOCAB).to_state()
    with pytest.raises(ValueError, match="lacks"):
        ArtistCF.from_state({k: v for k, v in state.items() if k != "indptr"})
    with pytest.raises(ValueError, match="3 rows for 4 artists"):
        ArtistCF.from_state(state | {"indptr": state["indptr"][:-1]})


def test_top_k_per_row_matches_a_per_row_sort_with_ties() -> None:
    rng = np.random.default_rng(0)
    for trial in range(10):
        m = sp.random(30, 40, density=rng.uniform(0.05, 0.6), random_state=trial, format="csr")
        m.data = np.round(m.data * 4) / 4 + 0.25  # few distinct values: many ties
        k = int(rng.integers(1, 10))
        dense = m.toarray()
        expected = np.zeros_like(dense)
        for i in range(30):
            nz = np.flatnonzero(dense[i])
            kept = nz[np.lexsort((nz, -dense[i, nz]))][:k]
            expected[i, kept] = dense[i, kept]
        np.testing.assert_array_equal(artist_cf.top_k_per_row(m, k).toarray(), expected)
