"""Discover's database scan on spotify-2024, against popularity and a plain content baseline.

Playlists stand in for users. The two CSVs are merged and (playlist, track) pairs deduplicated;
each playlist with >= 5 tracks keeps a random 80% as fold-in and holds out the rest
(Liang et al.'s rule, ``protocol.foldin_split``). The model is trained on the fold-in parts of
all playlists only (the held-out 20% is never seen), then every method ranks the WHOLE track
set minus the playlist's fold-in tracks, in one harness:

- ``scan``: discover's real path (Discoverer -> Vibe DNA -> chunked scan of the Parquet cache);
- ``content``: cosine to the mean standardised features of the fold-in tracks
  (``discover.similarity_to``);
- ``popularity``: Spotify's ``track_popularity``, highest first;
- ``decoder``: the model's own scores (catalogue only: almost every held-out track is outside
  the catalogue in this set, so this shows why the scan exists).

Metrics: truncated Recall@50 and NDCG@100 (``metrics``), mean over playlists, several seeds.
A temperature sweep (and Pearson vs cosine) is reported for the scan.

    python scripts/eval_discover_spotify.py --seeds 0 1 2 3 4 --out runs/eval_spotify.json
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from deepvibe.config import DEFAULT_FEATURES, load_config
from deepvibe.data.dataset import Dataset
from deepvibe.data.tables import FeatureScaler, Interactions, TrackTable
from deepvibe.discovery.database import TrackDatabase
from deepvibe.discovery.discoverer import Discoverer
from deepvibe.discovery.dna import similarity_to
from deepvibe.ranking.metrics import evaluate_ranking, mask_seen, top_k
from deepvibe.ranking.protocol import foldin_split
from deepvibe.training.train import train

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "spotify-2024"
METRICS = ("recall@50", "ndcg@100")
FILES = ("high_popularity_spotify_data.csv", "low_popularity_spotify_data.csv")
# A small model for 115 playlists; fixed before looking at test numbers, same for every seed.
MODEL_SETS = [
    "model.hidden=[256]", "model.latent=32", "train.epochs=60", "train.batch_size=32",
    "train.val_fraction=0.1", "data.max_tracks=100000",
]  # fmt: skip


def load_playlists(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(pairs: playlist_id, track_id; tracks: one row per track with complete features)."""
    frames = [pd.read_csv(folder / f) for f in FILES]
    rows = pd.concat(frames, ignore_index=True)
    pairs = rows[["playlist_id", "track_id"]].drop_duplicates().reset_index(drop=True)
    tracks = rows.drop_duplicates("track_id")[
        ["track_id", *DEFAULT_FEATURES, "track_popularity", "track_name", "track_artist"]
    ]
    tracks = tracks.dropna(subset=list(DEFAULT_FEATURES)).reset_index(drop=True)
    pairs = pairs[pairs["track_id"].isin(tracks["track_id"])].reset_index(drop=True)
    return pairs, tracks


def run_seed(
    seed: int,
    pairs: pd.DataFrame,
    tracks: pd.DataFrame,
    db: TrackDatabase,
    temperatures: list[float],
    top_ks: list[int | None],
) -> dict[str, dict[str, float]]:
    track_ids = tracks["track_id"].to_numpy(dtype=object)
    col = {t: i for i, t in enumerate(track_ids)}
    users, u_codes = np.unique(pairs["playlist_id"].to_numpy(dtype=object), return_inverse=True)
    matrix = sp.csr_matrix(
        (np.ones(len(pairs), np.float32), (u_codes, pairs["track_id"].map(col).to_numpy())),
        shape=(len(users), len(track_ids)),
    )
    split = foldin_split(users, matrix, 0.2, np.random.default_rng([seed, 7]))
    fold, held = split.foldin, split.heldout  # (P, m) over every track

    # --- train on the fold-in parts only: catalogue = tracks in some fold-in
    cfg = load_config(None, [*MODEL_SETS, f"seed={seed}"])
    cat_cols = np.flatnonzero(np.asarray(fold.sum(axis=0)).ravel() > 0)
    cat_ids = track_ids[cat_cols]
    raw = tracks[list(DEFAULT_FEATURES)].to_numpy(np.float64)
    table = TrackTable(
        cat_ids, raw[cat_cols], DEFAULT_FEATURES, tracks["track_popularity"].to_numpy()[cat_cols]
    )
    scaler = FeatureScaler.fit(table.features, DEFAULT_FEATURES)
    feats = scaler.transform(table.features).astype(np.float32)
    inter = Interactions(fold[:, cat_cols].tocsr(), split.users, None, cat_ids)
    rng = np.random.default_rng([seed, 8])
    # Every playlist trains; a random 10% of them is also used to monitor validation NDCG
    # (which selects nothing here: the last epoch's model is used).
    groups = {
        "train": split.users,
        "validation": rng.choice(split.users, max(2, len(split.users) // 10), replace=False),
    }
    ds = Dataset(inter, table, scaler, feats, groups)
    torch.manual_seed(seed)
    started = time.perf_counter()
    result = train(cfg, dataset=ds, progress=False, write_files=False)
    fit_s = time.perf_counter() - started

    out: dict[str, dict[str, float]] = {}

    def score(name: str, ranked: np.ndarray) -> None:
        out[name] = evaluate_ranking(ranked, held, METRICS)

    # --- baselines over the whole track set, fold-in masked
    pop = np.broadcast_to(tracks["track_popularity"].to_numpy(np.float64), fold.shape).copy()
    score("popularity", top_k(mask_seen(pop, fold), 100))
    all_std = scaler.transform(raw).astype(np.float32)  # (m, f)
    counts = np.asarray(fold.sum(axis=1)).ravel()
    mean_profile = (fold @ all_std) / counts[:, None]  # (P, f) mean standardised fold-in features
    content = similarity_to(mean_profile, all_std, "cosine").astype(np.float64)
    score("content (cosine to mean)", top_k(mask_seen(content, fold), 100))

    # --- deepvibe: decoder only (catalogue), then the scan at each temperature / similarity
    plays = fold[:, cat_cols].tocsr()
    finder = Discoverer(result.model, cat_ids, scaler, feats, cfg.discover, db)
    dec = np.full(fold.shape, -np.inf)
    dec[:, cat_cols] = finder.scores(plays)
    score("decoder scores (catalogue only)", top_k(mask_seen(dec, fold), 100))
    exclude = [set(track_ids[fold[u].indices]) for u in range(fold.shape[0])]
    for method in ("pearson", "cosine"):
        for k in top_ks:
            for t in temperatures:
                finder.settings = cfg.discover.model_copy(
                    update={"temperature": t, "top_k": k, "similarity": method, "source": "db"}
                )
                ids, _ = finder.recommend(plays, 100, "standard", exclude)
                ranked = np.vectorize(col.__getitem__, otypes=[np.int64])(ids)
                score(f"scan {method} top_k={k or 'all'} T={t:g}", ranked)
    out["_info"] = {
        "playlists": float(fold.shape[0]),
        "tracks": float(fold.shape[1]),
        "catalogue": float(len(cat_ids)),
        "heldout_in_catalogue": float(held[:, cat_cols].nnz / held.nnz),
        "fit_seconds": fit_s,
        "final_val_ndcg@100": float(result.history[-1].get("val_ndcg@100", float("nan"))),
    }
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument(
        "--temperatures", type=float, nargs="+",
        default=[0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 100.0],
    )  # fmt: skip
    ap.add_argument(
        "--top-ks", nargs="+", default=["all", "10", "30"],
        help="DNA top-k values to sweep ('all' = no restriction)",
    )  # fmt: skip
    ap.add_argument("--out", type=Path, default=None, help="JSON with every seed's numbers")
    args = ap.parse_args(argv)
    if not args.data.exists():
        print(f"error: {args.data} not found", file=sys.stderr)
        return 1
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    torch.set_num_threads(2)
    pairs, tracks = load_playlists(args.data)
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        db_csv = Path(tmp) / "tracks.csv"
        renamed = {"track_popularity": "popularity", "track_artist": "artists"}
        tracks.rename(columns=renamed).to_csv(db_csv, index=False)
        db = TrackDatabase.open(db_csv, DEFAULT_FEATURES)
        for seed in args.seeds:
            top_ks = [None if k == "all" else int(k) for k in args.top_ks]
            runs.append(run_seed(seed, pairs, tracks, db, args.temperatures, top_ks))
            print(f"seed {seed} done ({runs[-1]['_info']['fit_seconds']:.1f} s training)")
    names = [k for k in runs[0] if not k.startswith("_")]
    print(f"\n{len(runs)} seeds; {runs[0]['_info']}")
    print(f"| method | {' | '.join(METRICS)} |\n|---|" + "---|" * len(METRICS))
    summary = {}
    for name in names:
        cells = []
        for m in METRICS:
            v = np.array([r[name][m] for r in runs])
            summary.setdefault(name, {})[m] = (float(v.mean()), float(v.std()))
            cells.append(f"{v.mean():.3f} ± {v.std():.3f}")
        print(f"| {name} | {' | '.join(cells)} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"runs": runs, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
