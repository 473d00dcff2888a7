"""The artist model trained beside the VAE: artist neighbours from training users' plays.

A measured choice (docs/BENCHMARKS.md, "Hybrid discovery"): cosine item-item over the binary
users x artists matrix scored as well as an artist head inside the VAE (a Mult-VAE over the
artist bag) on spotify-2024 and better on Last.fm-2k, at a fraction of the cost, so the
collaborative artist signal comes from :class:`~deepvibe.model.artist_cf.ArtistCF`.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import scipy.sparse as sp

from deepvibe.data.artists import artist_matrix
from deepvibe.data.dataset import Dataset
from deepvibe.model.artist_cf import ArtistCF

log = logging.getLogger(__name__)


def fit_artist_cf(ds: Dataset, max_neighbours: int = 200) -> ArtistCF | None:
    """ArtistCF over the training users' rows (every played track whose artist the features
    table knows, catalogue or not); None when the data carries no artists."""
    tracks, plays = ds.tracks, ds.all_plays
    if tracks is None or plays is None or tracks.artist_lists is None:
        return None
    keys, track_artists = artist_matrix(tracks.artist_lists)  # (n_table, A)
    if track_artists.nnz == 0:
        return None
    rows = pd.Index(tracks.track_ids).get_indexer(plays.track_ids)  # play column -> table row
    known = np.flatnonzero(rows >= 0)
    pick = sp.csr_matrix(
        (np.ones(len(known), np.float32), (known, rows[known])),
        shape=(len(plays.track_ids), len(tracks.track_ids)),
    )
    train = plays.matrix[np.flatnonzero(ds.rows_of("train"))]
    user_artists = sp.csr_matrix(sp.csr_matrix(train, dtype=np.float32) @ pick @ track_artists)
    user_artists.data[:] = 1.0
    cf = ArtistCF.fit(user_artists, keys, max_neighbours=max_neighbours)
    log.info("artist model: %d artists from %d training rows", cf.n_artists, user_artists.shape[0])
    return cf
