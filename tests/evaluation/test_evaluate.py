"""`deepvibe evaluate` end to end on toy data, and the report it writes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from conftest import small_config
from deepvibe.cli import app
from deepvibe.evaluation.evaluate import parse_baselines, summarise, write_evaluation_json
from deepvibe.training.train import train

runner = CliRunner()

FAST = {
    "model.hidden": "[64]",
    "model.latent": 16,
    "train.epochs": 8,
    "train.val_fraction": 0.15,
}


def config_file(root: Path, toy_dir: Path, **overrides: object) -> Path:
    (root / "data").symlink_to(toy_dir / "data")
    cfg = small_config(root, **{**FAST, **overrides})
    path = root / "eval.yaml"
    path.write_text(yaml.safe_dump(cfg.to_dict()), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def toy_report(toy_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("evaluate")
    cfg_path = config_file(root, toy_dir)
    out = root / "reports" / "toy.json"
    res = runner.invoke(
        app,
        [
            "evaluate", "--config", str(cfg_path), "--seeds", "2", "--json", str(out),
            "--multvae-epochs", "3", "--ease-lambdas", "10,100", "--protocol", "catalogue",
        ],
    )  # fmt: skip
    return res, out


@pytest.mark.slow
def test_cli_prints_tables_and_writes_json(toy_report) -> None:
    res, out = toy_report
    assert res.exit_code == 0, res.output
    for text in ("Accuracy (test users", "Beyond accuracy", "Cold start", "deepvibe", "ease"):
        assert text in res.stdout
    report = json.loads(out.read_text())
    assert report["format"] == "deepvibe-evaluation"
    assert set(report["versions"]) >= {"deepvibe", "torch", "numpy", "python"}
    assert report["config"]["model"]["latent"] == 16
    seed = report["config"]["seed"]
    assert report["protocol"]["seeds"] == [seed, seed + 1]
    assert [r["seed"] for r in report["runs"]] == [seed, seed + 1]
    assert not list(out.parent.glob("*.tmp"))  # written atomically, nothing left behind


@pytest.mark.slow
def test_json_summary_is_mean_and_std_of_the_seeds(toy_report) -> None:
    _, out = toy_report
    report = json.loads(out.read_text())
    runs, summary = report["runs"], report["summary"]
    for model in ("deepvibe", "toppop", "ease", "multvae", "content"):
        values = [r["models"][model]["test"]["ndcg@100"] for r in runs]
        stat = summary["test"][model]["ndcg@100"]
        assert stat["mean"] == pytest.approx(np.mean(values))
        assert stat["std"] == pytest.approx(np.std(values, ddof=1))
        assert stat["n"] == 2
    # Every model is scored on the same users of a run.
    for r in runs:
        assert r["split"]["test_scored"] > 0 and r["split"]["reported_on"] == "test"
        assert r["models"]["ease"]["info"]["lambda"] in (10.0, 100.0)


@pytest.mark.slow
def test_toy_structure_is_found(toy_report) -> None:
    """Taste groups drive the toy data: every learned model must beat popularity."""
    _, out = toy_report
    test = json.loads(out.read_text())["summary"]["test"]
    pop = test["toppop"]["ndcg@100"]["mean"]
    for model in ("ease", "content", "deepvibe"):
        assert test[model]["ndcg@100"]["mean"] > pop + 0.05, model
    assert test["toppop"]["long_tail@20"]["mean"] == 0.0  # popularity never leaves the head
    assert (
        test["deepvibe-gems"]["popularity@20"]["mean"] < test["deepvibe"]["popularity@20"]["mean"]
    )


@pytest.mark.slow
def test_cold_start_block(toy_report) -> None:
    _, out = toy_report
    run = json.loads(out.read_text())["runs"][0]
    cold = run["cold_start"]
    assert cold["cold_tracks"] == round(0.1 * run["split"]["catalogue_items"])
    assert cold["training_catalogue"] == run["split"]["catalogue_items"] - cold["cold_tracks"]
    assert {"deepvibe-scan", "deepvibe-scan-gems", "content", "toppop"} <= set(cold["models"])
    # Cold tracks have no training plays, so popularity-by-training-count never finds one.
    assert cold["models"]["toppop"]["cold_heldout"]["recall@50"] == 0.0
    assert cold["cold_heldout_tracks"] > 0


def test_checkpoint_reproduces_its_validation_score(toy_dir: Path, tmp_path: Path) -> None:
    cfg_path = config_file(tmp_path, toy_dir)
    from deepvibe.config import load_config

    cfg = load_config(cfg_path)
    result = train(cfg, progress=False)
    res = runner.invoke(
        app,
        [
            "evaluate", "--config", str(cfg_path), "--checkpoint", str(cfg.best_checkpoint_path),
            "--baselines", "toppop", "--json", str(tmp_path / "ck.json"),
        ],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "optimistic" in res.stderr
    report = json.loads((tmp_path / "ck.json").read_text())
    run = report["runs"][0]
    assert run["split"]["reported_on"] == "validation" and "cold_start" not in run
    assert run["models"]["deepvibe"]["test"]["ndcg@100"] == pytest.approx(result.best_metric)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--baselines", "ease,knn"], "unknown baseline 'knn'"),
        (["--ease-lambdas", "ten"], "--ease-lambdas"),
        (["--seeds", "2", "--checkpoint", "x.pth"], "--seeds 1"),
        (["--no-deepvibe", "--baselines", "none"], "nothing to evaluate"),
        (["--test-fraction", "1.5"], "--test-fraction"),
    ],
)
def test_cli_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    res = runner.invoke(app, ["evaluate", *args])
    assert res.exit_code == 1
    assert message in res.stderr and "Traceback" not in res.output
    assert res.stderr.count("\n") == 1


def test_parse_baselines() -> None:
    assert parse_baselines("EASE, toppop,ease") == ("ease", "toppop")
    assert parse_baselines("none") == () and parse_baselines("") == ()
    assert "multvae" in parse_baselines("all")


def test_summarise_and_write_report(tmp_path: Path) -> None:
    runs = [
        {"models": {"m": {"validation": {"a": 1.0}, "test": {"a": 0.2}, "info": {}}}},
        {"models": {"m": {"validation": {"a": 3.0}, "test": {"a": float("nan")}, "info": {}}}},
    ]
    s = summarise(runs)
    assert s["validation"]["m"]["a"] == {"mean": 2.0, "std": pytest.approx(np.sqrt(2)), "n": 2}
    assert s["test"]["m"]["a"] == {"mean": 0.2, "std": None, "n": 1}  # NaN seeds are left out
    path = write_evaluation_json(
        {"x": float("nan"), "y": np.float32(0.5), "s": s}, tmp_path / "r.json"
    )
    data = json.loads(path.read_text())
    assert data["x"] is None and data["y"] == 0.5


def test_restore_best_returns_the_best_epochs_weights(toy_dir: Path, tmp_path: Path) -> None:
    """Validation scripted to peak at epoch 2 of 4: the returned weights must be epoch 2's
    (training is deterministic, so a run stopped after epoch 2 has exactly those)."""
    import torch

    from deepvibe.config import load_config

    class Scripted:  # a validator (deepvibe.training.validation) that replays given scores
        name = "scripted"

        def __init__(self) -> None:
            self.values = iter([0.1, 0.5, 0.2, 0.3])

        def score(self, model) -> dict[str, float]:
            return {"ndcg@100": next(self.values)}

    cfg = load_config(config_file(tmp_path, toy_dir, **{"train.epochs": 4}))
    after_two = train(cfg, progress=False, write_files=False, stop_after_epoch=2).model
    result = train(cfg, progress=False, write_files=False, restore_best=True, validator=Scripted())
    assert (result.best_epoch, result.best_metric, result.epochs_done) == (2, 0.5, 4)
    for name, value in result.model.state_dict().items():
        assert torch.equal(value, after_two.state_dict()[name]), name
    assert not (tmp_path / "models").exists()  # nothing written
    # without restore_best: the last epoch
    last = train(cfg, progress=False, write_files=False, validator=Scripted()).model
    assert any(not torch.equal(v, after_two.state_dict()[k]) for k, v in last.state_dict().items())
