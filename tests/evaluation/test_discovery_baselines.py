"""The doc's discovery baselines, hand-computed on a 4-track database."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from deepvibe.evaluation.discovery_baselines import (
    ArtistCooccurrence,
    artist_share_scores,
    content_mean_scores,
    cooccurrence_blend_scores,
    cooccurrence_scores,
    popularity_scores,
    standardise,
)

# 4 tracks, 2 standardised features; artists a b c; t3 is credited to b and c
Z = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
TA = sp.csr_matrix((np.ones(5), ([0, 1, 2, 3, 3], [0, 1, 2, 1, 2])), shape=(4, 3))
# fold-in: u0 {t0, t1} -> artists {a, b}; u1 {t0, t2} -> {a, c}; u2 {t1} -> {b}
FOLDIN = sp.csr_matrix((np.ones(5), ([0, 0, 1, 1, 2], [0, 1, 0, 2, 1])), shape=(3, 4))


def test_standardise_uses_database_mean_and_std() -> None:
    raw = np.array([[1.0, 5.0], [3.0, 5.0]])
    np.testing.assert_allclose(standardise(raw), [[-1.0, 0.0], [1.0, 0.0]])


def test_content_mean_is_cosine_to_the_mean_foldin_features() -> None:
    scores = content_mean_scores(FOLDIN, Z)
    # u0 profile (0.5, 0.5): cos to t0 = 1/sqrt2, t2 = 1, t3 = -1/sqrt2
    np.testing.assert_allclose(scores[0], [2**-0.5, 2**-0.5, 1.0, -(2**-0.5)])
    # u2 profile (0, 1)
    np.testing.assert_allclose(scores[2], [0.0, 1.0, 2**-0.5, 0.0], atol=1e-12)


def test_artist_share_is_content_plus_100_times_share_summed_over_artists() -> None:
    scores = artist_share_scores(FOLDIN, Z, TA)
    share_u0 = np.array([1, 1, 0, 1]) / 2  # t3 (b, c): one fold-in track by b
    share_u1 = np.array([1, 0, 1, 1]) / 2  # t3: one by c
    np.testing.assert_allclose(scores[0], content_mean_scores(FOLDIN, Z)[0] + 100 * share_u0)
    np.testing.assert_allclose(scores[1], content_mean_scores(FOLDIN, Z)[1] + 100 * share_u1)


def test_popularity_is_the_column_for_every_user() -> None:
    scores = popularity_scores(FOLDIN, np.array([5, 50, 0, 7]))
    assert scores.shape == (3, 4) and (scores == [5, 50, 0, 7]).all()


def test_cooccurrence_follows_the_doc_formula() -> None:
    cooc = ArtistCooccurrence.fit(FOLDIN, TA)
    # A: u0 [1,1,0], u1 [1,0,1], u2 [0,1,0]; C_ab = 1, C_ac = 1, C_bc = 0; users a2 b2 c1
    np.testing.assert_array_equal(cooc.counts.toarray(), [[0, 1, 1], [1, 0, 0], [1, 0, 0]])
    np.testing.assert_array_equal(cooc.users_per_artist, [2, 2, 1])
    scores = cooccurrence_scores(FOLDIN, TA, cooc)
    a, c = 1 / np.sqrt(3), 1 / np.sqrt(2)  # per artist of u0: a -> 1/sqrt3, b -> 1/sqrt3, c
    np.testing.assert_allclose(scores[0], [a, a, c, a + c])
    np.testing.assert_allclose(scores[2], [a, 0, 0, 0])


def test_cooccurrence_blend_divides_by_the_max_over_candidates() -> None:
    cooc = ArtistCooccurrence.fit(FOLDIN, TA)
    raw = cooccurrence_scores(FOLDIN, TA, cooc)
    content = content_mean_scores(FOLDIN, Z)
    blend = cooccurrence_blend_scores(FOLDIN, Z, TA, cooc)
    # u0 candidates t2, t3: max is t3's
    np.testing.assert_allclose(blend[0], content[0] + raw[0] / raw[0, 3])
    # excluding t3 leaves t2 as the maximum
    excl = sp.csr_matrix(([1.0], ([0], [3])), shape=(3, 4))
    np.testing.assert_allclose(
        cooccurrence_blend_scores(FOLDIN, Z, TA, cooc, excl)[0], content[0] + raw[0] / raw[0, 2]
    )
    # u2's candidates all score 0: divided by 1, not by 0
    assert np.isfinite(blend[2]).all()


def test_baselines_are_chunkable_over_users() -> None:
    cooc = ArtistCooccurrence.fit(FOLDIN, TA)
    whole = cooccurrence_blend_scores(FOLDIN, Z, TA, cooc)
    parts = [cooccurrence_blend_scores(FOLDIN[i : i + 1], Z, TA, cooc) for i in range(3)]
    np.testing.assert_allclose(np.vstack(parts), whole)
    share = artist_share_scores(FOLDIN, Z, TA)
    np.testing.assert_allclose(artist_share_scores(FOLDIN[1:], Z, TA), share[1:])


def test_user_without_foldin_gets_finite_scores() -> None:
    empty = sp.csr_matrix((1, 4))
    assert np.isfinite(content_mean_scores(empty, Z)).all()
    assert not artist_share_scores(empty, Z, TA).any()
