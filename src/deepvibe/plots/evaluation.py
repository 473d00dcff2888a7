"""Evaluation figure: accuracy per method with seed error bars, popularity vs accuracy.

Four panels from an ``evaluate --json`` report: NDCG@100 and Recall@50 per method (mean ± std
over seeds, best on top), a popularity-vs-NDCG@100 scatter coloured by discovery mode
(standard, gems, new-artists; baselines in grey) and, when the report has a cold-start section,
NDCG@100 on all vs cold held-out tracks. Bars carry ``gid = "<metric>:<method>"`` and scatter
points ``gid = "scatter:<mode>"`` so tests can read back what was drawn.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from deepvibe.plots._render import house_style, mode_colour, new_figure, no_data, save_png
from deepvibe.plots.evaluation_report import (
    MethodStats,
    beyond_k,
    load_report,
    method_stats,
    n_seeds,
    reported_group,
)

log = logging.getLogger(__name__)

MAX_BARS = 30  # more methods than this: the best 30 by NDCG@100 are drawn (and the title says)
MAX_LABELS = 30  # scatter points are named only up to this many
ACCURACY = ("ndcg@100", "NDCG@100")
RECALL = ("recall@50", "Recall@50")


def plot_evaluation(
    report: Mapping[str, Any] | str | os.PathLike[str], out_path: str | os.PathLike[str]
) -> Path:
    """Plot an evaluation report (a dict, or the path of ``evaluate --json`` output) as PNG."""
    data = load_report(report)
    with house_style():
        fig = evaluation_figure(data)
        return save_png(fig, out_path)


def evaluation_figure(report: Mapping[str, Any]) -> Figure:
    """The four-panel figure for a loaded report (not yet drawn or saved)."""
    summary = report.get("summary", {})
    section = next((s for s in ("test", "database") if summary.get(s)), "validation")
    methods = method_stats(report, section)
    ranked = sorted(
        (m for m in methods if m.get(ACCURACY[0]) is not None),
        key=lambda m: -m.metrics[ACCURACY[0]].mean,
    )  # best first; methods without NDCG@100 (e.g. gems on validation) are not ranked
    # the best MAX_BARS, plus every deepvibe mode wherever it ranks: it is what is being judged
    shown = [m for i, m in enumerate(ranked) if i < MAX_BARS or m.mode != "baseline"]
    bar_height = max(3.5, 1.2 + 0.32 * len(shown))  # inches; 0.32 in per method keeps names apart
    fig = new_figure(15, bar_height + 5.5)
    axes = fig.subplots(2, 2, height_ratios=[bar_height, 5.5])
    group = {"test": reported_group(report), "database": "database ranking"}.get(
        section, "validation"
    )
    for ax, (metric, label) in zip(axes[0], (ACCURACY, RECALL), strict=True):
        _bars(ax, shown, metric, label, group)
    axes[0][1].tick_params(labelleft=False)  # same method order as the left panel
    _scatter(axes[1][0], methods, report, group)
    _cold_start(axes[1][1], report)
    seeds = n_seeds(report)
    title = "Evaluation" + (f": {seeds} seed{'s' if seeds != 1 else ''}" if seeds else "")
    title += f", {group} users, mean ± std over seeds"
    if len(ranked) > len(shown):
        title += f" (best {MAX_BARS} of {len(ranked)} methods shown"
        title += ", and every deepvibe mode)" if len(shown) > MAX_BARS else ")"
    fig.suptitle(title, fontsize=13)
    return fig


def _bars(ax: Axes, methods: list[MethodStats], metric: str, label: str, group: str) -> None:
    ax.set_title(f"{label} ({group} users)")
    if not methods:
        no_data(ax, f"no {label} in this report")
        return
    rows = np.arange(len(methods))
    stats = [m.get(metric) for m in methods]
    means = np.array([s.mean if s else 0.0 for s in stats])
    stds = np.array([s.std if s else 0.0 for s in stats])
    colours = [mode_colour(m.mode) for m in methods]
    bars = ax.barh(
        rows,
        means,
        xerr=stds,
        color=colours,
        height=0.7,
        error_kw={"ecolor": "0.2", "capsize": 3, "lw": 1},
    )
    for bar, m in zip(bars, methods, strict=True):
        bar.set_gid(f"{metric}:{m.name}")
    right = float((means + stds).max()) or 1.0
    for y, (s, mean, std) in enumerate(zip(stats, means, stds, strict=True)):
        text = "n/a" if s is None else f"{mean:.3f}" + (f" ±{std:.3f}" if std > 0 else "")
        ax.text(mean + std + 0.01 * right, y, text, va="center", fontsize=8, color="0.2")
    ax.set_yticks(rows, [m.name for m in methods])
    ax.invert_yaxis()  # best on top
    if metric == ACCURACY[0]:
        handles = [
            Patch(color=mode_colour(mode), label=_mode_label(mode)) for mode in _mode_order(methods)
        ]
        ax.legend(handles=handles, title="mode", loc="best")
    ax.set_xlim(0, right * 1.22)  # room for the value labels
    ax.set_xlabel(label)
    ax.grid(axis="y", visible=False)


def _popularity_metric(methods: list[MethodStats], report: Mapping[str, Any]) -> str | None:
    """avg_pop@k (share of training users who played an item; always computed), k the first
    beyond-accuracy k; else any avg_pop@ or Spotify popularity@ column there is."""
    k = beyond_k(report)
    names = {key for m in methods for key in m.metrics}
    preferred = [f"avg_pop@{k}"] if k is not None else []
    preferred += sorted(n for n in names if n.startswith("avg_pop@"))
    preferred += sorted(n for n in names if n.startswith("popularity@"))
    return next((p for p in preferred if p in names), None)


def _scatter(ax: Axes, methods: list[MethodStats], report: Mapping[str, Any], group: str) -> None:
    ax.set_title(f"Popularity vs accuracy ({group} users)")
    pop = _popularity_metric(methods, report)
    points = [m for m in methods if pop and m.get(pop) and m.get(ACCURACY[0])]
    if pop is None or not points:
        no_data(ax, "no popularity numbers in this report")
        return
    crowded = len(points) > MAX_LABELS
    for mode in reversed(_mode_order(points)):  # baselines first, deepvibe's modes on top
        group_points = [m for m in points if m.mode == mode]
        x = [m.metrics[pop].mean for m in group_points]
        y = [m.metrics[ACCURACY[0]].mean for m in group_points]
        # error bars on a crowd of points are clutter (and slow to draw): only when labelled
        xerr = None if crowded else [m.metrics[pop].std for m in group_points]
        yerr = None if crowded else [m.metrics[ACCURACY[0]].std for m in group_points]
        ours = mode != "baseline"
        drawn = ax.errorbar(
            x,
            y,
            xerr=xerr,
            yerr=yerr,
            fmt="o",
            ms=4 if crowded else 7,
            color=mode_colour(mode),
            ecolor="0.6",
            elinewidth=1,
            capsize=2,
            label=_mode_label(mode),
            alpha=0.6 if crowded and not ours else 1.0,
            zorder=3 if ours else 2,
        )
        drawn.lines[0].set_gid(f"scatter:{mode}")  # the points, not the caps
    labelled = points if not crowded else [m for m in points if m.mode != "baseline"]
    for m in labelled if len(labelled) <= MAX_LABELS else []:
        ax.annotate(
            m.name,
            (m.metrics[pop].mean, m.metrics[ACCURACY[0]].mean),
            xytext=(5, 4),
            textcoords="offset points",
            fontsize=8,
            zorder=4,
        )
    handles, labels = ax.get_legend_handles_labels()
    # standard first; "best" placement scans every point, too slow for a crowd
    ax.legend(handles[::-1], labels[::-1], title="mode", loc="upper right" if crowded else "best")
    ax.set_xlabel(_popularity_label(pop))
    ax.set_ylabel(f"{ACCURACY[1]} (higher is better)")


def _mode_order(methods: list[MethodStats]) -> list[str]:
    """Modes present: standard, gems, new-artists, other modes, then baselines."""
    known = ["standard", "gems", "new-artists"]
    present = {m.mode for m in methods}
    rank = {mode: i for i, mode in enumerate(known)}
    return sorted(present, key=lambda x: (x == "baseline", rank.get(x, len(known)), x))


def _mode_label(mode: str) -> str:
    return "baselines" if mode == "baseline" else mode


def _popularity_label(metric: str) -> str:
    if metric.startswith("avg_pop@"):
        k = metric.split("@", 1)[1]
        return f"average popularity of the top {k} (share of training users who played it)"
    k = metric.split("@", 1)[1]
    return f"mean Spotify popularity of the top {k} (0-100)"


def _cold_start(ax: Axes, report: Mapping[str, Any]) -> None:
    ax.set_title("Cold start: NDCG@100 on all vs cold held-out tracks")
    every = {m.name: m for m in method_stats(report, "cold_start_all")}
    cold = {m.name: m for m in method_stats(report, "cold_start_cold")}
    names = [n for n in every if every[n].get(ACCURACY[0]) is not None][:MAX_BARS]
    if not names:
        no_data(ax, "no cold-start section in this report")
        return
    rows = np.arange(len(names))
    for offset, (source, label, colour) in enumerate(
        ((every, "all held-out", "#1f77b4"), (cold, "cold held-out only", "#9ecae1"))
    ):
        stats = [source[n].get(ACCURACY[0]) if n in source else None for n in names]
        ax.barh(
            rows + (offset - 0.5) * 0.38,
            [s.mean if s else 0.0 for s in stats],
            height=0.38,
            xerr=[s.std if s else 0.0 for s in stats],
            color=colour,
            label=label,
            error_kw={"ecolor": "0.2", "capsize": 2, "lw": 1},
        )
    ax.set_yticks(rows, names)
    ax.invert_yaxis()
    ax.set_xlabel(ACCURACY[1])
    ax.legend(loc="best")
    ax.grid(axis="y", visible=False)
