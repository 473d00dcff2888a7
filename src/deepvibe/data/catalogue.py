"""The catalogue: the tracks the model scores, chosen from training users' plays."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd

from deepvibe.config import DataConfig
from deepvibe.data.tables import Interactions, TrackTable, load_track_table
from deepvibe.errors import DataError

log = logging.getLogger(__name__)


def load_catalogue_features(cfg: DataConfig, require_artists: bool = False) -> TrackTable | None:
    """The features table of the config, or None for pure collaborative filtering.

    A few rows with missing or non-numeric values (at most 10%) are skipped with a warning;
    those tracks then count as tracks without features. Popularity, names and artists are read
    when the file has their columns; ``require_artists`` makes a missing artist column
    (``data.artist_column``) an error naming the file and the column.
    """
    if not cfg.features or not cfg.feature_columns:
        return None
    if require_artists and not cfg.artist_column:
        raise DataError("data.artist_column is not set; name the artist column of data.features")
    return load_track_table(
        cfg.features,
        cfg.feature_track_column,
        cfg.feature_columns,
        cfg.popularity_column,
        cfg.name_column,
        cfg.artist_column,
        drop_incomplete=True,
        max_incomplete=0.1,
        required=("artist",) if require_artists else (),
    )


def load_database_table(cfg: DataConfig) -> TrackTable:
    """The track database (``data.database``) in memory, read like the features table but
    with up to half its rows allowed to lack features (those are dropped)."""
    return load_track_table(
        cfg.database, cfg.feature_track_column, cfg.feature_columns, cfg.popularity_column,
        cfg.name_column, cfg.artist_column, what="track database", drop_incomplete=True,
        max_incomplete=0.5,
    )  # fmt: skip


def select_catalogue(
    inter: Interactions,
    tracks: TrackTable | None,
    max_tracks: int,
    count_rows: np.ndarray,
    sources: tuple[str, str] = ("interactions", "features table"),
) -> np.ndarray:
    """The ``max_tracks`` most-played track ids that have features, most played first.

    ``count_rows`` (bool mask over rows) says whose plays count: only training users', so the
    vocabulary never peeks at held-out users. ``sources`` names the two files in messages.
    """
    plays = np.asarray(inter.matrix[count_rows].sum(axis=0)).ravel()
    candidates = plays > 0
    if tracks is not None:
        has_features = pd.Index(tracks.track_ids).get_indexer(inter.track_ids) >= 0
        n_missing = int((candidates & ~has_features).sum())
        if n_missing and not (candidates & has_features).any():
            raise DataError(
                f"no played track in {sources[0]} has a row in {sources[1]}: the track ids do "
                f"not overlap (e.g. {inter.track_ids[0]!r} vs {tracks.track_ids[0]!r}); check "
                "the files and data.track_column / data.feature_track_column"
            )
        if n_missing:
            lost = plays[candidates & ~has_features].sum() / max(plays[candidates].sum(), 1e-12)
            log.warning(
                "%d of %d played tracks in %s have no audio features in %s (%.1f%% of plays); "
                "they were left out of the catalogue",
                n_missing, int(candidates.sum()), sources[0], sources[1], 100 * lost,
            )  # fmt: skip
        candidates &= has_features
    idx = np.flatnonzero(candidates)
    if len(idx) == 0:
        raise DataError(f"no played track in {sources[0]} is eligible for the catalogue")
    # Most plays first; ties broken by track id so the order never depends on file order.
    order = np.lexsort((inter.track_ids[idx].astype(str), -plays[idx]))
    return inter.track_ids[idx[order[:max_tracks]]]
