"""Evaluation figure: bars are the seed means with std error bars; scatter points per mode."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.container import BarContainer
from plots_support import check_png

from deepvibe.errors import DataError
from deepvibe.evaluation.evaluate import summarise
from deepvibe.plots.evaluation import evaluation_figure, plot_evaluation
from deepvibe.plots.evaluation_report import load_report, method_stats, mode_of

# method -> (NDCG@100 per seed, Recall@50 per seed, avg_pop@20 per seed, info)
METHODS: dict[str, tuple[list[float], list[float], list[float], dict[str, Any]]] = {
    "deepvibe": ([0.40, 0.42, 0.44], [0.70, 0.71, 0.72], [0.11, 0.12, 0.13], {"epochs": 6}),
    "deepvibe-gems": ([0.36, 0.38, 0.40], [0.69, 0.69, 0.70], [0.09, 0.10, 0.11],
                      {"mode": "gems", "gems_lambda": 0.3}),
    "deepvibe-new-artists": ([0.30, 0.31, 0.32], [0.60, 0.61, 0.62], [0.05, 0.05, 0.06],
                             {"mode": "new-artists"}),
    "toppop": ([0.18, 0.19, 0.20], [0.33, 0.33, 0.33], [0.18, 0.18, 0.19], {}),
    "ease": ([0.45, 0.45, 0.46], [0.73, 0.73, 0.74], [0.12, 0.12, 0.12], {"lambda": 500.0}),
    "some-future-method": ([0.25, 0.26, 0.27], [0.5, 0.5, 0.5], [0.07, 0.07, 0.07], {}),
}  # fmt: skip


def make_runs(methods=METHODS, seeds: int = 3, cold: bool = True) -> list[dict[str, Any]]:
    """Per-seed blocks shaped like evaluate.run_seed's output."""
    runs = []
    for s in range(seeds):
        models = {
            name: {
                "validation": {} if "gems" in name else {"ndcg@100": ndcg[s] + 0.01},
                "test": {"ndcg@100": ndcg[s], "recall@50": rec[s], "avg_pop@20": pop[s]},
                "info": info,
            }
            for name, (ndcg, rec, pop, info) in methods.items()
        }
        run: dict[str, Any] = {"seed": 7 + s, "split": {"reported_on": "test"}, "models": models}
        if cold:
            run["cold_start"] = {
                "models": {
                    "deepvibe-scan": {
                        "all_heldout": {"ndcg@100": 0.2 + s / 100},
                        "cold_heldout": {"ndcg@100": 0.1},
                        "info": {"mode": "standard"},
                    },
                    "content": {
                        "all_heldout": {"ndcg@100": 0.15},
                        "cold_heldout": {"ndcg@100": 0.12},
                        "info": {},
                    },
                }
            }
        runs.append(run)
    return runs


def make_report(seeds: int = 3, cold: bool = True) -> dict[str, Any]:
    runs = make_runs(seeds=seeds, cold=cold)
    return {
        "format": "deepvibe-evaluation",
        "version": 1,
        "protocol": {"seeds": [7 + s for s in range(seeds)], "beyond_k": [20, 100]},
        "runs": runs,
        "summary": summarise(runs),
    }


def bar_widths(ax, metric: str) -> dict[str, tuple[float, float]]:
    """method -> (bar width, error-bar half length) for the bars of ``metric``."""
    bars = [p for p in ax.patches if (p.get_gid() or "").startswith(metric + ":")]
    (container,) = [c for c in ax.containers if isinstance(c, BarContainer)]
    (errorbar,) = container.errorbar.lines[2]  # the LineCollection of the error bars
    halves = [abs(seg[1][0] - seg[0][0]) / 2 for seg in errorbar.get_segments()]
    return {
        b.get_gid().split(":", 1)[1]: (b.get_width(), h) for b, h in zip(bars, halves, strict=True)
    }


def test_bars_are_seed_means_with_std_error_bars_best_first() -> None:
    fig = evaluation_figure(make_report())
    ndcg_ax, recall_ax = fig.axes[0], fig.axes[1]
    drawn = bar_widths(ndcg_ax, "ndcg@100")
    expected_order = sorted(METHODS, key=lambda m: -np.mean(METHODS[m][0]))
    assert list(drawn) == expected_order
    for name, (width, half) in drawn.items():
        ndcg = METHODS[name][0]
        assert width == pytest.approx(np.mean(ndcg))
        assert half == pytest.approx(np.std(ndcg, ddof=1))
    recall = bar_widths(recall_ax, "recall@50")
    assert recall["deepvibe"][0] == pytest.approx(0.71)
    assert [t.get_text() for t in ndcg_ax.get_yticklabels()] == expected_order


def test_scatter_has_one_series_per_mode_at_popularity_and_ndcg() -> None:
    fig = evaluation_figure(make_report())
    scatter = fig.axes[2]
    series = {line.get_gid(): line for line in scatter.get_lines() if line.get_gid()}
    assert set(series) == {"scatter:standard", "scatter:gems", "scatter:new-artists",
                           "scatter:baseline"}  # fmt: skip
    gems = series["scatter:gems"]
    assert gems.get_xdata()[0] == pytest.approx(0.10)  # avg_pop@20, the first beyond-k
    assert gems.get_ydata()[0] == pytest.approx(0.38)
    assert len(series["scatter:baseline"].get_xdata()) == 3  # toppop, ease, the unknown one
    assert [t.get_text() for t in scatter.get_legend().get_texts()] == [
        "standard",
        "gems",
        "new-artists",
        "baselines",
    ]
    assert "popularity" in scatter.get_xlabel() and "NDCG@100" in scatter.get_ylabel()


def test_plot_from_json_file(tmp_path: Path) -> None:
    path = tmp_path / "eval.json"
    path.write_text(json.dumps(make_report()), encoding="utf-8")
    check_png(plot_evaluation(path, tmp_path / "eval.png"))


def test_absent_sections_and_a_single_seed(tmp_path: Path) -> None:
    report = make_report(seeds=1, cold=False)
    minimal = {"summary": {"test": report["summary"]["test"]}}  # no runs, protocol or cold start
    fig = evaluation_figure(minimal)
    assert {m.mode for m in method_stats(minimal, "test")} >= {"standard", "gems", "new-artists"}
    cold_ax = fig.axes[3]
    assert "no cold-start section" in cold_ax.texts[0].get_text()
    widths = bar_widths(fig.axes[0], "ndcg@100")
    assert all(half == 0 for _, half in widths.values())  # std is null with one seed
    check_png(plot_evaluation(minimal, tmp_path / "one.png"))


def test_many_methods_show_the_best_30_and_every_deepvibe_mode() -> None:
    methods = {f"m{i:03d}": ([i / 1000] * 2, [0.5] * 2, [0.1] * 2, {}) for i in range(100)}
    methods["deepvibe"] = ([0.0005] * 2, [0.5] * 2, [0.1] * 2, {})  # ranked last
    runs = make_runs(methods, seeds=2, cold=False)
    fig = evaluation_figure({"runs": runs, "summary": summarise(runs)})
    drawn = list(bar_widths(fig.axes[0], "ndcg@100"))
    assert drawn == [f"m{i:03d}" for i in range(99, 69, -1)] + ["deepvibe"]
    assert "best 30 of 101 methods shown, and every deepvibe mode" in fig.get_suptitle()
    scatter = fig.axes[2]
    assert [t.get_text() for t in scatter.texts] == ["deepvibe"]  # a crowd: only ours named


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"format": "something-else", "summary": {}}', "format is 'something-else'"),
        ('{"runs": []}', "no 'summary' section"),
        ('{"summary": {"info": {}}}', "no 'test', 'validation' or 'database' numbers"),
        ("[1, 2]", "not a JSON object"),
    ],
)
def test_unusable_report_is_a_data_error_naming_the_file(
    tmp_path: Path, text: str, message: str
) -> None:
    path = tmp_path / "eval.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        load_report(path)
    assert str(path) in str(info.value)


def test_missing_report_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="evaluation report file not found"):
        plot_evaluation(tmp_path / "nope.json", tmp_path / "x.png")


@pytest.mark.parametrize(
    ("name", "mode"),
    [("deepvibe", "standard"), ("deepvibe-scan-gems", "gems"), ("deepvibe_new_artists",
     "new-artists"), ("ease", "baseline"), ("deepvibe-scan", "standard")],
)  # fmt: skip
def test_mode_from_name(name: str, mode: str) -> None:
    assert mode_of(name) == mode


def test_discovery_protocol_report_charts_its_database_section() -> None:
    """`evaluate --protocol discovery` reports sections per protocol (no 'test'): the bars come
    from the database-ranking section."""

    def stat(mean: float) -> dict[str, float]:
        return {"mean": mean, "std": 0.01, "n": 3}

    report = {
        "summary": {
            "database": {
                "deepvibe": {"ndcg@100": stat(0.44), "recall@50": stat(0.48)},
                "content": {"ndcg@100": stat(0.14), "recall@50": stat(0.21)},
            },
            "new-artist-artist": {"deepvibe": {"ndcg@100": stat(0.09)}},
        }
    }
    fig = evaluation_figure(report)
    drawn = bar_widths(fig.axes[0], "ndcg@100")
    assert list(drawn) == ["deepvibe", "content"]
    assert drawn["deepvibe"][0] == pytest.approx(0.44)
    assert "database ranking" in fig.axes[0].get_title()
