"""The strong-generalization split: held-out users never reach training, fold-in items are
never scored, and the vocabulary comes from training users only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from deepvibe.config import load_config
from deepvibe.data.dataset import build_dataset
from deepvibe.data.tables import interactions_from_long
from deepvibe.evaluation.evaluate import _cold_dataset, drop_and_cut, map_columns, user_counts
from deepvibe.ranking.protocol import foldin_split, split_users
from deepvibe.training.train import validation_foldin


def world(n_users: int = 60, seed: int = 0):
    """Each user plays 6-11 shared items plus one private item only they play."""
    rng = np.random.default_rng(seed)
    rows = []
    for u in range(n_users):
        for t in rng.choice(20, size=rng.integers(6, 12), replace=False):
            rows.append((f"user{u}", f"shared{t}", int(rng.integers(1, 5))))
        rows.append((f"user{u}", f"private{u}", 1))
    frame = pd.DataFrame(rows, columns=["user_id", "track_id", "plays"])
    return interactions_from_long(frame, "user_id", "track_id", "plays")


def cfg(seed: int = 5):
    return load_config(
        None,
        [f"seed={seed}", "data.features=null", "data.max_tracks=1000", "train.val_fraction=0.2"],
    )


def test_split_users_partitions_with_requested_sizes() -> None:
    users = np.array([f"u{i}" for i in range(50)], dtype=object)
    train, val, test = split_users(users, (0.1, 0.2), np.random.default_rng(1))
    assert (len(train), len(val), len(test)) == (35, 5, 10)
    assert set(train) | set(val) | set(test) == set(users)
    assert not (set(train) & set(val) or set(train) & set(test) or set(val) & set(test))
    with pytest.raises(ValueError, match="no training users"):
        split_users(users, (0.5, 0.5), np.random.default_rng(1))


def test_no_heldout_user_in_training_and_vocabulary_from_training_users() -> None:
    inter = world()
    ds = build_dataset(cfg(), inter, None, test_fraction=0.2)
    groups = ds.user_groups
    assert set(groups) == {"train", "validation", "test"}
    assert not set(groups["train"]) & (set(groups["validation"]) | set(groups["test"]))
    train_rows = ds.rows_of("train")
    assert set(ds.interactions.row_users[train_rows]) == set(groups["train"])
    catalogue = set(ds.track_ids)
    # Private items of training users are in the vocabulary; those of held-out users are not.
    assert all(f"private{u[4:]}" in catalogue for u in groups["train"])
    for u in np.concatenate([groups["validation"], groups["test"]]):
        assert f"private{u[4:]}" not in catalogue
    # The same seed gives the same split; another seed another one.
    again = build_dataset(cfg(), inter, None, test_fraction=0.2)
    assert list(again.user_groups["test"]) == list(groups["test"])
    other = build_dataset(cfg(seed=6), inter, None, test_fraction=0.2)
    assert set(other.user_groups["test"]) != set(groups["test"])


def test_foldin_split_partitions_each_users_items() -> None:
    m = sp.csr_matrix(
        np.array(
            [
                [1, 2, 0, 3, 1, 1, 0, 0, 1, 4],  # 7 items -> hold out 7 - int(0.8 * 7) = 2
                [1, 1, 1, 1, 0, 0, 0, 0, 0, 0],  # 4 items < 5: dropped
                [0, 1, 1, 1, 1, 1, 0, 0, 0, 0],  # 5 items -> hold out 1
            ],
            dtype=np.float32,
        )
    )
    users = np.array(["a", "b", "c"], dtype=object)
    f = foldin_split(users, m, 0.2, np.random.default_rng(0))
    assert f.users.tolist() == ["a", "c"]
    assert np.diff(f.heldout.indptr).tolist() == [2, 1]
    assert f.foldin.multiply(f.heldout).nnz == 0  # disjoint
    assert np.array_equal((f.foldin + f.heldout).toarray(), m[[0, 2]].toarray())  # plays kept


def test_test_users_foldin_covers_their_catalogue_rows() -> None:
    c = cfg()
    ds = build_dataset(c, world(), None, test_fraction=0.2)
    test = validation_foldin(ds, c, "test")
    assert set(test.users) <= set(ds.user_groups["test"])
    _, rows = ds.interactions.user_matrix(test.users)
    assert np.array_equal((test.foldin + test.heldout).toarray(), rows.toarray())
    again = validation_foldin(ds, c, "test")
    assert (again.heldout != test.heldout).nnz == 0  # fixed by the seed


def test_user_counts_use_training_users_once_each() -> None:
    frame = pd.DataFrame(
        {
            "user_id": ["a", "a", "b", "c", "c"],
            "week": [1, 2, 1, 1, 1],
            "track_id": ["x", "x", "x", "y", "x"],
            "plays": [3, 2, 1, 1, 1],
        }
    )
    inter = interactions_from_long(frame, "user_id", "track_id", "plays", "week")
    counts, n = user_counts(inter, np.array(["a", "b"], dtype=object))
    col = {t: i for i, t in enumerate(inter.track_ids)}
    assert n == 2
    assert counts[col["x"]] == 2  # user a's two weekly rows count once; c is not training
    assert counts[col["y"]] == 0


def test_cold_dataset_removes_tracks_from_training() -> None:
    from deepvibe.data.tables import TrackTable

    inter = world(40)
    ids = inter.track_ids
    rng = np.random.default_rng(0)
    tracks = TrackTable(ids, rng.normal(size=(len(ids), 3)), ("a", "b", "c"))
    c = load_config(None, ["seed=1", "data.max_tracks=1000", "data.feature_columns=[a, b, c]"])
    ds = build_dataset(c, inter, tracks, test_fraction=0.2)
    warm = ds.track_ids[: len(ds.track_ids) - 5]
    cold = set(ds.track_ids[len(ds.track_ids) - 5 :])
    cd = _cold_dataset(ds, warm)
    assert list(cd.track_ids) == list(warm) and not cold & set(cd.track_ids)
    assert cd.interactions.matrix.shape[1] == len(warm)
    assert np.allclose(cd.track_features.mean(axis=0), 0.0, atol=1e-6)  # re-standardised


def test_drop_and_cut_and_map_columns() -> None:
    ranked = np.array([[5, 1, 2, 3], [0, 1, 2, 3]])
    drop = sp.csr_matrix(np.array([[0, 1, 0, 0, 0, 1], [0, 0, 0, 0, 0, 0]], dtype=np.float32))
    assert drop_and_cut(ranked, drop, 2).tolist() == [[2, 3], [0, 1]]
    m = sp.csr_matrix(np.array([[1, 0, 2]], dtype=np.float32))
    out = map_columns(m, np.array(["x", "y", "z"]), np.array(["z", "q", "x"]))
    assert out.toarray().tolist() == [[2, 0, 1]]
