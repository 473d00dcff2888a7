"""The users to recommend for: training users by id, or listening histories read from a file,
aligned to the model's catalogue.

Shapes: B users, n catalogue tracks, V distinct tracks in the users' histories.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.sparse as sp

from deepvibe.config import DataConfig
from deepvibe.data.ids import id_index
from deepvibe.data.tables import (
    Interactions,
    TrackTable,
    load_interactions,
)
from deepvibe.discovery.database import TrackDatabase, read_all_names
from deepvibe.errors import DataError

log = logging.getLogger(__name__)

NO_CATALOGUE_TRACK = "no track in the model's catalogue"
NO_DATABASE_TRACK = "no track in the model's catalogue or the track database"
_SHOWN = 5  # skipped users named in a warning


def load_training_users(data: DataConfig) -> Interactions:
    """The training interactions named in the config (for users given by id)."""
    return load_interactions(data)


class HistoryNames:
    """Track ids with names, artists and popularity for matching account-data plays by name:
    the catalogue first, then the database. Read only if a history needs it (the database's
    names take memory in proportion to its size).

    Duck-types the parts of :class:`TrackTable` that name matching reads. A catalogue row wins
    a name shared with a database row (its popularity is lifted above 100 here, since the
    matcher prefers the most popular version), so the model sees the play when it can.
    """

    def __init__(self, catalogue: TrackTable, database: TrackDatabase | None) -> None:
        self._catalogue = catalogue
        self._database = database
        self.feature_columns: tuple[str, ...] = ()

    @functools.cached_property
    def _table(self) -> TrackTable:
        cat = self._catalogue
        parts = [cat] if cat.names is not None and cat.artists is not None else []
        if self._database is not None:
            db = read_all_names(self._database)
            if db.names is not None and db.artists is not None:
                parts.append(db)
        if not parts:
            return TrackTable(np.empty(0, dtype=object), np.zeros((0, 0)), ())

        def popularity(t: TrackTable, lift: float) -> np.ndarray:
            pop = np.zeros(len(t.track_ids)) if t.popularity is None else t.popularity
            return np.nan_to_num(np.asarray(pop, dtype=np.float64), nan=-1.0) + lift

        lifts = [101.0 if p is cat else 0.0 for p in parts]
        return TrackTable(
            np.concatenate([p.track_ids for p in parts]).astype(object),
            np.zeros((sum(len(p.track_ids) for p in parts), 0)), (),
            np.concatenate([popularity(p, lift) for p, lift in zip(parts, lifts, strict=True)]),
            np.concatenate([p.names for p in parts]).astype(object),  # type: ignore[misc]
            np.concatenate([p.artists for p in parts]).astype(object),  # type: ignore[misc]
        )  # fmt: skip

    @property
    def track_ids(self) -> np.ndarray:
        return self._table.track_ids

    @property
    def features(self) -> np.ndarray:
        return self._table.features

    @property
    def popularity(self) -> np.ndarray | None:
        return self._table.popularity

    @property
    def names(self) -> np.ndarray | None:
        return self._table.names

    @property
    def artists(self) -> np.ndarray | None:
        return self._table.artists

    def take(self, index: np.ndarray) -> TrackTable:
        return self._table.take(index)


@dataclass(frozen=True)
class UserBatch:
    """Users aligned to the model's catalogue.

    ``history`` (every track a user has played, catalogue or not) is kept as a sparse
    (B, V) matrix over ``history_ids``, so 100,000 users cost their plays, not Python sets;
    :meth:`history_sets` gives sets for a block of users.
    """

    users: np.ndarray  # (B,) user ids
    plays: sp.csr_matrix  # (B, n) current listening vector over the catalogue
    history_matrix: sp.csr_matrix  # (B, V) 1 where the user played the track
    history_ids: np.ndarray  # (V,) track ids of the history columns
    unknown: np.ndarray  # (B,) distinct played tracks that are not in the catalogue
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (user, reason), not in B

    @property
    def history(self) -> list[set[str]]:
        """Every track id each user has played (never recommended back)."""
        return self.history_sets(slice(0, len(self.users)))

    def history_sets(self, block: slice) -> list[set[str]]:
        rows = self.history_matrix[block]
        return [
            set(self.history_ids[rows.indices[a:b]].tolist())
            for a, b in zip(rows.indptr[:-1], rows.indptr[1:], strict=True)
        ]

    def select(self, block: slice) -> UserBatch:
        return UserBatch(
            self.users[block], self.plays[block], self.history_matrix[block], self.history_ids,
            self.unknown[block],
        )  # fmt: skip


def align_users(
    inter: Interactions,
    catalogue_ids: np.ndarray,
    users: list[str] | np.ndarray | None = None,
    source: str = "interactions",
    database_ids: np.ndarray | None = None,
) -> UserBatch:
    """Current vectors (each user's latest row) mapped onto the catalogue columns.

    History = the union of all the user's rows. Unknown user ids are an error that names
    them. A user with no catalogue track, and (with ``database_ids``, the hybrid's database)
    no history track in the database either, cannot be placed: they are left out
    (``skipped``, with the reason) and a warning names the first few; when that leaves nobody,
    it is an error. With ``database_ids`` a user with database tracks only is placed from
    their artists and audio profile.
    """
    known = pd.Index(pd.unique(inter.row_users))
    wanted = pd.Index(list(inter.user_ids) if users is None else [str(u) for u in users])
    missing = wanted[known.get_indexer(wanted) < 0]
    if len(missing):
        shown = ", ".join(repr(u) for u in missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise DataError(
            f"user {shown} not found in {source} ({len(known)} users); check the id, "
            "or pass --history FILE for users outside the training data"
        )
    wanted = wanted.unique()  # each user once, order kept
    ids, rows = inter.latest_rows(np.asarray(wanted, dtype=object))
    ids = np.asarray(ids, dtype=object)
    # (V,) -1: not in catalogue
    column = id_index(catalogue_ids).get_indexer(id_index(inter.track_ids))
    current = inter.matrix[rows].tocoo()
    keep = column[current.col] >= 0
    plays = sp.csr_matrix(
        (current.data[keep], (current.row[keep], column[current.col[keep]])),
        shape=(len(ids), len(catalogue_ids)),
        dtype=np.float32,
    )
    # History: every row of each wanted user, summed by a (B, rows) 0/1 matrix in one product.
    row_user = pd.Index(ids).get_indexer(inter.row_users)
    mine = np.flatnonzero(row_user >= 0)
    owner = sp.csr_matrix(
        (np.ones(len(mine), dtype=np.float32), (row_user[mine], mine)),
        shape=(len(ids), inter.matrix.shape[0]),
    )
    history = (owner @ inter.matrix).tocsr()
    history.data[:] = 1.0
    history.eliminate_zeros()
    history.sort_indices()
    outside = sp.csr_matrix((column < 0).astype(np.float32)[None, :])
    unknown = np.asarray(history.multiply(outside).sum(axis=1)).ravel().astype(np.int64)
    batch = UserBatch(ids, plays, history, np.asarray(inter.track_ids, dtype=object), unknown)
    return _drop_unplaceable(batch, len(catalogue_ids), source, database_ids)


def _drop_unplaceable(
    batch: UserBatch, n_catalogue: int, source: str, database_ids: np.ndarray | None = None
) -> UserBatch:
    """Leave out users with nothing to place them by; warn once; refuse when nobody is left."""
    empty = np.diff(batch.plays.indptr) == 0
    if database_ids is not None and empty.any():
        in_db = id_index(database_ids).get_indexer(id_index(batch.history_ids)) >= 0
        in_db = in_db.astype(np.float32)
        empty &= np.asarray(batch.history_matrix @ in_db).ravel() == 0
        if empty.any():
            skipped = [str(u) for u in batch.users[empty]]
            return _skip(batch, empty, skipped, NO_DATABASE_TRACK, source)
    if not empty.any():
        return batch
    skipped = [str(u) for u in batch.users[empty]]
    shown = ", ".join(repr(u) for u in skipped[:_SHOWN]) + (" ..." if len(skipped) > _SHOWN else "")
    if empty.all():
        raise DataError(
            f"{source}: user {shown} has {NO_CATALOGUE_TRACK} ({n_catalogue} tracks), so the "
            "model cannot place them; give a history with some of the tracks it was trained on"
        )
    log.warning(
        "%s: skipped %d of %d users with %s (%d tracks), which the model cannot place: %s",
        source, len(skipped), len(batch.users), NO_CATALOGUE_TRACK, n_catalogue, shown,
    )  # fmt: skip
    return _without(batch, empty, [(u, NO_CATALOGUE_TRACK) for u in skipped])


def _skip(
    batch: UserBatch, empty: np.ndarray, skipped: list[str], reason: str, source: str
) -> UserBatch:
    shown = ", ".join(repr(u) for u in skipped[:_SHOWN]) + (" ..." if len(skipped) > _SHOWN else "")
    if empty.all():
        raise DataError(f"{source}: user {shown} has {reason}; nothing to recommend from")
    log.warning(
        "%s: skipped %d of %d users with %s: %s", source, len(skipped), len(batch.users),
        reason, shown,
    )  # fmt: skip
    return _without(batch, empty, [(u, reason) for u in skipped])


def _without(batch: UserBatch, empty: np.ndarray, skipped: list[tuple[str, str]]) -> UserBatch:
    keep = np.flatnonzero(~empty)
    return UserBatch(
        batch.users[keep], batch.plays[keep], batch.history_matrix[keep], batch.history_ids,
        batch.unknown[keep], skipped,
    )  # fmt: skip
