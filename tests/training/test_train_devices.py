"""Training on a device, checkpoints that load anywhere, bf16, and the --device flags.

Device tests run on every device torch sees: the CPU always, CUDA and MPS where present
(skipped with a reason elsewhere, never failed)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from conftest import DEVICES, small_config
from deepvibe.cli import app
from deepvibe.model.device import model_device
from deepvibe.model.inference import scorer
from deepvibe.ranking.metrics import evaluate_scorer
from deepvibe.training.checkpoint import load_checkpoint
from deepvibe.training.train import train, validation_foldin


@pytest.mark.parametrize("device", DEVICES)
def test_train_on_device_checkpoint_loads_on_cpu_and_resumes_there(
    device: str, toy_dir: Path, tmp_path: Path
) -> None:
    sets = {"train.epochs": 3, "train.device": device}
    cfg = small_config(tmp_path, toy_dir / "data", **sets)
    first = train(cfg, progress=False, stop_after_epoch=2)
    assert model_device(first.model).type == device
    ck = load_checkpoint(cfg.best_checkpoint_path)  # always onto the CPU
    assert model_device(ck.model).type == "cpu"
    val = validation_foldin(first.dataset, cfg)
    again = evaluate_scorer(scorer(ck.model, ck.track_features), val.foldin, val.heldout)
    assert again["ndcg@100"] == pytest.approx(ck.metrics["ndcg@100"], abs=2e-3)
    on_cpu = cfg.model_copy(update={"train": cfg.train.model_copy(update={"device": "cpu"})})
    resumed = train(on_cpu, resume=cfg.snapshots_dir / "last.pth", progress=False)
    assert resumed.epochs_done == 3 and model_device(resumed.model).type == "cpu"
    assert resumed.best_metric > 0.3


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_training_matches_fp32_quality_on_toy_data(
    device: str, toy_dir: Path, tmp_path: Path
) -> None:
    results = {}
    for precision in ("fp32", "bf16"):
        sets = {"train.epochs": 4, "train.device": device, "train.precision": precision}
        cfg = small_config(tmp_path / precision, toy_dir / "data", **sets)
        results[precision] = train(cfg, progress=False, write_files=False)
    fp32, bf16 = results["fp32"], results["bf16"]
    assert all(torch.isfinite(p).all() for p in bf16.model.parameters())
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())  # weights stay fp32
    assert bf16.best_metric == pytest.approx(fp32.best_metric, abs=0.05)
    assert bf16.history[-1]["loss"] != fp32.history[-1]["loss"]  # bf16 really was used


def test_cli_device_flags(toy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "data").symlink_to(toy_dir / "data")
    monkeypatch.chdir(tmp_path)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "data:\n  max_tracks: 1000\nmodel:\n  hidden: [64]\n  latent: 16\n"
        "train:\n  epochs: 1\n  batch_size: 64\n"
    )
    runner = CliRunner()
    bad = runner.invoke(app, ["train", "-c", str(cfg), "--device", "gpu"])
    assert bad.exit_code == 2 and "--device must be one of auto, cpu, cuda, mps" in bad.output
    res = runner.invoke(app, ["train", "-c", str(cfg), "--device", "cpu"])
    assert res.exit_code == 0, res.output
    best = tmp_path / "models" / "hybrid_deepvibe_best.pth"
    assert load_checkpoint(best).config["train"]["device"] == "cpu"
    user = "user_1"
    res = runner.invoke(
        app, ["discover", user, "--source", "catalogue", "--device", "cpu", "--top", "5"]
    )
    assert res.exit_code == 0, res.output
    assert f"for {user}:" in res.output and "report: " in res.output
    if not torch.cuda.is_available():
        res = runner.invoke(app, ["train", "-c", str(cfg), "--device", "cuda"])
        assert res.exit_code == 1 and "Traceback" not in res.output
        assert res.stderr.startswith("error: train.device is cuda but torch sees no CUDA")
