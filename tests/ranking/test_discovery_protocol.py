"""Database-ranking and new-artist protocols (discovery-protocols.md): exact split sizes, the
documented random stream, credit vs per-artist views, and metrics with unscorable users."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from deepvibe.ranking.discovery_protocol import (
    credit_matrix,
    database_split,
    evaluate_database,
    new_artist_view,
)


def plays(sizes: list[int], n_tracks: int = 40, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    rows = [np.full(n, u) for u, n in enumerate(sizes)]
    cols = [rng.choice(n_tracks, n, replace=False) for n in sizes]
    return sp.csr_matrix(
        (np.ones(sum(sizes)), (np.concatenate(rows), np.concatenate(cols))),
        shape=(len(sizes), n_tracks),
    )


def test_split_holds_out_exactly_int_02n_from_users_with_5_or_more() -> None:
    sizes = [1, 4, 5, 6, 9, 10, 14, 15, 23, 40]
    matrix = plays(sizes)
    split = database_split(matrix, np.arange(len(sizes)), seed=3)
    held = np.diff(split.heldout.indptr)
    fold = np.diff(split.foldin.indptr)
    assert held.tolist() == [int(0.2 * n) if n >= 5 else 0 for n in sizes]
    assert (fold + held).tolist() == sizes
    assert split.foldin.multiply(split.heldout).nnz == 0
    assert ((split.foldin + split.heldout) != matrix).nnz == 0


def test_split_deduplicates_pairs_and_follows_the_documented_stream() -> None:
    # user 0 plays track 7 twice: counted once, so 5 distinct tracks -> 1 held out
    matrix = sp.csr_matrix((np.ones(6), ([0] * 6, [1, 3, 7, 7, 9, 12])), shape=(1, 20))
    split = database_split(matrix, np.array(["p"]), seed=98765)
    cols = np.array([1, 3, 7, 9, 12])
    expected = cols[np.random.default_rng([98765, 4]).permutation(5)[:1]]
    assert split.heldout.indices.tolist() == expected.tolist()
    assert split.foldin.nnz == 4 and split.foldin.data.max() == 1.0


def test_split_is_deterministic_per_seed() -> None:
    matrix = plays([12] * 8)
    ids = np.arange(8)
    a, b = database_split(matrix, ids, 1), database_split(matrix, ids, 1)
    c = database_split(matrix, ids, 2)
    assert (a.heldout != b.heldout).nnz == 0
    assert (a.heldout != c.heldout).nnz > 0


def test_split_rejects_mismatched_user_ids() -> None:
    with pytest.raises(ValueError, match="3 user ids for 2 rows"):
        database_split(plays([5, 5]), np.arange(3), 0)


# tracks: t0 {a}, t1 {a, b}, t2 {b}, t3 {c}, t4 {b, a}, t5 no artist
TRACK_ARTISTS = sp.csr_matrix(
    (np.ones(7), ([0, 1, 1, 2, 3, 4, 4], [0, 0, 1, 1, 2, 1, 0])), shape=(6, 3)
)


def test_credit_matrix_gives_one_column_per_distinct_artist_set() -> None:
    credits = credit_matrix(TRACK_ARTISTS).toarray()
    assert credits.shape == (6, 4)  # {a}, {a,b}, {b}, {c}
    assert (credits[1] == credits[4]).all() and credits[1].sum() == 1
    assert not credits[5].any()
    assert len({tuple(r) for r in credits[:4]}) == 4


def test_new_artist_view_per_artist_and_per_credit() -> None:
    foldin = sp.csr_matrix(([1.0], ([0], [0])), shape=(1, 6))  # t0 by a
    heldout = sp.csr_matrix((np.ones(4), ([0] * 4, [1, 2, 3, 5])), shape=(1, 6))
    held_a, excl_a = new_artist_view(foldin, heldout, TRACK_ARTISTS, "artist")
    assert held_a.indices.tolist() == [2, 3, 5]  # t1 features a: not new
    assert excl_a.indices.tolist() == [0, 1, 4]
    held_c, excl_c = new_artist_view(foldin, heldout, TRACK_ARTISTS, "credit")
    assert held_c.indices.tolist() == [1, 2, 3, 5]  # credit "a, b" is another credit
    assert excl_c.indices.tolist() == [0]
    with pytest.raises(ValueError, match="unit must be"):
        new_artist_view(foldin, heldout, TRACK_ARTISTS, "band")


def test_evaluate_masks_foldin_and_exclusion_and_counts_unscorable_as_zero() -> None:
    n_db = 6
    foldin = sp.csr_matrix((np.ones(3), ([0, 1, 2], [0, 0, 0])), shape=(4, n_db))
    heldout = sp.csr_matrix((np.ones(3), ([0, 1, 2], [3, 3, 3])), shape=(4, n_db))
    exclusion = sp.csr_matrix(([1.0], ([1], [1])), shape=(4, n_db))
    scores = np.array(
        [
            [9, 1, 1, 5, 1, 1],  # fold-in first (masked), then the held-out: perfect
            [9, 8, 1, 5, 1, 1],  # track 1 excluded: perfect too
            [np.nan] * n_db,  # cannot score: counts as 0
            [0, 0, 0, 0, 0, 0],  # no held-out track: not a user of the protocol
        ]
    )
    result = evaluate_database(lambda rows: scores[rows], foldin, heldout, exclusion, chunk_size=2)
    assert result.n_users == 3 and result.n_unscored == 1
    np.testing.assert_allclose(result.per_user["ndcg@100"], [1.0, 1.0, 0.0])
    assert result.metrics["ndcg@100"] == pytest.approx(2 / 3)
    assert result.metrics["recall@20"] == pytest.approx(2 / 3)
    worse = evaluate_database(lambda rows: scores[rows], foldin, heldout, None)
    assert worse.per_user["ndcg@100"][1] == pytest.approx(1 / np.log2(3))  # track 1 ranks first
