"""Figures without pyplot: the Agg canvas, one house style, atomic PNG writes.

The package never imports ``matplotlib.pyplot`` and never calls ``matplotlib.use``: every figure
is a bare :class:`~matplotlib.figure.Figure` attached to the Agg canvas here, so plotting needs
no display, ignores ``MPLBACKEND`` and leaves the backend of the caller's process (a notebook,
a GUI) untouched.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from deepvibe.fileio import atomic_path

log = logging.getLogger(__name__)

DPI = 100  # figure sizes below are in inches: 12 in -> 1200 px

STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
}

# PNG text chunks: matplotlib writes its version and web address by default; drop them so the
# files are the same across matplotlib versions and carry no URL into an HTML report.
_PNG_METADATA = {"Software": None}

# Colours per discovery mode, shared by the evaluation plot and its legend.
MODE_COLOURS = {
    "standard": "#1f77b4",
    "gems": "#ff7f0e",
    "new-artists": "#2ca02c",
    "baseline": "#7f7f7f",
}
OTHER_MODE_COLOUR = "#9467bd"  # a mode this version does not know yet


def mode_colour(mode: str) -> str:
    return MODE_COLOURS.get(mode, OTHER_MODE_COLOUR)


@contextlib.contextmanager
def house_style() -> Iterator[None]:
    """Apply the style while figures are built and drawn (rcParams are read at both times)."""
    with matplotlib.rc_context(STYLE):
        yield


def new_figure(width_in: float, height_in: float) -> Figure:
    """An empty figure on the Agg canvas, laid out by constrained layout."""
    fig = Figure(figsize=(width_in, height_in), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG bytes (for inlining in HTML)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata=_PNG_METADATA)
    return buf.getvalue()


def save_png(fig: Figure, out_path: str | os.PathLike[str]) -> Path:
    """Write the figure as PNG atomically (a crash leaves the old file or none)."""
    out = Path(out_path)
    with atomic_path(out) as tmp:
        fig.savefig(tmp, format="png", dpi=DPI, metadata=_PNG_METADATA)
    log.info("wrote %s", out)
    return out


def no_data(ax: Axes, message: str) -> None:
    """Mark a panel whose data is absent, keeping its title so the layout stays the same."""
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="0.4")
    # tick_params, not set_xticks([]): the latter would also empty the panels sharing the axis
    ax.tick_params(bottom=False, left=False, labelbottom=False, labelleft=False)
    ax.grid(False)
