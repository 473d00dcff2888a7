"""SIGKILL a training at random moments, some of them in the middle of a checkpoint write.

After every kill each checkpoint on disk must load, the training log must parse, and
``deepvibe train --resume models/snapshots/last.pth`` must finish the run with the same
per-epoch validation figures as a run that was never killed.
"""

from __future__ import annotations

import contextlib
import csv
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from deepvibe.cli import app
from deepvibe.training.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

EPOCHS = 5
# kill modes, in order: the very first write of the run, two writes later in the run, and
# one kill after a seeded random delay (each cycle pays ~5 s of interpreter and torch start-up)
MODES = ("first-write", "write", "write", "random")


def _config(root: Path, data: Path) -> Path:
    cfg = root / "train.yaml"
    cfg.write_text(
        f"data:\n  interactions: {data / 'full_training_matrix.csv'}\n"
        f"  features: {data / 'top_10k_features.csv'}\n  max_tracks: 1000\n"
        # wide enough that a checkpoint write (model + Adam state, ~2 MB) takes a while
        "model:\n  hidden: [256]\n  latent: 32\n"
        f"train:\n  epochs: {EPOCHS}\n  batch_size: 64\n  snapshot_every: 1\n"
    )
    return cfg


def _temp_files(root: Path) -> list[Path]:
    found = []
    for folder in (root / "models", root / "models" / "snapshots", root / "logs"):
        with contextlib.suppress(FileNotFoundError):
            found += [folder / e.name for e in os.scandir(folder) if e.name.endswith(".tmp")]
    return found


def _log_rows(root: Path) -> list[dict[str, str]]:
    path = root / "logs" / "hybrid_training.log"
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _start(root: Path, cfg: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", "import torch; torch.set_num_threads(1); "
         "from deepvibe.cli import app; app()", "train", "-c", str(cfg), "--no-progress"],
        cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )  # fmt: skip


def _kill_when(proc: subprocess.Popen, root: Path, mode: str, rng: random.Random) -> bool:
    """SIGKILL ``proc`` at the moment ``mode`` asks for; True if it was still running."""
    last = root / "models" / "snapshots" / "last.pth"
    deadline = time.monotonic() + 60
    if mode != "first-write":
        while not last.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        if mode == "write":  # let it get into the middle of the run, then wait for a write
            time.sleep(rng.uniform(0.0, 0.3))
    if mode == "random":
        time.sleep(rng.uniform(0.0, 0.5))
    else:
        while not _temp_files(root) and proc.poll() is None and time.monotonic() < deadline:
            pass  # busy-wait: a write lasts only milliseconds
    running = proc.poll() is None
    if running:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return running


def _check_everything_on_disk_loads(root: Path) -> None:
    for path in sorted((root / "models").rglob("*.pth")):
        ck = load_checkpoint(path)  # raises CheckpointError if truncated or corrupt
        assert ck.epoch >= 1 or ck.resume_state is not None, path
    rows = _log_rows(root)
    assert [int(r["epoch"]) for r in rows] == list(range(1, len(rows) + 1))


def test_sigkill_never_leaves_a_broken_checkpoint_and_resume_finishes(
    toy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = toy_dir / "data"
    runner = CliRunner()
    reference = tmp_path / "reference"
    reference.mkdir()
    monkeypatch.chdir(reference)
    res = runner.invoke(app, ["train", "-c", str(_config(reference, data))])
    assert res.exit_code == 0, res.output
    expected = [float(r["val_ndcg@100"]) for r in _log_rows(reference)]
    assert len(expected) == EPOCHS

    rng = random.Random(20261127)
    killed_mid_write = 0
    for i, mode in enumerate(MODES):
        root = tmp_path / f"run{i}_{mode}"
        root.mkdir()
        cfg = _config(root, data)
        proc = _start(root, cfg)
        was_running = _kill_when(proc, root, mode, rng)
        assert was_running, f"{mode}: training ended before the kill: {proc.stderr.read()!r}"
        left = _temp_files(root)
        killed_mid_write += bool(left) and mode != "random"

        _check_everything_on_disk_loads(root)

        monkeypatch.chdir(root)
        last = root / "models" / "snapshots" / "last.pth"
        args = ["train", "-c", str(cfg)] + (
            ["--resume", "models/snapshots/last.pth"] if last.exists() else []
        )
        res = runner.invoke(app, args)
        assert res.exit_code == 0, f"{mode}: {res.output}"
        assert f"trained {EPOCHS} epochs" in res.stdout

        _check_everything_on_disk_loads(root)
        assert load_checkpoint(last).epoch == EPOCHS
        assert load_checkpoint(root / "models" / "hybrid_deepvibe_best.pth").epoch >= 1
        got = [float(r["val_ndcg@100"]) for r in _log_rows(root)]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6, err_msg=mode)
        assert _temp_files(root) == []  # the resumed run removed what the kill left
    assert killed_mid_write >= 1, "no kill landed inside a checkpoint write"
