"""`evaluate --protocol discovery` on toy data whose playlists are defined by artists."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import small_config
from deepvibe.cli import app
from deepvibe.data.synth import make_toy_data, write_toy_data
from deepvibe.evaluation.discovery import (
    METRICS,
    MODES,
    PROTOCOLS,
    DiscoverySettings,
    evaluate_discovery,
    format_discovery_report,
)

runner = CliRunner()

TINY = {
    "model.hidden": "[16]",
    "model.latent": 4,
    "train.epochs": 2,
    "train.batch_size": 64,
    "data.max_tracks": 300,
}
DEEPVIBE = ("deepvibe", "deepvibe-dna", "deepvibe-decoder", "deepvibe-artist")


@pytest.fixture(scope="module")
def artist_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Toy world where each taste group's played tracks come from 4 artists of the group, so a
    user's held-out tracks are by the artists of their fold-in (the known answer)."""
    toy = make_toy_data(users=120, tracks=160, db_tracks=800, groups=4, weeks=1, seed=5)
    db = toy.database.copy()
    group = db["track_id"].map(toy.track_group).to_numpy()
    played = np.arange(160)  # the matrix tracks are the database's first rows
    db.loc[played, "artists"] = [f"Band {group[i]}-{i % 4}" for i in played]
    features = db.iloc[played].reset_index(drop=True)
    root = tmp_path_factory.mktemp("discovery")
    write_toy_data(root / "data", replace(toy, database=db, features=features))
    return root


@pytest.fixture(scope="module")
def report(artist_root: Path) -> dict:
    cfg = small_config(artist_root, **TINY)
    return evaluate_discovery(cfg, DiscoverySettings(split_seeds=(0, 1)))


def test_every_method_on_every_protocol(report: dict) -> None:
    s = report["summary"]
    for protocol in PROTOCOLS:
        methods = set(s[protocol])
        assert {*DEEPVIBE, "content", "artist-share", "popularity"} <= methods
        assert ("cooccurrence-blend" in methods) == (protocol != "database")
        for numbers in s[protocol].values():
            assert set(METRICS) <= set(numbers)
            assert numbers["ndcg@100"]["n"] == 2  # both seeds
            assert numbers["users"]["mean"] > (100 if protocol == "database" else 10)
    assert set(s["beyond"]) == set(MODES)
    run = report["runs"][0]
    assert run["deepvibe"]["weights_from"] in ("fitted on validation users", "defaults (no fit)")
    text = format_discovery_report(report)
    for word in ("NDCG@100", "Recall@50", "new-artist-credit", "Beyond accuracy", "gems"):
        assert word in text


def test_known_answer_artists_beat_popularity(report: dict) -> None:
    db = report["summary"]["database"]
    ndcg = {m: v["ndcg@100"]["mean"] for m, v in db.items()}
    assert ndcg["artist-share"] > 2 * ndcg["popularity"]
    assert ndcg["deepvibe"] > ndcg["popularity"]
    assert ndcg["deepvibe-artist"] > ndcg["popularity"]


def test_new_artist_view_removes_fold_in_artists(report: dict) -> None:
    s = report["summary"]
    # Every candidate by a fold-in artist is gone, so no candidate has an artist share: the
    # artist-share baseline ranks by its content tie-break alone.
    na = s["new-artist-artist"]
    assert na["artist-share"]["ndcg@100"]["mean"] == pytest.approx(
        na["content"]["ndcg@100"]["mean"]
    )
    assert s["database"]["artist-share"]["ndcg@100"]["mean"] > na["content"]["ndcg@100"]["mean"]
    beyond = s["beyond"]
    assert beyond["new-artists"]["new_artist_share@100"]["mean"] == 1.0
    assert beyond["standard"]["new_artist_share@100"]["mean"] < 1.0


def test_gems_mode_lowers_popularity(report: dict) -> None:
    beyond = report["summary"]["beyond"]
    assert (
        beyond["gems"]["avg_popularity@100"]["mean"]
        < beyond["standard"]["avg_popularity@100"]["mean"]
    )


def _config_file(root: Path, **overrides: object) -> Path:
    cfg = small_config(root, **{**TINY, **overrides})
    path = root / "disc_eval.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()), encoding="utf-8")
    return path


@pytest.mark.slow
def test_cli_discovery_protocol(artist_root: Path, tmp_path: Path) -> None:
    out = tmp_path / "r" / "disc.json"
    res = runner.invoke(
        app,
        [
            "evaluate", "--config", str(_config_file(artist_root)), "--protocol", "discovery",
            "--split-seed", "98765", "--json", str(out),
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "NDCG@100" in res.stdout and "artist-share" in res.stdout
    import json

    report = json.loads(out.read_text())
    assert report["protocol"]["split_seeds"] == [98765]


def test_cli_discovery_without_database_is_one_line(artist_root: Path, tmp_path: Path) -> None:
    path = _config_file(tmp_path, **{"data.database": "null"})
    res = runner.invoke(app, ["evaluate", "--config", str(path), "--protocol", "discovery"])
    assert res.exit_code == 1
    assert "data.database" in res.stderr and "Traceback" not in res.output
    assert res.stderr.count("\n") == 1


def test_cli_split_seed_needs_discovery(artist_root: Path) -> None:
    path = _config_file(artist_root)
    res = runner.invoke(
        app, ["evaluate", "--config", str(path), "--protocol", "catalogue", "--split-seed", "1"]
    )
    assert res.exit_code == 1 and "--split-seed" in res.stderr
