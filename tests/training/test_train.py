from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import small_config
from deepvibe.cli import app
from deepvibe.model.inference import scorer
from deepvibe.ranking.metrics import evaluate_scorer, mask_seen, recall_at_k, top_k
from deepvibe.training.checkpoint import load_checkpoint
from deepvibe.training.train import train, validation_foldin


@pytest.fixture(scope="module")
def trained(toy_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("run")
    cfg = small_config(root, toy_dir / "data", **{"train.val_fraction": 0.2})
    return cfg, train(cfg, progress=False)


def test_each_taste_group_beats_popularity(trained, toy) -> None:
    cfg, result = trained
    ds = result.dataset
    val = validation_foldin(ds, cfg)
    train_counts = np.asarray(ds.interactions.matrix[ds.rows_of("train")].sum(axis=0)).ravel()

    def popularity(rows):
        return np.tile(train_counts.astype(float), (rows.shape[0], 1))

    model_scores = scorer(result.model, ds.track_features)(val.foldin)
    ranked_model = top_k(mask_seen(model_scores.astype(float), val.foldin), 20)
    ranked_pop = top_k(mask_seen(popularity(val.foldin), val.foldin), 20)
    r_model = recall_at_k(ranked_model, val.heldout, 20)
    r_pop = recall_at_k(ranked_pop, val.heldout, 20)
    groups = np.array([toy.user_group[u] for u in val.users])
    for g in np.unique(groups):
        m, p = r_model[groups == g].mean(), r_pop[groups == g].mean()
        assert m > 0.35, f"group {g}: model Recall@20 {m:.3f}"
        assert m > 1.6 * p, f"group {g}: model {m:.3f} vs popularity {p:.3f}"


def test_best_checkpoint_snapshots_and_logs(trained) -> None:
    cfg, result = trained
    ck = load_checkpoint(cfg.best_checkpoint_path)
    assert ck.epoch == result.best_epoch
    assert list(ck.track_ids) == list(result.dataset.track_ids)
    assert ck.config["model"]["latent"] == 32
    assert ck.scaler.columns == cfg.data.feature_columns
    assert np.allclose(ck.track_features, result.dataset.track_features)
    # The saved best model reproduces its recorded validation score.
    val = validation_foldin(result.dataset, cfg)
    again = evaluate_scorer(scorer(ck.model, ck.track_features), val.foldin, val.heldout)
    assert again["ndcg@100"] == pytest.approx(ck.metrics["ndcg@100"], abs=1e-6)
    assert ck.metrics["ndcg@100"] == pytest.approx(result.best_metric)
    snaps = sorted(p.name for p in cfg.snapshots_dir.iterdir())
    assert snaps == [
        "epoch_0002.pth",
        "epoch_0004.pth",
        "epoch_0006.pth",
        "epoch_0008.pth",
        "last.pth",
    ]
    with open(Path(cfg.paths.logs_dir) / "hybrid_training.log") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == list(range(1, 9))
    assert {"loss", "kl", "beta", "lr", "val_ndcg@100", "seconds"} <= set(rows[0])
    # Checkpoints are plain data: weights_only loading works without any deepvibe class.
    raw = torch.load(cfg.best_checkpoint_path, weights_only=True)
    assert raw["format"] == "deepvibe-checkpoint"


def _weights(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.state_dict().values()]


def test_resume_equals_straight_training(toy_dir: Path, tmp_path: Path) -> None:
    sets = {"train.epochs": 4, "model.dropout": 0.1, "train.snapshot_every": 1}
    data = toy_dir / "data"
    straight = train(small_config(tmp_path / "a", data, **sets), progress=False)
    cfg_b = small_config(tmp_path / "b", data, **sets)
    first = train(cfg_b, progress=False, stop_after_epoch=2)
    assert first.epochs_done == 2
    resumed = train(cfg_b, resume=cfg_b.snapshots_dir / "last.pth", progress=False)
    assert resumed.step == straight.step
    for a, b in zip(_weights(straight.model), _weights(resumed.model), strict=True):
        assert torch.equal(a, b)


def test_same_seed_same_weights_other_seed_differs(toy_dir: Path, tmp_path: Path) -> None:
    sets = {"train.epochs": 2}
    data = toy_dir / "data"
    a = train(small_config(tmp_path, data, **sets), progress=False, write_files=False)
    b = train(small_config(tmp_path, data, **sets), progress=False, write_files=False)
    c = train(small_config(tmp_path, data, seed=5, **sets), progress=False, write_files=False)
    assert all(torch.equal(x, y) for x, y in zip(_weights(a.model), _weights(b.model), strict=True))
    assert not all(
        torch.equal(x, y) for x, y in zip(_weights(a.model), _weights(c.model), strict=True)
    )


def test_zero_features_pure_collaborative(toy_dir: Path, tmp_path: Path) -> None:
    cfg = small_config(tmp_path, toy_dir / "data", **{"data.features": "null", "train.epochs": 2})
    result = train(cfg, progress=False, write_files=False)
    assert result.dataset.track_features.shape[1] == 0
    assert result.model.arch.n_features == 0


def test_multinomial_likelihood_trains(toy_dir: Path, tmp_path: Path) -> None:
    cfg = small_config(
        tmp_path, toy_dir / "data", **{"train.likelihood": "multinomial", "train.epochs": 3}
    )
    result = train(cfg, progress=False, write_files=False)
    assert result.best_metric > 0.2


def test_cli_train_end_to_end(toy_dir: Path, tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "data").symlink_to(toy_dir / "data")
    monkeypatch.chdir(tmp_path)  # relative paths in the config resolve against the cwd
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        "data:\n  max_tracks: 1000\nmodel:\n  hidden: [64]\n  latent: 16\n"
        "train:\n  epochs: 2\n  batch_size: 64\n"
    )
    res = CliRunner().invoke(app, ["train", "--config", str(cfg_file), "--set", "train.epochs=3"])
    assert res.exit_code == 0, res.output
    assert "best validation NDCG@100" in res.output
    assert (tmp_path / "models" / "hybrid_deepvibe_best.pth").exists()
    assert (tmp_path / "logs" / "training_detailed.log").read_text().count("new best") >= 1
    with open(tmp_path / "logs" / "hybrid_training.log") as fh:
        assert len(list(csv.DictReader(fh))) == 3


def test_cli_config_error_names_key(tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["train", "--set", "train.kl.cycles=0"])
    assert res.exit_code == 1
    assert "train.kl.cycles" in res.output
    assert "Traceback" not in res.output
