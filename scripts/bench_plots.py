"""Benchmark of the plots: each must take under a second (a benchmark, not a test).

Times, in one process after matplotlib is imported (the import is timed on its own):

1. ``plot_training_curves`` on a 100-epoch training log (validation every epoch).
2. ``plot_evaluation`` on a report with 1,000 method rows over 3 seeds (the bars show the best
   30; every method is in the scatter), and on one with 1,000 seeds of 6 methods.
3. ``plot_dna`` with 12 features and ``write_html_report`` with a 1,000-row table (a
   default discover report).

Each is run ``--repeat`` times; the first call and the median of the rest are printed.

    PYTHONPATH=src python scripts/bench_plots.py
"""

from __future__ import annotations

import argparse
import csv
import io
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

LIMIT_S = 1.0


def training_log(path: Path, epochs: int, rng: np.random.Generator) -> Path:
    columns = ["epoch", "step", "loss", "reconstruction", "audio", "kl", "beta", "lr",
               "val_ndcg@100", "val_recall@20", "val_recall@50", "seconds"]  # fmt: skip
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(columns)
    for e in range(1, epochs + 1):
        recon = 700 / e + 80 + rng.normal(0, 2)
        ndcg = 0.45 - 0.1 / e + rng.normal(0, 0.005)
        numbers = [recon + 20, recon, 15 / e + 1, 30 + rng.normal(0, 3), (e % 10) / 10, 1e-3,
                   ndcg, ndcg + 0.1, ndcg + 0.3, 0.3]  # fmt: skip
        writer.writerow([e, 9 * e] + [f"{v:.6g}" for v in numbers])
    path.write_text(buf.getvalue(), encoding="utf-8")
    return path


def report(methods: int, seeds: int, rng: np.random.Generator) -> dict[str, Any]:
    """An evaluate --json shaped report (runs and summary) with random numbers."""
    names = ["deepvibe", "deepvibe-gems"] + [f"method-{i:04d}" for i in range(methods - 2)]
    base = {n: rng.uniform(0.1, 0.5, size=3) for n in names}  # ndcg, recall@50, avg_pop
    runs = []
    for s in range(seeds):
        models = {}
        for n in names:
            ndcg, recall, pop = base[n] + rng.normal(0, 0.01, size=3)
            info = {"mode": "gems"} if n.endswith("gems") else {}
            test = {"ndcg@100": ndcg, "recall@50": recall, "avg_pop@20": pop}
            models[n] = {"validation": {"ndcg@100": ndcg}, "test": test, "info": info}
        runs.append({"seed": s, "split": {"reported_on": "test"}, "models": models})
    summary: dict[str, Any] = {"validation": {}, "test": {}}
    for n in names:
        for section in ("validation", "test"):
            keys = runs[0]["models"][n][section]
            summary[section][n] = {
                k: _stat([r["models"][n][section][k] for r in runs]) for k in keys
            }
    protocol = {"seeds": list(range(seeds)), "beyond_k": [20, 100]}
    return {"format": "deepvibe-evaluation", "protocol": protocol, "runs": runs, "summary": summary}


def _stat(values: list[float]) -> dict[str, Any]:
    arr = np.asarray(values, dtype=np.float64)
    std = float(arr.std(ddof=1)) if len(arr) > 1 else None
    return {"mean": float(arr.mean()), "std": std, "n": len(arr)}


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    """(first call, median of the following calls) in seconds."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    rest = times[1:] or times
    return times[0], statistics.median(rest)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--methods", type=int, default=1000)
    args = parser.parse_args()

    started = time.perf_counter()
    import pandas as pd

    from deepvibe.plots.curves import plot_training_curves
    from deepvibe.plots.dna import plot_dna
    from deepvibe.plots.evaluation import plot_evaluation
    from deepvibe.plots.html import write_html_report

    print(f"import deepvibe.plots (+ matplotlib, pandas): {time.perf_counter() - started:.2f} s")
    rng = np.random.default_rng(0)
    slow = []
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        log = training_log(out / "hybrid_training.log", args.epochs, rng)
        wide = report(args.methods, 3, rng)
        long = report(6, 1000, rng)
        features = [f"feature_{i}" for i in range(12)]
        table = pd.DataFrame({
            "rank": np.arange(1, 1001), "track_id": ["3aJ2xuBiDLZnPFSOTz0q6i"] * 1000,
            "track_name": ["<b>name</b>"] * 1000, "artists": ["artist"] * 1000,
            "popularity": rng.uniform(0, 100, 1000), "similarity": rng.uniform(0, 1, 1000),
            "score": rng.uniform(0, 1, 1000), "why": ["close on energy, tempo"] * 1000,
        })  # fmt: skip
        dna_png = out / "dna.png"
        cases: list[tuple[str, Callable[[], object], bool]] = [
            (f"training curves, {args.epochs}-epoch log",
             lambda: plot_training_curves(log, out / "curves.png"), True),
            (f"evaluation, {args.methods} methods x 3 seeds",
             lambda: plot_evaluation(wide, out / "eval_wide.png"), True),
            ("evaluation, 6 methods x 1000 seeds",
             lambda: plot_evaluation(long, out / "eval_long.png"), True),
            ("Vibe DNA, 12 features",
             lambda: plot_dna(features, rng.normal(size=12), rng.uniform(0, 100, 12), dna_png),
             False),
            ("HTML report, 1,000 rows + DNA png",
             lambda: write_html_report(out / "r.html", user="u", mode="standard", table=table,
                                       dna_png=dna_png.read_bytes()), False),
        ]  # fmt: skip
        print(f"{'case':<40} {'first':>8} {'median':>8}  (limit {LIMIT_S:.1f} s where marked *)")
        for name, fn, limited in cases:
            first, median = timed(fn, args.repeat)
            mark = "*" if limited else " "
            print(f"{name:<40} {first:>7.3f}s {median:>7.3f}s {mark}")
            if limited and max(first, median) >= LIMIT_S:
                slow.append(name)
    if slow:
        print(f"over {LIMIT_S:.1f} s: {', '.join(slow)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
