"""Toy data with a known answer, in the original design's layout.

Users belong to latent taste groups. Each group has a centroid in the standardised audio
feature space; its tracks' features scatter around it, and its users mostly play its tracks.
Popularity is long-tailed and tied to how much a track is played, not to which group it is
in, so every group has obscure tracks for hidden-gems mode to find. The database holds the
matrix tracks plus many more that nobody in the matrix played.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deepvibe.config import DEFAULT_FEATURES
from deepvibe.fileio import write_csv_atomic

_ALPHABET = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))


@dataclass(frozen=True)
class ToyData:
    matrix: pd.DataFrame  # wide: user_id, week, one column per track id
    features: pd.DataFrame  # catalogue tracks: track_id, 12 features, popularity, name, artists
    database: pd.DataFrame  # every track, same columns
    user_group: dict[str, int]
    track_group: dict[str, int]  # for every database track


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _to_units(z: np.ndarray) -> dict[str, np.ndarray]:
    """Map standard-normal-ish latent values (n, 12) to Spotify's feature units."""
    return {
        "danceability": np.round(_sigmoid(z[:, 0]), 3),
        "energy": np.round(_sigmoid(z[:, 1]), 3),
        "key": np.clip(np.round(5.5 + 2.5 * z[:, 2]), 0, 11).astype(int),
        "loudness": np.round(np.clip(-8.0 + 3.0 * z[:, 3], -60.0, 0.0), 3),
        "mode": (z[:, 4] > 0).astype(int),
        "speechiness": np.round(_sigmoid(z[:, 5] - 2.0), 4),
        "acousticness": np.round(_sigmoid(z[:, 6]), 4),
        "instrumentalness": np.round(_sigmoid(z[:, 7] - 1.0), 4),
        "liveness": np.round(_sigmoid(z[:, 8] - 1.5), 4),
        "valence": np.round(_sigmoid(z[:, 9]), 3),
        "tempo": np.round(np.clip(120.0 + 25.0 * z[:, 10], 50.0, 220.0), 3),
        "duration_ms": np.clip(210_000 + 40_000 * z[:, 11], 60_000, 600_000).astype(int),
    }


def _spotify_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    ids = set()
    out: list[str] = []
    while len(out) < n:
        for row in rng.integers(0, len(_ALPHABET), size=(n - len(out), 22)):
            s = "".join(_ALPHABET[row])
            if s not in ids:
                ids.add(s)
                out.append(s)
    return np.array(out, dtype=object)


def make_toy_data(
    users: int = 600,
    tracks: int = 500,
    db_tracks: int = 20_000,
    groups: int = 4,
    weeks: int = 2,
    tracks_per_user: tuple[int, int] = (15, 45),
    off_taste: float = 0.1,
    seed: int = 0,
    feature_spread: float = 1.6,
) -> ToyData:
    """Generate a toy world. ``tracks`` are in the matrix; ``db_tracks`` >= tracks in total.

    Taste groups differ in their artists (``Artist {group}-{n}``) and, by ``feature_spread``
    (the spread of the groups' audio centroids), in how they sound: with 0 every group sounds
    the same and only artists (who plays them with whom) tell the groups apart."""
    if db_tracks < tracks:
        raise ValueError(f"db_tracks ({db_tracks}) must be >= tracks ({tracks})")
    if groups < 1 or users < groups or tracks < groups:
        raise ValueError("need at least one user and one track per taste group")
    rng = np.random.default_rng(seed)
    n_feat = len(DEFAULT_FEATURES)
    centroids = rng.normal(0.0, 1.6, size=(groups, n_feat)) * (feature_spread / 1.6)
    track_group = np.arange(db_tracks) % groups
    rng.shuffle(track_group)
    z = centroids[track_group] + rng.normal(0.0, 0.45, size=(db_tracks, n_feat))
    ids = _spotify_ids(rng, db_tracks)
    # Appeal drives both plays and popularity: long-tailed (log-normal), independent of group.
    appeal = rng.lognormal(0.0, 1.2, size=db_tracks)
    rank = appeal.argsort().argsort() / max(1, db_tracks - 1)  # 0..1 percentile of appeal
    popularity = np.clip(np.round(100 * rank**2.5 + rng.normal(0, 3, db_tracks)), 0, 100)
    names = np.array([f"Track {i:06d}" for i in range(db_tracks)], dtype=object)
    artist_no = rng.integers(0, 200, db_tracks)
    artists = np.array(
        [f"Artist {g}-{a:03d}" for g, a in zip(track_group, artist_no, strict=True)], dtype=object
    )
    db = pd.DataFrame({"track_id": ids, **_to_units(z)})
    db["popularity"] = popularity.astype(int)
    db["track_name"] = names
    db["artists"] = artists

    # Matrix tracks: the first `tracks` rows after a shuffle, balanced over groups by design.
    in_matrix = np.arange(tracks)
    user_ids = np.array([f"user_{i + 1}" for i in range(users)], dtype=object)
    user_group = np.arange(users) % groups
    rng.shuffle(user_group)
    columns = ids[in_matrix]
    rows: list[np.ndarray] = []
    row_users: list[str] = []
    row_weeks: list[int] = []
    for u in range(users):
        own = in_matrix[track_group[in_matrix] == user_group[u]]
        n_tracks = int(rng.integers(tracks_per_user[0], tracks_per_user[1] + 1))
        n_off = int(rng.binomial(n_tracks, off_taste))
        n_own = min(len(own), n_tracks - n_off)
        p = appeal[own] / appeal[own].sum()
        chosen = rng.choice(own, size=n_own, replace=False, p=p)
        others = np.setdiff1d(in_matrix, own)
        if n_off and len(others):
            chosen = np.concatenate(
                [chosen, rng.choice(others, size=min(n_off, len(others)), replace=False)]
            )
        plays = 1 + rng.geometric(0.25, size=len(chosen))
        for w in range(1, weeks + 1):
            vec = np.zeros(tracks, dtype=np.int64)
            # Each week the user plays a random ~70% of their tracks (the latest week too).
            heard = rng.random(len(chosen)) < (0.7 if weeks > 1 else 1.0)
            if not heard.any():
                heard[0] = True
            vec[chosen[heard]] = plays[heard]
            rows.append(vec)
            row_users.append(user_ids[u])
            row_weeks.append(w)
    matrix = pd.DataFrame(np.vstack(rows), columns=columns)
    matrix.insert(0, "week", row_weeks)
    matrix.insert(0, "user_id", row_users)
    return ToyData(
        matrix=matrix,
        features=db.iloc[in_matrix].reset_index(drop=True),
        database=db,
        user_group=dict(zip(user_ids, user_group.tolist(), strict=True)),
        track_group=dict(zip(ids, track_group.tolist(), strict=True)),
    )


def write_toy_data(out_dir: str | Path, toy: ToyData) -> dict[str, Path]:
    """Write the design's files (plus the ground-truth groups) atomically into ``out_dir``."""
    out = Path(out_dir)
    paths = {
        "interactions": out / "full_training_matrix.csv",
        "features": out / "top_10k_features.csv",
        "database": out / "global_tracks.csv",
        "user_groups": out / "truth_user_groups.csv",
        "track_groups": out / "truth_track_groups.csv",
    }
    write_csv_atomic(toy.matrix, paths["interactions"])
    write_csv_atomic(toy.features, paths["features"])
    write_csv_atomic(toy.database, paths["database"])
    write_csv_atomic(
        pd.DataFrame({"user_id": list(toy.user_group), "group": list(toy.user_group.values())}),
        paths["user_groups"],
    )
    write_csv_atomic(
        pd.DataFrame({"track_id": list(toy.track_group), "group": list(toy.track_group.values())}),
        paths["track_groups"],
    )
    return paths
