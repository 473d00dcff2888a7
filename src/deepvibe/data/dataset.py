"""From the config's files to what training needs: the catalogue, the standardised features
and the user split."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from deepvibe.config import Config
from deepvibe.data.catalogue import load_catalogue_features, select_catalogue
from deepvibe.data.tables import FeatureScaler, Interactions, TrackTable, load_interactions
from deepvibe.errors import DataError
from deepvibe.ranking.protocol import split_users

log = logging.getLogger(__name__)


def rows_of_users(row_users: np.ndarray, users: np.ndarray) -> np.ndarray:
    """(n_rows,) bool: whose user is in ``users``. A hash lookup (pandas Index), never
    ``np.isin`` on text, which compares every pair (minutes for 100,000 users)."""
    return pd.Index(np.asarray(users, dtype=object)).get_indexer(row_users) >= 0


@dataclass(frozen=True)
class Dataset:
    interactions: Interactions  # all rows, columns = catalogue (model order)
    catalogue: TrackTable | None  # raw features + metadata of the catalogue, same order
    scaler: FeatureScaler
    track_features: np.ndarray  # (n_tracks, f) float32, standardised
    user_groups: dict[str, np.ndarray]  # "train", "validation" (and "test") -> user ids

    @property
    def track_ids(self) -> np.ndarray:
        return self.interactions.track_ids

    def rows_of(self, group: str) -> np.ndarray:
        """Boolean mask of the interaction rows whose user is in ``group``."""
        return rows_of_users(self.interactions.row_users, self.user_groups[group])

    def summary(self) -> str:
        m = self.interactions.matrix
        groups = ", ".join(f"{k} {len(v)}" for k, v in self.user_groups.items())
        density = m.nnz / max(1, m.shape[0] * m.shape[1])
        return (
            f"{m.shape[0]} rows, {len(self.interactions.user_ids)} users ({groups}), "
            f"{m.shape[1]} catalogue tracks, {m.nnz} interactions (density {density:.4%}), "
            f"{self.track_features.shape[1]} audio features"
        )


def filter_min_counts(
    inter: Interactions, min_track_users: int, min_user_tracks: int
) -> Interactions:
    """Drop tracks heard by fewer than ``min_track_users`` rows, then rows with too few tracks.

    One pass in that order, as in the strong-generalization protocol of Liang et al. (2018).
    """
    if min_track_users > 1:
        binary = inter.matrix.copy()
        binary.data[:] = 1
        users_per_track = np.asarray(binary.sum(axis=0)).ravel()
        keep = np.flatnonzero(users_per_track >= min_track_users)
        inter = Interactions(
            inter.matrix[:, keep].tocsr(), inter.row_users, inter.row_times, inter.track_ids[keep]
        )
    # A row with no plays (an empty history) teaches nothing and cannot be scored: drop it.
    per_row = np.diff(inter.matrix.indptr)
    empty = per_row == 0
    if empty.any():
        log.warning(
            "%d of %d interaction rows have no plays (empty histories) and were skipped",
            int(empty.sum()), len(per_row),
        )  # fmt: skip
    keep_rows = per_row >= max(1, min_user_tracks)
    if not keep_rows.all():
        inter = inter.select_rows(keep_rows)
    if inter.matrix.shape[0] == 0 or inter.matrix.shape[1] == 0:
        raise DataError(
            "no interactions left after data.min_track_users / data.min_user_tracks "
            "(or every row is empty); lower them or check the interactions file"
        )
    return inter


def build_dataset(
    cfg: Config,
    interactions: Interactions | None = None,
    tracks: TrackTable | None = None,
    test_fraction: float = 0.0,
) -> Dataset:
    """Load (unless given), filter, split users by ``cfg.seed`` and fix the catalogue.

    The catalogue is chosen from training users' plays only, so held-out users never shape it.
    """
    sources = (
        "interactions" if interactions is not None else str(cfg.data.interactions),
        "the features table" if tracks is not None else str(cfg.data.features),
    )
    inter = interactions if interactions is not None else load_interactions(cfg.data)
    if tracks is None:
        tracks = load_catalogue_features(cfg.data)
    inter = filter_min_counts(inter, cfg.data.min_track_users, cfg.data.min_user_tracks)
    rng = np.random.default_rng(cfg.seed)
    fractions = (cfg.train.val_fraction,) + ((test_fraction,) if test_fraction > 0 else ())
    try:
        parts = split_users(inter.user_ids, fractions, rng)
    except ValueError as exc:
        raise DataError(f"{sources[0]}: too few users to split ({exc}); add users") from None
    names = ["train", "validation", "test"][: len(parts)]
    groups = dict(zip(names, parts, strict=True))
    train_rows = rows_of_users(inter.row_users, groups["train"])
    catalogue_ids = select_catalogue(inter, tracks, cfg.data.max_tracks, train_rows, sources)
    inter = inter.select_columns(catalogue_ids)
    if tracks is not None:
        rows = pd.Index(tracks.track_ids).get_indexer(catalogue_ids)
        catalogue = tracks.take(rows)
        scaler = FeatureScaler.fit(catalogue.features, catalogue.feature_columns)
        feats = scaler.transform(catalogue.features).astype(np.float32)
    else:
        catalogue = None
        scaler = FeatureScaler.fit(np.zeros((len(catalogue_ids), 0)), ())
        feats = np.zeros((len(catalogue_ids), 0), dtype=np.float32)
    ds = Dataset(inter, catalogue, scaler, feats, groups)
    log.info("data: %s", ds.summary())
    return ds
