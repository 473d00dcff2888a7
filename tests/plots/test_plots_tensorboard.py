"""ScalarWriter: a one-line install hint without tensorboard, event files with it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from deepvibe.errors import ConfigError
from deepvibe.plots.tensorboard import ScalarWriter


def test_without_tensorboard_the_error_says_how_to_install(monkeypatch, tmp_path: Path) -> None:
    # A None entry in sys.modules makes `import torch.utils.tensorboard` raise ImportError,
    # as it does when the tensorboard package is not installed.
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ConfigError) as info:
        ScalarWriter(tmp_path / "tb")
    message = str(info.value)
    assert "pip install 'deepvibe[tensorboard]'" in message
    assert "\n" not in message
    assert not (tmp_path / "tb").exists()


@pytest.mark.skipif(
    importlib.util.find_spec("tensorboard") is None, reason="tensorboard is not installed"
)
def test_writes_scalars_per_epoch_to_an_event_file(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    rows = [
        {"epoch": 1, "step": 9, "kl": 2.5, "val_ndcg@100": 0.40, "validation": "test"},
        {"epoch": 2, "step": 18, "kl": 3.5, "val_ndcg@100": float("nan"), "beta": 1.0},
    ]
    with ScalarWriter(tmp_path / "tb") as tb:
        written = [tb.write(int(r["epoch"]), r) for r in rows]
    assert written == [
        {"train/kl": 2.5, "validation/ndcg@100": 0.40},
        {"train/kl": 3.5, "train/beta": 1.0},
    ]
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    kl = events.Scalars("train/kl")
    assert [(e.step, e.value) for e in kl] == [(1, 2.5), (2, 3.5)]
    assert [e.step for e in events.Scalars("validation/ndcg@100")] == [1]
