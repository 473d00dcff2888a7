"""Shared fixtures: a small toy world written once per session."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from deepvibe.config import Config, load_config
from deepvibe.data.synth import ToyData, make_toy_data, write_toy_data

torch.set_num_threads(1)  # the suite shares 2 cores; small models gain nothing from more

# Device tests run on every device torch sees: the CPU always, CUDA and MPS where present
# (skipped with a reason elsewhere, never failed).
MPS = bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())
DEVICES = [
    "cpu",
    pytest.param(
        "cuda",
        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here"),
    ),
    pytest.param("mps", marks=pytest.mark.skipif(not MPS, reason="no MPS device here")),
]


@pytest.fixture(scope="session")
def toy() -> ToyData:
    return make_toy_data(users=400, tracks=240, db_tracks=3000, groups=4, weeks=2, seed=3)


@pytest.fixture(scope="session")
def toy_dir(tmp_path_factory: pytest.TempPathFactory, toy: ToyData) -> Path:
    out = tmp_path_factory.mktemp("toy")
    write_toy_data(out / "data", toy)
    return out


def small_config(root: Path, data_dir: Path | None = None, **overrides: object) -> Config:
    """A fast config over the toy files in ``data_dir`` (default ``root/data``), writing under
    ``root``."""
    data = data_dir if data_dir is not None else root / "data"
    sets = [
        f"data.interactions={data / 'full_training_matrix.csv'}",
        f"data.features={data / 'top_10k_features.csv'}",
        f"data.database={data / 'global_tracks.csv'}",
        "data.max_tracks=1000",
        "model.hidden=[128]",
        "model.latent=32",
        "train.epochs=8",
        "train.batch_size=64",
        "train.snapshot_every=2",
        f"paths.models_dir={root / 'models'}",
        f"paths.logs_dir={root / 'logs'}",
        f"paths.recommendations_dir={root / 'recommendations'}",
    ]
    sets += [f"{k}={v}" for k, v in overrides.items()]
    return load_config(None, sets)


@pytest.fixture(autouse=True)
def _fresh_deepvibe_logger() -> Iterator[None]:
    """Undo what a CLI run did to the ``deepvibe`` logger (a console handler on a stream that
    CliRunner has closed, propagation off), so later tests' caplog sees the package's records."""
    yield
    logger = logging.getLogger("deepvibe")
    for h in list(logger.handlers):
        if getattr(h, "_deepvibe_console", False):
            logger.removeHandler(h)
    logger.propagate = True
