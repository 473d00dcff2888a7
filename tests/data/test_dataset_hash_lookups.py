"""Issue 9, defect 9: ids are matched by hash lookups, never by np.isin on object arrays
(which compares every pair: 100,000 users did not reach the first epoch in 10 minutes)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deepvibe.config import load_config
from deepvibe.data.dataset import build_dataset
from deepvibe.data.tables import interactions_from_long
from deepvibe.evaluation import evaluate as evaluate_module


@pytest.fixture()
def no_object_isin(monkeypatch: pytest.MonkeyPatch) -> None:
    real = np.isin

    def guarded(element, test_elements, *args, **kwargs):
        for a in (element, test_elements):
            if np.asarray(a).dtype.kind in "OUT":
                raise AssertionError("np.isin on text ids: quadratic; use a hash lookup")
        return real(element, test_elements, *args, **kwargs)

    monkeypatch.setattr(np, "isin", guarded)


def test_defect9_dataset_and_evaluation_match_ids_by_hash(no_object_isin: None) -> None:
    rng = np.random.default_rng(0)
    users = np.repeat([f"user_{i}" for i in range(200)], 6)
    tracks = [f"t{j}" for j in rng.integers(0, 40, size=len(users))]
    inter = interactions_from_long(
        pd.DataFrame({"user_id": users, "track_id": tracks}), "user_id", "track_id"
    )
    cfg = load_config(None, ["data.features=null", "data.max_tracks=30"])
    ds = build_dataset(cfg, interactions=inter)
    train = ds.rows_of("train")
    assert train.dtype == bool and train.sum() == len(ds.user_groups["train"])
    assert set(ds.interactions.row_users[train]) == set(ds.user_groups["train"])
    counts, n = evaluate_module.user_counts(ds.interactions, ds.user_groups["train"])
    assert n == len(ds.user_groups["train"])
    played = ds.interactions.matrix[train].copy()
    played.data[:] = 1
    np.testing.assert_array_equal(counts, np.asarray(played.sum(axis=0)).ravel())
