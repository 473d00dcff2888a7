"""Training curves: loss terms, the schedules and validation accuracy per epoch.

Six panels sharing the epoch axis: reconstruction (with the total loss), audio, KL; beta,
learning rate, validation NDCG@100 / Recall@20 / Recall@50. The best epoch (highest validation
NDCG@100, the one ``best.pth`` holds) is a dashed vertical line on every panel.

Every plotted line carries its log column as ``gid`` (the best-epoch line: ``"best-epoch"``),
so tests and callers can read back exactly what was drawn from :func:`training_curves_figure`.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from deepvibe.plots._render import house_style, new_figure, no_data, save_png
from deepvibe.plots.training_log import BEST_METRIC, TrainingLog, read_training_log

log = logging.getLogger(__name__)

BEST_GID = "best-epoch"
BEST_COLOUR = "#2ca02c"

# (column, legend label, colour) per panel; a column the log lacks is left out of its panel.
_PANELS: list[tuple[str, str, list[tuple[str, str, str]]]] = [
    (
        "Reconstruction loss",
        "nats per user (epoch mean)",
        [("reconstruction", "reconstruction", "#1f77b4"), ("loss", "total loss", "0.55")],
    ),
    ("Audio loss", "MSE, standardised features", [("audio", "audio", "#9467bd")]),
    ("KL divergence", "nats per user (epoch mean)", [("kl", "KL", "#d62728")]),
    ("KL weight (beta)", "beta", [("beta", "beta", "#8c564b")]),
    ("Learning rate", "learning rate", [("lr", "lr", "#e377c2")]),
    (
        "Validation accuracy",
        "metric value",
        [
            (BEST_METRIC, "NDCG@100", "#2ca02c"),
            ("val_recall@20", "Recall@20", "#17becf"),
            ("val_recall@50", "Recall@50", "#bcbd22"),
        ],
    ),
]


def plot_training_curves(
    log_path: str | os.PathLike[str], out_path: str | os.PathLike[str]
) -> Path:
    """Read the training log at ``log_path`` and write its curves as a PNG to ``out_path``."""
    history = read_training_log(log_path)
    with house_style():
        fig = training_curves_figure(history)
        return save_png(fig, out_path)


def training_curves_figure(history: TrainingLog) -> Figure:
    """The six-panel figure for a parsed log (not yet drawn or saved)."""
    fig = new_figure(15, 8.5)  # 1500 x 850 px
    axes = fig.subplots(2, 3, sharex=True)
    best = history.best_epoch
    markers = len(history.epochs) <= 40  # a single epoch is only visible as a marker
    for ax, (title, ylabel, series) in zip(axes.flat, _PANELS, strict=True):
        drawn = sum(
            _series(ax, history, col, label, colour, markers) for col, label, colour in series
        )
        ax.set_title(title)
        if not drawn:
            no_data(ax, "not in this log" if not _any_column(history, series) else "no values yet")
            continue
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best is not None:
            ax.axvline(best, color=BEST_COLOUR, ls="--", lw=1, alpha=0.8, gid=BEST_GID)
        if len(series) > 1:
            ax.legend(loc="best")
    _log_scale_if_wide(axes[1][1], history.column("lr"))
    _mark_best(axes[1][2], history, best)
    for ax in axes[1]:
        ax.set_xlabel("epoch")
        ax.tick_params(labelbottom=True)
    fig.suptitle(_title(history, best), fontsize=13)
    return fig


def _series(
    ax: Axes, history: TrainingLog, column: str, label: str, colour: str, markers: bool
) -> bool:
    """Plot one column against epoch; False when the log has no finite value in it."""
    y = history.column(column)
    if y is None or not np.isfinite(y).any():
        return False
    x = history.epochs
    if column.startswith("val_"):
        # validated only every train.eval_every epochs: join the validated points
        keep = np.isfinite(y)
        x, y = x[keep], y[keep]
    ax.plot(
        x,
        y,
        color=colour,
        label=label,
        gid=column,
        lw=1.5,
        marker="o" if markers or column.startswith("val_") else None,
        ms=3,
    )
    return True


def _any_column(history: TrainingLog, series: list[tuple[str, str, str]]) -> bool:
    return any(history.column(col) is not None for col, _, _ in series)


def _log_scale_if_wide(ax: Axes, lr: np.ndarray | None) -> None:
    """A warm-up or decay spanning decades reads better on a log axis."""
    if lr is None:
        return
    finite = lr[np.isfinite(lr)]
    if len(finite) and finite.min() > 0 and finite.max() / finite.min() >= 20:
        ax.set_yscale("log")
    elif len(finite):
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))  # 1e-3, not 0.00100


def _mark_best(ax: Axes, history: TrainingLog, best: int | None) -> None:
    ndcg = history.column(BEST_METRIC)
    if best is None or ndcg is None:
        return
    value = float(ndcg[history.epochs == best][0])
    ax.plot(
        [best],
        [value],
        marker="*",
        ms=14,
        color=BEST_COLOUR,
        ls="none",
        label=f"best epoch {best}",
        gid=f"{BEST_GID}-point",
    )
    ax.legend(loc="best")


def _title(history: TrainingLog, best: int | None) -> str:
    n = len(history.epochs)
    parts = [f"Training curves: {history.path.name}", f"{n} epoch{'s' if n != 1 else ''}"]
    if best is not None:
        value = float(history.numbers[BEST_METRIC][history.epochs == best][0])
        parts.append(f"best epoch {best}, dashed (validation NDCG@100 {value:.4f})")
    else:
        parts.append("no validation NDCG@100 yet")
    which = history.text.get("validation")
    if which is not None:
        names = sorted({str(v) for v in which if str(v) and str(v).lower() != "nan"})
        if names:
            parts.append("validation: " + ", ".join(names))
    return " | ".join(parts)
