"""Training throughput: 1 process x T threads against N data-parallel processes x 1 thread.

Writes synthetic toy data (``deepvibe.data.synth``), then runs ``deepvibe train`` as a user
would, once per setting, on the same data, config and global batch:

- ``1 x T``: ``python -m deepvibe train`` with OMP_NUM_THREADS=T (the baseline);
- ``N x 1``: ``python -m torch.distributed.run --standalone --nproc-per-node N -m deepvibe
  train`` with OMP_NUM_THREADS=1 (gloo, DistributedDataParallel);
- ``--one-thread``: also ``1 x 1``, to tell thread scaling from process scaling;
- ``--gpu``: also ``python -m deepvibe train --device cuda`` (one process, one GPU).

Validation runs only after the last epoch; users/s = training rows per epoch / the epoch's
seconds in the training log (rank 0's clock), median over the epochs after the first (warm-up)
and before the last (validation). Process start and data loading are not counted.

    python scripts/bench_distributed.py --users 10000 --tracks 2000 --epochs 5
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from deepvibe.config import load_config
from deepvibe.data.dataset import build_dataset
from deepvibe.data.synth import make_toy_data, write_toy_data


def write_config(folder: Path, data: Path, args: argparse.Namespace, device: str) -> Path:
    cfg = folder / "bench.yaml"
    hidden = ", ".join(str(h) for h in args.hidden)
    cfg.write_text(
        f"data:\n  interactions: {data / 'full_training_matrix.csv'}\n"
        f"  features: {data / 'top_10k_features.csv'}\n  database: null\n"
        f"  max_tracks: {args.tracks}\n"
        f"model:\n  hidden: [{hidden}]\n  latent: {args.latent}\n"
        f"train:\n  epochs: {args.epochs}\n  batch_size: {args.batch_size}\n"
        f"  eval_every: {args.epochs}\n  snapshot_every: {args.epochs}\n  device: {device}\n"
        f"paths:\n  models_dir: {folder / 'models'}\n  logs_dir: {folder / 'logs'}\n",
        encoding="utf-8",
    )
    return cfg


def run(name: str, cmd: list[str], threads: int, folder: Path) -> dict[str, float | str]:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    started = time.perf_counter()
    done = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{name}: failed ({done.returncode}):\n{done.stderr[-3000:]}")
    log = pd.read_csv(folder / "logs" / "hybrid_training.log")
    timed = log["seconds"].iloc[1:-1] if len(log) > 2 else log["seconds"]
    return {"setting": name, "epoch_s": statistics.median(timed), "wall_s": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--tracks", type=int, default=2_000)
    parser.add_argument("--weeks", type=int, default=2)
    parser.add_argument("--hidden", type=int, nargs="+", default=[1024, 512])
    parser.add_argument("--latent", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help="threads of the 1-process run")
    parser.add_argument("--gpu", action="store_true", help="also one process on cuda")
    parser.add_argument("--one-thread", action="store_true", help="also 1 process x 1 thread")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_dist_") as tmp:
        root = Path(tmp)
        toy = make_toy_data(args.users, args.tracks, args.tracks, 8, args.weeks, seed=0)
        write_toy_data(root / "data", toy)
        train = [sys.executable, "-m", "deepvibe", "train", "--no-progress"]
        torchrun = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc-per-node={args.nproc}",
            "-m",
            "deepvibe",
            "train",
            "--no-progress",
        ]
        settings = [
            (f"1 process x {args.threads} threads", train, args.threads, "cpu"),
            (f"{args.nproc} processes x 1 thread (gloo)", torchrun, 1, "cpu"),
        ]  # fmt: skip
        if args.one_thread:
            settings.append(("1 process x 1 thread", train, 1, "cpu"))
        if args.gpu:
            settings.append(("1 process, 1 GPU (cuda)", train, args.threads, "cuda"))
        results = []
        for i, (name, cmd, threads, device) in enumerate(settings):
            folder = root / f"run{i}"
            folder.mkdir()
            cfg = write_config(folder, root / "data", args, device)
            results.append(run(name, [*cmd, "-c", str(cfg)], threads, folder))
            log = pd.read_csv(folder / "logs" / "hybrid_training.log")
            results[-1]["ndcg"] = float(log["val_ndcg@100"].iloc[-1])
        ds = build_dataset(load_config(cfg))
        rows_per_epoch = int(ds.rows_of("train").sum())
    base = rows_per_epoch / float(results[0]["epoch_s"])
    print(
        f"data: synth {args.users} users x {args.weeks} weeks, {args.tracks} tracks "
        f"({rows_per_epoch} training rows); model hidden {args.hidden} latent {args.latent}; "
        f"batch {args.batch_size}; {args.epochs} epochs; torch {torch.__version__}; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs"
    )
    print(f"{'setting':<34} {'s/epoch':>8} {'users/s':>9} {'vs 1 proc':>9} {'NDCG@100':>9}")
    for r in results:
        speed = rows_per_epoch / float(r["epoch_s"])
        print(
            f"{r['setting']:<34} {float(r['epoch_s']):>8.2f} {speed:>9.0f} "
            f"{speed / base:>8.2f}x {float(r['ndcg']):>9.4f}"
        )


if __name__ == "__main__":
    main()
