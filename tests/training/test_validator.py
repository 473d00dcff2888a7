"""The validation interface of train(), and what each epoch reads and writes."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import deepvibe.training.train as train_module
import deepvibe.training.validation as validation_module
from conftest import small_config
from deepvibe.errors import CheckpointError
from deepvibe.model.device import model_device
from deepvibe.model.inference import scorer
from deepvibe.ranking.metrics import evaluate_scorer
from deepvibe.training.checkpoint import load_checkpoint
from deepvibe.training.train import train
from deepvibe.training.validation import CatalogueValidator, validation_foldin


class Recorder:
    """Wraps the catalogue validator: renamed, one metric more, and extras to keep."""

    name = "recorder"

    def __init__(self, ds, cfg, device) -> None:  # noqa: ANN001 - a ValidatorFactory
        self.inner = CatalogueValidator(ds, cfg, device)
        self.calls = 0

    def score(self, model) -> dict[str, float]:  # noqa: ANN001
        self.calls += 1
        return {**self.inner.score(model), "coverage@20": 0.5 + self.calls}

    def checkpoint_extras(self) -> dict:
        return {"calls": self.calls, "weights": np.arange(3.0), "nested": {"t": torch.ones(2)}}


def _log(cfg) -> list[dict[str, str]]:  # noqa: ANN001
    with open(Path(cfg.paths.logs_dir) / "hybrid_training.log", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def test_validator_factory_name_metrics_and_extras_reach_log_and_best_checkpoint(
    toy_dir: Path, tmp_path: Path
) -> None:
    cfg = small_config(tmp_path, toy_dir / "data", **{"train.epochs": 3})
    made = []

    def factory(ds, cfg_, device):  # noqa: ANN001, ANN202
        made.append(Recorder(ds, cfg_, device))
        return made[-1]

    result = train(cfg, progress=False, validator=factory)
    assert len(made) == 1 and made[0].calls == 3
    rows = _log(cfg)
    assert list(rows[0])[:13][-2:] == ["seconds", "validation"]
    assert [r["validation"] for r in rows] == ["recorder"] * 3
    assert [float(r["val_coverage@20"]) for r in rows] == [1.5, 2.5, 3.5]
    raw = torch.load(cfg.best_checkpoint_path, weights_only=True)  # extras stay weights_only-safe
    assert raw["validation"] == "recorder"
    ck = load_checkpoint(cfg.best_checkpoint_path)
    assert ck.validation == "recorder" and ck.epoch == result.best_epoch
    assert ck.extras["calls"] == result.best_epoch
    assert torch.equal(ck.extras["weights"], torch.arange(3.0, dtype=torch.float64))
    assert torch.equal(ck.extras["nested"]["t"], torch.ones(2))
    assert result.best_extras["calls"] == result.best_epoch
    # resume reads the log back, text column included
    longer = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 4})})
    last = cfg.snapshots_dir / "last.pth"
    resumed = train(longer, resume=last, progress=False, validator=factory)
    assert [r["validation"] for r in resumed.history] == ["recorder"] * 4


def test_validator_without_the_selection_metric_is_refused(toy_dir: Path, tmp_path: Path) -> None:
    class NoNdcg:
        name = "partial"

        def score(self, model) -> dict[str, float]:  # noqa: ANN001
            return {"recall@20": 0.1}

    cfg = small_config(tmp_path, toy_dir / "data", **{"train.epochs": 1})
    with pytest.raises(ValueError, match="'partial'.*must include 'ndcg@100'"):
        train(cfg, progress=False, write_files=False, validator=NoNdcg())


def test_checkpoint_extras_that_would_need_pickle_are_refused(
    toy_dir: Path, tmp_path: Path
) -> None:
    class Unsafe(Recorder):
        def checkpoint_extras(self) -> dict:
            return {"table": object()}

    cfg = small_config(tmp_path, toy_dir / "data", **{"train.epochs": 1})
    with pytest.raises(TypeError, match="recorder.table is a object"):
        train(cfg, progress=False, write_files=False, validator=Unsafe)  # a class is a factory


def test_catalogue_validator_equals_evaluate_scorer(toy_dir: Path, tmp_path: Path) -> None:
    cfg = small_config(tmp_path, toy_dir / "data", **{"train.epochs": 2})
    result = train(cfg, progress=False, write_files=False)
    val = validation_foldin(result.dataset, cfg)
    expected = evaluate_scorer(
        scorer(result.model, result.dataset.track_features), val.foldin, val.heldout
    )
    device = model_device(result.model)  # the training device (cuda where train.device is auto)
    got = CatalogueValidator(result.dataset, cfg, device, chunk_size=1024).score(result.model)
    assert got == expected


def test_training_never_densifies_a_user_row(
    toy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: every batch row (and every validation row) was made dense (toarray) before
    the first layer, though 99% of it is zeros."""
    cfg = small_config(tmp_path, toy_dir / "data", **{"train.epochs": 2})
    ds = train_module.build_dataset(cfg)

    original = sp.csr_matrix.toarray
    n_tracks = len(ds.track_ids)

    def refuse(self, *args, **kwargs):  # noqa: ANN001, ANN202
        if self.shape[1] == n_tracks:  # (users, catalogue): a listening row made dense
            raise AssertionError(f"densified a {self.shape} matrix of listening rows")
        return original(self, *args, **kwargs)  # the metrics' (users, k) hit tables

    monkeypatch.setattr(sp.csr_matrix, "toarray", refuse)
    result = train(cfg, dataset=ds, progress=False, write_files=False)
    assert result.epochs_done == 2 and result.best_metric > 0


def test_validation_inputs_are_built_once_per_run(
    toy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: the validation users' fold-in inputs were rebuilt at every epoch."""
    calls = []
    original = validation_module.model_inputs

    def counted(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(validation_module, "model_inputs", counted)
    cfg = small_config(tmp_path, toy_dir / "data", **{"train.epochs": 3})
    train(cfg, progress=False, write_files=False)
    assert len(calls) == 1  # one chunk of validation users, built once for three epochs


def test_epoch_writes_only_what_resume_needs(
    toy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defect: the best checkpoint carried the optimiser state (two thirds of its bytes, never
    used to resume) and every epoch snapshot serialised the model a second time."""
    saved: list[tuple[str, bool]] = []
    original = train_module.save_checkpoint

    def counted(path, model, **kwargs):  # noqa: ANN001, ANN003, ANN202
        saved.append((Path(path).name, kwargs.get("optimizer") is not None))
        return original(path, model, **kwargs)

    monkeypatch.setattr(train_module, "save_checkpoint", counted)
    cfg = small_config(tmp_path, toy_dir / "data", **{"train.epochs": 3, "train.snapshot_every": 1})
    result = train(cfg, progress=False)
    bests = sum(name == cfg.best_checkpoint_path.name for name, _ in saved)
    assert len(saved) == 3 + bests  # last.pth per epoch + each new best; no snapshot writes
    assert all(with_opt == (name == "last.pth") for name, with_opt in saved)
    assert load_checkpoint(cfg.best_checkpoint_path).optimizer_state is None
    last = cfg.snapshots_dir / "last.pth"
    for epoch in (1, 2, 3):
        assert load_checkpoint(cfg.snapshots_dir / f"epoch_{epoch:04d}.pth").epoch == epoch
    assert (cfg.snapshots_dir / "epoch_0003.pth").read_bytes() == last.read_bytes()
    assert result.epochs_done == 3
    with pytest.raises(CheckpointError, match="no optimiser state.*resume from"):
        train(cfg, resume=cfg.best_checkpoint_path, progress=False)
