"""From the config's files to what training needs: the catalogue, the standardised features
and the user split."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

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
    # Every played track, not only the catalogue: what database validation ranks and what the
    # artist model learns from (rows align with ``interactions``).
    all_plays: Interactions | None = None
    tracks: TrackTable | None = None  # the whole features table (catalogue and beyond)

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
    groups = _split(inter, cfg, test_fraction, _scorable_users(inter, tracks, cfg), sources[0])
    train_rows = rows_of_users(inter.row_users, groups["train"])
    catalogue_ids = select_catalogue(inter, tracks, cfg.data.max_tracks, train_rows, sources)
    all_plays = inter
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
    ds = Dataset(inter, catalogue, scaler, feats, groups, all_plays, tracks)
    log.info("data: %s", ds.summary())
    return ds


MIN_VALIDATION_USERS = 20  # fewer scorable validation users than this: model selection on noise
MAX_VALIDATION_FRACTION = 0.25  # growing validation never takes more than this share of users


def uses_database_validation(cfg: Config) -> bool:
    """Validation ranks the track database (what ``discover`` does) when there is one with
    features; otherwise it ranks the catalogue (the strong-generalization protocol)."""
    return bool(cfg.data.database and cfg.data.feature_columns and cfg.data.features) and (
        Path(cfg.data.database).is_file()
    )


def _scorable_users(inter: Interactions, tracks: TrackTable | None, cfg: Config) -> set[str]:
    """Users whose current row has >= 5 tracks validation can rank: tracks with features for
    database validation, any played track otherwise (the catalogue is not chosen yet)."""
    users, rows = inter.user_matrix()
    if tracks is not None and uses_database_validation(cfg):
        has_features = pd.Index(tracks.track_ids).get_indexer(inter.track_ids) >= 0
        rows = rows[:, np.flatnonzero(has_features)]
    return set(users[np.diff(rows.tocsr().indptr) >= 5].tolist())


def _split(
    inter: Interactions, cfg: Config, test_fraction: float, scorable: set[str], source: str
) -> dict[str, np.ndarray]:
    """Users split by ``cfg.seed``; validation grows (up to 25% of users) until it holds
    ``MIN_VALIDATION_USERS`` scorable users, so small data sets still select on signal."""
    val_fraction = cfg.train.val_fraction
    while True:
        fractions = (val_fraction,) + ((test_fraction,) if test_fraction > 0 else ())
        try:
            parts = split_users(inter.user_ids, fractions, np.random.default_rng(cfg.seed))
        except ValueError as exc:
            raise DataError(f"{source}: too few users to split ({exc}); add users") from None
        n_scorable = sum(u in scorable for u in parts[1].tolist())
        grown = min(MAX_VALIDATION_FRACTION, val_fraction + 0.05)
        if n_scorable >= MIN_VALIDATION_USERS or grown <= val_fraction:
            break
        val_fraction = grown
    if val_fraction != cfg.train.val_fraction:
        log.info(
            "validation: %.0f%% of users (train.val_fraction %.0f%% gave fewer than %d scorable "
            "users); %d validation users, %d scorable",
            100 * val_fraction, 100 * cfg.train.val_fraction, MIN_VALIDATION_USERS,
            len(parts[1]), n_scorable,
        )  # fmt: skip
    names = ["train", "validation", "test"][: len(parts)]
    return dict(zip(names, parts, strict=True))
