"""`torchrun -m deepvibe discover --all` on 2 ranks writes the same bytes as one process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from conftest import small_config
from deepvibe.training.train import train

SRC = Path(__file__).resolve().parents[2] / "src"


def _run(cwd: Path, args: list[str], nproc: int | None) -> subprocess.CompletedProcess:
    launch = [sys.executable, "-m", "deepvibe"]
    if nproc is not None:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                  f"--nproc-per-node={nproc}", "-m", "deepvibe"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPVIBE_")}
    # the package first, then the caller's path (where its dependencies may be)
    path = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    env.update(PYTHONPATH=path, OMP_NUM_THREADS="1")
    return subprocess.run(
        [*launch, "discover", "--all", "--no-progress", *args], cwd=cwd, env=env,
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_two_ranks_write_the_reports_and_table_of_one_process(toy_dir: Path, tmp_path) -> None:
    cfg = small_config(tmp_path, toy_dir / "data", **{"train.epochs": 1})
    train(cfg, progress=False)
    reports: dict[str, dict[str, bytes]] = {}
    for name, nproc in (("one", None), ("two", 2)):
        out = tmp_path / name
        res = _run(tmp_path, [
            "--checkpoint", str(cfg.best_checkpoint_path), "--top", "15",
            "--set", f"paths.recommendations_dir={out}",
        ], nproc)  # fmt: skip
        assert res.returncode == 0, res.stderr[-3000:]
        reports[name] = {
            str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.csv"))
        }
        table = _run(tmp_path, [
            "--checkpoint", str(cfg.best_checkpoint_path), "--top", "15",
            "--out", str(tmp_path / f"{name}.parquet"),
        ], nproc)  # fmt: skip
        assert table.returncode == 0, table.stderr[-3000:]
    assert len(reports["one"]) == 2 * 400  # report + DNA per toy user
    assert reports["two"] == reports["one"]  # same files, byte for byte
    one, two = (pd.read_parquet(tmp_path / f"{n}.parquet") for n in ("one", "two"))
    pd.testing.assert_frame_equal(one, two)
    assert not list(tmp_path.glob(".*.part*"))  # the ranks' parts are gone
