"""The hybrid's streaming ranking (signals.rank_space) and the block-wise ``why`` column give
what a full sort and the per-user ``hybrid.why`` give."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from conftest import small_config
from deepvibe.discovery import discoverer as dmod
from deepvibe.discovery import signals
from deepvibe.discovery.discoverer import Discoverer
from deepvibe.discovery.dna import pair_dots
from deepvibe.discovery.hybrid import HybridWeights, why
from deepvibe.discovery.signals import HybridScorer, TrackSpace, UserInputs, rank_space
from deepvibe.discovery.users import align_users, load_training_users
from deepvibe.ranking.topk import top_k
from deepvibe.training.train import train


class _TableScorer:
    """A stand-in HybridScorer whose scores are a fixed (users, space) table; a tile's users
    are found from dna[:, 0] (user index + 1, 0 for padding)."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table
        self.space = np.zeros(table.shape[1])  # only len() is used

    def prepare_rows(self, rows: slice) -> dict[str, object]:
        return {"rows": rows}

    def score(self, users: UserInputs, rows: slice, weights=None, prepared=None) -> np.ndarray:  # noqa: ANN001
        assert prepared is not None and prepared["rows"] == rows
        index = users.dna[:, 0].astype(int) - 1
        out = np.zeros((len(index), rows.stop - rows.start), np.float32)
        out[index >= 0] = self.table[index[index >= 0], rows]
        return out


def _inputs(n_users: int) -> UserInputs:
    dna = np.zeros((n_users, 2), np.float32)
    dna[:, 0] = np.arange(1, n_users + 1)
    empty = sp.csr_matrix((n_users, 3), dtype=np.float32)
    return UserInputs(dna, dna, empty, None, np.zeros((n_users, 1), np.float32), empty,
                      np.ones(n_users, bool))  # fmt: skip


def _full_sort(table, k, excluded, penalty):  # noqa: ANN001, ANN202
    scores = table - penalty[None, :].astype(np.float32)
    scores[excluded.toarray() > 0] = -np.inf
    cols = top_k(scores, k)
    return cols, np.take_along_axis(scores, cols, axis=1)


@pytest.mark.parametrize("chunk", [7, 100, 5000])
def test_rank_space_equals_a_full_sort_with_ties_exclusions_and_unrankable_tracks(
    monkeypatch, chunk
) -> None:
    rng = np.random.default_rng(0)
    n_users, n_space, k = 70, 3000, 40  # two user tiles, the second padded
    table = rng.integers(0, 50, size=(n_users, n_space)).astype(np.float32) / 8  # many ties
    excluded = sp.random(n_users, n_space, density=0.05, random_state=1, format="csr")
    penalty = np.zeros(n_space)
    penalty[rng.choice(n_space, 400, replace=False)] = np.inf  # never rankable
    table[3, :] = -np.inf  # a user with nothing rankable: every slot -inf, lowest rows first
    table[4, : n_space - 10] = -np.inf  # fewer than k finite scores
    monkeypatch.setattr(signals, "SLICE", 64)  # many slices per chunk
    rows, scores = rank_space(_TableScorer(table), _inputs(n_users), k, excluded, penalty, chunk)
    want_rows, want_scores = _full_sort(table, k, excluded, penalty)
    np.testing.assert_array_equal(scores, want_scores)
    np.testing.assert_array_equal(rows, want_rows)


def test_rank_space_fills_a_space_smaller_than_k_with_minus_one() -> None:
    table = np.array([[1.0, 3.0, 2.0]], np.float32)
    rows, scores = rank_space(_TableScorer(table), _inputs(1), 5)
    np.testing.assert_array_equal(rows, [[1, 2, 0, -1, -1]])
    np.testing.assert_array_equal(scores, np.array([[3, 2, 1, -np.inf, -np.inf]], np.float32))


# ----------------------------------------------------------------------------- why


@pytest.fixture(scope="module")
def hybrid_model(toy_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    cfg = small_config(tmp_path_factory.mktemp("rank"), toy_dir / "data", **{"train.epochs": 3})
    train(cfg, progress=False)
    return cfg


def _why_per_user(scorer, inputs, rows, found, space) -> list[str]:  # noqa: ANN001
    """The ``why`` column as it was computed before the block-wise version: user by user."""
    out: list[str] = []
    names = space.names if space.names is not None else space.track_ids
    for u in range(rows.shape[0]):
        picked = rows[u, found[u]]
        if len(picked) == 0:
            continue
        one = inputs.padded(u, u + 1, 1)
        parts = {k: v[0] for k, v in scorer.parts(one, picked).items()}
        played = inputs.history[u].indices
        played = played[space.has_features[played]]
        out += why(parts, scorer.weights, int(inputs.history[u].nnz), space.units[picked],
                   space.units[played], np.asarray(names, dtype=object)[played])  # fmt: skip
    return out


@pytest.mark.parametrize(
    ("weights", "kinds"),
    [
        ((1.0, 3.0, 3.0, 0.3), {"sounds like", "listeners like you"}),
        ((0.1, 10.0, 0.3, 0.1), {"artist"}),
        ((1.0, 0.0, 3.0, 0.0), {"sounds like", "listeners like you"}),  # parts not looked up
    ],
)
def test_block_reasons_equal_the_per_user_why(hybrid_model, weights, kinds) -> None:
    found = Discoverer.from_checkpoint(hybrid_model.best_checkpoint_path, source="db",
                                       progress=False)  # fmt: skip
    scorer = found.hybrid
    assert scorer is not None
    scorer.weights = HybridWeights(*weights)
    inter = load_training_users(hybrid_model.data)
    ck_ids = found.track_ids
    batch = align_users(inter, ck_ids, None, "toy", scorer.space.track_ids).select(slice(0, 150))
    history = dmod._history_in_space(batch, scorer.space)
    inputs = scorer.user_inputs(history, batch.plays)
    rows, scores = rank_space(scorer, inputs, 60, history)
    found_pairs = np.isfinite(scores)
    got, cosine = dmod._reasons(scorer, inputs, rows, found_pairs, scorer.space)
    want = _why_per_user(scorer, inputs, rows, found_pairs, scorer.space)
    assert len(got) == len(want) > 0
    assert {w.split(":")[0] for w in want} >= kinds
    assert list(got) == want
    users, slot = np.nonzero(found_pairs)  # the similarity column, group by group, in order
    exact = pair_dots(inputs.dna, scorer.space.units, users, rows[users, slot], len(users))
    assert cosine.tobytes() == exact.tobytes()


def test_defect_why_in_new_artist_mode_used_the_standard_weights(hybrid_model) -> None:
    """--new-artists ranks by its own weights, and its ``why`` says which of their parts
    drove each row (was: the standard mode's weights, so a part the mode weighs 0 could
    be named)."""
    found = Discoverer.from_checkpoint(hybrid_model.best_checkpoint_path, source="db",
                                       progress=False)  # fmt: skip
    assert found.hybrid is not None
    found.hybrid.weights = HybridWeights(1.0, 3.0, 3.0, 0.3)
    found.new_artist_weights = HybridWeights(1.0, 0.0, 0.0, 0.0)  # the DNA part alone
    inter = load_training_users(hybrid_model.data)
    batch = align_users(inter, found.track_ids, None, "toy", found.hybrid.space.track_ids)
    batch = batch.select(slice(0, 40))
    standard = next(found.discover_blocks(batch, 30, "standard"))
    new = next(found.discover_blocks(batch, 30, "new-artists"))
    assert standard.why is not None and new.why is not None
    assert "listeners like you" in set(standard.why)  # so the check below can fail
    assert {w.split(":")[0] for w in new.why} <= {"sounds like", ""}


def test_a_batchs_history_is_looked_up_in_the_database_once(hybrid_model, monkeypatch) -> None:
    """The space rows of a batch's history ids are found once and reused by every block
    (each block hashed the database's ids again); the blocks' results are those of blocks
    discovered on their own."""
    found = Discoverer.from_checkpoint(hybrid_model.best_checkpoint_path, source="db",
                                       progress=False)  # fmt: skip
    assert found.hybrid is not None
    found.settings = found.settings.model_copy(update={"user_block": signals.TILE})
    inter = load_training_users(hybrid_model.data)
    batch = align_users(inter, found.track_ids, None, "toy", found.hybrid.space.track_ids)
    batch = batch.select(slice(0, 3 * signals.TILE))
    calls: list[int] = []
    rows_of = TrackSpace.rows_of

    def counting(self, track_ids):  # noqa: ANN001, ANN202
        calls.append(len(track_ids))
        return rows_of(self, track_ids)

    monkeypatch.setattr(TrackSpace, "rows_of", counting)
    blocks = list(found.discover_blocks(batch, 20, "standard"))
    assert len(blocks) == 3 and calls == [len(batch.history_ids)]
    alone = Discoverer.from_checkpoint(hybrid_model.best_checkpoint_path, source="db",
                                       progress=False)  # fmt: skip
    last = batch.select(slice(2 * signals.TILE, 3 * signals.TILE))
    want = next(alone.discover_blocks(last, 20, "standard"))
    assert list(blocks[-1].why) == list(want.why)
    np.testing.assert_array_equal(blocks[-1].score, want.score)


def test_defect_hybrid_score_depends_on_the_users_row_in_the_tile() -> None:
    """A user's hybrid scores are the same at any row of a user tile (alone: row 0; in a
    batch: anywhere), so a report does not change with the batch (was: a float32 DNA product
    whose rounding depended on the row: 2 of 20 users' reports differed at 1,000,000
    tracks)."""
    rng = np.random.default_rng(3)
    n, f = 20_000, 12
    units = rng.normal(size=(n, f)).astype(np.float32)
    units = signals.space_units(units)  # unit rows on the grid, as TrackSpace holds them
    space = TrackSpace(
        track_ids=np.array([f"t{i}" for i in range(n)], dtype=object), units=units,
        standardised=units, has_features=np.ones(n, bool),
        artists=sp.csr_matrix((n, 1), dtype=np.float32), artist_keys=np.array(["a"], object),
        catalogue_index=np.full(n, -1, np.int64), popularity=np.full(n, np.nan, np.float32),
    )  # fmt: skip
    weights = HybridWeights(dna=1.0, artist=3.0, collab=3.0, decoder=0.3)
    scorer = HybridScorer(None, np.zeros((5, f)), space, weights, 0.1, None)  # type: ignore[arg-type]
    tile = signals.TILE
    dna = rng.normal(size=(tile, f)).astype(np.float32)
    dna /= np.linalg.norm(dna, axis=1, keepdims=True)
    empty = sp.csr_matrix((tile, 1), dtype=np.float32)
    history = sp.csr_matrix((tile, n), dtype=np.float32)
    decoder_z = np.zeros((tile, 5), np.float32)
    inputs = UserInputs(dna, dna, empty, None, decoder_z, history, np.ones(tile, bool))
    rows = slice(0, n)
    together = scorer.score(inputs, rows)  # (TILE, n): user u at row u
    for u in range(tile):
        alone = scorer.score(inputs.padded(u, u + 1, tile), rows)[0]
        np.testing.assert_array_equal(alone, together[u], err_msg=f"user {u}")
