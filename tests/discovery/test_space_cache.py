"""The hybrid's track space saved beside the database cache (discovery/space_cache.py): read
back, it is the space built from the database, array for array; another scaler, catalogue or
database cache builds it again; an unreadable file is rebuilt, an unwritable folder only
warned about."""

from __future__ import annotations

import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from conftest import small_config
from deepvibe.config import Config
from deepvibe.discovery import space_cache
from deepvibe.discovery.database import TrackDatabase
from deepvibe.discovery.discoverer import hybrid_scorer
from deepvibe.discovery.signals import TrackSpace
from deepvibe.errors import DeepVibeError
from deepvibe.training.checkpoint import Checkpoint, load_checkpoint
from deepvibe.training.train import train


@pytest.fixture(scope="module")
def trained(toy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Config:
    root = tmp_path_factory.mktemp("space")
    shutil.copytree(toy_dir / "data", root / "data")  # a database cache of this module's own
    cfg = small_config(root, root / "data", **{"train.epochs": 2})
    train(cfg, progress=False)
    return cfg


def _open(cfg: Config, ck: Checkpoint) -> TrackDatabase:
    d = cfg.data
    assert d.database is not None
    return TrackDatabase.open(
        d.database, ck.scaler.columns, d.feature_track_column, d.popularity_column,
        d.name_column, d.artist_column,
    )  # fmt: skip


def _spaces(db: TrackDatabase) -> list[Path]:
    return sorted(db.path.parent.glob(f"{db.path.name}.space-*.npz"))


def _assert_same(a: TrackSpace, b: TrackSpace) -> None:
    for name in ("units", "standardised", "has_features", "catalogue_index", "popularity"):
        x, y = getattr(a, name), getattr(b, name)
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes(), name
    for name in ("data", "indices", "indptr"):
        assert getattr(a.artists, name).tobytes() == getattr(b.artists, name).tobytes(), name
    assert a.artists.shape == b.artists.shape
    assert a.artist_keys.tolist() == b.artist_keys.tolist() and a.artist_keys.dtype == object
    assert a.track_ids.tolist() == b.track_ids.tolist()
    assert a.names is not None and b.names is not None and a.names.tolist() == b.names.tolist()


def test_the_saved_space_is_the_built_one_and_is_rebuilt_when_what_it_depends_on_changes(
    trained, monkeypatch
) -> None:
    ck = load_checkpoint(trained.best_checkpoint_path)
    db = _open(trained, ck)
    for old in _spaces(db):
        old.unlink()
    built = hybrid_scorer(ck, trained, db).space
    saved = _spaces(db)
    assert len(saved) == 1

    def no_build(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the saved space should have been read")

    with monkeypatch.context() as m:
        m.setattr(TrackSpace, "from_table", no_build)
        read = hybrid_scorer(ck, trained, db).space
    _assert_same(read, built)
    assert int(np.count_nonzero(read.catalogue_index >= 0)) > 0  # the catalogue is found
    assert read.artists.nnz > 0 and len(read.artist_keys) > 1

    # another scaler: another key, a space built again, the older file removed
    other = replace(ck.scaler, mean=ck.scaler.mean + 0.5)
    rebuilt = hybrid_scorer(replace(ck, scaler=other), trained, db).space
    assert _spaces(db) != saved and len(_spaces(db)) == 1
    assert not np.array_equal(rebuilt.standardised, built.standardised)
    # another catalogue: another key
    fewer = replace(ck, track_ids=ck.track_ids[:-5])
    assert space_cache.space_key(db.path, ck.scaler, fewer.track_ids) != space_cache.space_key(
        db.path, ck.scaler, ck.track_ids
    )


def test_an_unreadable_space_is_built_again_and_an_unwritable_folder_only_warned(
    trained, caplog, monkeypatch
) -> None:
    ck = load_checkpoint(trained.best_checkpoint_path)
    db = _open(trained, ck)
    want = hybrid_scorer(ck, trained, db).space
    (path,) = _spaces(db)
    path.write_bytes(b"not a zip file")  # a truncated or foreign file
    with caplog.at_level(logging.WARNING):
        got = hybrid_scorer(ck, trained, db).space
    assert "unreadable" in caplog.text
    _assert_same(got, want)
    assert space_cache.load_space_arrays(db.path, path.name.split("space-")[1][:-4]) is not None

    def unwritable(path):  # noqa: ANN001, ANN202
        raise DeepVibeError(f"{path.parent}: cannot write here (Permission denied)")

    for old in _spaces(db):
        old.unlink()
    monkeypatch.setattr(space_cache, "atomic_path", unwritable)
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        got = hybrid_scorer(ck, trained, db).space
    _assert_same(got, want)
    assert "cannot save the track space" in caplog.text and not _spaces(db)
