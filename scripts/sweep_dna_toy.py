"""Vibe DNA temperature / top-k on toy data with a known answer.

Every toy user belongs to a taste group and every database track to a group; a good DNA puts
the user's group at the top of the database scan. For models of different quality (an early
epoch, a trained one) and both likelihoods (whose decoder scores live on different scales),
this prints the mean share of the user's group in the top 50 of the scan and how many users
are "lost" (share < 0.5), for each (temperature, top_k).

    python scripts/sweep_dna_toy.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from deepvibe.config import load_config
from deepvibe.data.synth import make_toy_data, write_toy_data
from deepvibe.discovery.database import TrackDatabase
from deepvibe.discovery.discoverer import Discoverer
from deepvibe.training.train import train

GRID = [(0.01, None), (0.1, None), (1.0, None), (0.1, 10), (0.3, 10), (1.0, 10), (1.0, 30)]
MODELS = {
    "weighted_mse, 3 epochs": ["train.epochs=3"],
    "weighted_mse, 15 epochs": ["train.epochs=15"],
    "multinomial, 15 epochs": ["train.epochs=15", "train.likelihood=multinomial"],
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(2)
    totals: dict[tuple[str, float, int | None], list[tuple[float, int, int]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            toy = make_toy_data(600, 500, 20_000, 4, 2, seed=seed)
            data = Path(tmp) / f"s{seed}"
            write_toy_data(data, toy)
            base = [
                f"data.interactions={data / 'full_training_matrix.csv'}",
                f"data.features={data / 'top_10k_features.csv'}",
                "model.hidden=[256,128]", "model.latent=64", "train.batch_size=128",
                f"seed={seed}",
            ]  # fmt: skip
            db = None
            for name, sets in MODELS.items():
                cfg = load_config(None, base + sets)
                res = train(cfg, progress=False, write_files=False)
                ds = res.dataset
                if db is None:
                    db = TrackDatabase.open(data / "global_tracks.csv", ds.scaler.columns)
                finder = Discoverer(
                    res.model, ds.track_ids, ds.scaler, ds.track_features, cfg.discover, db
                )
                users, plays = ds.interactions.user_matrix()
                truth = np.array([toy.user_group[u] for u in users])
                for t, k in GRID:
                    finder.settings = cfg.discover.model_copy(
                        update={"temperature": t, "top_k": k, "source": "db"}
                    )
                    ids, _ = finder.recommend(plays, 50)
                    groups = np.vectorize(toy.track_group.__getitem__)(ids)
                    share = (groups == truth[:, None]).mean(axis=1)
                    totals.setdefault((name, t, k), []).append(
                        (float(share.mean()), int((share < 0.5).sum()), len(users))
                    )
            print(f"seed {seed} done", flush=True)
    print("\n| model | T | top_k | group share in top 50 | users lost (share < 0.5) |")
    print("|---|---|---|---|---|")
    for (name, t, k), vals in totals.items():
        share = np.mean([v[0] for v in vals])
        lost = sum(v[1] for v in vals)
        n = sum(v[2] for v in vals)
        print(f"| {name} | {t:g} | {k or 'all'} | {share:.3f} | {lost} of {n} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
