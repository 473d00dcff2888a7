"""Training curves: what is drawn comes from the log, and odd logs still plot."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from plots_support import check_png, log_rows, write_log

from deepvibe.errors import DataError
from deepvibe.plots import curves
from deepvibe.plots.curves import BEST_GID, plot_training_curves, training_curves_figure
from deepvibe.plots.training_log import read_training_log


def lines_by_gid(fig) -> dict[str, list]:
    out: dict[str, list] = {}
    for ax in fig.axes:
        for line in ax.get_lines():
            out.setdefault(line.get_gid(), []).append(line)
    return out


def spy_figure(monkeypatch: pytest.MonkeyPatch) -> list:
    """Record the figure plot_training_curves builds (the real one, still drawn and saved)."""
    built: list = []

    def spy(history):
        fig = training_curves_figure(history)
        built.append(fig)
        return fig

    monkeypatch.setattr(curves, "training_curves_figure", spy)
    return built


def test_curves_plot_every_epoch_and_mark_the_best(monkeypatch, tmp_path: Path) -> None:
    log_path = write_log(tmp_path, log_rows(12, best=7, eval_every=2))
    built = spy_figure(monkeypatch)
    out = plot_training_curves(log_path, tmp_path / "plots" / "curves.png")
    assert out == tmp_path / "plots" / "curves.png"
    check_png(out)
    lines = lines_by_gid(built[0])
    for column in ("reconstruction", "loss", "audio", "kl", "beta", "lr"):
        (line,) = lines[column]
        assert list(line.get_xdata()) == list(range(1, 13)), column
    np.testing.assert_allclose(lines["kl"][0].get_ydata(), 3 * np.arange(1, 13), rtol=1e-5)
    # validated on even epochs only: the line joins those points
    assert list(lines["val_ndcg@100"][0].get_xdata()) == [2, 4, 6, 8, 10, 12]
    # the best epoch is the argmax of validation NDCG@100 (6 and 8 tie: the first wins)
    markers = lines[BEST_GID]
    assert len(markers) == 6  # one dashed line per panel
    assert {m.get_xdata()[0] for m in markers} == {6}
    assert "best epoch 6" in built[0].get_suptitle()


def test_nan_row_still_plots(tmp_path: Path) -> None:
    rows = log_rows(8, best=5)
    rows[2] = {k: (float("nan") if k != "epoch" else v) for k, v in rows[2].items()}
    rows[4]["val_ndcg@100"] = float("nan")  # the NaN is not taken as the maximum
    log_path = write_log(tmp_path, rows)
    history = read_training_log(log_path)
    assert np.isnan(history.column("reconstruction")[2])
    assert history.best_epoch == 4  # epochs 4 and 6 tie once epoch 5 is NaN: the first wins
    fig = training_curves_figure(history)
    (recon,) = lines_by_gid(fig)["reconstruction"]
    assert len(recon.get_xdata()) == 8
    check_png(plot_training_curves(log_path, tmp_path / "nan.png"))


def test_single_epoch_log_plots(tmp_path: Path) -> None:
    log_path = write_log(tmp_path, log_rows(1, best=1))
    history = read_training_log(log_path)
    assert history.epochs.tolist() == [1] and history.best_epoch == 1
    lines = lines_by_gid(training_curves_figure(history))
    assert lines["reconstruction"][0].get_marker() == "o"  # a lone point must be visible
    check_png(plot_training_curves(log_path, tmp_path / "one.png"))


def test_growing_log_ignores_the_unfinished_last_line(tmp_path: Path) -> None:
    log_path = write_log(tmp_path, log_rows(5, best=3), tail="6,54,101.2,83.1,1.")
    history = read_training_log(log_path)
    assert history.epochs.tolist() == [1, 2, 3, 4, 5]


def test_incomplete_rows_are_skipped_and_repeated_epochs_keep_the_last(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rows = log_rows(4, best=2)
    log_path = write_log(tmp_path, rows, tail="3,27,1,2,3,4,0.5,0.001,0.9,0.9,0.9,1\n7,63,1,2\n")
    history = read_training_log(log_path)
    assert history.epochs.tolist() == [1, 2, 3, 4]
    assert history.column("val_ndcg@100")[2] == pytest.approx(0.9)  # the later epoch-3 row
    assert history.best_epoch == 3
    assert "line 7 is not a complete epoch row" in caplog.text


def test_missing_optional_and_new_columns_are_tolerated(tmp_path: Path) -> None:
    columns = ("epoch", "validation", "reconstruction", "kl", "val_ndcg@100", "gpu_mb")
    rows = [{**r, "validation": "test", "gpu_mb": 10.0 * i} for i, r in enumerate(log_rows(3, 2))]
    history = read_training_log(write_log(tmp_path, rows, columns=columns))
    assert history.column("audio") is None
    assert history.column("gpu_mb").tolist() == [0.0, 10.0, 20.0]
    assert history.text["validation"].tolist() == ["test"] * 3
    fig = training_curves_figure(history)
    assert "validation: test" in fig.get_suptitle()
    audio_ax = next(ax for ax in fig.axes if ax.get_title() == "Audio loss")
    assert [t.get_text() for t in audio_ax.texts] == ["not in this log"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "training log file not found"),
        ("", "training log file is empty"),
        ("epoch,loss\n", "no complete epoch rows"),
        ("loss,kl\n1,2\n", "no 'epoch' column"),
        ("\x00\x01binary", "binary"),
    ],
)
def test_unusable_log_is_a_data_error_naming_the_file(
    tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "hybrid_training.log"
    if content is not None:
        path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as info:
        plot_training_curves(path, tmp_path / "out.png")
    assert str(path) in str(info.value)
    assert not (tmp_path / "out.png").exists()
