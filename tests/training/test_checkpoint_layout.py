"""Checkpoints keep nn.Linear's layout for the (internally transposed) sparse first layer, so a
snapshot written before the sparse layer resumes, and a foreign optimiser state is refused."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import small_config
from deepvibe.errors import CheckpointError
from deepvibe.training.train import train

SETS = {"train.epochs": 3, "train.snapshot_every": 1}


def _rewrite(path: Path, edit) -> None:  # noqa: ANN001
    raw = torch.load(path, weights_only=True)
    edit(raw)
    torch.save(raw, path)


def test_snapshot_in_the_old_contiguous_layout_resumes_exactly(
    toy_dir: Path, tmp_path: Path
) -> None:
    straight = train(small_config(tmp_path / "a", toy_dir / "data", **SETS), progress=False)
    cfg = small_config(tmp_path / "b", toy_dir / "data", **SETS)
    train(cfg, progress=False, stop_after_epoch=2)
    last = cfg.snapshots_dir / "last.pth"

    def as_before(raw: dict) -> None:  # what d94dc13 wrote: plain contiguous (out, in) tensors
        weight = raw["model_state"]["encoder.0.weight"]
        assert weight.shape == (128, 252)  # nn.Linear's (out, in): 240 tracks + 12 features
        raw["model_state"]["encoder.0.weight"] = weight.contiguous()
        first = raw["optimizer_state"]["state"][0]
        assert first["exp_avg"].shape == (128, 252)
        raw["optimizer_state"]["state"][0] = {k: v.contiguous() for k, v in first.items()}

    _rewrite(last, as_before)
    resumed = train(cfg, resume=last, progress=False)
    for (name, a), b in zip(
        straight.model.state_dict().items(), resumed.model.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name


def test_optimiser_state_of_another_shape_is_refused(toy_dir: Path, tmp_path: Path) -> None:
    cfg = small_config(tmp_path, toy_dir / "data", **SETS)
    train(cfg, progress=False, stop_after_epoch=1)
    last = cfg.snapshots_dir / "last.pth"

    def shrink(raw: dict) -> None:
        state = raw["optimizer_state"]["state"][2]
        state["exp_avg"] = state["exp_avg"][:-1]

    _rewrite(last, shrink)
    with pytest.raises(CheckpointError, match="optimiser state does not fit this model"):
        train(cfg, resume=last, progress=False)
