"""Validation by what ``discover`` is judged on: ranking the track database.

The validation users' tracks that the database holds with features are split 80/20 once (by
the seed); after an epoch the fold-in part is scored through the hybrid (the same
:class:`~deepvibe.discovery.signals.HybridScorer` discover uses), every database track is
ranked with the fold-in masked, and NDCG@100 / Recall@20 / Recall@50 are measured against the
held-out part — which, on playlist data, is mostly outside the catalogue. Each epoch is scored
with the weights discover would use: fitted on these users for that epoch (so the number is
in-sample for the weights, a few hundredths optimistic; it selects epochs, it is not a test
figure).

At the best epoch each mode (standard, ``--new-artists``) gets its own Vibe DNA anchor and
weights, stored in the checkpoint (:meth:`DatabaseValidator.checkpoint_extras`): for every
anchor in ``discover.anchor_choices`` the weights are fitted from the mode's prior, and the
best (anchor, weights) replaces the mode's configured anchor only by a gain of ``fit_z``
standard errors over the validation users (:func:`hybrid.gain_is_real`). With the ~20
validation users of a small data set an in-sample fit mostly gains by chance; the gate shrinks
such fits back to the prior.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from deepvibe.config import Config
from deepvibe.data.catalogue import load_database_table
from deepvibe.data.dataset import Dataset, uses_database_validation
from deepvibe.discovery.hybrid import (
    DEFAULT_NEW_ARTIST_WEIGHTS,
    DEFAULT_WEIGHTS,
    CandidatePool,
    HybridWeights,
    fit_weights,
    gain_is_real,
    paired_gain,
    pool_ndcg,
)
from deepvibe.discovery.signals import HybridScorer, TrackSpace, UserInputs, rank_space
from deepvibe.errors import DataError
from deepvibe.model.artist_cf import ArtistCF
from deepvibe.model.vae import HybridVAE
from deepvibe.ranking.metrics import ndcg_at_k, recall_at_k
from deepvibe.ranking.protocol import FoldIn, foldin_split
from deepvibe.training.artists import fit_artist_cf
from deepvibe.training.validation import enough_users

log = logging.getLogger(__name__)

CHUNK = 65_536  # database rows scored at a time: (users x CHUNK) float32 per block
MIN_GAIN = 0.005  # the smallest validation NDCG@100 gain that replaces a prior
# checkpoint keys per mode: (weights, fit report, anchor)
MODE_KEYS = {
    "standard": ("discovery_weights", "discovery_fit", "discovery_anchor"),
    "new-artists": (
        "discovery_weights_new_artists", "discovery_fit_new_artists",
        "discovery_anchor_new_artists",
    ),
}  # fmt: skip


def load_database_space(cfg: Config, ds: Dataset) -> TrackSpace:
    """The configured track database (``data.database``) as a :class:`TrackSpace` in the
    dataset's standardised feature space (tracks with incomplete features dropped)."""
    table = load_database_table(cfg.data)
    return TrackSpace.from_table(table, ds.scaler, ds.track_ids)


def configured_weights(cfg: Config) -> HybridWeights:
    """``discover.weights`` where the config sets them, else the measured defaults."""
    return HybridWeights.from_dict(cfg.discover.weights.given(), base=DEFAULT_WEIGHTS)


def configured_new_artist_weights(cfg: Config) -> HybridWeights:
    """``discover.weights`` where the config sets them, else the new-artist prior."""
    return HybridWeights.from_dict(cfg.discover.weights.given(), base=DEFAULT_NEW_ARTIST_WEIGHTS)


def prior_anchor(cfg: Config, mode: str) -> float:
    """The configured Vibe DNA anchor of a mode ("standard" or "new-artists")."""
    d = cfg.discover
    return d.dna_anchor_new_artists if mode == "new-artists" else d.dna_anchor


def mode_weights(cfg: Config, extras: Mapping[str, Any] | None, mode: str) -> HybridWeights:
    """The weights a mode ranks with, as ``discover`` picks them: those fitted for the mode at
    the best epoch (``extras``: the checkpoint's), else the mode's prior, with the parts
    ``discover.weights`` sets in the config taking precedence."""
    fitted = (extras or {}).get(MODE_KEYS[mode][0])
    prior = DEFAULT_NEW_ARTIST_WEIGHTS if mode == "new-artists" else DEFAULT_WEIGHTS
    base = HybridWeights.from_dict(fitted) if fitted else prior
    return HybridWeights.from_dict(cfg.discover.weights.given(), base=base)


def mode_anchor(cfg: Config, extras: Mapping[str, Any] | None, mode: str) -> float:
    """A mode's Vibe DNA anchor: chosen on validation users at the best epoch (in
    ``extras``), else, or with ``discover.anchor_choices: []``, the configured one."""
    stored = (extras or {}).get(MODE_KEYS[mode][2])
    if stored is None or not cfg.discover.anchor_choices:
        return prior_anchor(cfg, mode)
    return float(stored)


@dataclass(frozen=True)
class ModeFit:
    """What one mode ranks with, chosen on the validation users."""

    anchor: float
    weights: HybridWeights
    report: dict[str, Any]  # flat: numbers and strings only (weights_only-safe)


def validator_for(cfg: Config) -> type[DatabaseValidator] | None:
    """Database validation where the config has a database with features, else None (the
    training default: catalogue validation)."""
    return DatabaseValidator if uses_database_validation(cfg) else None


class DatabaseValidator:
    """``training.validation.Validator`` over the track database (see the module doc)."""

    name = "database"

    def __init__(self, ds: Dataset, cfg: Config, device: torch.device | str = "cpu") -> None:
        if ds.all_plays is None:
            raise DataError("database validation needs the dataset's full plays")
        self.cfg = cfg
        self.space = load_database_space(cfg, ds)
        self.artist_cf: ArtistCF | None = fit_artist_cf(ds)
        self.features = ds.track_features
        self.weights = configured_weights(cfg)
        self.new_artist_weights = configured_new_artist_weights(cfg)
        users, rows = ds.all_plays.user_matrix(ds.user_groups["validation"])
        history = self.space.to_space(rows, ds.all_plays.track_ids)  # (U, n_db)
        rng = np.random.default_rng([cfg.seed, 1])
        self.split: FoldIn = foldin_split(users, history, cfg.train.holdout_fraction, rng)
        self.foldin_catalogue = _catalogue_columns(self.split.foldin, self.space, len(ds.track_ids))
        self.device = device
        self.enough = enough_users(self.n_users, len(users), "database tracks with features")
        # the last scored epoch's scorer and user inputs: the weights are fitted on them
        self._last: tuple[HybridScorer, UserInputs, HybridWeights, dict | None] | None = None
        log.info(
            "validation: database ranking, %d of %d validation users scored (>= 5 tracks with "
            "features in %s; 80/20 fold-in, %d database tracks ranked)",
            self.n_users, len(users), cfg.data.database, len(self.space),
        )  # fmt: skip

    @property
    def n_users(self) -> int:
        return self.split.foldin.shape[0]

    def _scorer(self, model: HybridVAE, anchor: float | None = None) -> HybridScorer:
        d = self.cfg.discover
        settings = d if anchor is None else d.model_copy(update={"dna_anchor": anchor})
        return HybridScorer.from_settings(
            model, self.features, self.space, self.weights, settings, self.artist_cf
        )

    def score(self, model: HybridVAE) -> dict[str, float]:
        if not self.enough:
            return {}
        scorer = self._scorer(model)
        inputs = scorer.user_inputs(self.split.foldin, self.foldin_catalogue)
        foldin = sp.csr_matrix(self.split.foldin)
        # Each epoch is judged with the weights discover would use for it: fitted on these
        # users (or the configured ones, when discover.weights sets every part).
        weights, report = self.weights, None
        if len(self.cfg.discover.weights.given()) < 4:
            weights, report = self.fit_weights(scorer, inputs, foldin, self.split.heldout)
        self._last = (scorer, inputs, weights, report)
        ranked, _ = rank_space(scorer, inputs, 100, foldin, chunk=CHUNK, weights=weights)
        held = self.split.heldout
        return {
            "ndcg@100": float(ndcg_at_k(ranked, held, 100).mean()),
            "recall@20": float(recall_at_k(ranked, held, 20).mean()),
            "recall@50": float(recall_at_k(ranked, held, 50).mean()),
        }

    def checkpoint_extras(self) -> dict[str, Any]:
        """The artist model and, per mode, the anchor and weights chosen at this (the best)
        epoch, with the fit's report (see the module doc)."""
        extras: dict[str, Any] = {"validation": self.name}
        if self.artist_cf is not None:
            extras["artist_cf"] = self.artist_cf.to_state()
        if self._last is None or not self.enough:
            return extras
        model = self._last[0].model
        for mode, (w_key, fit_key, anchor_key) in MODE_KEYS.items():
            fit = self.choose(model, mode)
            extras[w_key], extras[fit_key] = fit.weights.to_dict(), fit.report
            extras[anchor_key] = fit.anchor
            log.info("%s: anchor %g, %s (%s)", mode, fit.anchor, fit.weights, fit.report["reason"])
        return extras

    def _targets(self, mode: str) -> tuple[sp.csr_matrix, sp.csr_matrix]:
        """(excluded, held-out), each (U, n_db), of the validation users in a mode."""
        foldin = sp.csr_matrix(self.split.foldin)
        heldout = sp.csr_matrix(self.split.heldout)
        if mode != "new-artists":
            return foldin, heldout
        by_their_artists = self.space.same_artist_tracks(foldin)  # each credited artist
        held_new = (heldout - heldout.multiply(by_their_artists > 0)).tocsr()
        held_new.eliminate_zeros()
        return (foldin + by_their_artists).tocsr(), held_new

    def choose(self, model: HybridVAE, mode: str) -> ModeFit:
        """The (anchor, weights) a mode ranks with. Per anchor (the configured one and
        ``discover.anchor_choices``) the weights are fitted from the mode's prior (unless
        ``discover.weights`` sets every part); an anchor other than the configured one wins
        only by a real per-user gain over the configured anchor with its weights."""
        d = self.cfg.discover
        prior = self.new_artist_weights if mode == "new-artists" else self.weights
        fixed = len(d.weights.given()) == 4
        base = prior_anchor(self.cfg, mode)
        excluded, heldout = self._targets(mode)
        anchors = [base, *sorted(set(d.anchor_choices) - {base})]
        tried: dict[float, tuple[HybridWeights, np.ndarray, dict]] = {}
        for a in anchors:
            scorer = self._scorer(model, a)
            inputs = scorer.user_inputs(self.split.foldin, self.foldin_catalogue)
            pools = self._pools(scorer, inputs, excluded, heldout)
            weights, report = prior, {"used": "configured", "reason": "discover.weights"}
            if not fixed:
                weights, report = fit_weights(*pools, default=prior, z=d.fit_z)
            tried[a] = (weights, pool_ndcg(*pools, weights), report)
        n_base = len(tried[base][1])
        comparable = [a for a in anchors if n_base and len(tried[a][1]) == n_base]
        best = max(comparable or [base], key=lambda a: (_mean(tried[a][1]), a == base))
        gain, se = paired_gain(tried[best][1], tried[base][1]) if n_base else (0.0, 0.0)
        chosen = best if best != base and gain_is_real(gain, se, MIN_GAIN, d.fit_z) else base
        weights, per_user, report = tried[chosen]
        flat = {k: v for k, v in report.items() if isinstance(v, (int, float, str))}
        flat |= {f"ndcg_anchor_{a:g}": _mean(tried[a][1]) for a in anchors}
        flat |= {
            "ndcg": _mean(per_user),
            "anchor": chosen,
            "anchor_reason": f"best {best:g} gains {gain:.4f} (se {se:.4f}) over {base:g}",
        }
        return ModeFit(chosen, weights, flat)

    def _pools(
        self,
        scorer: HybridScorer,
        inputs: UserInputs,
        excluded: sp.csr_matrix,
        heldout: sp.csr_matrix,
    ) -> tuple[list, list, np.ndarray]:
        pool = CandidatePool(self.n_users)
        for start in range(0, len(self.space), CHUNK):
            rows = slice(start, min(start + CHUNK, len(self.space)))
            pool.add(scorer.parts(inputs, rows), start, excluded[:, rows])
        return pool.labelled(heldout)

    def fit_weights(
        self,
        scorer: HybridScorer,
        inputs: UserInputs,
        excluded: sp.csr_matrix,
        heldout: sp.csr_matrix,
    ) -> tuple[HybridWeights, dict]:
        """Coordinate ascent on the validation users' candidate pools (hybrid.fit_weights):
        ``excluded`` (U, n_db) never candidates, ``heldout`` (U, n_db) the targets."""
        pools = self._pools(scorer, inputs, excluded, heldout)
        return fit_weights(*pools, default=self.weights, z=self.cfg.discover.fit_z)


def _mean(values: np.ndarray) -> float:
    return float(np.mean(values)) if len(values) else float("nan")


def _catalogue_columns(space_rows: sp.csr_matrix, space: TrackSpace, n_catalogue: int):
    """(U, n_db) -> (U, n_catalogue): the same plays in the model's catalogue columns."""
    inside = np.flatnonzero(space.catalogue_index >= 0)
    pick = sp.csr_matrix(
        (np.ones(len(inside), np.float32), (inside, space.catalogue_index[inside])),
        shape=(len(space), n_catalogue),
    )
    return sp.csr_matrix(sp.csr_matrix(space_rows, dtype=np.float32) @ pick)
