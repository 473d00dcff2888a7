"""Benchmark of training throughput and memory.

Per scenario, in one process and interleaved (baseline, deepvibe, baseline, deepvibe, ...):

- **dense baseline**: a plain PyTorch Mult-VAE-style loop of the same sizes, which is what
  deepvibe's loop did up to commit d94dc13: every batch densified (``toarray``), a dense
  (B, n_tracks) dropout mask, dense first layer, dense weighted-MSE target, default Adam.
- **deepvibe**: ``deepvibe.training.train.train`` itself (sparse first layer, sparse-target
  loss, fused Adam), its epochs without validation.

Both run over the same training rows with the same sizes and batch size; the ratio of their
milliseconds per user and epoch is printed. ``--git-baseline REV`` also runs the package as it
was at REV (``git archive``) in a subprocess on the same data: its ``train()`` end to end.

Scenarios: ``lastfm`` (Last.fm-2k, ../shared/data), ``synth10k`` (20,000 users x 10,000 tracks,
long format, ~50 tracks per user, 12 audio features), ``memory`` (100,000 users x 10,000
tracks: one training epoch in a fresh process, peak RSS from VmHWM).

    python scripts/bench_train.py --scenarios lastfm synth10k memory --git-baseline d94dc13
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from deepvibe.config import DEFAULT_FEATURES, Config, load_config
from deepvibe.data.dataset import Dataset, build_dataset
from deepvibe.model.device import resolve_device
from deepvibe.model.loss import vae_loss
from deepvibe.model.schedule import cyclical_beta
from deepvibe.model.vae import audio_profile
from deepvibe.training.train import train

ROOT = Path(__file__).resolve().parents[1]
# ../shared/data from the repository root (a worktree one level deeper also finds it)
_SHARED = [ROOT.parent / "shared" / "data", ROOT.parent.parent / "shared" / "data"]
_DATA = os.environ.get("DEEPVIBE_DATA") or next((p for p in _SHARED if p.exists()), _SHARED[0])
LASTFM = Path(_DATA) / "lastfm-2k"
SIZES = ["model.hidden=[1024, 512]", "model.latent=256", "train.batch_size=256"]


def peak_mb() -> float:
    """Peak RSS of this process (VmHWM; ru_maxrss would carry a parent's peak across fork)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def load_avg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


# ----------------------------------------------------------------------------- data


def write_synthetic(folder: Path, users: int, tracks: int, per_user: int, seed: int = 0) -> Path:
    """Long-format plays (user_id, track_id, plays) and a 12-feature track table; returns a
    config file for them. Users draw ~per_user tracks from one of 20 taste groups (80%) and
    from the popular head (20%)."""
    folder.mkdir(parents=True, exist_ok=True)
    inter, feats = folder / "plays.csv", folder / "tracks.csv"
    if not inter.exists():
        rng = np.random.default_rng(seed)
        groups = rng.integers(0, 20, size=tracks)
        popularity = 1.0 / np.arange(1, tracks + 1) ** 0.8
        members = [np.flatnonzero(groups == g) for g in range(20)]
        parts = []
        for start in range(0, users, 20_000):  # in blocks: bounded memory at 100k users
            n = min(20_000, users - start)
            counts = rng.poisson(per_user, size=n).clip(5, tracks // 4)
            taste = rng.integers(0, 20, size=n)
            rows, cols = [], []
            for u, (k, g) in enumerate(zip(counts, taste, strict=True)):
                own = members[g]
                p = popularity[own] / popularity[own].sum()
                k_own = min(int(0.8 * k), len(own))
                picked = rng.choice(own, size=k_own, replace=False, p=p)
                head = rng.choice(
                    tracks, size=k - k_own, replace=False, p=popularity / popularity.sum()
                )
                cols.append(np.unique(np.concatenate([picked, head])))
                rows.append(np.full(len(cols[-1]), start + u))
            r, c = np.concatenate(rows), np.concatenate(cols)
            parts.append(
                pd.DataFrame(
                    {"user_id": [f"u{i}" for i in r], "track_id": [f"t{j}" for j in c],
                     "plays": rng.integers(1, 30, size=len(r))}
                )
            )  # fmt: skip
        pd.concat(parts).to_csv(inter, index=False)
        frame = pd.DataFrame(
            rng.normal(size=(tracks, len(DEFAULT_FEATURES))), columns=DEFAULT_FEATURES
        )
        frame.insert(0, "track_id", [f"t{j}" for j in range(tracks)])
        frame.to_csv(feats, index=False)
    cfg = folder / "config.yaml"
    cfg.write_text(
        f"data:\n  interactions: {inter}\n  format: long\n  time_column: null\n"
        f"  features: {feats}\n  popularity_column: null\n  name_column: null\n"
        f"  artist_column: null\n  database: null\n  max_tracks: {tracks}\n",
        encoding="utf-8",
    )
    return cfg


def scenario_config(name: str, tmp: Path, extra: list[str]) -> tuple[Path, list[str]]:
    if name == "lastfm":
        sets = [f"data.interactions={LASTFM / 'user_artists.dat'}"]
        return ROOT / "configs" / "lastfm.yaml", sets + extra
    if name == "synth10k":
        return write_synthetic(tmp / "synth10k", 20_000, 10_000, 50), extra
    raise ValueError(name)


# ----------------------------------------------------------------------------- dense baseline


class DenseVAE(nn.Module):
    """The network deepvibe had up to d94dc13: dense Linear layers, SELU, L2-normalised input."""

    def __init__(self, n_in: int, n_tracks: int, hidden: tuple[int, ...], latent: int) -> None:
        super().__init__()

        def stack(widths: list[int]) -> nn.Sequential:
            layers: list[nn.Module] = []
            for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
                layers.append(nn.Linear(a, b))
                if i < len(widths) - 2:
                    layers.append(nn.SELU())
            return nn.Sequential(*layers)

        self.n_tracks = n_tracks
        self.encoder = stack([n_in, *hidden, 2 * latent])
        self.decoder = stack([latent, *reversed(hidden), n_in])

    def forward(self, x: torch.Tensor, profile: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h = self.encoder(torch.cat([F.normalize(x, p=2.0, dim=1), profile], dim=1))
        mu, logvar = h.chunk(2, dim=1)
        logvar = logvar.clamp(-12.0, 12.0)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        out = self.decoder(z)
        return out[:, : self.n_tracks], out[:, self.n_tracks :], mu, logvar


def dense_epochs(cfg: Config, ds: Dataset, epochs: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each of ``epochs`` epochs of the dense loop (d94dc13's loop
    body) over the training rows, after one warm-up epoch, on ``cfg.train.device``."""
    t = cfg.train
    device = resolve_device(t.device)
    user_items = ds.interactions.matrix[np.flatnonzero(ds.rows_of("train"))]
    feats = torch.from_numpy(ds.track_features).to(device)
    torch.manual_seed(cfg.seed)
    n_tracks, n_feats = len(ds.track_ids), ds.track_features.shape[1]
    model = DenseVAE(n_tracks + n_feats, n_tracks, tuple(cfg.model.hidden), cfg.model.latent)
    model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr)
    n_batches = math.ceil(user_items.shape[0] / t.batch_size)
    out = []
    for epoch in range(1, epochs + 2):
        started = clock()
        rng = np.random.default_rng([cfg.seed, 1000, epoch])
        noise = torch.Generator(device=device).manual_seed(epoch)
        order = rng.permutation(user_items.shape[0])
        for b in range(n_batches):
            idx = order[b * t.batch_size : (b + 1) * t.batch_size]
            plays = torch.from_numpy(user_items[idx].toarray()).to(device)
            target = (plays > 0).float()
            keep = torch.rand(plays.shape, generator=noise, device=device) >= t.input_dropout
            noised = plays * keep
            profile_in, profile_target = audio_profile(noised, feats), audio_profile(plays, feats)
            beta = cyclical_beta(b, n_batches, 1, 0.5, 1.0)
            scores, recon, mu, logvar = model((noised > 0).float(), profile_in)
            parts = vae_loss(
                scores, target, recon, profile_target, mu, logvar, beta, t.likelihood,
                t.positive_weight, t.audio_weight,
            )  # fmt: skip
            assert torch.isfinite(parts.total)
            optimizer.zero_grad(set_to_none=True)
            parts.total.backward()
            optimizer.step()
            for value in (parts.total, parts.reconstruction, parts.audio, parts.kl):
                value.item()
        out.append(since(started))
    return out[1:]


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> tuple[float, float]:
    now = clock()
    return now[0] - start[0], now[1] - start[1]


class EpochStamps(logging.Handler):
    """(wall, CPU) clock at each "epoch N: {row}" debug record train() logs once per epoch,
    after its validation and before its files."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.stamps: list[tuple[float, float]] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno == logging.DEBUG and record.getMessage().startswith("epoch "):
            self.stamps.append(clock())

    def epochs(self) -> list[tuple[float, float]]:
        pairs = zip(self.stamps, self.stamps[1:], strict=False)
        return [(b[0] - a[0], b[1] - a[1]) for a, b in pairs]


def deepvibe_epochs(cfg: Config, ds: Dataset, epochs: int) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of ``epochs`` epochs of train() without validation: it runs
    epochs + 2 (the first a warm-up, the last validates) and times those between."""
    sets = {"epochs": epochs + 2, "eval_every": 10_000}
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update=sets)})
    logger, stamps = logging.getLogger("deepvibe"), EpochStamps()
    logger.setLevel(logging.DEBUG)
    logger.addHandler(stamps)
    try:
        train(cfg, dataset=ds, progress=False, write_files=False)
    finally:
        logger.removeHandler(stamps)
    return stamps.epochs()[:-1]


# The same stamps in a fresh process for a package at another revision (which logs the same
# "epoch N: {row}" record) or this one.
_CHILD = """\
import json, logging, sys, time, torch
torch.set_num_threads(int(sys.argv[3]))
from deepvibe.config import load_config
from deepvibe.data.dataset import build_dataset
from deepvibe.training.train import train
stamps = []
class Stamp(logging.Handler):
    def emit(self, record):
        if record.levelno == logging.DEBUG and record.getMessage().startswith("epoch "):
            stamps.append((time.perf_counter(), time.process_time()))
logger = logging.getLogger("deepvibe")
logger.setLevel(logging.DEBUG)
logger.addHandler(Stamp())
cfg = load_config(sys.argv[1], json.loads(sys.argv[2]))
ds = build_dataset(cfg)
train(cfg, dataset=ds, progress=False, write_files=sys.argv[4] == "files")
print(json.dumps([(b[0] - a[0], b[1] - a[1]) for a, b in zip(stamps, stamps[1:])]))
"""


def run_package(
    src: Path | None, cfg_path: Path, sets: list[str], files: bool
) -> list[tuple[float, float]]:
    """(wall, CPU) seconds of each epoch after the first of train() in a fresh process: the
    package at ``src`` (a ``git archive`` of a revision, run with THP_MEM_ALLOC_ENABLE unset
    as it was then) or this one (``src`` None)."""
    env = dict(os.environ)
    if src is not None:
        env.pop("THP_MEM_ALLOC_ENABLE", None)
    env["PYTHONPATH"] = str((src or ROOT) / "src")
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(cfg_path), json.dumps(sets),
         str(torch.get_num_threads()), "files" if files else "memory"],
        env=env, check=True, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    return [tuple(x) for x in json.loads(done.stdout.strip().splitlines()[-1])]


def git_source(rev: str, tmp: Path) -> Path:
    src = tmp / f"deepvibe-{rev}"
    if not src.exists():
        src.mkdir()
        archive = subprocess.run(
            ["git", "archive", rev, "src"], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    return src


def end_to_end(
    rev: str | None, cfg_path: Path, sets: list[str], epochs: int, tmp: Path
) -> list[tuple[float, float]]:
    """(wall, CPU) seconds per epoch of ``train()`` as a user runs it: validation every epoch,
    the log and checkpoints written (the first epoch, a warm-up, is not counted)."""
    src = git_source(rev, tmp) if rev else None
    out = tmp / f"e2e-{rev or 'here'}"
    paths = [f"paths.models_dir={out / 'models'}", f"paths.logs_dir={out / 'logs'}"]
    return run_package(src, cfg_path, [*sets, *paths, f"train.epochs={epochs + 1}"], files=True)


def summarise(rows: dict[str, list[tuple[float, float]]], n_users: int, base: str) -> dict:
    """Median wall and CPU milliseconds per user and epoch, and ratios to ``base``."""
    table = {}
    for label, times in rows.items():
        wall = statistics.median(t[0] for t in times) / n_users * 1000
        cpu = statistics.median(t[1] for t in times) / n_users * 1000
        table[label] = {"wall_ms_per_user": wall, "cpu_ms_per_user": cpu, "epochs": len(times)}
    for entry in table.values():
        entry["wall_ratio"] = table[base]["wall_ms_per_user"] / entry["wall_ms_per_user"]
        entry["cpu_ratio"] = table[base]["cpu_ms_per_user"] / entry["cpu_ms_per_user"]
    print(f"  {'':44s} {'ms per user and epoch':>22s} {'baseline / this':>16s}")
    print(f"  {'loop':44s} {'wall':>10s} {'CPU':>10s} {'wall':>8s} {'CPU':>8s}  epochs")
    for label, e in table.items():
        print(
            f"  {label:44s} {e['wall_ms_per_user']:10.3f} {e['cpu_ms_per_user']:10.3f} "
            f"{e['wall_ratio']:7.2f}x {e['cpu_ratio']:7.2f}x  {e['epochs']}"
        )
    return table


def bench_speed(name: str, tmp: Path, args: argparse.Namespace) -> dict:
    cfg_path, sets = scenario_config(name, tmp, SIZES + [f"seed={args.seed}"])
    cfg = load_config(cfg_path, sets + [f"train.device={args.device}", "train.precision=fp32"])
    ds = build_dataset(cfg)
    n_users = int(ds.rows_of("train").sum())
    where = f"{args.device} ({torch.cuda.get_device_name()})" if args.device == "cuda" else "cpu"
    print(f"\n== {name} on {where}: {ds.summary()}; {n_users} training rows", flush=True)
    rows: dict[str, list[tuple[float, float]]] = {"dense baseline": [], "deepvibe fp32": []}
    bf16 = cfg.model_copy(update={"train": cfg.train.model_copy(update={"precision": "bf16"})})
    for rep in range(args.repeat):  # interleaved, so load changes hit every loop alike
        rows["dense baseline"] += dense_epochs(cfg, ds, args.epochs)
        rows["deepvibe fp32"] += deepvibe_epochs(cfg, ds, args.epochs)
        if args.bf16:
            rows.setdefault("deepvibe bf16", []).extend(deepvibe_epochs(bf16, ds, args.epochs))
        if args.git_baseline:
            src = git_source(args.git_baseline, tmp)
            no_val = [*sets, "train.eval_every=10000", f"train.epochs={args.epochs + 2}"]
            label = f"package at {args.git_baseline} (subprocess)"
            rows.setdefault(label, []).extend(run_package(src, cfg_path, no_val, False)[:-1])
        print(f"  repeat {rep + 1}: load average {load_avg()}", flush=True)
    print("  training epochs without validation or files:")
    table = summarise(rows, n_users, "dense baseline")
    result = {"users": n_users, "threads": torch.get_num_threads(), "load": load_avg()}
    result["device"] = where
    result["loops"] = table
    if args.end_to_end:
        e2e: dict[str, list[tuple[float, float]]] = {}
        for _ in range(args.repeat):
            if args.git_baseline:
                label = f"package at {args.git_baseline}"
                e2e.setdefault(label, []).extend(
                    end_to_end(args.git_baseline, cfg_path, sets, args.epochs, tmp)
                )
            here = end_to_end(None, cfg_path, [*sets, "train.device=cpu"], args.epochs, tmp)
            e2e.setdefault("this package", []).extend(here)
        print("  whole epochs as `deepvibe train` runs them (validation, log, checkpoints):")
        result["end_to_end"] = summarise(e2e, n_users, next(iter(e2e)))
    print(f"  load average {load_avg()}", flush=True)
    return result


# ----------------------------------------------------------------------------- memory


def memory_child(cfg_path: str) -> None:
    """One training epoch (with validation and the run's files) in this fresh process."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    root = Path(cfg_path).parent / f"run-{os.getpid()}"
    sets = [*SIZES, "train.epochs=1", f"paths.models_dir={root / 'models'}",
            f"paths.logs_dir={root / 'logs'}"]  # fmt: skip
    if "device" in Config.model_fields["train"].annotation.model_fields:  # not at d94dc13
        sets.append("train.device=cpu")
    cfg = load_config(cfg_path, sets)
    started = time.perf_counter()
    ds = build_dataset(cfg)
    after_load, loaded = peak_mb(), time.perf_counter() - started
    result = train(cfg, dataset=ds, progress=False)
    print(json.dumps({
        "train_users": len(ds.user_groups["train"]), "nnz": int(ds.interactions.matrix.nnz),
        "tracks": len(ds.track_ids), "load_seconds": loaded, "peak_mb_after_load": after_load,
        "epoch_seconds": result.history[-1]["seconds"], "peak_mb": peak_mb(),
        "wall_seconds": time.perf_counter() - started,
    }))  # fmt: skip


def bench_memory(tmp: Path, users: int, rev: str | None) -> dict:
    """Peak RSS of one epoch in a fresh process: this package, and the one at ``rev``."""
    cfg = write_synthetic(tmp / f"mem{users}", users, 10_000, 50, seed=1)
    out = {}
    for label, src in [("this package", None)] + ([(rev, git_source(rev, tmp))] if rev else []):
        env = {**os.environ, "BENCH_THREADS": str(torch.get_num_threads())}
        if src is not None:
            env.pop("THP_MEM_ALLOC_ENABLE", None)
            env["PYTHONPATH"] = str(src / "src")
        done = subprocess.run(
            [sys.executable, __file__, "--memory-child", str(cfg)], env=env, check=True,
            capture_output=True, text=True,
        )  # fmt: skip
        out[label] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"\n== memory, {label}: {users:,} users x 10,000 tracks: {json.dumps(out[label])}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--scenarios", nargs="+", default=["lastfm", "synth10k", "memory"])
    ap.add_argument("--epochs", type=int, default=3, help="timed epochs per run (+1 warm-up)")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=98765)
    ap.add_argument("--bf16", action="store_true", help="also time train.precision=bf16")
    ap.add_argument("--git-baseline", default=None, help="also run the package at this commit")
    ap.add_argument(
        "--end-to-end", action="store_true",
        help="also time whole epochs as `deepvibe train` runs them (validation, files)",
    )  # fmt: skip
    ap.add_argument("--memory-users", type=int, default=100_000)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="speed loops' device")
    ap.add_argument("--tmp", type=Path, default=None, help="data folder (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.memory_child:
        memory_child(args.memory_child)
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"THP_MEM_ALLOC_ENABLE={os.environ.get('THP_MEM_ALLOC_ENABLE')}, "
          f"{os.cpu_count()} cpus, load average {load_avg()}")  # fmt: skip
    results = {}
    with tempfile.TemporaryDirectory() as default_tmp:
        tmp = args.tmp or Path(default_tmp)
        for name in args.scenarios:
            if name == "memory":
                results[name] = bench_memory(tmp, args.memory_users, args.git_baseline)
            else:
                results[name] = bench_speed(name, tmp, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
