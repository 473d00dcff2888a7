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


def dense_epochs(cfg: Config, ds: Dataset, epochs: int) -> list[float]:
    """Seconds per epoch of the dense loop (d94dc13's loop body) over the training rows."""
    t = cfg.train
    user_items = ds.interactions.matrix[np.flatnonzero(ds.rows_of("train"))]
    feats = torch.from_numpy(ds.track_features)
    torch.manual_seed(cfg.seed)
    n_tracks, n_feats = len(ds.track_ids), ds.track_features.shape[1]
    model = DenseVAE(n_tracks + n_feats, n_tracks, tuple(cfg.model.hidden), cfg.model.latent)
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr)
    n_batches = math.ceil(user_items.shape[0] / t.batch_size)
    out = []
    for epoch in range(1, epochs + 1):
        started = time.perf_counter()
        rng = np.random.default_rng([cfg.seed, 1000, epoch])
        noise = torch.Generator().manual_seed(epoch)
        order = rng.permutation(user_items.shape[0])
        for b in range(n_batches):
            idx = order[b * t.batch_size : (b + 1) * t.batch_size]
            plays = torch.from_numpy(user_items[idx].toarray())
            target = (plays > 0).float()
            keep = torch.rand(plays.shape, generator=noise) >= t.input_dropout
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
        out.append(time.perf_counter() - started)
    return out


def deepvibe_epochs(cfg: Config, ds: Dataset, epochs: int) -> list[float]:
    """Seconds of each epoch of train() that ran no validation (the last one does)."""
    sets = {"epochs": epochs + 1, "eval_every": 10_000}
    cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update=sets)})
    result = train(cfg, dataset=ds, progress=False, write_files=False)
    return [float(row["seconds"]) for row in result.history[:-1]]


# Both versions log "epoch N: {row}" at debug level once per epoch, after validation and before
# the epoch's files: the time between two such records is one whole epoch as a user sees it.
_CHILD = """\
import json, logging, sys, time, torch
torch.set_num_threads(int(sys.argv[3]))
from deepvibe.config import load_config
from deepvibe.data.dataset import build_dataset
from deepvibe.training.train import train
stamps = []
class Stamp(logging.Handler):
    def emit(self, record):
        if record.getMessage().startswith("epoch ") and record.levelno == logging.DEBUG:
            stamps.append(record.created)
logger = logging.getLogger("deepvibe")
logger.setLevel(logging.DEBUG)
logger.addHandler(Stamp())
cfg = load_config(sys.argv[1], json.loads(sys.argv[2]))
ds = build_dataset(cfg)
out = {}
for n in json.loads(sys.argv[4]):
    stamps.clear()
    c = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": n})})
    r = train(c, dataset=ds, progress=False, write_files=sys.argv[5] == "files")
    walls = [b - a for a, b in zip(stamps, stamps[1:])]
    out[n] = {"walls": walls, "seconds": [h["seconds"] for h in r.history]}
print(json.dumps(out))
"""


def run_package(
    src: Path | None, cfg_path: Path, sets: list[str], epochs: list[int], files: bool
) -> dict:
    """train() for each number of epochs in a fresh process: the package at ``src`` (a
    ``git archive`` of a revision, THP_MEM_ALLOC_ENABLE unset as it was then) or this one."""
    env = dict(os.environ)
    if src is not None:
        env.pop("THP_MEM_ALLOC_ENABLE", None)
    env["PYTHONPATH"] = str((src or ROOT) / "src")
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(cfg_path), json.dumps(sets),
         str(torch.get_num_threads()), json.dumps(epochs), "files" if files else "memory"],
        env=env, check=True, capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    return {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}


def git_source(rev: str, tmp: Path) -> Path:
    src = tmp / f"deepvibe-{rev}"
    if not src.exists():
        src.mkdir()
        archive = subprocess.run(
            ["git", "archive", rev, "src"], cwd=ROOT, check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(src)], input=archive, check=True)
    return src


def end_to_end(rev: str | None, cfg_path: Path, sets: list[str], epochs: int, tmp: Path) -> dict:
    """Seconds per epoch of ``train()`` as a user runs it: validation every epoch, the log and
    checkpoints written (the first epoch, a warm-up, is not counted)."""
    src = git_source(rev, tmp) if rev else None
    out = tmp / f"e2e-{rev or 'here'}"
    paths = [f"paths.models_dir={out / 'models'}", f"paths.logs_dir={out / 'logs'}"]
    run = run_package(src, cfg_path, sets + paths, [2 + epochs], files=True)[2 + epochs]
    return {
        "wall_per_epoch": statistics.median(run["walls"][1:]),
        "log_seconds_per_epoch": statistics.median(run["seconds"][2:]),
        "epochs": len(run["walls"]) - 1,
    }


def bench_speed(name: str, tmp: Path, args: argparse.Namespace) -> dict:
    cfg_path, sets = scenario_config(name, tmp, SIZES + [f"seed={args.seed}"])
    cfg = load_config(cfg_path, sets + ["train.device=cpu", "train.precision=fp32"])
    ds = build_dataset(cfg)
    n_users = int(ds.rows_of("train").sum())
    print(f"\n== {name}: {ds.summary()}; {n_users} training rows", flush=True)
    rows: dict[str, list[float]] = {"dense baseline": [], "deepvibe fp32": []}
    if args.bf16:
        rows["deepvibe bf16"] = []
    for rep in range(args.repeat):
        # the first epoch of each run is a warm-up and is not counted
        rows["dense baseline"] += dense_epochs(cfg, ds, args.epochs + 1)[1:]
        rows["deepvibe fp32"] += deepvibe_epochs(cfg, ds, args.epochs + 1)[1:]
        if args.bf16:
            bf = cfg.model_copy(
                update={"train": cfg.train.model_copy(update={"precision": "bf16"})}
            )
            rows["deepvibe bf16"] += deepvibe_epochs(bf, ds, args.epochs + 1)[1:]
        print(f"  repeat {rep + 1}: load average {load_avg()}", flush=True)
    if args.git_baseline:
        src = git_source(args.git_baseline, tmp)
        no_val = sets + ["train.eval_every=10000"]
        old = run_package(src, cfg_path, no_val, [args.epochs + 2], files=False)
        rows[f"package at {args.git_baseline} (subprocess)"] = old[args.epochs + 2]["seconds"][1:-1]
    base = statistics.median(rows["dense baseline"]) / n_users
    table = {}
    print(f"  {'loop':40s} {'ms/user/epoch':>14s} {'s/epoch':>8s} {'vs dense':>9s}  epochs")
    for label, secs in rows.items():
        med = statistics.median(secs)
        per_user = med / n_users
        table[label] = {"ms_per_user": 1000 * per_user, "seconds_per_epoch": med, "n": len(secs)}
        print(
            f"  {label:40s} {1000 * per_user:14.3f} {med:8.2f} {base / per_user:8.2f}x  {len(secs)}"
        )
    result = {
        "users": n_users,
        "threads": torch.get_num_threads(),
        "load": load_avg(),
        "rows": table,
    }
    if args.end_to_end:
        e2e_sets = sets + ["train.device=cpu"]
        here = end_to_end(None, cfg_path, e2e_sets, args.epochs, tmp)
        result["end_to_end"] = {"deepvibe": here}
        print(f"  end to end, this package: {json.dumps(here)}")
        if args.git_baseline:
            then = end_to_end(args.git_baseline, cfg_path, sets, args.epochs, tmp)
            result["end_to_end"][args.git_baseline] = then
            ratio = then["wall_per_epoch"] / here["wall_per_epoch"]
            print(f"  end to end, package at {args.git_baseline}: {json.dumps(then)}; "
                  f"ratio {ratio:.2f}x")  # fmt: skip
        print(f"  load average {load_avg()}")
    return result


# ----------------------------------------------------------------------------- memory


def memory_child(cfg_path: str) -> None:
    """One training epoch (with validation and the run's files) in this fresh process."""
    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "2")))
    root = Path(cfg_path).parent
    sets = SIZES + ["train.epochs=1", "train.device=cpu", f"paths.models_dir={root / 'models'}",
                    f"paths.logs_dir={root / 'logs'}"]  # fmt: skip
    cfg = load_config(cfg_path, sets)
    started = time.perf_counter()
    ds = build_dataset(cfg)
    after_load, loaded = peak_mb(), time.perf_counter() - started
    result = train(cfg, dataset=ds, progress=False)
    print(json.dumps({
        "rows": int(ds.rows_of("train").sum()), "nnz": int(ds.interactions.matrix.nnz),
        "tracks": len(ds.track_ids), "load_seconds": loaded, "peak_mb_after_load": after_load,
        "epoch_seconds": result.history[-1]["seconds"], "peak_mb": peak_mb(),
        "wall_seconds": time.perf_counter() - started,
    }))  # fmt: skip


def bench_memory(tmp: Path, users: int) -> dict:
    cfg = write_synthetic(tmp / f"mem{users}", users, 10_000, 50, seed=1)
    env = {**os.environ, "BENCH_THREADS": str(torch.get_num_threads())}
    done = subprocess.run(
        [sys.executable, __file__, "--memory-child", str(cfg)], env=env, check=True,
        capture_output=True, text=True,
    )  # fmt: skip
    out = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"\n== memory: {users:,} users x 10,000 tracks: {json.dumps(out)}", flush=True)
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
                results[name] = bench_memory(tmp, args.memory_users)
            else:
                results[name] = bench_speed(name, tmp, args)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    main()
