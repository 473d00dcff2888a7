"""Validation-only evidence for the discovery modes' priors (issue 10, new-artist quality).

For each split seed of ``deepvibe evaluate``'s discovery protocol, deepvibe is trained on the
fold-in rows exactly as ``evaluate`` does, and the database validator's users (the validation
playlists train holds out of those rows; no test user, no held-out track) are pooled per
(Vibe DNA anchor, mode). Printed, per mode and anchor, NDCG@100 over the pooled validation
users of all seeds:

- a small grid of fixed weights (collab and decoder against dna 1, artist 3),
- the mode's prior (``DEFAULT_WEIGHTS`` / ``DEFAULT_NEW_ARTIST_WEIGHTS``),
- one fit over the pooled users (``fit_weights``) and that fit leave-one-seed-out,
- the per-seed fit (what ``train`` does) judged on the other seeds' users, with and without
  the ``fit_z`` gate (z = 0 / 1): does a fit on ~20 validation users beat its prior?

Usage (about 3 minutes on 2 cores):
    python scripts/spotify2024_layout.py --source /work/shared/data/spotify-2024 \\
        --out /tmp/na/data/spotify2024
    cd /tmp/na && python /work/wt/newartist/scripts/study_new_artist.py \\
        --config /work/wt/newartist/configs/spotify2024.yaml
"""

from __future__ import annotations

import argparse
import logging

import numpy as np
import scipy.sparse as sp

import deepvibe.evaluation.discovery as harness
from deepvibe.config import config_from_dict, load_config
from deepvibe.discovery.hybrid import (
    DEFAULT_NEW_ARTIST_WEIGHTS,
    DEFAULT_WEIGHTS,
    CandidatePool,
    HybridWeights,
    fit_weights,
    pool_ndcg,
)
from deepvibe.discovery.signals import HybridScorer
from deepvibe.discovery.validation import DatabaseValidator
from deepvibe.ranking.discovery_protocol import database_split

ANCHORS = (0.0, 0.5, 0.75, 1.0)
PRIORS = {"standard": DEFAULT_WEIGHTS, "new-artists": DEFAULT_NEW_ARTIST_WEIGHTS}


def collect(config: str, seeds: int) -> dict[tuple[int, float, str], tuple]:
    """(split seed, anchor, mode) -> (parts, marks, n_heldout) of the validation users."""
    captured: list[DatabaseValidator] = []

    class Capture(DatabaseValidator):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            captured.append(self)

    harness.DatabaseValidator = Capture  # the harness trains with this validator class
    cfg = load_config(config)
    settings = harness.DiscoverySettings(progress=False)
    data = harness.load_discovery_data(cfg)
    pools = {}
    for i in range(seeds):
        seed_cfg = config_from_dict({**cfg.to_dict(), "seed": cfg.seed + i}, source="study")
        split = database_split(
            data.pairs, data.user_ids, i, settings.holdout_fraction, settings.min_tracks
        )
        scores, _, info = harness.train_deepvibe(seed_cfg, data, split.foldin, settings)
        v = captured[-1]
        for mode in PRIORS:
            excluded, heldout = v._targets(mode)
            for a in ANCHORS:
                d = seed_cfg.discover
                scorer = HybridScorer(
                    scores.scorer.model, v.features, v.space, v.weights, d.temperature,
                    d.top_k, v.artist_cf, a,
                )  # fmt: skip
                inputs = scorer.user_inputs(v.split.foldin, v.foldin_catalogue)
                pool = CandidatePool(v.n_users)
                pool.add(scorer.parts(inputs, slice(0, len(v.space))), 0, sp.csr_matrix(excluded))
                pools[(i, a, mode)] = pool.labelled(heldout)
        print(f"split seed {i}: best epoch {info['best_epoch']}", flush=True)
    return pools


def joined(pools: dict, keys: list) -> tuple[list, list, np.ndarray]:
    parts, marks, n = [], [], []
    for k in keys:
        p, m, c = pools[k]
        parts += p
        marks += m
        n.append(np.asarray(c))
    return parts, marks, np.concatenate(n)


def ndcg(pools: dict, keys: list, w: HybridWeights) -> float:
    return float(np.mean(pool_ndcg(*joined(pools, keys), w)))


def report(pools: dict, seeds: int) -> None:
    for mode, prior in PRIORS.items():
        print(f"\n== {mode}: pooled validation NDCG@100 (prior {prior})")
        for a in ANCHORS:
            keys = [(s, a, mode) for s in range(seeds)]
            n_users = len(pool_ndcg(*joined(pools, keys), prior))
            grid = []
            for collab in (0.0, 1.0, 3.0):
                for decoder in (0.0, 0.3):
                    w = HybridWeights(dna=1.0, artist=3.0, collab=collab, decoder=decoder)
                    grid.append(f"c{collab:g}/d{decoder:g} {ndcg(pools, keys, w):.3f}")
            fit, _ = fit_weights(*joined(pools, keys), default=prior, min_users=0, min_gain=0)
            loso = []
            for s in range(seeds):
                rest = [k for k in keys if k[0] != s]
                w, _ = fit_weights(*joined(pools, rest), default=prior, min_users=0, min_gain=0)
                loso.append(ndcg(pools, [(s, a, mode)], w))
            gated = {}
            for z in (0.0, 1.0):
                out = []
                for s in range(seeds):
                    w, _ = fit_weights(*pools[(s, a, mode)], default=prior, z=z)
                    out.append(ndcg(pools, [k for k in keys if k[0] != s], w))
                gated[z] = f"{np.mean(out):.3f} +- {np.std(out):.3f}"
            print(
                f"anchor {a:g} ({n_users} users): " + ", ".join(grid)
                + f"; prior {ndcg(pools, keys, prior):.3f}"
                + f"; pooled fit {fit.to_dict()} {ndcg(pools, keys, fit):.3f}"
                + f", leave-one-seed-out {np.mean(loso):.3f} +- {np.std(loso):.3f}"
                + f"; per-seed fit on other seeds z=0 {gated[0.0]}, z=1 {gated[1.0]}"
            )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--seeds", type=int, default=5)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    report(collect(args.config, args.seeds), args.seeds)


if __name__ == "__main__":
    main()
