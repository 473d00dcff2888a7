"""Hybrid discovery end to end (issue 10): taste groups that only artists tell apart, users
placed without catalogue tracks, the new-artist mode and the ``why`` column."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import small_config
from deepvibe.cli import app
from deepvibe.data.synth import ToyData, make_toy_data, write_toy_data
from deepvibe.discovery import users as du
from deepvibe.discovery.discoverer import Discoverer
from deepvibe.discovery.validation import DatabaseValidator
from deepvibe.training.checkpoint import load_checkpoint
from deepvibe.training.train import train

runner = CliRunner()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ToyData]:
    """Four taste groups that sound the same (feature_spread 0): only who plays which artists
    with whom separates them. A tiny model trained with database validation."""
    root = tmp_path_factory.mktemp("artist_world")
    toy = make_toy_data(users=320, tracks=400, db_tracks=2400, groups=4, weeks=1, seed=11,
                        feature_spread=0.0)  # fmt: skip
    write_toy_data(root / "data", toy)
    cfg = small_config(root, **{"train.epochs": 3, "data.time_column": "null"})
    train(cfg, progress=False, validator=DatabaseValidator)
    return root, toy


def _group_of(artists: pd.Series) -> np.ndarray:
    return artists.astype(str).str.extract(r"Artist (\d+)-")[0].astype(int).to_numpy()


def _users(root: Path, toy: ToyData, n_per_group: int = 3) -> list[str]:
    picked: list[str] = []
    for g in range(4):
        picked += [u for u, grp in toy.user_group.items() if grp == g][:n_per_group]
    return picked


def test_hybrid_ranks_the_groups_unseen_artists_first_where_the_dna_cannot(world) -> None:
    root, toy = world
    cfg = small_config(root)
    ck = load_checkpoint(cfg.best_checkpoint_path)
    assert "artist_cf" in ck.extras and ck.extras.get("validation") == "database"
    inter = du.load_training_users(cfg.data)
    wanted = _users(root, toy)
    batch = du.align_users(inter, ck.track_ids, wanted)
    hybrid = Discoverer.from_checkpoint(ck, cfg, source="db", progress=False)
    dna = Discoverer.from_checkpoint(ck, cfg, source="dna", progress=False)
    new = next(hybrid.discover_blocks(batch, 30, "new-artists")).discoveries()
    plain = next(dna.discover_blocks(batch, 30, "standard")).discoveries()
    history_artists = {
        u: set(toy.features.set_index("track_id").reindex(list(h))["artists"].dropna())
        for u, h in zip(batch.users, batch.history, strict=True)
    }
    hybrid_share, dna_share = [], []
    for res_new, res_dna in zip(new, plain, strict=True):
        group = toy.user_group[res_new.user]
        assert len(res_new.table) == 30
        # new artists only: no recommended track credits an artist the user has played
        assert not set(res_new.table["artists"]) & history_artists[res_new.user]
        hybrid_share.append(np.mean(_group_of(res_new.table["artists"]) == group))
        dna_share.append(np.mean(_group_of(res_dna.table["artists"]) == group))
        assert res_new.table["why"].str.len().gt(0).all()
    assert np.mean(hybrid_share) >= 0.8, hybrid_share
    assert np.mean(dna_share) <= 0.5, dna_share  # 4 groups that sound alike: about chance


def test_users_without_catalogue_tracks_are_placed_and_nothing_usable_is_skipped(
    world, tmp_path: Path
) -> None:
    """`discover --all --history` writes a report for every user with any database track;
    a user with no usable track is skipped with a warning, and the batch goes on."""
    root, toy = world
    cfg = small_config(root)
    ck = load_checkpoint(cfg.best_checkpoint_path)
    catalogue = set(ck.track_ids)
    db = pd.read_csv(root / "data" / "global_tracks.csv", usecols=["track_id", "artists"])
    outside = db[~db["track_id"].isin(catalogue)]
    groups = _group_of(outside["artists"])
    rows = []
    for g in range(4):  # one listener per group, only tracks the model never saw
        ids = outside["track_id"][groups == g].head(8)
        rows += [(f"cold_{g}", t) for t in ids]
    rows += [("ghost", "0000000000000000000000"), ("ghost", "no-such-track")]
    history = tmp_path / "history.csv"
    pd.DataFrame(rows, columns=["user_id", "track_id"]).to_csv(history, index=False)
    out = tmp_path / "recs"
    res = runner.invoke(app, [
        "discover", "--all", "--history", str(history), "--checkpoint",
        str(cfg.best_checkpoint_path), "--set", f"paths.recommendations_dir={out}",
        "--top", "20",
    ])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "skipped 1 of 5 users" in res.stderr and "'ghost'" in res.stderr
    for g in range(4):
        report = next((out / f"cold_{g}").glob("*_standard.csv"))
        table = pd.read_csv(report)
        assert len(table) == 20
        played = {t for u, t in rows if u == f"cold_{g}"}
        assert not set(table["track_id"]) & played
        assert np.mean(_group_of(table["artists"]) == g) >= 0.5, table["artists"].tolist()
    assert not (out / "ghost").exists()
