"""The hybrid's pruned database ranking (hybrid_scan.rank_database) returns exactly what scoring
every (user, track) pair returns (signals.rank_space): the same rows, order and float32 scores,
in every mode, with exact ties, near-ties and multi-artist credits."""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from deepvibe.discovery import hybrid_scan, space_cache
from deepvibe.discovery.discoverer import gems_penalty
from deepvibe.discovery.hybrid import HybridWeights, artist_share_matrix, zscore_rows
from deepvibe.discovery.hybrid_scan import pair_scores, rank_database
from deepvibe.discovery.signals import (
    HybridScorer,
    TrackSpace,
    UserInputs,
    rank_space,
    space_units,
)
from deepvibe.discovery.space_cache import IndexFiles
from deepvibe.model.artist_cf import ArtistCF

N_SPACE, N_ARTISTS, N_CATALOGUE, N_USERS = 20_000, 1500, 900, 70


def _space(rng: np.random.Generator, n_artists: int = N_ARTISTS) -> TrackSpace:
    """Tracks drawn from 40 feature vectors (exact DNA ties) plus near-ties, 0-3 artists each
    (a few with 6), integer popularity (exact penalty ties), some without features."""
    protos = rng.normal(size=(40, 12)).astype(np.float32)
    z = protos[rng.integers(0, 40, N_SPACE)]
    near = rng.random(N_SPACE) < 0.5  # cosines a few float32 ulps apart
    z[near] += (rng.normal(size=(int(near.sum()), 12)) * 1e-6).astype(np.float32)
    has = rng.random(N_SPACE) > 0.1
    z[~has] = 0.0
    n_credits = rng.choice([0, 1, 1, 1, 2, 3], N_SPACE)
    n_credits[rng.choice(N_SPACE, 20, replace=False)] = 6
    rows = np.repeat(np.arange(N_SPACE), n_credits)
    artists = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, rng.integers(0, n_artists, len(rows)))),
        shape=(N_SPACE, n_artists),
    )
    artists.data[:] = 1.0  # a repeated credit counts once
    catalogue_index = np.full(N_SPACE, -1, np.int64)
    inside = rng.choice(N_SPACE, 700, replace=False)
    catalogue_index[inside] = rng.choice(N_CATALOGUE, 700, replace=False)
    popularity = rng.integers(0, 101, N_SPACE).astype(np.float32)
    popularity[rng.random(N_SPACE) < 0.05] = np.nan
    return TrackSpace(
        track_ids=np.array([f"t{i}" for i in range(N_SPACE)], dtype=object),
        units=space_units(z), standardised=z, has_features=has, artists=artists,
        artist_keys=np.array([f"a{i}" for i in range(n_artists)], dtype=object),
        catalogue_index=catalogue_index, popularity=popularity,
    )  # fmt: skip


def _scorer_and_inputs(
    seed: int, dense_collab: bool = False, n_artists: int = N_ARTISTS
) -> tuple[HybridScorer, UserInputs]:
    """``dense_collab``: every artist in the CF vocabulary with 50 neighbours, so most tracks
    carry a small collab part (the case where a lift below tau still decides a place);
    ``n_artists`` 30: hundreds of tracks per artist, long runs of one artist in a tile."""
    rng = np.random.default_rng(seed)
    space = _space(rng, n_artists)
    if dense_collab:
        vocabulary = np.array([f"a{i}" for i in range(n_artists)], object)
    else:  # a tenth of the space's artists and 10 it does not have
        vocabulary = np.array(
            [f"a{i}" for i in range(0, n_artists, 10)] + [f"x{i}" for i in range(10)], object
        )
    listeners = sp.random(300, len(vocabulary), density=0.05, random_state=3, format="csr")
    artist_cf = ArtistCF.fit(listeners, vocabulary, max_neighbours=50 if dense_collab else 5)
    scorer = HybridScorer(
        None, np.zeros((N_CATALOGUE, 12), np.float32), space,  # type: ignore[arg-type]
        HybridWeights(1.0, 3.0, 1.0, 0.25), 1.0, None, artist_cf,
    )  # fmt: skip
    history = sp.random(N_USERS, N_SPACE, density=0.001, random_state=seed, format="csr")
    history.data[:] = 1.0
    history = sp.csr_matrix(history, dtype=np.float32)
    cf_users = sp.csr_matrix(history @ scorer.cf_artists)
    cf_users.data[:] = 1.0
    dna = space.units[rng.integers(0, N_SPACE, N_USERS)].copy()  # ties with many tracks
    dna[5] = np.nan  # no finite DNA: its DNA part is 0
    dna[6] = 0.0
    decoder = np.round(rng.normal(size=(N_USERS, N_CATALOGUE)) * 4) / 4  # many equal z-scores
    inputs = UserInputs(
        dna=dna, dna_raw=dna, shares=artist_share_matrix(history, space.artists),
        collab=artist_cf.user_scores(cf_users), decoder_z=zscore_rows(decoder),
        history=history, usable=np.ones(N_USERS, bool),
    )  # fmt: skip
    return scorer, inputs


@pytest.fixture
def small_sample(monkeypatch):  # noqa: ANN201
    """Sample and size limits scaled to a 20,000-track space."""
    monkeypatch.setattr(hybrid_scan, "_SAMPLE", 2048)
    monkeypatch.setattr(hybrid_scan, "_MIN_SPACE", 0)
    monkeypatch.setattr(hybrid_scan, "_FEW_USERS", 0)
    yield


def _by_every_pair_too(monkeypatch) -> list[int]:  # noqa: ANN001
    """Counts the users rank_database hands to rank_space."""
    handed: list[int] = []

    def counting(scorer, users, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        handed.append(users.dna.shape[0])
        return rank_space(scorer, users, *args, **kwargs)

    monkeypatch.setattr(hybrid_scan, "rank_space", counting)
    return handed


@pytest.mark.parametrize("mode", ["standard", "gems", "new-artists", "gems-new-artists"])
@pytest.mark.parametrize(
    "weights",
    [None, HybridWeights(0.01, 0.03, 3.0, 0.3), HybridWeights(0.0, 1.0, 1.0, 1.0),
     HybridWeights(1.0, 0.0, 0.0, 0.0), HybridWeights(0.001, 3000.0, 1000.0, 500.0),
     HybridWeights(1.0, 0.1, 0.3, 0.0)],
)  # fmt: skip
@pytest.mark.parametrize(("dense_collab", "n_artists"), [(False, N_ARTISTS), (True, N_ARTISTS),
                                                       (True, 30)])  # fmt: skip
def test_pruned_ranking_equals_scoring_every_pair(
    monkeypatch, small_sample, mode, weights, dense_collab, n_artists
) -> None:
    scorer, inputs = _scorer_and_inputs(0, dense_collab, n_artists)
    excluded = inputs.history
    if "new-artists" in mode:
        excluded = (inputs.history + scorer.space.same_artist_tracks(inputs.history)).tocsr()
    penalty = gems_penalty(scorer.space.popularity, 0.5, 80.0) if "gems" in mode else None
    want_rows, want_scores = rank_space(scorer, inputs, 100, excluded, penalty, 16_384, weights)
    handed = _by_every_pair_too(monkeypatch)
    artists = None  # the pruned path takes the history's artists, not their every track
    if "new-artists" in mode:
        artists = sp.csr_matrix(inputs.history @ scorer.space.artists)
        artists.data[:] = 1.0
    rows, scores = rank_database(
        scorer, inputs, 100, inputs.history, penalty, 4096, weights, artists
    )
    np.testing.assert_array_equal(rows, want_rows)
    assert scores.tobytes() == want_scores.tobytes()
    assert np.isfinite(want_scores[:, :50]).all()  # the ranking is not all padding
    assert sum(handed) <= N_USERS // 10  # the pruned steps ranked almost everyone


def test_pruned_ranking_with_k_beyond_what_is_rankable(monkeypatch, small_sample) -> None:
    scorer, inputs = _scorer_and_inputs(1)
    penalty = gems_penalty(scorer.space.popularity, 0.2, None)
    penalty[: N_SPACE - 30] = np.inf  # 30 rankable tracks at most: the rest is -inf padding
    want = rank_space(scorer, inputs, 50, inputs.history, penalty)
    rows, scores = rank_database(scorer, inputs, 50, inputs.history, penalty)
    np.testing.assert_array_equal(rows, want[0])
    assert scores.tobytes() == want[1].tobytes()


@pytest.mark.parametrize(
    "weights", [None, HybridWeights(0.001, 3000.0, 1000.0, 500.0), HybridWeights(7, 0.1, 0, 0.2)]
)
def test_pair_scores_are_the_tile_scores_bit_for_bit(weights) -> None:
    scorer, inputs = _scorer_and_inputs(3)
    penalty = gems_penalty(scorer.space.popularity, 0.5, None)
    rows = slice(0, 5000)
    want = scorer.score(inputs, rows, weights) - penalty[rows].astype(np.float32)
    u, c = np.divmod(np.arange(want.size), want.shape[1])
    got = pair_scores(scorer, inputs, u, c, weights, penalty)
    assert got.tobytes() == want.ravel().tobytes()


def test_a_users_ranking_does_not_depend_on_the_block(monkeypatch, small_sample) -> None:
    scorer, inputs = _scorer_and_inputs(4)
    rows, scores = rank_database(scorer, inputs, 100, inputs.history)
    alone = inputs.padded(7, 8, 1)
    one_rows, one_scores = rank_database(scorer, alone, 100, inputs.history[7:8])
    np.testing.assert_array_equal(one_rows[0], rows[7])
    assert one_scores[0].tobytes() == scores[7].tobytes()


def test_excluded_artists_exclude_what_their_every_track_would(monkeypatch, small_sample) -> None:
    """--new-artists as (history, the history's artists) ranks like the same exclusion given
    as every excluded (user, track) pair, and like rank_space."""
    scorer, inputs = _scorer_and_inputs(5, True, 30)
    every = (inputs.history + scorer.space.same_artist_tracks(inputs.history)).tocsr()
    artists = sp.csr_matrix(inputs.history @ scorer.space.artists)
    artists.data[:] = 1.0
    want = rank_space(scorer, inputs, 100, every)
    by_pairs = rank_database(scorer, inputs, 100, every)
    by_artists = rank_database(scorer, inputs, 100, inputs.history, None, 4096, None, artists)
    for rows, scores in (by_pairs, by_artists):
        np.testing.assert_array_equal(rows, want[0])
        assert scores.tobytes() == want[1].tobytes()


def test_short_artist_runs_are_ranked_by_the_pruned_steps(monkeypatch) -> None:
    """About 13 tracks per artist (below the former _MIN_RUN gate, where rank_space ranked
    every pair) and 670 (30 artists): the pruned steps rank almost every user."""
    monkeypatch.setattr(hybrid_scan, "_MIN_SPACE", 0)
    monkeypatch.setattr(hybrid_scan, "_FEW_USERS", 0)
    monkeypatch.setattr(hybrid_scan, "_SAMPLE", 2048)
    for n_artists in (N_ARTISTS, 30):
        scorer, inputs = _scorer_and_inputs(6, False, n_artists)
        handed = _by_every_pair_too(monkeypatch)
        rank_database(scorer, inputs, 50, inputs.history)
        assert sum(handed) <= N_USERS // 10


def _zipf_catalogue(seed: int) -> tuple[HybridScorer, UserInputs]:
    """The realistic regime: 2,000 artists of Zipf sizes (most with a few tracks, a few with
    thousands), 15% of tracks crediting two, ArtistCF neighbours over every artist (dense
    collab), shares from the users' history over those artists."""
    scorer, inputs = _scorer_and_inputs(seed, True, 2000)
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, 2001)
    p /= p.sum()
    n_credits = np.where(rng.random(N_SPACE) < 0.15, 2, 1)
    rows = np.repeat(np.arange(N_SPACE), n_credits)
    artists = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, rng.choice(2000, len(rows), p=p))),
        shape=(N_SPACE, 2000),
    )
    artists.data[:] = 1.0
    space = replace(scorer.space, artists=artists)
    scorer = HybridScorer(
        None, np.zeros((N_CATALOGUE, 12), np.float32), space,  # type: ignore[arg-type]
        scorer.weights, 1.0, None, scorer.artist_cf,
    )  # fmt: skip
    cf_users = sp.csr_matrix(inputs.history @ scorer.cf_artists)
    cf_users.data[:] = 1.0
    assert scorer.artist_cf is not None
    inputs = replace(
        inputs, shares=artist_share_matrix(inputs.history, artists),
        collab=scorer.artist_cf.user_scores(cf_users),
    )  # fmt: skip
    return scorer, inputs


@pytest.mark.parametrize("mode", ["standard", "gems", "new-artists"])
@pytest.mark.parametrize(
    "weights", [None, HybridWeights(0.1, 0.01, 1.0, 0.3), HybridWeights(1.0, 3.0, 0.0, 0.0)]
)
def test_pruned_ranking_on_a_zipf_catalogue_equals_scoring_every_pair(
    monkeypatch, small_sample, mode, weights
) -> None:
    """Short runs, multi-artist tracks and dense collab: the per-segment lift rooms (shares
    and collab over each user's cap, p-norm maxima) never drop a pair of the top k."""
    scorer, inputs = _zipf_catalogue(8)
    excluded, artists = inputs.history, None
    if mode == "new-artists":
        excluded = (inputs.history + scorer.space.same_artist_tracks(inputs.history)).tocsr()
        artists = sp.csr_matrix(inputs.history @ scorer.space.artists)
        artists.data[:] = 1.0
    penalty = gems_penalty(scorer.space.popularity, 0.5, 80.0) if mode == "gems" else None
    want_rows, want_scores = rank_space(scorer, inputs, 100, excluded, penalty, 16_384, weights)
    handed = _by_every_pair_too(monkeypatch)
    rows, scores = rank_database(
        scorer, inputs, 100, inputs.history, penalty, 4096, weights, artists
    )
    np.testing.assert_array_equal(rows, want_rows)
    assert scores.tobytes() == want_scores.tobytes()
    assert sum(handed) <= N_USERS // 10


@pytest.mark.parametrize(
    "weights",
    [HybridWeights(1.0, 3.0, 1.0, 0.25), HybridWeights(1.0, 0.0, 3.0, 0.3),
     HybridWeights(1.0, 3.0, 0.0, 0.0), HybridWeights(1.0, 0.0, 0.0, 0.3)],
)  # fmt: skip
def test_segment_rooms_bound_the_lift_of_every_track_in_their_segment(weights) -> None:
    """Known answer by brute force: per user and segment of the scan order, the room is at
    least the largest share + collab part (weighted, float32 as the pairs are scored) of
    the segment's tracks, and 0 where neither part has a weight."""
    scorer, inputs = _zipf_catalogue(8)
    order = hybrid_scan._artist_order(scorer)
    strong = hybrid_scan._long_artists(scorer, inputs, weights, order)
    done = np.zeros(strong.lift.shape, bool)  # nothing ranked before the scan
    rooms = hybrid_scan._segment_rooms(scorer, inputs, weights, strong, done, None, False)
    n = len(order.rows)
    lifts = replace(weights, dna=0.0, decoder=0.0)
    pairs = hybrid_scan.PairScorer(scorer, inputs, lifts, None)
    lift = pairs(np.repeat(np.arange(N_USERS), n), np.tile(order.rows, N_USERS))
    most = np.maximum.reduceat(lift.reshape(N_USERS, n), np.arange(0, n, hybrid_scan._SEGMENT), 1)
    assert rooms.shape == most.shape
    assert (rooms >= most - 1e-5 * (1.0 + most)).all()
    if weights.artist == weights.collab == 0:
        assert not rooms.any()
    else:
        assert (most > 0).mean() > 0.5  # so the bound is tested where it matters


@pytest.mark.parametrize("mode", ["standard", "new-artists"])
def test_segments_the_scan_would_mostly_score_are_ranked_by_products(
    monkeypatch, small_sample, mode
) -> None:
    """A collab weight 10x the DNA's on short runs and multi-artist tracks (the toy model's
    fitted weights on a Zipf catalogue): the scan would score whole segments pair by pair,
    so they are ranked by products before it (ArtistCF's artists first in the order, some
    segments shared with long runs and, with --new-artists, excluded artists), and the
    result is still rank_space's bit for bit."""
    scorer, inputs = _zipf_catalogue(9)
    weights = HybridWeights(0.1, 0.01, 1.0, 0.3)
    excluded, artists = inputs.history, None
    if mode == "new-artists":
        excluded = (inputs.history + scorer.space.same_artist_tracks(inputs.history)).tocsr()
        artists = sp.csr_matrix(inputs.history @ scorer.space.artists)
        artists.data[:] = 1.0
    scored: list[int] = []
    push = hybrid_scan._ArtistRuns.push_positions

    def counting(self, best, p0, p1, u, skip):  # noqa: ANN001, ANN202
        scored.append(len(u) * (p1 - p0) - int(skip.sum()))
        return push(self, best, p0, p1, u, skip)

    monkeypatch.setattr(hybrid_scan._ArtistRuns, "push_positions", counting)
    want_rows, want_scores = rank_space(scorer, inputs, 100, excluded, None, 16_384, weights)
    rows, scores = rank_database(scorer, inputs, 100, inputs.history, None, 4096, weights, artists)
    np.testing.assert_array_equal(rows, want_rows)
    assert scores.tobytes() == want_scores.tobytes()
    assert sum(scored) > N_USERS * 1000  # segments ranked by products: many pairs per user


def test_a_selected_chunk_scorer_scores_its_users_as_the_whole_block(
    monkeypatch, small_sample
) -> None:
    """HybridChunkScorer.select (what scan() calls to scan some users again): the same
    candidates and exact scores for the selected users as the scorer of the whole block."""
    scorer, inputs = _scorer_and_inputs(7, True, 30)
    seen = []
    scan = hybrid_scan.scan

    def keep(db, chunk_scorer, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen.append((db, chunk_scorer))
        return scan(db, chunk_scorer, *args, **kwargs)

    monkeypatch.setattr(hybrid_scan, "scan", keep)
    rank_database(scorer, inputs, 100, inputs.history)
    db, whole = seen[0]
    which = np.array([2, 9, 11, 40])
    part = whole.select(which)
    chunk = next(iter(db.chunks(4096)))
    prepared = whole.prepare(hybrid_scan.TrackChunk(chunk[0], chunk[1].T, chunk[2]))
    bound = np.full(len(which), 0.5)
    out = np.empty((whole.n_users, 4096), np.float32)
    approx_whole = whole.approximate(prepared, slice(0, whole.n_users), 0, 4096, out)[which]
    approx_part = part.approximate(prepared, slice(0, 4), 0, 4096, np.empty((4, 4096), np.float32))
    # a float32 product: within its tolerance, not bit for bit (BLAS rounds by tile place)
    assert np.abs(approx_part - approx_whole).max() <= part.tolerance.max()
    np.testing.assert_array_equal(part.tolerance, whole.tolerance[which])
    hits = np.empty((4, 4096), bool)
    rows, cols = part.candidates(prepared, slice(0, 4), 0, 4096, approx_part, bound, hits)
    assert len(rows) > 0
    got = part.exact(prepared, rows, cols)["score"]
    want = whole.exact(prepared, which[rows], cols)["score"]
    assert got.tobytes() == want.tobytes()


def test_exclusions_mask_known_answer() -> None:
    """A user's excluded tracks and every track crediting a user's excluded artist, and
    nothing else: pairs whose row or artist no user excludes skip the lookup, the rest are
    looked up per user."""
    credits = sp.csr_matrix(
        np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1], [1, 0, 1]], np.float32)
    )  # tracks 0-4 x artists 0-2; track 4 credits artists 0 and 2
    space = TrackSpace(
        track_ids=np.array([f"t{i}" for i in range(5)], dtype=object),
        units=np.zeros((5, 2), np.float32), standardised=np.zeros((5, 2), np.float32),
        has_features=np.ones(5, bool), artists=credits,
        artist_keys=np.array(["a", "b", "c"], dtype=object),
        catalogue_index=np.full(5, -1, np.int64), popularity=np.zeros(5, np.float32),
    )  # fmt: skip
    pairs = sp.csr_matrix(np.array([[0, 1, 0, 0, 0], [0, 0, 0, 0, 0]], np.float32))
    artists = sp.csr_matrix(np.array([[0, 0, 0], [0, 0, 1]], np.float32))
    out = hybrid_scan.Exclusions(space, pairs, artists)
    users, rows = np.repeat(np.arange(2), 5), np.tile(np.arange(5), 2)
    got = out.mask(users, rows).reshape(2, 5)
    assert got.tolist() == [[False, True, False, False, False], [False, False, False, True, True]]
    assert out.select(np.array([1])).mask(np.zeros(5, np.int64), np.arange(5)).tolist() == [
        False, False, False, True, True,
    ]  # fmt: skip
    assert not hybrid_scan.Exclusions(space, None, None).mask(users, rows).any()


@pytest.mark.parametrize(
    ("weights", "lifted"),
    [(HybridWeights(0.01, 0.03, 3.0, 0.3), True), (HybridWeights(1.0, 0.0, 0.0, 0.0), False)],
)
def test_tiles_the_lifts_already_outrank_get_no_product(
    monkeypatch, small_sample, weights, lifted
) -> None:
    """Where what step 3 ranked puts a user's k-th best above the most a DNA part can reach
    (w_dna) plus the tile's rooms, the scan makes no DNA product of that user and tile
    (HybridChunkScorer.live), and the ranking is still rank_space's. With the DNA part alone
    nothing outranks it: every tile is multiplied for every user."""
    scorer, inputs = _scorer_and_inputs(6, True)
    cells: list[int] = []
    approximate = hybrid_scan.HybridChunkScorer.approximate

    def counting(self, prepared, users, c0, c1, out):  # noqa: ANN001, ANN202
        cells.append(out.size)
        return approximate(self, prepared, users, c0, c1, out)

    monkeypatch.setattr(hybrid_scan.HybridChunkScorer, "approximate", counting)
    want = rank_space(scorer, inputs, 100, inputs.history, None, 16_384, weights)
    handed = _by_every_pair_too(monkeypatch)
    rows, scores = rank_database(scorer, inputs, 100, inputs.history, None, 4096, weights)
    np.testing.assert_array_equal(rows, want[0])
    assert scores.tobytes() == want[1].tobytes()
    share = sum(cells) / ((N_USERS - sum(handed)) * N_SPACE)  # of the scanned users' cells
    if lifted:
        assert share < 0.1
    else:
        assert share > 0.8  # segments ranked before the scan have no room: never a candidate


def test_one_user_is_ranked_over_every_pair_until_the_scan_structures_exist(monkeypatch) -> None:
    """`discover user_1` ranks one user: scoring every pair is faster than building
    ArtistOrder and Segments first. Once a bigger block built them, one user takes the pruned
    path too; both give rank_space's ranking."""
    monkeypatch.setattr(hybrid_scan, "_MIN_SPACE", 0)
    monkeypatch.setattr(hybrid_scan, "_SAMPLE", 2048)
    scorer, inputs = _scorer_and_inputs(7)
    alone = inputs.padded(3, 4, 1)
    want = rank_space(scorer, alone, 100, inputs.history[3:4])
    handed = _by_every_pair_too(monkeypatch)
    first = rank_database(scorer, alone, 100, inputs.history[3:4])
    assert handed == [1]
    rank_database(scorer, inputs, 100, inputs.history)  # a block: builds the structures
    handed.clear()
    again = rank_database(scorer, alone, 100, inputs.history[3:4])
    assert handed == []
    for rows, scores in (first, again):
        np.testing.assert_array_equal(rows, want[0])
        assert scores.tobytes() == want[1].tobytes()


def test_a_few_ids_find_their_rows_without_the_spaces_hash_table() -> None:
    """One user's history is looked up by one pass over the space's ids (building a table of
    1,000,000 ids takes 0.3 s); many ids through the space's table; the same rows either way,
    -1 for an id the space lacks, repeats answered each time."""
    space = _space(np.random.default_rng(8))
    few = np.array(["t5", "nope", "t19999", "t5", "t0"], dtype=object)
    want = np.array([5, -1, 19_999, 5, 0])
    np.testing.assert_array_equal(space.rows_of(few), want)
    assert "_index" not in space.__dict__  # no table of the whole space was built
    many = np.array([f"t{i}" for i in range(0, N_SPACE, 3)] + ["x"], dtype=object)
    np.testing.assert_array_equal(space.rows_of(many), [*range(0, N_SPACE, 3), -1])
    assert "_index" in space.__dict__
    np.testing.assert_array_equal(space.rows_of(few), want)


def test_the_scan_order_gathers_the_spaces_grid_units_and_its_structures_are_built_once() -> None:
    """Unit features sit on dna.on_grid's grid (the exact pair scores need them there), so
    ArtistOrder's copy is the space's rows in its order, nothing rounded again; Segments and
    ArtistOrder are built once per scorer even when the worker threads ask together."""
    from deepvibe.discovery.dna import on_grid

    scorer, _ = _scorer_and_inputs(11)
    units = scorer.space.units
    assert units.dtype == np.float32 and np.array_equal(on_grid(units), units)
    has = scorer.space.has_features
    np.testing.assert_allclose(np.linalg.norm(units[has], axis=1), 1.0, atol=1e-6)
    assert not units[~has].any()
    built = []
    real = hybrid_scan.ArtistOrder.of

    def slow_of(space, favoured=None):  # noqa: ANN001, ANN202
        built.append(1)
        time.sleep(0.05)  # both threads are inside _kept_on by now
        return real(space, favoured)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(hybrid_scan.ArtistOrder, "of", staticmethod(slow_of))
        with ThreadPoolExecutor(4) as pool:
            orders = list(pool.map(lambda _: hybrid_scan._artist_order(scorer), range(4)))
            segments = list(pool.map(lambda _: hybrid_scan._segments(scorer), range(4)))
    assert built == [1] and all(o is orders[0] for o in orders)
    assert all(s is segments[0] for s in segments)
    order = orders[0]
    assert order.grid.tobytes() == units[order.rows].tobytes()
    # the incidence: artist a is credited in segment g exactly when a track there credits it
    seg = np.arange(len(order.rows)) // hybrid_scan._SEGMENT
    credited = scorer.space.artists[order.rows].tocoo()
    want = sp.csr_matrix(
        (np.ones(credited.nnz), (credited.col, seg[credited.row])), shape=segments[0].artists.shape
    )
    want.data[:] = 1.0
    assert (segments[0].artists != want).nnz == 0


def _tiny_space() -> TrackSpace:
    """8 tracks, 4 artists: a0 and a2 credited 3 times, a3 twice, a1 once; t3 credits none,
    t2 and t5 two each, t4 is the catalogue's."""
    credits = [[2], [0], [0, 3], [], [2], [1, 2], [0], [3]]
    rows = np.repeat(np.arange(8), [len(c) for c in credits])
    artists = sp.csr_matrix(
        (np.ones(len(rows), np.float32), (rows, np.concatenate(credits))), shape=(8, 4)
    )
    catalogue_index = np.full(8, -1, np.int64)
    catalogue_index[4] = 0
    z = np.eye(8, 12, dtype=np.float32)
    return TrackSpace(
        track_ids=np.array([f"t{i}" for i in range(8)], dtype=object), units=space_units(z),
        standardised=z, has_features=np.ones(8, bool), artists=artists,
        artist_keys=np.array([f"a{i}" for i in range(4)], dtype=object),
        catalogue_index=catalogue_index, popularity=np.zeros(8, np.float32),
    )  # fmt: skip


@pytest.mark.parametrize(
    ("favoured", "rows", "primary"),
    [(None, [1, 6, 0, 7, 3, 2, 5, 4], [2, 0, 0, -1, 2, 2, 0, 3]),
     ([False, False, False, True], [7, 1, 6, 0, 3, 2, 5, 4], [2, 0, 3, -1, 2, 2, 0, 3])],
)  # fmt: skip
def test_artist_order_known_answer(favoured, rows, primary) -> None:  # noqa: ANN001
    """Single-artist tracks outside the catalogue artist by artist (the favoured first, then
    by credits, most first, the lower index on a tie), rows ascending within one; then the
    other tracks by their primary artist (none first); the catalogue last."""
    space = _tiny_space()
    fav = None if favoured is None else np.array(favoured)
    rank = hybrid_scan._artist_rank(space.artists, fav)
    np.testing.assert_array_equal(hybrid_scan._primary(space.artists, rank), primary)
    order = hybrid_scan.ArtistOrder.of(space, fav)
    np.testing.assert_array_equal(order.rows, rows)
    np.testing.assert_array_equal(order.position[order.rows], np.arange(8))
    np.testing.assert_array_equal(order.artist, [[2, 0, -1, -1, 2, -1, 0, 3][r] for r in rows])
    np.testing.assert_array_equal(order.catalogue, [0 if r == 4 else -1 for r in rows])
    assert order.first_catalogue == 7
    runs = {a: (int(order.first[a]), int(order.count[a])) for a in range(4) if order.count[a]}
    want = {0: (0, 2), 2: (2, 1), 3: (3, 1)} if favoured is None else {3: (0, 1), 0: (1, 2),
                                                                       2: (3, 1)}  # fmt: skip
    assert runs == want
    assert order.grid.tobytes() == space.units[order.rows].tobytes()


def test_segment_credits_known_answer(monkeypatch) -> None:
    """Segments of 4 positions over [t1 t6 t0 t7 | t3 t2 t5 t4]: ``first`` holds each track's
    primary artist, ``second`` its other credits."""
    monkeypatch.setattr(hybrid_scan, "_SEGMENT", 4)
    space = _tiny_space()
    scorer = HybridScorer(
        None, np.zeros((1, 12), np.float32), space,  # type: ignore[arg-type]
        HybridWeights(1.0, 1.0, 0.0, 0.0), 1.0, None, None,
    )  # fmt: skip
    segments = hybrid_scan.Segments.of(scorer, hybrid_scan.ArtistOrder.of(space))

    def cells(matrix: sp.csr_matrix) -> set[tuple[int, int]]:
        coo = matrix.tocoo()
        assert (coo.data == 1.0).all()
        return set(zip(coo.row.tolist(), coo.col.tolist(), strict=True))

    assert cells(segments.first) == {(0, 0), (2, 0), (3, 0), (0, 1), (2, 1)}
    assert cells(segments.second) == {(1, 1), (3, 1)}
    assert cells(segments.artists) == cells(segments.first) | cells(segments.second)
    np.testing.assert_array_equal(segments.credits, [1, 2])
    np.testing.assert_array_equal(segments.outside, [True, False])


def test_the_history_profile_weighs_only_tracks_with_features() -> None:
    """log(1 + plays)-weighted mean of the standardised features; a track without features
    (its row NaN here) counts for nothing, and a user with only such tracks gets zeros."""
    space = _tiny_space()
    space.has_features[3] = False
    space.standardised[3] = np.nan
    scorer = HybridScorer(
        None, np.zeros((1, 12), np.float32), space,  # type: ignore[arg-type]
        HybridWeights(1.0, 1.0, 0.0, 0.0), 1.0, None, None,
    )  # fmt: skip
    history = sp.csr_matrix(np.array([[1, 3, 0, 5, 0, 0, 0, 0], [0, 0, 0, 2, 0, 0, 0, 0]]))
    profile = scorer._profile(history).numpy()
    w0, w1 = np.log(2.0), np.log(4.0)
    want = (w0 * space.standardised[0] + w1 * space.standardised[1]) / (w0 + w1)
    np.testing.assert_allclose(profile[0], want, rtol=1e-6)
    np.testing.assert_array_equal(profile[1], np.zeros(12))


@pytest.mark.parametrize(
    ("offset", "width"), [(0, 2048), (0, 700), (100, 2048), (100, 50), (0, 200)]
)
def test_reaching_holds_each_column_to_its_segments_bar(offset: int, width: int) -> None:
    """_reaching: a tile starting ``offset`` positions into a segment, any width: each
    column against the bar of the segment it sits in (a partial first and last segment)."""
    rng = np.random.default_rng(offset + width)
    approx = rng.standard_normal((5, width)).astype(np.float32)
    segment = (offset + np.arange(width)) // hybrid_scan._SEGMENT  # each column's, from 0
    bars = rng.standard_normal((5, segment[-1] + 1)).astype(np.float32)
    bars[1, 0], bars[2, -1] = np.inf, np.nan  # nothing passes there
    out = np.ones((5, width), bool)
    hybrid_scan._reaching(approx, bars, offset, out)
    want = approx >= bars[:, segment]
    np.testing.assert_array_equal(out, want)
    assert want.any() and not want.all()


def _with_files(scorer: HybridScorer, folder: Path, space_key: str = "space") -> HybridScorer:
    """A fresh scorer of the same space and artist model, its index kept in ``folder``."""
    fresh = HybridScorer(
        None, scorer.features.numpy(), scorer.space, scorer.weights,  # type: ignore[arg-type]
        1.0, None, scorer.artist_cf,
    )  # fmt: skip
    fresh.index_files = IndexFiles(folder / "db.dvcache", space_key)
    return fresh


def test_a_saved_scan_index_is_the_built_one_and_ranks_the_same(
    monkeypatch, small_sample, tmp_path: Path
) -> None:
    """The first scorer builds the ScanIndex and saves it; a fresh scorer of the same space
    and artist model reads it back (array for array, the large ones mapped read-only)
    without building, ranks exactly as rank_space, and takes the pruned steps even for one
    user. Another space key builds and saves its own and removes the old folder."""
    monkeypatch.setattr(space_cache, "_MAPPED", 1024)  # every array but the smallest mapped
    scorer, inputs = _scorer_and_inputs(3)
    want = rank_space(scorer, inputs, 100, inputs.history)
    first = _with_files(scorer, tmp_path)
    got = rank_database(first, inputs, 100, inputs.history)
    folders = sorted(tmp_path.glob("db.dvcache.index-*"))
    assert len(folders) == 1 and folders[0].is_dir()
    built, build = [], hybrid_scan.ScanIndex.of
    monkeypatch.setattr(
        hybrid_scan.ScanIndex, "of", classmethod(lambda cls, s: built.append(1))
    )  # any build fails the test
    second = _with_files(scorer, tmp_path)
    handed = _by_every_pair_too(monkeypatch)
    monkeypatch.setattr(hybrid_scan, "_FEW_USERS", 2)
    alone = rank_database(second, inputs.padded(3, 4, 1), 100, inputs.history[3:4])
    assert built == [] and handed == []  # one user, pruned: the saved index was at hand
    again = rank_database(second, inputs, 100, inputs.history)
    for rows, scores in (got, again):
        np.testing.assert_array_equal(rows, want[0])
        assert scores.tobytes() == want[1].tobytes()
    np.testing.assert_array_equal(alone[0], want[0][3:4])
    saved, made = second._scan_index.arrays(), first._scan_index.arrays()
    assert sorted(saved) == sorted(made)
    for name, values in made.items():
        assert saved[name].dtype == values.dtype and saved[name].tobytes() == values.tobytes()
    assert not second._scan_index.order.grid.flags.writeable  # mapped from the file
    monkeypatch.setattr(hybrid_scan.ScanIndex, "of", build)
    other = _with_files(scorer, tmp_path, "another space")
    rank_database(other, inputs, 100, inputs.history)
    now = sorted(tmp_path.glob("db.dvcache.index-*"))
    assert len(now) == 1 and now != folders


def test_a_scan_index_that_does_not_fit_is_built_again_and_an_unwritable_one_warned(
    monkeypatch, small_sample, tmp_path: Path, caplog
) -> None:
    """A saved index whose shapes are not the space's, that misses an array or that cannot
    be read is built again with a warning naming the folder, and saved in its place (the
    next run reads it without a warning); a folder that cannot be written only warns."""
    scorer, inputs = _scorer_and_inputs(4)
    want = rank_space(scorer, inputs, 100, inputs.history)
    rank_database(_with_files(scorer, tmp_path), inputs, 100, inputs.history)
    (folder,) = tmp_path.glob("db.dvcache.index-*")
    good = (folder / "order.rows.npy").read_bytes()

    def spoilt(*, rows: bool = False, grid: bool = False, text: bool = False) -> None:
        if rows:
            np.save(folder / "order.rows.npy", np.arange(10))  # not this space's length
        if grid:
            (folder / "order.grid.npy").unlink()
        if text:
            (folder / "order.count.npy").write_text("not an array")

    for how in ({"rows": True}, {"grid": True}, {"text": True}):
        spoilt(**how)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            got = rank_database(_with_files(scorer, tmp_path), inputs, 100, inputs.history)
        assert str(folder) in caplog.text and "building the scan index again" in caplog.text
        np.testing.assert_array_equal(got[0], want[0])
        assert (folder / "order.rows.npy").read_bytes() == good  # saved again, whole
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            rank_database(_with_files(scorer, tmp_path), inputs, 100, inputs.history)
        assert caplog.text == ""
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="deepvibe.discovery.space_cache"):
        # a file where its folder should be: cannot be written, even by root
        blocker = tmp_path / "a file"
        blocker.write_text("x")
        got = rank_database(_with_files(scorer, blocker), inputs, 100, inputs.history)
    assert "cannot save the scan index" in caplog.text
    np.testing.assert_array_equal(got[0], want[0])
