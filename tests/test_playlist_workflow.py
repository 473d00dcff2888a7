"""Issue 14: playlist-style data from `prepare` to `discover --all` with the default training
settings; validation ranks the track database and beats popularity on the same users."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from deepvibe.cli import app
from deepvibe.config import DEFAULT_FEATURES, load_config
from deepvibe.data.dataset import build_dataset
from deepvibe.discovery.validation import DatabaseValidator
from deepvibe.ranking.metrics import ndcg_at_k
from deepvibe.ranking.topk import top_k

runner = CliRunner()


def _playlists(folder: Path, n_playlists: int = 100, seed: int = 0) -> tuple[Path, Path]:
    """4 taste groups (artists and sound); every track sits in one or two playlists."""
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 4, n_playlists)
    centroids = rng.normal(0, 1.2, (4, len(DEFAULT_FEATURES)))
    rows, tracks = [], []
    for p in range(n_playlists):
        for _ in range(int(rng.integers(12, 20))):
            g = groups[p] if rng.random() > 0.1 else int(rng.integers(0, 4))
            tid = f"t{len(tracks):05d}"
            tracks.append((tid, g, f"Artist {g}-{int(rng.integers(0, 25)):02d}"))
            rows.append((f"playlist_{p:03d}", tid))
            if rng.random() < 0.3:  # the same track in a second playlist of its group
                other = rng.choice(np.flatnonzero(groups == g))
                rows.append((f"playlist_{other:03d}", tid))
    ids = np.array([t[0] for t in tracks])
    track_groups = np.array([t[1] for t in tracks])
    z = centroids[track_groups] + rng.normal(0, 0.5, (len(ids), len(DEFAULT_FEATURES)))
    table = pd.DataFrame(z, columns=list(DEFAULT_FEATURES))
    table.insert(0, "track_id", ids)
    table["track_name"] = [f"Song {i}" for i in range(len(ids))]
    table["artists"] = [t[2] for t in tracks]
    table["popularity"] = rng.integers(0, 100, len(ids))
    inter = pd.DataFrame(rows, columns=["user_id", "track_id"]).drop_duplicates()
    inter.to_csv(folder / "playlists.csv", index=False)
    table.to_csv(folder / "tracks.csv", index=False)
    return folder / "playlists.csv", folder / "tracks.csv"


@pytest.mark.slow
def test_prepare_train_discover_on_playlists_with_the_defaults(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    inter, tracks = _playlists(tmp_path)
    prep = runner.invoke(app, ["prepare", "-i", str(inter), "-t", str(tracks), "--binary",
                               "--out", "prepared"])  # fmt: skip
    assert prep.exit_code == 0, prep.output
    command = re.search(r"next: (deepvibe train --config \S+)", prep.output)
    assert command, prep.output
    config = command.group(1).split("--config ")[1]
    res = runner.invoke(app, ["train", "--config", config, "--no-progress", "--no-plots"])
    assert res.exit_code == 0, res.output
    found = re.search(r"best validation NDCG@100 ([0-9.]+) at epoch (\d+) \(validation: "
                      r"database ranking\)", res.stdout)  # fmt: skip
    assert found, res.stdout
    best = float(found.group(1))
    for mode in ("standard", "new-artists"):  # each mode's weights and Vibe DNA anchor
        assert re.search(rf"discovery weights \({mode}\): .*; DNA anchor [01.]+", res.stdout)

    # Popularity on the same validation users and the same database ranking.
    cfg = load_config(config)
    validator = DatabaseValidator(build_dataset(cfg), cfg)
    split, space = validator.split, validator.space
    pop = np.nan_to_num(space.popularity, nan=-1.0).astype(np.float64)
    scores = np.tile(pop, (split.foldin.shape[0], 1))
    seen = split.foldin.tocoo()
    scores[seen.row, seen.col] = -np.inf
    popularity = float(ndcg_at_k(top_k(scores, 100), split.heldout, 100).mean())
    assert validator.n_users >= 20
    assert best > 1.5 * popularity, (best, popularity)

    disc = runner.invoke(app, ["discover", "--all", "--config", config, "--top", "20"])
    assert disc.exit_code == 0, disc.output
    reports = list(Path(cfg.paths.recommendations_dir).rglob("*_standard.csv"))
    assert len(reports) == len(pd.read_csv(inter)["user_id"].unique())
