"""The Vibe DNA as percentile bars: where the user's profile sits in the track distribution.

One horizontal bar per audio feature, 0..100: the share of database (or catalogue) tracks whose
value is below the DNA's. The raw value in the feature's own units is written beside each bar;
the dashed line at 50 is the median track. The caller passes plain arrays; with a
``discover`` result they are ``Discovery.dna_raw`` and ``Discovery.dna_percentile``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from deepvibe.plots._render import house_style, new_figure, no_data, save_png

log = logging.getLogger(__name__)

BAR_GID_PREFIX = "dna:"  # each bar's gid is "dna:<feature>" so tests can read back the data
_LOW, _HIGH = "#4c72b0", "#dd8452"  # below / above the median track


def plot_dna(
    feature_names: Sequence[str],
    dna_values: Sequence[float] | np.ndarray,
    percentiles: Sequence[float] | np.ndarray,
    out_path: str | os.PathLike[str],
    title: str = "Vibe DNA",
    where: str = "track database",
) -> Path:
    """Write the DNA percentile bars as a PNG to ``out_path``.

    feature_names: (f,) names; dna_values: (f,) the DNA in original units; percentiles: (f,)
    0..100 within ``where`` (NaN shows as n/a). With no features the image says so.
    """
    with house_style():
        fig = dna_figure(feature_names, dna_values, percentiles, title=title, where=where)
        return save_png(fig, out_path)


def dna_figure(
    feature_names: Sequence[str],
    dna_values: Sequence[float] | np.ndarray,
    percentiles: Sequence[float] | np.ndarray,
    title: str = "Vibe DNA",
    where: str = "track database",
) -> Figure:
    """The DNA figure (not yet drawn or saved); see :func:`plot_dna`."""
    names = [str(n) for n in feature_names]
    values = np.asarray(dna_values, dtype=np.float64).reshape(-1)  # (f,)
    pct = np.asarray(percentiles, dtype=np.float64).reshape(-1)  # (f,)
    if not len(names) == len(values) == len(pct):
        raise ValueError(
            f"plot_dna: {len(names)} feature names, {len(values)} values and {len(pct)} "
            "percentiles; they must match one to one"
        )
    # 0.45 in per feature keeps labels apart; 12 Spotify features -> about 1000 x 700 px
    fig = new_figure(10, max(3.0, 1.4 + 0.45 * len(names)))
    ax = fig.subplots()
    ax.set_title(title, fontsize=13)
    if not names:
        no_data(ax, "the model has no audio features")
        return fig
    _bars(ax, names, values, np.clip(pct, 0, 100))
    ax.set_xlabel(f"percentile within the {where} (50 = the median track)")
    return fig


def _bars(ax: Axes, names: list[str], values: np.ndarray, pct: np.ndarray) -> None:
    rows = np.arange(len(names))
    shown = np.nan_to_num(pct, nan=0.0)  # a NaN percentile draws no bar
    colours = [_HIGH if p >= 50 else _LOW for p in shown]
    bars = ax.barh(rows, shown, color=colours, height=0.65)
    for bar, name in zip(bars, names, strict=True):
        bar.set_gid(BAR_GID_PREFIX + name)
    for y, (v, p) in enumerate(zip(values, pct, strict=True)):
        label = f"{format_value(v)}  ·  " + ("n/a" if np.isnan(p) else f"{_ordinal(p)} pct")
        inside = not np.isnan(p) and p > 72  # long bars carry their label inside, in white
        box = None if inside else {"facecolor": "white", "edgecolor": "none", "pad": 1.0}
        ax.text(
            p - 1.5 if inside else (0 if np.isnan(p) else p) + 1.5,
            y,
            label,
            va="center",
            ha="right" if inside else "left",
            bbox=box,
            zorder=4,
            color="white" if inside else "0.15",
            fontsize=9,
        )
    median = ax.axvline(50, color="0.3", ls="--", lw=1, zorder=3)
    handles = [
        Patch(color=_HIGH, label="above the median track"),
        Patch(color=_LOW, label="below the median track"),
        median,
    ]
    median.set_label("median track (50)")
    ax.legend(
        handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.1), ncol=3, frameon=False
    )
    ax.set_yticks(rows, names)
    ax.invert_yaxis()  # first feature on top, as in the DNA CSV and the terminal profile
    ax.set_xlim(0, 100)
    ax.set_xticks([0, 10, 25, 50, 75, 90, 100])
    ax.grid(axis="y", visible=False)


def format_value(v: float) -> str:
    """A raw feature value as the terminal profile shows it: 3 decimals, or thousands."""
    if not np.isfinite(v):
        return "n/a"
    if abs(v) < 5e-4:
        v = 0.0  # no "-0.000"
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3f}"


def _ordinal(p: float) -> str:
    """83.4 -> '83rd', 11 -> '11th', 1 -> '1st'."""
    n = int(round(p))
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"
