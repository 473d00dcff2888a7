"""Data-parallel training (torch.distributed, gloo on the CPU): the pure sharding functions,
and 2-process jobs launched like a user launches them (torchrun, or RANK/WORLD_SIZE by hand).
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import deepvibe.training.distributed as distributed
from deepvibe.cli import app
from deepvibe.config import load_config
from deepvibe.errors import ConfigError
from deepvibe.model.loss import vae_loss
from deepvibe.model.sparse import SparseRows
from deepvibe.model.vae import HybridVAE, VAEArch
from deepvibe.training.checkpoint import load_checkpoint
from deepvibe.training.distributed import (
    SINGLE,
    Ranks,
    env_ranks,
    rank_noise,
    shard_batch,
    shard_users,
)
from deepvibe.training.train import train

SRC = Path(__file__).resolve().parents[2] / "src"
WORKER = Path(__file__).resolve().parent / "dist_worker.py"
EPOCHS = 3
# 720 training rows (360 users x 2 weeks) in batches of 23: 32 steps per epoch, and every global
# batch splits unevenly (12 + 11 rows, the last one 4 + 3): the weights of shard_batch matter.
BATCH = 23
STEPS = 32
# Validation NDCG@100 of one process after 3 epochs on this config, seeds 1..5: 0.467-0.506
# (sd 0.017); the 2-process run differs only in its noise streams, so 0.03 is within that.
SEED_NOISE = 0.03
DIST_TIMEOUT_S = 20


# --------------------------------------------------------------------------- pure functions


@pytest.mark.parametrize(("n", "world"), [(23, 2), (8, 3), (1, 2), (2, 3), (64, 4)])
def test_shards_cover_the_batch_in_order_and_weights_make_the_global_mean(n, world) -> None:
    rows = np.arange(100, 100 + n)
    shards = [shard_batch(rows, r, world) for r in range(world)]
    counted = np.concatenate([s.rows[: s.size] for s in shards])
    np.testing.assert_array_equal(counted, rows)
    sizes = [s.size for s in shards]
    assert max(sizes) - min(sizes) <= 1
    assert all(len(s.rows) >= 1 for s in shards)  # every rank takes part in every step
    assert sum(s.weight for s in shards) == pytest.approx(world)  # mean over ranks -> 1
    assert all(s.weight == 0.0 for s in shards if s.size == 0)


def test_mean_of_weighted_shard_gradients_is_the_global_batch_gradient() -> None:
    """What DDP computes (the mean over ranks of each rank's gradient of weight * its mean
    loss) equals the one-process gradient of the whole batch, here with 3 uneven shards."""
    torch.manual_seed(0)
    model = HybridVAE(VAEArch(30, 4, (16,), 8))
    plays = (torch.rand(7, 30) < 0.3).float()
    profile = torch.randn(7, 4)

    def grads(rows: np.ndarray, weight: float) -> list[torch.Tensor]:
        model.zero_grad()
        x = SparseRows.from_csr(plays[rows].numpy())
        scores, recon, mu, logvar = model(x, profile[rows], sample=False)
        parts = vae_loss(scores, x, recon, profile[rows], mu, logvar, 0.5, "weighted_mse", 5.0, 1.0)
        (parts.total * weight).backward()
        return [p.grad.clone() for p in model.parameters()]

    everything = grads(np.arange(7), 1.0)
    per_rank = [
        grads(s.rows, s.weight) for s in (shard_batch(np.arange(7), r, 3) for r in range(3))
    ]
    for i, full in enumerate(everything):
        mean = sum(g[i] for g in per_rank) / 3
        torch.testing.assert_close(mean, full, rtol=1e-5, atol=1e-6)


def test_shard_users_blocks_concatenate_to_the_input_and_keep_its_type() -> None:
    users = [f"u{i}" for i in range(10)]
    for ids in (users, np.array(users), pd.Index(users), pd.Series(users, index=range(50, 60))):
        parts = [shard_users(ids, r, 3) for r in range(3)]
        assert all(type(p) is type(ids) for p in parts)
        assert [len(p) for p in parts] == [4, 3, 3]
        assert [u for p in parts for u in list(p)] == users
    assert [list(shard_users(users[:1], r, 3)) for r in range(3)] == [["u0"], [], []]
    with pytest.raises(ValueError, match="rank 3 is not one of the 3 ranks"):
        shard_users(users, 3, 3)


def test_rank_noise_is_a_pure_function_of_seed_epoch_rank_and_world() -> None:
    def draws(*key: int) -> torch.Tensor:
        gen = rank_noise(*key)
        return torch.cat([torch.rand(5, generator=gen), torch.rand(5)])  # and the global stream

    same = draws(7, 2, 1, 2)
    assert torch.equal(same, draws(7, 2, 1, 2))
    for other in [(7, 2, 0, 2), (7, 3, 1, 2), (8, 2, 1, 2), (7, 2, 1, 3)]:
        assert not torch.equal(same, draws(*other)), other


def test_env_ranks_reads_torchrun_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert env_ranks() == (0, 1, 0)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert env_ranks() == (3, 4, 1)
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ConfigError, match="RANK 4"):
        env_ranks()
    monkeypatch.setenv("RANK", "x")
    with pytest.raises(ConfigError, match="expected integers"):
        env_ranks()


def test_one_process_is_the_identity() -> None:
    rows = np.array([5, 3, 9])
    shard = SINGLE.shard(rows)
    assert shard.rows is rows and shard.size == 3 and shard.weight == 1.0
    model = torch.nn.Linear(2, 2)
    assert SINGLE.wrap(model) is model
    gen = torch.Generator()
    assert SINGLE.epoch_noise(1, 1, gen) is gen
    assert SINGLE.combine([1.0, 2.0], shard, True) == ([1.0, 2.0], 3, True)
    assert SINGLE.from_main({"a": 1}, False) == ({"a": 1}, False)
    state = {"noise_rng": 1, "torch_rng": 2}
    assert SINGLE.own_rng(state) is state  # a snapshot of one process resumes bitwise
    assert SINGLE.own_rng({**state, "world": 2, "ranks": [{}, {}]}) is None
    assert Ranks(rank=1, world=2).own_rng({"world": 2, "ranks": ["r0", "r1"]}) == "r1"


def test_only_failed_collectives_are_blamed_on_the_group() -> None:
    """A bug stays a bug (re-raised with its traceback); a collective that failed while no
    rank is known dead becomes one line that says what to check."""
    two = Ranks(rank=1, world=2, timeout_s=7)
    with pytest.raises(IndexError), two.guard():
        raise IndexError("a bug")
    with pytest.raises(RuntimeError, match="shape mismatch"), two.guard():
        raise RuntimeError("shape mismatch in addmm")
    with pytest.raises(distributed.RankFailed) as failed, two.guard(lambda: "kept in last.pth"):
        raise RuntimeError("[gloo/transport/tcp/pair.cc:537] Timed out waiting 7000ms for recv")
    message = str(failed.value)
    assert message.startswith("rank 1 of 2: a collective operation failed while every rank")
    assert "train.dist_timeout_s (7 s)" in message and message.endswith("; kept in last.pth")
    with pytest.raises(RuntimeError, match="Connection reset"), SINGLE.guard():
        raise RuntimeError("Connection reset by peer")  # one process: nothing to explain


def test_train_nproc_launches_torchrun_with_the_same_arguments(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    launched = []

    def fake_call(cmd: list[str]) -> int:
        launched.append(cmd)
        return 0

    monkeypatch.setattr(distributed.subprocess, "call", fake_call)
    res = CliRunner().invoke(
        app,
        ["--debug", "train", "--nproc", "3", "-c", "cfg.yaml", "--set", "train.epochs=2",
         "--resume", "models/snapshots/last.pth", "--no-progress"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert launched == [
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=3",
         "-m", "deepvibe", "--debug", "train", "--config", "cfg.yaml", "--resume",
         str(Path("models/snapshots/last.pth")), "--set=train.epochs=2", "--no-progress"],
    ]  # fmt: skip


# ------------------------------------------------------------------------ 2-process jobs


def _config(root: Path, data: Path, **train: object) -> Path:
    settings = {"epochs": EPOCHS, "batch_size": BATCH, "snapshot_every": 1,
                "dist_timeout_s": DIST_TIMEOUT_S, **train}  # fmt: skip
    path = root / "train.yaml"
    root.mkdir(parents=True, exist_ok=True)
    path.write_text(
        f"data:\n  interactions: {data / 'full_training_matrix.csv'}\n"
        f"  features: {data / 'top_10k_features.csv'}\n  database: null\n  max_tracks: 1000\n"
        "model:\n  hidden: [128]\n  latent: 32\n  dropout: 0.1\n"
        "train:\n" + "".join(f"  {k}: {v}\n" for k, v in settings.items())
        + f"paths:\n  models_dir: {root / 'models'}\n  logs_dir: {root / 'logs'}\n"
    )  # fmt: skip
    return path


def _env(**extra: object) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("DEEPVIBE_")}
    # the package first, then the caller's path (where its dependencies may be)
    path = os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH")]))
    env.update(PYTHONPATH=path, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _torchrun(root: Path, args: list[str], **env: object) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
           str(WORKER), "train", "--no-progress", *args]  # fmt: skip
    return subprocess.run(
        cmd, cwd=root, env=_env(**env), capture_output=True, text=True, timeout=180
    )


def _hashes(folder: Path, rank: int) -> dict[int, str]:
    lines = (folder / f"rank{rank}.txt").read_text().split("\n")
    return {int(e): h for e, h in (line.split() for line in lines if line)}


def _final_weights(root: Path) -> list[torch.Tensor]:
    return list(
        load_checkpoint(root / "models" / "snapshots" / "last.pth").model.state_dict().values()
    )


@pytest.fixture(scope="module")
def two_ranks(toy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One 2-process torchrun job, 3 epochs, every rank's weights hashed after each epoch and
    every file it writes under its folder recorded."""
    base = tmp_path_factory.mktemp("two_ranks")
    root, hashes, audit = base / "run", base / "hashes", base / "audit"
    for folder in (hashes, audit):
        folder.mkdir()
    cfg = _config(root, toy_dir / "data")
    done = _torchrun(
        root, ["-c", str(cfg)], DEEPVIBE_DEBUG_WEIGHT_HASHES=hashes,
        DEEPVIBE_AUDIT_ROOT=root, DEEPVIBE_AUDIT_OUT=audit,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"trained {EPOCHS} epochs ({EPOCHS * STEPS} steps)" in done.stdout
    return {"root": root, "cfg": cfg, "hashes": hashes, "audit": audit}


@pytest.mark.slow
def test_two_gloo_ranks_hold_the_same_weights_and_match_one_process(
    two_ranks: dict[str, Path], toy_dir: Path, tmp_path: Path
) -> None:
    rank0, rank1 = _hashes(two_ranks["hashes"], 0), _hashes(two_ranks["hashes"], 1)
    assert list(rank0) == list(range(1, EPOCHS + 1))
    assert rank0 == rank1  # identical weights on both ranks after every epoch
    assert len(set(rank0.values())) == EPOCHS  # and they did change

    # only rank 0 wrote: rank 1 created, replaced or removed nothing under the run's folder
    writes = {r: (two_ranks["audit"] / f"writes_rank{r}.txt").read_text() for r in (0, 1)}
    assert writes[1] == ""
    assert "snapshots/last.pth" in writes[0] and "hybrid_training.log" in writes[0]

    log = pd.read_csv(two_ranks["root"] / "logs" / "hybrid_training.log")
    assert log["epoch"].tolist() == list(range(1, EPOCHS + 1))
    assert log["step"].tolist() == [STEPS * e for e in range(1, EPOCHS + 1)]
    # one process, same config and global batch
    single = train(load_config(_config(tmp_path, toy_dir / "data")), progress=False)
    two = float(log["val_ndcg@100"].iloc[-1])
    assert single.step == EPOCHS * STEPS
    assert abs(two - single.history[-1]["val_ndcg@100"]) < SEED_NOISE
    assert abs(float(log["loss"].iloc[-1]) / single.history[-1]["loss"] - 1) < 0.05


@pytest.mark.slow
def test_ctrl_c_on_torchrun_leaves_a_snapshot_that_resumes_bitwise_on_two_ranks(
    two_ranks: dict[str, Path], toy_dir: Path, tmp_path: Path
) -> None:
    """Ctrl-C reaches torchrun (rank 1 signals it in the middle of epoch 2); both ranks stop at
    the same step and rank 0 writes a mid-epoch snapshot with both ranks' random streams;
    resuming with 2 processes ends with the weights of the uninterrupted job."""
    root = tmp_path / "run"
    cfg = _config(root, toy_dir / "data")
    stopped = _torchrun(root, ["-c", str(cfg)], DEEPVIBE_TEST_SIGINT_AT=STEPS + 6)
    assert stopped.returncode != 0
    assert "resume with --resume" in stopped.stdout + stopped.stderr
    last = root / "models" / "snapshots" / "last.pth"
    ck = load_checkpoint(last)
    assert ck.resume_state is not None, "the stop did not land inside an epoch"
    assert ck.resume_state["world"] == 2 and len(ck.resume_state["ranks"]) == 2
    assert ck.epoch == 1 and 6 <= ck.resume_state["batch"] < STEPS

    kept = shutil.copy(last, tmp_path / "interrupted.pth")

    resumed = _torchrun(root, ["-c", str(cfg), "--resume", str(last)])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    for a, b in zip(_final_weights(root), _final_weights(two_ranks["root"]), strict=True):
        assert torch.equal(a, b)

    # one process goes on from the same snapshot: other noise streams, so close, not bitwise
    alone = train(load_config(_config(tmp_path / "alone", toy_dir / "data")), resume=kept)
    assert alone.step == EPOCHS * STEPS
    two = pd.read_csv(two_ranks["root"] / "logs" / "hybrid_training.log")["val_ndcg@100"]
    assert abs(alone.history[-1]["val_ndcg@100"] - float(two.iloc[-1])) < SEED_NOISE


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("victim", [1, 0])
def test_a_killed_rank_stops_the_other_with_one_line_naming_it(
    victim: int, toy_dir: Path, tmp_path: Path
) -> None:
    """Two ranks launched by hand (as on two machines); SIGKILL one in the middle of the run.
    The survivor exits non-zero within train.dist_timeout_s with one line naming the dead rank
    (rank 0 also hosts the rendezvous store, so losing it is a different path), and the
    snapshot on disk loads and resumes in one process."""
    cfg = _config(tmp_path, toy_dir / "data", epochs=200)
    port = _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, str(WORKER), "train", "--no-progress", "-c", str(cfg)],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_env(RANK=r, LOCAL_RANK=r, WORLD_SIZE=2, MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
        )  # fmt: skip
        for r in (0, 1)
    ]
    survivor = procs[1 - victim]
    last = tmp_path / "models" / "snapshots" / "last.pth"
    try:
        deadline = time.monotonic() + 90
        while not last.exists() and survivor.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert last.exists(), survivor.stderr.read() if survivor.poll() is not None else "slow"
        time.sleep(random.Random(victim).uniform(0.2, 0.6))  # somewhere in a later epoch
        procs[victim].send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        survivor.wait(timeout=DIST_TIMEOUT_S + 30)
        took = time.monotonic() - killed_at
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    err = survivor.stderr.read()
    assert survivor.returncode == 1, err
    assert "Traceback" not in err
    message = err.strip().splitlines()[-1]
    assert message.startswith(f"error: rank {1 - victim} of 2: rank {victim} "), err
    assert took < DIST_TIMEOUT_S, f"the survivor took {took:.1f} s"

    ck = load_checkpoint(last)  # the last snapshot is whole
    assert 1 <= ck.epoch < 200
    assert not list(last.parent.glob(".*.tmp")) or victim == 0  # rank 0 may die mid-write
    resumed = train(load_config(cfg, [f"train.epochs={ck.epoch + 1}"]), resume=last, progress=False)
    assert resumed.epochs_done == ck.epoch + 1


@pytest.mark.parametrize(
    ("requested", "env", "local_ranks", "gpus", "expected"),
    [
        ("auto", {"LOCAL_WORLD_SIZE": "2"}, (0, 1), 1, "cpu"),  # torchrun, 2 procs, one GPU
        ("auto", {"LOCAL_WORLD_SIZE": "2"}, (0, 1), 2, "cuda"),
        ("auto", {"MASTER_ADDR": "127.0.0.1"}, (0, 1), 1, "cpu"),  # by hand, on this machine
        ("auto", {"MASTER_ADDR": "10.0.0.5"}, (0, 0), 1, "cuda"),  # by hand, one per machine
        ("cpu", {"LOCAL_WORLD_SIZE": "2"}, (0, 1), 0, "cpu"),
    ],
)
def test_every_rank_picks_the_same_backend_from_the_gpus_it_has(
    monkeypatch: pytest.MonkeyPatch,
    requested: str,
    env: dict,
    local_ranks: tuple[int, int],
    gpus: int,
    expected: str,
) -> None:
    # Found on a one-GPU machine: under auto, rank 1 of 2 asked for cuda:1, which did not
    # exist, and rank 0 waited for it until the timeout.
    for name in ("LOCAL_WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    kind = "cuda" if requested == "auto" else requested
    kinds = {distributed.comm_kind(kind, requested, local, 2, gpus) for local in local_ranks}
    assert kinds == {expected}


def test_explicit_cuda_with_too_few_gpus_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    with pytest.raises(ConfigError, match="1 GPU\\(s\\) for 4 processes.*train.device=cpu"):
        distributed.comm_kind("cuda", "cuda", 0, 4, 1)
