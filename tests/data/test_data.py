from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepvibe.config import DataConfig
from deepvibe.data.catalogue import select_catalogue
from deepvibe.data.dataset import filter_min_counts
from deepvibe.data.ids import normalize_track_ids
from deepvibe.data.tables import FeatureScaler, interactions_from_long, load_interactions
from deepvibe.errors import DataError

SPOTIFY_ID = "4uLU6hMCjMI75M1A2tKUQC"


@pytest.mark.parametrize(
    "raw",
    [
        SPOTIFY_ID,
        f"spotify:track:{SPOTIFY_ID}",
        f"https://open.spotify.com/track/{SPOTIFY_ID}?si=abc",
        f"  {SPOTIFY_ID} ",
    ],
)
def test_track_id_forms_normalise_to_bare_id(raw: str) -> None:
    assert normalize_track_ids([raw])[0] == SPOTIFY_ID


def _as_dense(inter, users, tracks) -> np.ndarray:
    rows = {
        (u, t): i for i, (u, t) in enumerate(zip(inter.row_users, inter.row_times, strict=True))
    }
    col = {t: j for j, t in enumerate(inter.track_ids)}
    dense = inter.matrix.toarray()
    out = np.zeros((len(users), len(tracks)))
    for a, key in enumerate(users):
        for b, t in enumerate(tracks):
            out[a, b] = dense[rows[key], col[t]]
    return out


def test_wide_and_long_inputs_give_the_same_matrix(tmp_path: Path, toy) -> None:
    wide = toy.matrix
    wide.to_csv(tmp_path / "wide.csv", index=False)
    long = wide.melt(id_vars=["user_id", "week"], var_name="track_id", value_name="plays")
    long = long[long["plays"] > 0].sample(frac=1.0, random_state=1)  # any row order
    long.to_csv(tmp_path / "long.csv", index=False)
    long.to_parquet(tmp_path / "long.parquet", index=False)

    a = load_interactions(DataConfig(interactions=str(tmp_path / "wide.csv")))
    b = load_interactions(DataConfig(interactions=str(tmp_path / "long.csv")))
    c = load_interactions(DataConfig(interactions=str(tmp_path / "long.parquet")))
    keys = list(zip(wide["user_id"], wide["week"].astype(float), strict=True))
    played = [t for t in wide.columns[2:] if wide[t].sum() > 0]
    expected = wide.set_index(["user_id", "week"])[played].to_numpy(dtype=float)
    for inter in (a, b, c):
        assert np.array_equal(_as_dense(inter, keys, played), expected)
        assert inter.matrix.shape[0] == len(wide)


def test_long_duplicates_are_summed_and_latest_row_is_current() -> None:
    frame = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u1", "u2"],
            "track_id": ["a", "a", "b", "a"],
            "plays": [2, 3, 1, 4],
            "week": [2, 2, 1, 1],
        }
    )
    inter = interactions_from_long(frame, "user_id", "track_id", "plays", "week")
    users, current = inter.user_matrix()
    assert list(users) == ["u1", "u2"]
    col = {t: j for j, t in enumerate(inter.track_ids)}
    dense = current.toarray()
    assert dense[0, col["a"]] == 5  # week 2 of u1, duplicates summed
    assert dense[0, col["b"]] == 0  # b was in week 1 only
    assert dense[1, col["a"]] == 4


def test_negative_plays_are_rejected_with_row_and_column(tmp_path: Path) -> None:
    p = tmp_path / "m.csv"
    p.write_text("user_id,t1,t2\nu1,1,0\nu2,0,-3\n")
    with pytest.raises(DataError, match=r"m\.csv: column 't2' row 3 is negative"):
        load_interactions(DataConfig(interactions=str(p), time_column=None))


def test_catalogue_is_most_played_with_features_from_counted_rows(toy) -> None:
    frame = pd.DataFrame(
        {
            "user_id": ["u1", "u1", "u2", "u2", "u3"],
            "track_id": ["a", "b", "b", "c", "d"],
            "plays": [1, 5, 5, 2, 100],
        }
    )
    inter = interactions_from_long(frame, "user_id", "track_id", "plays")
    counted = inter.row_users != "u3"  # u3 is a held-out user: its plays must not count
    ids = select_catalogue(inter, None, max_tracks=2, count_rows=counted)
    assert list(ids) == ["b", "c"]


def test_min_count_filters() -> None:
    frame = pd.DataFrame(
        {"user_id": ["u1", "u1", "u2", "u2", "u3"], "track_id": ["a", "b", "a", "b", "c"]}
    )
    inter = filter_min_counts(interactions_from_long(frame, "user_id", "track_id"), 2, 2)
    assert sorted(inter.track_ids) == ["a", "b"]
    assert sorted(inter.row_users) == ["u1", "u2"]


def test_scaler_round_trip_and_constant_column() -> None:
    x = np.array([[1.0, 5.0], [3.0, 5.0]])
    s = FeatureScaler.fit(x, ("a", "b"))
    z = s.transform(x)
    assert np.allclose(z[:, 0], [-1, 1])
    assert np.allclose(z[:, 1], 0)  # constant column: std treated as 1, no division by zero
    assert np.allclose(s.inverse(z), x)
