"""Vibe DNA bars: one bar per feature, its length the percentile, the raw value as a label."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from plots_support import check_png

from deepvibe.plots.dna import BAR_GID_PREFIX, dna_figure, format_value, plot_dna

FEATURES = ["danceability", "energy", "loudness", "tempo", "duration_ms"]
VALUES = np.array([0.8234, 0.5127, -12.3371, 130.175, 227850.7])
PERCENTILES = np.array([89.5, 66.7, 20.0, 64.0, 39.8])


def bars(fig) -> dict[str, float]:
    (ax,) = fig.axes
    return {
        p.get_gid()[len(BAR_GID_PREFIX) :]: p.get_width()
        for p in ax.patches
        if (p.get_gid() or "").startswith(BAR_GID_PREFIX)
    }


def test_dna_png_has_one_bar_per_feature_at_its_percentile(tmp_path: Path) -> None:
    out = plot_dna(FEATURES, VALUES, PERCENTILES, tmp_path / "dna.png", title="Vibe DNA of u1")
    check_png(out)
    fig = dna_figure(FEATURES, VALUES, PERCENTILES, title="Vibe DNA of u1")
    assert bars(fig) == dict(zip(FEATURES, PERCENTILES.tolist(), strict=True))
    (ax,) = fig.axes
    labels = [t.get_text() for t in ax.texts]
    assert labels[0] == "0.823  ·  90th pct"  # raw value in original units, then percentile
    assert labels[2].startswith("-12.337") and labels[4].startswith("227,851")
    assert [t.get_text() for t in ax.get_yticklabels()] == FEATURES  # first feature on top
    assert ax.get_title() == "Vibe DNA of u1"
    assert "percentile" in ax.get_xlabel()


def test_out_of_range_and_missing_percentiles() -> None:
    fig = dna_figure(["a", "b", "c"], [1.0, 2.0, 3.0], [-3.0, 140.0, np.nan])
    assert bars(fig) == {"a": 0.0, "b": 100.0, "c": 0.0}
    (ax,) = fig.axes
    assert ax.texts[2].get_text() == "3.000  ·  n/a"


def test_no_features_still_writes_an_image(tmp_path: Path) -> None:
    check_png(plot_dna([], [], [], tmp_path / "none.png"))
    (ax,) = dna_figure([], [], []).axes
    assert "no audio features" in ax.texts[0].get_text()


def test_mismatched_lengths_are_refused() -> None:
    with pytest.raises(ValueError, match="2 feature names, 3 values and 3 percentiles"):
        dna_figure(["a", "b"], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0])


@pytest.mark.parametrize(
    ("value", "text"),
    [(0.5127, "0.513"), (-2e-10, "0.000"), (227850.7, "227,851"), (float("nan"), "n/a")],
)
def test_format_value(value: float, text: str) -> None:
    assert format_value(value) == text
