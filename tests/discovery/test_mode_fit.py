"""Each discovery mode's Vibe DNA anchor and weights are chosen on validation users at the best
epoch, stored in the checkpoint and used by discover (issue 10, new-artist quality)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from conftest import small_config
from deepvibe.data.dataset import build_dataset
from deepvibe.data.synth import make_toy_data, write_toy_data
from deepvibe.discovery import users as du
from deepvibe.discovery.discoverer import Discoverer
from deepvibe.discovery.hybrid import DEFAULT_NEW_ARTIST_WEIGHTS, PARTS
from deepvibe.discovery.validation import DatabaseValidator
from deepvibe.errors import ConfigError
from deepvibe.model.vae import HybridVAE
from deepvibe.ranking.protocol import FoldIn
from deepvibe.training.checkpoint import load_checkpoint
from deepvibe.training.train import make_arch, train

MODES = ("standard", "new-artists")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Taste groups that differ in how they sound and in their artists."""
    root = tmp_path_factory.mktemp("mode_fit")
    toy = make_toy_data(users=240, tracks=300, db_tracks=1500, groups=4, weeks=1, seed=5)
    write_toy_data(root / "data", toy)
    return root


def config(root: Path, **sets: object):
    """Configured anchors 0 in both modes, anchors 0 and 1 tried on validation users."""
    base = {
        "data.time_column": "null",
        "train.epochs": 2,
        "discover.dna_anchor": 0.0,
        "discover.dna_anchor_new_artists": 0.0,
        "discover.anchor_choices": "[0.0, 1.0]",
    }
    return small_config(root, **(base | sets))


def test_validation_picks_the_history_anchor_when_the_decoder_knows_nothing(root: Path) -> None:
    """An untrained decoder's Vibe DNA says nothing about a user, the history's mean features
    say which group they sound like: with the DNA part alone (weights fixed by the config),
    both modes move from the configured anchor 0 to 1."""
    dna_only = {f"discover.weights.{p}": float(p == "dna") for p in PARTS}
    cfg = config(root, **dna_only)
    ds = build_dataset(cfg)
    torch.manual_seed(0)
    untrained = HybridVAE(make_arch(cfg, len(ds.track_ids), ds.track_features.shape[1]))
    validator = DatabaseValidator(ds, cfg)
    for mode in MODES:
        fit = validator.choose(untrained, mode)
        assert fit.anchor == 1.0, fit.report
        assert fit.report["ndcg_anchor_1"] > fit.report["ndcg_anchor_0"] + 0.05
        assert fit.report["ndcg"] == fit.report["ndcg_anchor_1"]
    # a gate no gain can pass keeps the configured anchor (the shrinkage to the prior)
    strict = DatabaseValidator(ds, config(root, **dna_only, **{"discover.fit_z": 1e6}))
    for mode in MODES:
        fit = strict.choose(untrained, mode)
        assert fit.anchor == 0.0 and "over 0" in fit.report["anchor_reason"]


def ck_artists(root: Path, track_ids) -> list[str]:
    """The artists of some database tracks."""
    db = pd.read_csv(root / "data" / "global_tracks.csv", usecols=["track_id", "artists"])
    return db.set_index("track_id").reindex(list(track_ids))["artists"].dropna().tolist()


def test_the_chosen_anchors_are_stored_and_used_by_discover(root: Path) -> None:
    cfg = config(root)
    train(cfg, progress=False, validator=DatabaseValidator)
    ck = load_checkpoint(cfg.best_checkpoint_path)
    for key in ("discovery_anchor", "discovery_anchor_new_artists"):
        assert ck.extras[key] in (0.0, 1.0)
    assert "ndcg_anchor_1" in ck.extras["discovery_fit_new_artists"]
    ck.extras["discovery_anchor"], ck.extras["discovery_anchor_new_artists"] = 0.75, 0.25
    found = Discoverer.from_checkpoint(ck, cfg, source="db", progress=False)
    assert found.hybrid is not None and found.hybrid.dna_anchor == 0.75
    assert found.new_artist_anchor == 0.25
    # the new-artist mode scores with its own anchor
    seen: list[float | None] = []
    original = found.hybrid.user_inputs

    def spy(history, plays, dna_anchor=None):
        seen.append(dna_anchor)
        return original(history, plays, dna_anchor)

    found.hybrid.user_inputs = spy
    inter = du.load_training_users(cfg.data)
    batch = du.align_users(inter, ck.track_ids, list(inter.user_ids[:3]))
    new = next(found.discover_blocks(batch, 10, "new-artists")).discoveries()
    plain = next(found.discover_blocks(batch, 10, "standard")).discoveries()
    gems_new = next(found.discover_blocks(batch, 10, "gems-new-artists")).discoveries()
    assert seen == [0.25, None, 0.25] and len(new) == len(plain) == len(gems_new) == 3
    for a, b, played in zip(new, gems_new, batch.history, strict=True):
        known = set(ck_artists(root, played))
        assert not known & set(a.table["artists"]) and not known & set(b.table["artists"])
        assert b.table["popularity"].mean() < a.table["popularity"].mean()
    # anchor_choices: [] means the configured anchors, whatever the checkpoint says
    fixed = config(root, **{"discover.anchor_choices": "[]", "discover.dna_anchor": 0.5})
    found = Discoverer.from_checkpoint(ck, fixed, source="db", progress=False)
    assert found.hybrid is not None and found.hybrid.dna_anchor == 0.5
    assert found.new_artist_anchor == 0.0


def test_new_artist_mode_without_a_fit_uses_its_own_prior_not_the_standard_weights(
    root: Path,
) -> None:
    """Before: a checkpoint without new-artist weights fell back to the standard mode's, whose
    decoder and artist-share terms rank badly once the user's artists are excluded."""
    cfg = config(root)
    ck = load_checkpoint(cfg.best_checkpoint_path)
    ck.extras.pop("discovery_weights_new_artists")
    found = Discoverer.from_checkpoint(ck, cfg, source="db", progress=False)
    assert found.new_artist_weights == DEFAULT_NEW_ARTIST_WEIGHTS
    assert found.hybrid is not None and found.hybrid.weights != DEFAULT_NEW_ARTIST_WEIGHTS


def test_anchor_choices_outside_0_1_are_one_clear_error(root: Path) -> None:
    with pytest.raises(ConfigError, match="discover.anchor_choices"):
        config(root, **{"discover.anchor_choices": "[0.5, 1.5]"})


def test_a_mode_with_no_validation_user_keeps_its_prior(root: Path) -> None:
    cfg = config(root)
    ds = build_dataset(cfg)
    validator = DatabaseValidator(ds, cfg)
    split = validator.split
    validator.split = FoldIn(split.users, split.foldin, split.heldout * 0)
    torch.manual_seed(0)
    model = HybridVAE(make_arch(cfg, len(ds.track_ids), ds.track_features.shape[1]))
    fit = validator.choose(model, "new-artists")
    assert fit.anchor == 0.0 and fit.weights == DEFAULT_NEW_ARTIST_WEIGHTS
    assert np.isnan(fit.report["ndcg"])
