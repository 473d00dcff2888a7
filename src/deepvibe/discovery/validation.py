"""Validation by what ``discover`` is judged on: ranking the track database.

The validation users' tracks that the database holds with features are split 80/20 once (by
the seed); after an epoch the fold-in part is scored through the hybrid (the same
:class:`~deepvibe.discovery.signals.HybridScorer` discover uses), every database track is
ranked with the fold-in masked, and NDCG@100 / Recall@20 / Recall@50 are measured against the
held-out part — which, on playlist data, is mostly outside the catalogue. Each epoch is scored
with the weights discover would use: fitted on these users for that epoch (so the number is
in-sample for the weights, a few hundredths optimistic; it selects epochs, it is not a test
figure). The best epoch keeps them, plus a set fitted for ``--new-artists``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch

from deepvibe.config import Config
from deepvibe.data.dataset import Dataset, uses_database_validation
from deepvibe.data.tables import load_track_table
from deepvibe.discovery.hybrid import DEFAULT_WEIGHTS, CandidatePool, HybridWeights, fit_weights
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


def load_database_space(cfg: Config, ds: Dataset) -> TrackSpace:
    """The configured track database (``data.database``) as a :class:`TrackSpace` in the
    dataset's standardised feature space (tracks with incomplete features dropped)."""
    d = cfg.data
    table = load_track_table(
        d.database, d.feature_track_column, d.feature_columns, d.popularity_column,
        d.name_column, d.artist_column, what="track database", drop_incomplete=True,
        max_incomplete=0.5,
    )  # fmt: skip
    return TrackSpace.from_table(table, ds.scaler, ds.track_ids)


def configured_weights(cfg: Config) -> HybridWeights:
    """``discover.weights`` where the config sets them, else the measured defaults."""
    return HybridWeights.from_dict(cfg.discover.weights.given(), base=DEFAULT_WEIGHTS)


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

    def _scorer(self, model: HybridVAE) -> HybridScorer:
        return HybridScorer.from_settings(
            model, self.features, self.space, self.weights, self.cfg.discover, self.artist_cf
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
        """The artist model and the discovery weights fitted at this (the best) epoch."""
        extras: dict[str, Any] = {"validation": self.name}
        if self.artist_cf is not None:
            extras["artist_cf"] = self.artist_cf.to_state()
        if self._last is None or not self.enough:
            return extras
        scorer, inputs, weights, report = self._last
        foldin = sp.csr_matrix(self.split.foldin)
        by_their_artists = self.space.same_artist_tracks(foldin)  # (U, n_db) new-artist mode
        heldout = sp.csr_matrix(self.split.heldout)
        held_new = (heldout - heldout.multiply(by_their_artists > 0)).tocsr()
        held_new.eliminate_zeros()
        excluded = (foldin + by_their_artists).tocsr()
        fits = [("discovery_weights", weights, report)]
        fits.append(("discovery_weights_new_artists", *self.fit_weights(
            scorer, inputs, excluded, held_new)))  # fmt: skip
        for key, weights, report in fits:
            extras[key] = weights.to_dict()
            if report is None:
                continue
            extras[key.replace("weights", "fit")] = {
                k: v for k, v in report.items() if isinstance(v, (int, float, str))
            }
            log.info("%s (%s: %s): %s", key, report["used"], report["reason"], weights)
        return extras

    def fit_weights(
        self,
        scorer: HybridScorer,
        inputs: UserInputs,
        excluded: sp.csr_matrix,
        heldout: sp.csr_matrix,
    ) -> tuple[HybridWeights, dict]:
        """Coordinate ascent on the validation users' candidate pools (hybrid.fit_weights):
        ``excluded`` (U, n_db) never candidates, ``heldout`` (U, n_db) the targets."""
        pool = CandidatePool(self.n_users)
        for start in range(0, len(self.space), CHUNK):
            rows = slice(start, min(start + CHUNK, len(self.space)))
            pool.add(scorer.parts(inputs, rows), start, excluded[:, rows])
        parts, marks, n_heldout = pool.labelled(heldout)
        return fit_weights(parts, marks, n_heldout, default=self.weights)


def _catalogue_columns(space_rows: sp.csr_matrix, space: TrackSpace, n_catalogue: int):
    """(U, n_db) -> (U, n_catalogue): the same plays in the model's catalogue columns."""
    inside = np.flatnonzero(space.catalogue_index >= 0)
    pick = sp.csr_matrix(
        (np.ones(len(inside), np.float32), (inside, space.catalogue_index[inside])),
        shape=(len(space), n_catalogue),
    )
    return sp.csr_matrix(sp.csr_matrix(space_rows, dtype=np.float32) @ pick)
