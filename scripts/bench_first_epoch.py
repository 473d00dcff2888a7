"""How long `deepvibe train` takes to reach its first batch on 100,000 users x 10,000 tracks.

Writes a long interactions CSV (user_id, track_id, plays; ``--users`` x ``--per-user`` rows,
tracks drawn from a Zipf-like popularity over ``--tracks`` tracks) and a features CSV for every
track into a temporary folder, then runs the library's ``train`` with a tiny model for one
epoch and stops it when the first batch reaches the loss. Each phase is timed:

    reading the interactions, reading the features, the rest of building the dataset (filter,
    user split, catalogue), and training set-up up to the first batch (fold-in of the
    validation users, the model).

Baseline, in the same process: the id matching that the old code did with ``np.isin`` on
object arrays (twice: the training rows while choosing the catalogue, then again in
``train``) against the hash lookup used now, on the same arrays. ``np.isin`` on text compares
every pair, so it is timed on ``--baseline-rows`` rows and scaled to all rows (its cost is
linear in the rows for a fixed set of users); ``--baseline-rows 0`` times it on all rows.

    python scripts/bench_first_epoch.py                  # 100,000 x 10,000, 50 per user
    python scripts/bench_first_epoch.py --users 2000     # a quick check
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from deepvibe.config import DEFAULT_FEATURES, load_config
from deepvibe.data import dataset as dataset_module
from deepvibe.training import train as train_module

_ALPHABET = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))


class FirstBatch(Exception):
    """Raised from the loss of the first batch to stop training there."""


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def write_data(folder: Path, users: int, tracks: int, per_user: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    letters = _ALPHABET[rng.integers(0, len(_ALPHABET), size=(tracks, 22))]
    track_ids = np.array(["".join(row) for row in letters], dtype=object)
    weights = 1.0 / np.arange(1, tracks + 1) ** 0.8  # a long tail, as real listening has
    cols = rng.choice(tracks, size=users * per_user, p=weights / weights.sum())
    user_ids = np.array([f"user_{i:06d}" for i in range(users)], dtype=object)
    plays = rng.geometric(0.3, size=users * per_user)
    inter = pa.table(
        {
            "user_id": pa.array(np.repeat(user_ids, per_user).tolist(), pa.string()),
            "track_id": pa.array(track_ids[cols].tolist(), pa.string()),
            "plays": pa.array(plays),
        }
    )
    paths = {"interactions": folder / "interactions.csv", "features": folder / "features.csv"}
    pacsv.write_csv(inter, paths["interactions"])
    feats = {"track_id": track_ids}
    feats.update({c: rng.random(tracks) for c in DEFAULT_FEATURES})
    feats["popularity"] = np.round(rng.random(tracks) * 100)
    pacsv.write_csv(pa.Table.from_pandas(pd.DataFrame(feats)), paths["features"])
    return {k: str(v) for k, v in paths.items()} | {"rows": users * per_user}


class Timer:
    """Wraps functions in a module's namespace and sums their wall time by name."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    def wrap(self, module: object, name: str) -> None:
        fn: Callable = getattr(module, name)

        def timed(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t0

        setattr(module, name, timed)


def time_until_first_batch(paths: dict, timer: Timer) -> float:
    cfg = load_config(
        None,
        [
            f"data.interactions={paths['interactions']}",
            f"data.features={paths['features']}",
            "data.time_column=null",
            "data.max_tracks=10000",
            "model.hidden=[64]",
            "model.latent=16",
            "train.epochs=1",
            "train.batch_size=256",
        ],
    )

    def first_loss(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise FirstBatch

    for name in ("load_interactions", "load_catalogue_features", "filter_min_counts",
                 "select_catalogue"):  # fmt: skip
        timer.wrap(dataset_module, name)
    timer.wrap(train_module, "build_dataset")
    timer.wrap(train_module, "validation_foldin")
    train_module.vae_loss = first_loss
    with tempfile.TemporaryDirectory() as out:
        cfg = cfg.model_copy(
            update={"paths": cfg.paths.model_copy(update={"models_dir": out, "logs_dir": out})}
        )
        t0 = time.perf_counter()
        try:
            train_module.train(cfg, progress=False)
        except FirstBatch:
            return time.perf_counter() - t0
    raise RuntimeError("training finished without a batch")


def baseline_ratio(paths: dict, baseline_rows: int, seed: int) -> tuple[float, float, int]:
    """(old np.isin seconds for all rows, hash seconds, rows timed for the old way)."""
    frame = pd.read_csv(paths["interactions"], usecols=["user_id"], dtype=str)
    row_users = pd.unique(frame["user_id"]).astype(object)  # one row per user (no time column)
    rng = np.random.default_rng(seed)
    train_users = row_users[rng.permutation(len(row_users))[: int(0.9 * len(row_users))]]
    t0 = time.perf_counter()
    for _ in range(2):
        fast = pd.Index(train_users).get_indexer(row_users) >= 0
    hash_s = time.perf_counter() - t0
    n = len(row_users) if baseline_rows <= 0 else min(baseline_rows, len(row_users))
    t0 = time.perf_counter()
    for _ in range(2):
        slow = np.isin(row_users[:n], train_users)
    old_s = (time.perf_counter() - t0) * len(row_users) / n
    assert np.array_equal(slow, fast[:n])
    return old_s, hash_s, n


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=100_000)
    ap.add_argument("--tracks", type=int, default=10_000)
    ap.add_argument("--per-user", type=int, default=50)
    ap.add_argument("--baseline-rows", type=int, default=5_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        paths = write_data(Path(tmp), args.users, args.tracks, args.per_user, args.seed)
        size = Path(paths["interactions"]).stat().st_size / 2**20
        print(
            f"data: {args.users:,} users x {args.tracks:,} tracks, {paths['rows']:,} rows "
            f"({size:.0f} MiB CSV), written in {time.perf_counter() - t0:.1f} s"
        )
        timer = Timer()
        total = time_until_first_batch(paths, timer)
        s = timer.seconds
        rest = s["build_dataset"] - s["load_interactions"] - s["load_catalogue_features"]
        print(f"  read interactions (load_interactions)      {s['load_interactions']:7.2f} s")
        print(f"  read features (load_catalogue_features)    {s['load_catalogue_features']:7.2f} s")
        print(f"  filter, split users, choose catalogue      {rest:7.2f} s")
        print(f"    of which filter_min_counts               {s['filter_min_counts']:7.2f} s")
        print(f"    of which select_catalogue                {s['select_catalogue']:7.2f} s")
        print(f"  train set-up to the first batch            {total - s['build_dataset']:7.2f} s")
        print(f"    of which validation_foldin               {s['validation_foldin']:7.2f} s")
        print(f"train() start to first batch: {total:.2f} s; peak RSS {peak_rss_mib():,.0f} MiB")
        old_s, hash_s, n = baseline_ratio(paths, args.baseline_rows, args.seed)
        how = "timed on all rows" if n == args.users else f"timed on {n:,} rows, scaled"
        print(
            f"id matching, training rows x2: np.isin on object ids {old_s:.1f} s ({how}) vs "
            f"pandas Index {hash_s:.3f} s: {old_s / max(hash_s, 1e-9):,.0f}x"
        )


if __name__ == "__main__":
    sys.exit(main())
