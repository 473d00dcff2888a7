"""Markdown tables from `deepvibe evaluate --json` reports (mean ± std over their seeds).

    python scripts/evaluation_table.py runs/eval/*.json            # accuracy, one row per model
    python scripts/evaluation_table.py --section cold runs/eval/spotify.json
    python scripts/evaluation_table.py --label-from-set runs/ablation/*.json

``--label-from-set`` names deepvibe rows after the config keys that differ from the first
report's (what an ablation varies). Numbers are copied from the JSON, never recomputed.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def cell(stat: dict[str, Any] | None, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    text = f"{stat['mean']:.{digits}f}"
    return text + (f" ± {stat['std']:.{digits}f}" if stat.get("std") is not None else "")


def flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat(v, key + "."))
        else:
            out[key] = v
    return out


def differences(base: dict[str, Any], other: dict[str, Any]) -> str:
    a, b = flat(base), flat(other)
    diff = [f"{k}={json.dumps(b[k])}" for k in sorted(b) if a.get(k) != b[k] and k != "seed"]
    return ", ".join(diff) or "default"


ACCURACY = [
    ("validation", "ndcg@100", "val NDCG@100"),
    ("test", "ndcg@100", "NDCG@100"),
    ("test", "recall@20", "Recall@20"),
    ("test", "recall@50", "Recall@50"),
    ("test", "recall_std@50", "std-Recall@50"),
    ("info", "seconds_per_epoch", "s/epoch"),
    ("info", "best_epoch", "best epoch"),
]
BEYOND = [
    ("test", "coverage@20", "coverage@20"),
    ("test", "avg_pop@20", "avg pop@20"),
    ("test", "long_tail@20", "long tail@20"),
    ("test", "novelty@20", "novelty@20"),
    ("test", "popularity@20", "Spotify popularity@20"),
]
COLD = [
    ("cold_start_all", "ndcg@100", "NDCG@100 all"),
    ("cold_start_all", "recall@50", "Recall@50 all"),
    ("cold_start_cold", "ndcg@100", "NDCG@100 cold"),
    ("cold_start_cold", "recall@50", "Recall@50 cold"),
    ("cold_start_all", "avg_pop@20", "avg pop@20"),
    ("cold_start_all", "popularity@20", "Spotify popularity@20"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description="Markdown tables from evaluate reports.")
    parser.add_argument("reports", nargs="+", type=Path)
    parser.add_argument("--section", choices=["accuracy", "beyond", "cold"], default="accuracy")
    parser.add_argument("--label-from-set", action="store_true")
    parser.add_argument("--models", default=None, help="comma-separated models to show")
    args = parser.parse_args()
    columns = {"accuracy": ACCURACY, "beyond": BEYOND, "cold": COLD}[args.section]
    reports = [json.loads(p.read_text()) for p in args.reports]
    wanted = args.models.split(",") if args.models else None
    header = ["model"] + [label for *_, label in columns] + ["peak RSS MiB", "seeds"]
    # peak RSS: the process's peak right after the model's fit on the first seed (monotone over
    # a run, so only the first model fitted in a process has a figure of its own); "–" if none.
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for path, rep in zip(args.reports, reports, strict=True):
        s = rep["summary"]
        first_section = columns[0][0]
        for model in s.get(first_section, {}):
            if wanted and model not in wanted:
                continue
            label = model
            if args.label_from_set and model.startswith("deepvibe"):
                label = f"{model} ({differences(reports[0]['config'], rep['config'])})"
            digits = {"seconds_per_epoch": 2, "best_epoch": 0}
            cells = [
                cell(s.get(sec, {}).get(model, {}).get(key), digits.get(key, 3))
                for sec, key, _ in columns
            ]
            seeds = ",".join(str(x) for x in rep["protocol"]["seeds"])
            peak = rep["runs"][0]["models"].get(model, {}).get("info", {}).get("peak_rss_mb")
            if args.section == "cold":
                info = rep["runs"][0].get("cold_start", {}).get("models", {}).get(model, {})
                peak = info.get("info", {}).get("peak_rss_mb")
            peak_text = "–" if peak is None else f"{peak:.0f}"
            print(f"| {label} | " + " | ".join(cells) + f" | {peak_text} | {seeds} |")
        del path


if __name__ == "__main__":
    main()
