"""The hybrid discovery score: parts with known values, taste groups defined by artists (the
collaborative part finds the right group's new artists where the DNA cannot), reasons, the
candidate pool and the weight fit."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from deepvibe.discovery.hybrid import (
    DEFAULT_WEIGHTS,
    CandidatePool,
    HybridWeights,
    artist_part,
    artist_share_matrix,
    chunk_parts,
    collab_part,
    decoder_part,
    dna_part,
    fit_weights,
    gain_is_real,
    paired_gain,
    pool_ndcg,
    score_chunk,
    score_direct,
    strongest_part,
    unit_rows,
    why,
)
from deepvibe.model.artist_cf import ArtistCF
from deepvibe.ranking.discovery_protocol import new_artist_view

# ------------------------------------------------------------------------------------ weights


def test_weights_round_trip_and_validate() -> None:
    w = HybridWeights(dna=1.0, artist=2.0, collab=0.5, decoder=0.0)
    assert HybridWeights.from_dict(w.to_dict()) == w
    assert HybridWeights.DEFAULT == DEFAULT_WEIGHTS
    assert HybridWeights.from_dict({"decoder": 4}).to_dict() == DEFAULT_WEIGHTS.to_dict() | {
        "decoder": 4.0
    }
    with pytest.raises(ValueError, match="unknown hybrid weight"):
        HybridWeights.from_dict({"gems": 1.0})
    with pytest.raises(ValueError, match="collab must be finite and >= 0"):
        HybridWeights(1.0, 1.0, -0.1, 0.0)


# -------------------------------------------------------------------------------------- parts


def test_dna_part_is_cosine_and_nan_without_features() -> None:
    user = unit_rows(np.array([[1.0, 0.0]]))
    tracks = unit_rows(np.array([[2.0, 0.0], [0.0, 3.0], [0.0, 0.0]]))
    part = dna_part(user, tracks, np.array([True, True, False]))
    np.testing.assert_allclose(part[0, :2], [1.0, 0.0])
    assert np.isnan(part[0, 2])
    # a missing part adds 0
    total = score_chunk({"dna": part}, HybridWeights(2.0, 0, 0, 0))
    np.testing.assert_allclose(total, [[2.0, 0.0, 0.0]])


def test_artist_share_counts_history_tracks_by_the_candidates_artists() -> None:
    # history: 4 tracks; h0 h1 by a, h2 by a and b, h3 by c
    history_artists = sp.csr_matrix((np.ones(5), ([0, 1, 2, 2, 3], [0, 0, 0, 1, 2])), shape=(4, 3))
    shares = artist_share_matrix(sp.csr_matrix(np.ones((1, 4))), history_artists)
    np.testing.assert_allclose(shares.toarray(), [[3 / 4, 1 / 4, 1 / 4]])
    # candidates: by a; by a and b; by nobody
    chunk = sp.csr_matrix((np.ones(3), ([0, 1, 1], [0, 0, 1])), shape=(3, 3))
    np.testing.assert_allclose(artist_part(shares, chunk), [[3 / 4, 4 / 4, 0.0]])


def test_collab_part_takes_the_max_over_the_tracks_artists() -> None:
    collab = np.array([[0.1, 0.7, 0.3]], np.float32)
    chunk = sp.csr_matrix((np.ones(4), ([0, 1, 1, 1], [2, 0, 1, 2])), shape=(3, 3))
    np.testing.assert_allclose(collab_part(collab, chunk), [[0.3, 0.7, 0.0]])


def test_collab_part_matches_a_brute_force_max_with_many_artist_tracks() -> None:
    rng = np.random.default_rng(4)
    n_tracks, n_artists = 60, 9
    rows = list(range(50)) + [50] * 6 + [51] * 3  # 50 one-artist tracks, two many-artist ones
    cols = list(rng.integers(0, n_artists, 50)) + [0, 2, 3, 5, 7, 8] + [1, 4, 6]
    chunk = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(n_tracks, n_artists))
    collab = rng.random((3, n_artists)).astype(np.float32)
    expected = np.zeros((3, n_tracks), np.float32)
    for t in range(n_tracks):
        artists = chunk[t].indices
        if len(artists):
            expected[:, t] = collab[:, artists].max(axis=1)
    np.testing.assert_array_equal(collab_part(collab, chunk), expected)


def test_decoder_part_keeps_positive_catalogue_z_only() -> None:
    z = np.array([[1.5, -0.4, 0.2]], np.float32)
    part = decoder_part(z, np.array([2, -1, 0, 1]))
    np.testing.assert_allclose(part, [[0.2, 0.0, 1.5, 0.0]])


def test_chunk_parts_skips_parts_without_inputs() -> None:
    parts = chunk_parts(user_dna=unit_rows(np.ones((2, 3))), track_units=unit_rows(np.ones((5, 3))))
    assert set(parts) == {"dna"} and parts["dna"].shape == (2, 5)
    assert chunk_parts(user_dna=np.ones((2, 3)), track_units=np.ones((5, 3)), only=()) == {}


def test_score_direct_equals_the_sum_of_materialised_parts() -> None:
    rng = np.random.default_rng(2)
    n_users, n_tracks, n_artists, n_cat = 5, 40, 12, 15
    track_artists = sp.random(n_tracks, n_artists, density=0.15, random_state=3, format="csr")
    track_artists.data[:] = 1.0
    history = sp.random(n_users, 30, density=0.3, random_state=4, format="csr")
    history_artists = sp.random(30, n_artists, density=0.2, random_state=5, format="csr")
    user_dna = unit_rows(rng.normal(size=(n_users, 4)))
    user_dna[1] = np.nan  # a user without a DNA
    index = np.full(n_tracks, -1)
    index[rng.choice(n_tracks, n_cat, replace=False)] = np.arange(n_cat)
    inputs = {
        "user_dna": user_dna,
        "track_units": unit_rows(rng.normal(size=(n_tracks, 4))),
        "has_features": rng.random(n_tracks) > 0.2,
        "user_shares": artist_share_matrix(history, history_artists),
        "user_collab": rng.random((n_users, n_artists)).astype(np.float32),
        "chunk_artists": track_artists,
        "catalogue_index": index,
        "user_decoder_z": rng.normal(size=(n_users, n_cat)).astype(np.float32),
    }
    for w in (DEFAULT_WEIGHTS, HybridWeights(0.0, 2.0, 0.0, 0.5), HybridWeights(1.0, 0, 0, 0)):
        np.testing.assert_allclose(
            score_direct(w, **inputs), score_chunk(chunk_parts(**inputs), w), rtol=1e-5, atol=1e-6
        )


# ------------------------------------------------------------------------- taste groups world


def taste_world(seed: int = 0):
    """20 artists (0-9 group A, 10-19 group B), 5 tracks each; a group-B track has exactly the
    features of its group-A twin (track t + 50), so audio cannot tell the groups apart.
    Training users play 2 tracks by each of 4 artists of their group."""
    rng = np.random.default_rng(seed)
    track_artists = sp.csr_matrix((np.ones(100), (np.arange(100), np.arange(100) // 5)))
    features_a = rng.normal(size=(50, 12))
    features = np.vstack([features_a, features_a])
    rows, cols = [], []
    for u in range(80):
        group = u % 2
        for artist in rng.choice(10, 4, replace=False) + 10 * group:
            for t in rng.choice(5, 2, replace=False) + 5 * artist:
                rows.append(u)
                cols.append(t)
    train = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(80, 100))
    return track_artists, features, train


def test_collab_finds_the_right_groups_new_artists_where_dna_cannot() -> None:
    track_artists, features, train = taste_world()
    vocab = np.array([f"artist{i}" for i in range(20)], dtype=object)
    cf = ArtistCF.fit(train @ track_artists, vocab)
    history = sp.csr_matrix((np.ones(10), (np.zeros(10, int), np.arange(10))), shape=(1, 100))
    _, exclusion = new_artist_view(history, sp.csr_matrix((1, 100)), track_artists, "artist")
    z = (features - features.mean(0)) / features.std(0)
    parts = chunk_parts(
        user_dna=unit_rows(history @ z),
        track_units=unit_rows(z),
        user_shares=artist_share_matrix(history, track_artists),
        user_collab=cf.user_scores(history @ track_artists),
        chunk_artists=track_artists,
    )
    candidates = np.flatnonzero(exclusion.toarray()[0] == 0)
    assert candidates.tolist() == list(range(10, 100))  # artists 0 and 1 are not new

    def top20(weights: HybridWeights) -> np.ndarray:
        s = score_chunk(parts, weights)[0, candidates]
        return candidates[np.argsort(-s, kind="stable")[:20]]

    # group B never co-occurs with the history's artists; every new group-A artist does
    assert (parts["collab"][0, 10:50] > 0).all() and not parts["collab"][0, 50:].any()
    hybrid = score_chunk(parts, DEFAULT_WEIGHTS)[0]
    assert (hybrid[10:50] > hybrid[60:100]).all()  # each group-A track beats its twin
    assert (top20(DEFAULT_WEIGHTS) < 50).mean() >= 0.9
    # the DNA gives every group-A track's twin the very same score: it cannot pick a group
    np.testing.assert_allclose(parts["dna"][0, 10:50], parts["dna"][0, 60:100], rtol=1e-5)
    # ... and prefers group B's twins of the history tracks themselves (tracks 50-59)
    assert (top20(HybridWeights(1.0, 0.0, 0.0, 0.0)) < 50).mean() <= 0.5
    assert not parts["artist"][0, candidates].any()


# ---------------------------------------------------------------------------------------- why


def test_why_names_the_part_that_contributed_most() -> None:
    w = HybridWeights(dna=1.0, artist=3.0, collab=3.0, decoder=1.0)
    parts = {
        "dna": np.array([0.1, 0.2, 0.9, np.nan, 0.0]),
        "artist": np.array([0.75, 0.0, 0.0, 0.0, 0.0]),
        "collab": np.array([0.1, 0.9, 0.0, 0.0, 0.0]),
        "decoder": np.array([0.0, 0.0, 0.0, 0.0, 2.5]),
    }
    history_units = unit_rows(np.array([[1.0, 0.0], [0.0, 1.0]]))
    track_units = unit_rows(np.array([[1, 1], [1, 1], [0.1, 1.0], [1, 0], [1, 0]]))
    reasons = why(parts, w, 4, track_units, history_units, ["Song X", "Song Y"])
    assert reasons == [
        "artist: 3 of your tracks",
        "listeners like you",
        "sounds like: Song Y",
        "",
        "listeners like you",
    ]


# ------------------------------------------------------------------------------ candidate pool


def test_pool_is_the_union_of_each_parts_top_over_chunks() -> None:
    rng = np.random.default_rng(1)
    parts = {p: rng.random((3, 500)).astype(np.float32) for p in ("dna", "artist", "collab")}
    excluded = rng.random((3, 500)) < 0.3
    chunked = CandidatePool(3, size=20)
    for start in range(0, 500, 128):
        end = min(start + 128, 500)
        chunked.add({p: v[:, start:end] for p, v in parts.items()}, start, excluded[:, start:end])
    for u in range(3):
        expected = set()
        for v in parts.values():
            allowed = np.flatnonzero(~excluded[u])
            expected |= set(allowed[np.argsort(-v[u, allowed])[:20]].tolist())
        assert chunked.columns[u].tolist() == sorted(expected)
        np.testing.assert_array_equal(chunked.values[u]["dna"], parts["dna"][u, chunked.columns[u]])


# -------------------------------------------------------------------------------- fit weights


def pools(n_users: int, seed: int = 0):
    """Candidate pools where only the artist part marks the held-out tracks (weakly: 0.05),
    the other parts are louder noise."""
    rng = np.random.default_rng(seed)
    parts, marks = [], []
    for _ in range(n_users):
        held = np.zeros(300, bool)
        held[rng.choice(300, 10, replace=False)] = True
        parts.append(
            {
                "dna": rng.uniform(-1, 1, 300),
                "artist": 0.05 * held + 0.01 * rng.random(300),
                "collab": rng.random(300),
                "decoder": 3 * rng.random(300),
            }
        )
        marks.append(held)
    return parts, marks


def test_fit_weights_recovers_the_only_informative_part() -> None:
    parts, marks = pools(40)
    weights, report = fit_weights(parts, marks)
    assert report["used"] == "fitted" and report["n_users"] == 40
    w = weights.to_dict()
    assert all(w["artist"] > w[p] for p in ("dna", "collab", "decoder"))
    assert report["fitted_ndcg"] > 0.95 > report["default_ndcg"]
    assert fit_weights(parts, marks)[0] == weights  # deterministic


def test_fit_weights_falls_back_to_default_with_too_few_users() -> None:
    parts, marks = pools(5)
    weights, report = fit_weights(parts, marks, min_users=20)
    assert weights == DEFAULT_WEIGHTS
    assert report["used"] == "default" and "5 validation users < 20" in report["reason"]


def test_fit_weights_keeps_default_when_it_cannot_gain_enough() -> None:
    parts, marks = pools(30)
    perfect = HybridWeights(dna=0.0, artist=1.0, collab=0.0, decoder=0.0)
    weights, report = fit_weights(parts, marks, default=perfect)
    assert weights == perfect and report["used"] == "default"


def test_fit_weights_counts_heldout_outside_the_pool_as_misses() -> None:
    parts, marks = pools(25)
    _, inside = fit_weights(parts, marks, min_gain=0.0)
    _, with_missing = fit_weights(parts, marks, [20] * 25, min_gain=0.0)
    assert with_missing["fitted_ndcg"] < inside["fitted_ndcg"]


def noise_pools(n_users: int, seed: int = 0):
    """Candidate pools where no part says anything about the held-out tracks."""
    rng = np.random.default_rng(seed)
    parts, marks = [], []
    for _ in range(n_users):
        held = np.zeros(300, bool)
        held[rng.choice(300, 10, replace=False)] = True
        parts.append({p: rng.random(300) for p in ("dna", "artist", "collab", "decoder")})
        marks.append(held)
    return parts, marks


def test_fit_on_few_noisy_validation_users_shrinks_to_the_prior() -> None:
    """The new-artist fit over-fitted ~20 validation playlists (spotify-2024, 5-seed std
    0.038): an in-sample gain that is chance must not replace the prior (fit_z gate)."""
    parts, marks = noise_pools(20)
    prior = HybridWeights(dna=1.0, artist=0.0, collab=0.0, decoder=0.0)
    ungated, loose = fit_weights(parts, marks, default=prior, min_users=0, min_gain=0.0)
    assert loose["used"] == "fitted" and ungated != prior  # chance gains in-sample
    gated, report = fit_weights(parts, marks, default=prior, min_users=0, min_gain=0.0, z=2.0)
    assert gated == prior and report["used"] == "default"
    assert report["fitted_ndcg"] - report["default_ndcg"] < 2.0 * report["gain_se"]


def test_fit_gate_keeps_a_real_gain() -> None:
    parts, marks = pools(40)
    weights, report = fit_weights(parts, marks, z=2.0)
    assert report["used"] == "fitted" and weights.artist > weights.dna


def test_pool_ndcg_is_per_user_and_averages_to_the_fit_report() -> None:
    parts, marks = pools(25)
    weights, report = fit_weights(parts, marks, min_gain=0.0)
    per_user = pool_ndcg(parts, marks, None, weights)
    assert per_user.shape == (25,)
    assert per_user.mean() == pytest.approx(report["fitted_ndcg"])
    assert pool_ndcg(parts, marks, None, DEFAULT_WEIGHTS).mean() == pytest.approx(
        report["default_ndcg"]
    )
    assert len(pool_ndcg([], [], None, weights)) == 0


def test_paired_gain_and_gate() -> None:
    gain, se = paired_gain(np.array([0.3, 0.5, 0.4]), np.array([0.1, 0.3, 0.2]))
    assert gain == pytest.approx(0.2) and se == pytest.approx(0.0, abs=1e-12)
    assert gain_is_real(gain, se, min_gain=0.005, z=3.0)
    gain, se = paired_gain(np.array([0.9, 0.0]), np.array([0.0, 0.8]))
    assert gain == pytest.approx(0.05) and se == pytest.approx(0.85)
    assert not gain_is_real(gain, se, min_gain=0.005, z=1.0)
    assert gain_is_real(gain, se, min_gain=0.005, z=0.0)


def test_strongest_part_breaks_ties_by_the_first_part_and_skips_nan_and_no_history() -> None:
    """The rule behind every why, on cases with a known answer: the largest part wins; a tie
    goes to the first of ``names``; NaN never wins over a number (-inf does); the DNA part is
    no reason for a user without history features; a part at or below 0 is not said unless
    it is the DNA part."""
    names = ["artist", "collab", "dna"]
    contrib = np.array([
        [0.5, 0.2, np.nan, 0.0, 0.1, np.nan, -np.inf],   # artist
        [0.5, 0.3, -np.inf, -0.1, 0.2, np.nan, np.nan],  # collab
        [0.1, 0.9, np.nan, -0.2, 0.3, 0.4, -1.0],        # dna
    ])  # fmt: skip
    no_history = np.array([False, True, False, False, False, False, True])
    best, said = strongest_part(contrib, names, no_history)
    np.testing.assert_array_equal(best, [0, 1, 1, 0, 2, 2, 0])
    np.testing.assert_array_equal(said, [True, True, False, False, True, True, False])
