"""The readers: interaction tables and track tables, CSV or Parquet, in chunks.

- :func:`read_long_table` reads every long table (one row per user, track and optionally plays
  and time): ``train``'s interactions, ``prepare``'s sources and ``discover --history`` files.
  :func:`load_interactions` reads the config's interactions file, long or wide (one column per
  track, the original design's layout).
- :func:`iter_track_table` reads every track table (ids, audio features, popularity, names,
  artists) chunk by chunk; :func:`load_track_table` collects it.

Ids go through :mod:`deepvibe.data.ids`, times through :mod:`deepvibe.data.time`, artist cells
through :mod:`deepvibe.data.artists`. Interactions are always a ``scipy.sparse.csr_matrix`` of
shape (rows, tracks) holding plays (or 0/1); a row is one training example: one user, or one
(user, time) pair when the input has a time column. Nothing here builds a dense rows x tracks
array.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from deepvibe.config import DEFAULT_FEATURES, DataConfig
from deepvibe.data.artists import split_artist_column
from deepvibe.data.ids import normalize_track_ids
from deepvibe.data.time import TimeAxis, Times, parse_times
from deepvibe.errors import DataError, DeepVibeError
from deepvibe.fileio import (
    HASH_BLOCK,
    HashingReader,
    check_input_file,
    csv_separator,
    file_sha256,
    first_line,
    is_parquet,
    not_utf8_error,
    read_csv_header,
)

log = logging.getLogger(__name__)

CHUNK_ROWS = 200_000  # rows of a long or track table read at a time
_WIDE_CHUNK_ROWS = 2_000  # rows of a wide table (10,000 columns each) read at a time

# Column names guessed (case-insensitively, first match wins) when a reader is asked to guess.
USER_CANDIDATES = ("user_id", "user", "userid", "username", "user_name")
TRACK_CANDIDATES = (
    "track_id", "trackid", "spotify_track_uri", "track_uri", "spotify_id", "uri", "id", "track",
)  # fmt: skip
PLAYS_CANDIDATES = ("plays", "play_count", "playcount", "plays_count", "n_plays", "count", "weight")
TIME_CANDIDATES = ("week", "ts", "timestamp", "time", "played_at", "datetime", "date", "endtime")
POPULARITY_CANDIDATES = ("popularity", "track_popularity")
NAME_CANDIDATES = ("track_name", "name", "title", "song", "song_name", "track")
ARTIST_CANDIDATES = (
    "artists", "artist", "artist_name", "artist_names", "artists_names", "track_artist",
)  # fmt: skip

# Column names of the frames the long reader returns.
USER, TIME, TRACK, PLAYS = "user_id", "time", "track_id", "plays"

# How a message tells the user to fix a column, by role, when reading the config's files.
CONFIG_HINTS = {
    "user": "data.user_column",
    "track": "data.track_column",
    "plays": "data.plays_column",
    "time": "data.time_column",
    "id": "data.feature_track_column",
    "features": "data.feature_columns",
    "popularity": "data.popularity_column",
    "name": "data.name_column",
    "artist": "data.artist_column",
}
_ROLE_LABELS = {
    "user": "user id", "track": "track id", "plays": "play count", "time": "time",
    "id": "track id", "popularity": "popularity", "name": "track name", "artist": "artists",
}  # fmt: skip


@dataclass(frozen=True)
class Interactions:
    """Plays as a sparse (rows, tracks) matrix with the labels of its rows and columns."""

    matrix: sp.csr_matrix  # (n_rows, n_tracks) float32 plays
    row_users: np.ndarray  # (n_rows,) str: the user of each row
    row_times: np.ndarray | None  # (n_rows,) sortable time of each row, None when untimed
    track_ids: np.ndarray  # (n_tracks,) str

    @property
    def user_ids(self) -> np.ndarray:
        """Distinct users in order of first appearance."""
        return np.asarray(pd.unique(pd.Series(self.row_users, dtype=object)), dtype=object)

    def select_columns(self, track_ids: np.ndarray) -> Interactions:
        """Keep only (and reorder to) ``track_ids``; unknown ids are an error."""
        cols = pd.Index(self.track_ids).get_indexer(track_ids)
        if (cols < 0).any():
            missing = track_ids[int(np.flatnonzero(cols < 0)[0])]
            raise DataError(f"track {missing!r} is not in the interactions")
        return Interactions(self.matrix[:, cols].tocsr(), self.row_users, self.row_times, track_ids)

    def select_rows(self, mask: np.ndarray) -> Interactions:
        times = None if self.row_times is None else self.row_times[mask]
        return Interactions(self.matrix[mask], self.row_users[mask], times, self.track_ids)

    def latest_rows(self, users: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Index of each user's current row (their latest time, else their last row).

        Returns (user_ids, row_index), ordered like ``users`` (default: :attr:`user_ids`).
        """
        order = np.arange(len(self.row_users))
        if self.row_times is not None:
            order = np.lexsort((order, self.row_times))
        in_order = pd.Index(self.row_users[order])
        last = pd.Series(order, index=in_order)[~in_order.duplicated(keep="last")]
        wanted = self.user_ids if users is None else np.asarray(users, dtype=object)
        pos = last.index.get_indexer(wanted)
        if (pos < 0).any():
            raise KeyError(wanted[int(np.flatnonzero(pos < 0)[0])])
        return wanted, last.to_numpy()[pos].astype(np.int64)

    def user_matrix(self, users: np.ndarray | None = None) -> tuple[np.ndarray, sp.csr_matrix]:
        """One row per user: their current (latest) listening vector."""
        wanted, rows = self.latest_rows(users)
        return wanted, self.matrix[rows]


@dataclass(frozen=True)
class TrackTable:
    """Tracks with raw (unstandardised) audio features and optional metadata."""

    track_ids: np.ndarray  # (n,) str, unique
    features: np.ndarray  # (n, f) float64 in original units
    feature_columns: tuple[str, ...]
    popularity: np.ndarray | None = None  # (n,) float in [0, 100]; NaN where unknown
    names: np.ndarray | None = None  # (n,) str
    artists: np.ndarray | None = None  # (n,) str: the artist cell as written, for display
    artist_lists: list[tuple[str, ...]] | None = None  # (n,) the cell split into names
    complete: np.ndarray | None = None  # (n,) bool, only when incomplete rows were kept

    def take(self, index: np.ndarray) -> TrackTable:
        def opt(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[index]

        lists = None
        if self.artist_lists is not None:
            lists = [self.artist_lists[i] for i in np.asarray(index).ravel()]
        return TrackTable(
            self.track_ids[index],
            self.features[index],
            self.feature_columns,
            opt(self.popularity),
            opt(self.names),
            opt(self.artists),
            lists,
            opt(self.complete),
        )


@dataclass(frozen=True)
class FeatureScaler:
    """Per-feature standardisation fitted on the catalogue; stored in every checkpoint."""

    columns: tuple[str, ...]
    mean: np.ndarray  # (f,)
    std: np.ndarray  # (f,), never 0

    @classmethod
    def fit(cls, features: np.ndarray, columns: tuple[str, ...]) -> FeatureScaler:
        if features.shape[1] == 0:
            return cls(columns, np.zeros(0), np.ones(0))
        mean = features.mean(axis=0)
        std = features.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)
        return cls(columns, mean, std)

    def transform(self, features: np.ndarray) -> np.ndarray:
        return (features - self.mean) / self.std

    def inverse(self, standardised: np.ndarray) -> np.ndarray:
        return standardised * self.std + self.mean


# ----------------------------------------------------------------------------- shared helpers


def iter_chunks(
    path: Path,
    columns: list[str] | None,
    text_cols: Collection[str],
    what: str,
    rows: int | None = None,
    digest: Any = None,
) -> Iterator[pd.DataFrame]:
    """``columns`` (None: all, and a row with more fields than the header is an error) of a CSV
    or Parquet file, ``rows`` (default CHUNK_ROWS) rows at a time, with one-line errors naming
    the file. ``digest`` (a hashlib object) receives the whole file's bytes as a CSV is parsed
    (a Parquet file's SHA-256 after its last chunk)."""
    rows = rows or CHUNK_ROWS
    try:
        if is_parquet(path):
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=rows, columns=columns):
                yield batch.to_pandas()
            if digest is not None:
                digest.update(bytes.fromhex(file_sha256(path)))
            return
        with contextlib.ExitStack() as stack:
            source: Any = path
            hashing = None
            if digest is not None:
                raw = stack.enter_context(open(path, "rb"))
                hashing = HashingReader(raw, digest)
                source = stack.enter_context(io.BufferedReader(hashing, buffer_size=HASH_BLOCK))
            reader = pd.read_csv(
                source,
                usecols=columns,
                dtype={c: str for c in text_cols},
                chunksize=rows,
                encoding="utf-8-sig",
                sep=csv_separator(path),
            )
            with reader:
                yield from reader
            if hashing is not None:
                hashing.drain()
    except DeepVibeError:
        raise
    except UnicodeDecodeError as exc:
        raise not_utf8_error(path, what) from exc
    except Exception as exc:  # pandas and pyarrow parse errors
        raise DataError(f"{path}: cannot parse {what} file ({first_line(exc)})") from exc


def _shown(header: list[str], n: int = 10) -> str:
    return ", ".join(header[:n]) + (", ..." if len(header) > n else "")


def _guess(header: list[str], candidates: tuple[str, ...]) -> str | None:
    lower = {h.lower(): h for h in header}
    return next((lower[c] for c in candidates if c in lower), None)


def _resolve(
    header: list[str],
    path: Path,
    what: str,
    role: str,
    name: str | None,
    candidates: tuple[str, ...] | None,
    required: bool,
    hints: Mapping[str, str],
) -> str | None:
    """The column of ``header`` that plays ``role``: ``name``, or (when ``name`` is None and
    ``candidates`` are given) the first common spelling present. A required role that is not
    found is an error naming the file, the columns it has and the flag or key to fix."""
    label, hint = _ROLE_LABELS[role], hints.get(role, CONFIG_HINTS[role])
    if name is None and candidates is not None:
        name = _guess(header, candidates)
        if name is None and required:
            raise DataError(
                f"{path}: cannot tell which column is the {label} (columns: {_shown(header)}); "
                f"pass {hint}"
            )
    if name is None or name in header:
        return name
    if required:
        raise DataError(
            f"{path}: {what} file has no column {name!r} for the {label} "
            f"(columns: {_shown(header)}); fix the file or {hint}"
        )
    return None


def _empty(col: pd.Series) -> np.ndarray:
    return (col.isna() | (col.astype(str).str.strip() == "")).to_numpy()


def _label(value: object) -> str:
    """A cell value for a message: 3 rather than np.float64(3.0), quotes around text."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (int, float, np.number)):
        return str(value)
    return repr(str(value))


def _plays_values(col: pd.Series, path: object, name: str, offset: int) -> np.ndarray:
    """(n,) float64 plays of a column; text, NaN, infinite and negative values are errors."""
    values = pd.to_numeric(col, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    text = np.isnan(values) & col.notna().to_numpy()
    if text.any():
        r = int(np.flatnonzero(text)[0])
        raise DataError(
            f"{path}: column {name!r} row {offset + r + 2} is not a number "
            f"({col.iloc[r]!r}); plays must be numeric"
        )
    bad = ~np.isfinite(values)
    if bad.any():
        r = int(np.flatnonzero(bad)[0])
        raise DataError(
            f"{path}: column {name!r} row {offset + r + 2} is NaN or infinite; "
            "plays must be finite numbers (use 0 for not played)"
        )
    if (values < 0).any():
        r = int(np.flatnonzero(values < 0)[0])
        raise DataError(
            f"{path}: column {name!r} row {offset + r + 2} is negative ({values[r]}); "
            "plays must be >= 0"
        )
    return values


# ----------------------------------------------------------------------------- long tables


@dataclass(frozen=True)
class LongColumns:
    """Columns of a long interaction table; ``None`` means guess from common spellings when
    ``guess`` is set, and not read otherwise. Roles in ``required`` must be found."""

    user: str | None = None
    track: str | None = None
    plays: str | None = None
    time: str | None = None
    guess: bool = False
    required: frozenset[str] = frozenset({"user", "track"})


@dataclass
class LongTable:
    """A long table summed per entry: ``frame`` has user_id[, time], track_id, plays, one row
    per (user[, time], track); ``time`` holds week labels with ``weekly``, else sortable
    times."""

    frame: pd.DataFrame
    n_rows: int  # rows read
    n_missing_id: int = 0  # rows without a user or track id (dropped, only with ``skip_unusable``)
    plays_missing_id: float = 0.0
    n_zero: int = 0  # rows with zero plays (dropped, only with ``skip_unusable``)
    n_merged: int = 0  # rows added into an earlier row of the same entry
    time_kind: str | None = None  # how the time column was read (see deepvibe.data.time)
    time_column: str | None = None


def _long_chunk(
    chunk: pd.DataFrame,
    cols: dict[str, str | None],
    path: object,
    offset: int,
    skip_unusable: bool,
    weekly: bool,
) -> tuple[pd.DataFrame, Times | None, dict[str, float]]:
    """Validate and normalise one chunk: (frame of user_id[, time], track_id, plays; the parsed
    times; counts of skipped rows)."""
    chunk = chunk.reset_index(drop=True)
    user_col, track_col, plays_col, time_col = (cols[k] for k in ("user", "track", "plays", "time"))
    if plays_col:
        plays = _plays_values(chunk[plays_col], path, plays_col, offset)
    else:
        plays = np.ones(len(chunk))
    missing = _empty(chunk[user_col]) | _empty(chunk[track_col])
    counts = {"missing": 0, "missing_plays": 0.0, "zero": 0}
    keep = np.ones(len(chunk), dtype=bool)
    if skip_unusable:
        zero = ~missing & (plays == 0)
        counts = {
            "missing": int(missing.sum()),
            "missing_plays": float(plays[missing].sum()),
            "zero": int(zero.sum()),
        }
        keep = ~missing & ~zero
    elif missing.any():
        r = int(np.flatnonzero(missing)[0])
        col = user_col if _empty(chunk[user_col])[r] else track_col
        raise DataError(f"{path}: column {col!r} row {offset + r + 2} is empty")
    sub = chunk[keep]
    part = pd.DataFrame(
        {
            USER: sub[user_col].astype(str).str.strip().to_numpy(dtype=object),
            TRACK: normalize_track_ids(sub[track_col]),
            PLAYS: plays[keep],
        }
    )
    times = None
    if time_col:
        # Rows are numbered in the file, so parse the whole chunk and keep the kept rows.
        times = parse_times(chunk[time_col], path, time_col, offset)
        values = times.weeks() if weekly else times.values
        part.insert(1, TIME, values[keep])
    return part, times, counts


def read_long_table(
    path: str | Path,
    columns: LongColumns,
    *,
    time: str | None = None,
    skip_unusable: bool = False,
    what: str = "interactions",
    hints: Mapping[str, str] | None = None,
    axis: TimeAxis | None = None,
) -> LongTable:
    """Read a long table in chunks of CHUNK_ROWS rows, summing plays per entry.

    ``time``: None ignores any time column; ``"rows"`` keeps sortable times (one training row
    per user and time); ``"weeks"`` buckets them into ISO weeks (``prepare --weekly``). Times
    are read by :func:`deepvibe.data.time.parse_times`; ``axis`` checks that several sources
    put them on one scale. Rows without a user or track id are an error, or with
    ``skip_unusable`` dropped and counted together with rows of zero plays. Plays that are not
    numbers, NaN or negative are always an error naming the row.
    """
    p = check_input_file(path, what)
    header = read_csv_header(p, what)
    hints = hints or CONFIG_HINTS
    guess = columns.guess
    found: dict[str, str | None] = {}
    for role, name, candidates in (
        ("user", columns.user, USER_CANDIDATES),
        ("track", columns.track, TRACK_CANDIDATES),
        ("plays", columns.plays, PLAYS_CANDIDATES),
        ("time", columns.time, TIME_CANDIDATES),
    ):
        if role == "time" and time is None:
            found[role] = None
            continue
        need = role in columns.required
        found[role] = _resolve(
            header, p, what, role, name, candidates if guess else None, need, hints
        )
    usecols = list(dict.fromkeys(c for c in found.values() if c))
    weekly = time == "weeks"
    axis = axis if axis is not None else TimeAxis(weekly)
    parts: list[pd.DataFrame] = []
    table = LongTable(pd.DataFrame(), 0, time_column=found["time"])
    text_cols = [found["user"], found["track"]]
    for chunk in iter_chunks(p, usecols, [c for c in text_cols if c], what):
        part, times, counts = _long_chunk(chunk, found, p, table.n_rows, skip_unusable, weekly)
        if times is not None:
            axis.add(times.kind, f"{p}: column {found['time']!r}")
            kinds = (table.time_kind or times.kind).split(" and ")
            table.time_kind = " and ".join(dict.fromkeys([*kinds, times.kind]))
        table.n_rows += len(chunk)
        table.n_missing_id += counts["missing"]
        table.plays_missing_id += counts["missing_plays"]
        table.n_zero += counts["zero"]
        keys = [USER, TIME, TRACK] if TIME in part.columns else [USER, TRACK]
        parts.append(part.groupby(keys, sort=False, as_index=False)[PLAYS].sum())
    if table.n_rows == 0:
        raise DataError(f"{p}: {what} file has a header but no rows")
    kept = table.n_rows - table.n_missing_id - table.n_zero
    frame = pd.concat(parts, ignore_index=True)
    keys = [USER, TIME, TRACK] if TIME in frame.columns else [USER, TRACK]
    table.frame = frame.groupby(keys, sort=False, as_index=False)[PLAYS].sum()
    table.n_merged = kept - len(table.frame)
    return table


def interactions_from_long(
    frame: pd.DataFrame,
    user_column: str,
    track_column: str,
    plays_column: str | None = None,
    time_column: str | None = None,
    source: Path | str = "interactions",
) -> Interactions:
    """Interactions from long rows already in memory (a user id, a track id, optionally plays
    and a time); the same checks as :func:`read_long_table`; duplicate entries are summed."""
    if len(frame) == 0:
        raise DataError(f"{source}: interactions table has a header but no rows")
    cols = {"user": user_column, "track": track_column, "plays": plays_column, "time": time_column}
    part, times, _ = _long_chunk(frame, cols, source, 0, False, False)
    n_rows = len(part)
    keys = [USER, TIME, TRACK] if TIME in part.columns else [USER, TRACK]
    summed = part.groupby(keys, sort=False, as_index=False)[PLAYS].sum()
    if len(summed) < n_rows:
        log.warning(
            "%s: %d duplicate rows were merged by summing plays", source, n_rows - len(summed)
        )
    return long_to_interactions(summed)


def long_to_interactions(frame: pd.DataFrame) -> Interactions:
    """The (rows, tracks) matrix of a summed long frame (columns as :class:`LongTable`);
    rows are users (or (user, time) pairs) and tracks in order of first appearance."""
    users = frame[USER].to_numpy(dtype=object)
    if TIME in frame.columns:
        row_key = pd.MultiIndex.from_arrays([users, frame[TIME].to_numpy()])
        row_codes, row_labels = pd.factorize(row_key, sort=False)
        row_users = np.asarray(row_labels.get_level_values(0), dtype=object)
        row_times = np.asarray(row_labels.get_level_values(1))
    else:
        row_codes, row_labels = pd.factorize(users, sort=False)
        row_users = np.asarray(row_labels, dtype=object)
        row_times = None
    col_codes, col_labels = pd.factorize(frame[TRACK].to_numpy(dtype=object), sort=False)
    matrix = sp.csr_matrix(
        (frame[PLAYS].to_numpy(dtype=np.float32), (row_codes, col_codes)),
        shape=(len(row_labels), len(col_labels)),
    )
    matrix.sum_duplicates()
    matrix.eliminate_zeros()
    return Interactions(matrix, row_users, row_times, np.asarray(col_labels, dtype=object))


def detect_format(header: list[str], cfg: DataConfig) -> str:
    if cfg.format != "auto":
        return cfg.format
    return "long" if cfg.track_column in header else "wide"


def load_interactions(cfg: DataConfig) -> Interactions:
    """Read the interactions file named in the config (wide or long, CSV or Parquet)."""
    path = check_input_file(cfg.interactions, "interactions")
    header = read_csv_header(path, "interactions")
    if cfg.user_column not in header:
        raise DataError(
            f"{path}: interactions file has no user column {cfg.user_column!r} "
            f"(first columns: {', '.join(header[:5])}); set data.user_column"
        )
    if detect_format(header, cfg) == "wide":
        return _load_wide(path, header, cfg)
    columns = LongColumns(cfg.user_column, cfg.track_column, cfg.plays_column, cfg.time_column)
    table = read_long_table(path, columns, time="rows" if cfg.time_column else None)
    if table.n_merged:
        log.warning("%s: %d duplicate rows were merged by summing plays", path, table.n_merged)
    return long_to_interactions(table.frame)


# ----------------------------------------------------------------------------- wide tables


def _wide_values(frame: pd.DataFrame, path: Path, row_offset: int) -> np.ndarray:
    """(rows, tracks) float64 plays of a chunk; the first bad cell is an error naming it."""
    try:
        values = frame.to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        for col in frame.columns:
            _plays_values(frame[col], path, col, row_offset)
        values = np.full(frame.shape, np.nan)
    bad = ~np.isfinite(values) | (values < 0)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        _plays_values(frame.iloc[[r], c], path, frame.columns[c], row_offset + int(r))
        raise DataError(f"{path}: row {row_offset + r + 2} has plays that are not numbers")
    return values


def _load_wide(path: Path, header: list[str], cfg: DataConfig) -> Interactions:
    id_cols = [cfg.user_column]
    if cfg.time_column and cfg.time_column in header:
        id_cols.append(cfg.time_column)
    track_cols = [c for c in header if c not in id_cols]
    if not track_cols:
        raise DataError(f"{path}: wide interactions file has no track columns after the ids")
    unnamed = [i for i, c in enumerate(header) if c.startswith("Unnamed: ") or not c.strip()]
    if unnamed:
        raise DataError(
            f"{path}: column {unnamed[0] + 1} of the interactions header has no name; every "
            "column after the ids must be a track id (remove index columns or trailing commas)"
        )
    track_ids = normalize_track_ids(track_cols)
    uniq, counts = np.unique(track_ids.astype(str), return_counts=True)
    if (counts > 1).any():
        raise DataError(
            f"{path}: track {uniq[counts > 1][0]!r} appears in more than one column "
            "(after normalising Spotify URIs); merge those columns"
        )
    blocks: list[sp.csr_matrix] = []
    users: list[np.ndarray] = []
    times: list[np.ndarray] = []
    axis = TimeAxis(weekly=False)
    offset = 0
    for chunk in iter_chunks(path, None, [cfg.user_column], "interactions", _WIDE_CHUNK_ROWS):
        values = _wide_values(chunk[track_cols], path, offset)
        blocks.append(sp.csr_matrix(values.astype(np.float32)))
        user = chunk[cfg.user_column]
        if user.isna().any():
            r = int(np.flatnonzero(user.isna().to_numpy())[0])
            raise DataError(
                f"{path}: column {cfg.user_column!r} row {offset + r + 2} has no user id"
            )
        users.append(user.astype(str).str.strip().to_numpy(dtype=object))
        if len(id_cols) == 2:
            parsed = parse_times(chunk[id_cols[1]], path, id_cols[1], offset)
            axis.add(parsed.kind, f"{path}: column {id_cols[1]!r}")
            times.append(parsed.values)
        offset += len(chunk)
    if offset == 0:
        raise DataError(f"{path}: interactions file has a header but no rows")
    matrix = sp.vstack(blocks).tocsr()
    row_times = np.concatenate(times) if times else None
    inter = Interactions(matrix, np.concatenate(users), row_times, track_ids)
    return _drop_duplicate_rows(inter, path, id_cols)


def _drop_duplicate_rows(inter: Interactions, path: Path, id_cols: list[str]) -> Interactions:
    """Repair exact copies of a wide row; refuse two different rows for the same key.

    The key is (user) or (user, time). An exact copy (e.g. a file concatenated twice) is
    dropped with a warning that counts them; two rows for one key that disagree cannot be
    merged safely, so the error names both lines.
    """
    if inter.row_times is None:
        keys = pd.Index(inter.row_users)
    else:
        keys = pd.MultiIndex.from_arrays([inter.row_users, inter.row_times])
    dup = np.asarray(keys.duplicated(keep="first"))
    if not dup.any():
        return inter
    codes, _ = pd.factorize(keys)
    first_of: dict[int, int] = {}
    for r, code in enumerate(codes):
        first_of.setdefault(int(code), r)
    m = inter.matrix
    for r in np.flatnonzero(dup):
        f = first_of[int(codes[r])]
        if (m[r] != m[f]).nnz:
            values = keys[r] if inter.row_times is not None else (keys[r],)
            key = " and ".join(f"{c} {_label(v)}" for c, v in zip(id_cols, values, strict=True))
            raise DataError(
                f"{path}: rows {f + 2} and {r + 2} have the same {key} but different plays; "
                "merge them into one row (or set data.time_column if they are different weeks)"
            )
    log.warning(
        "%s: dropped %d duplicate rows (same %s and the same plays)",
        path, int(dup.sum()), " and ".join(id_cols),
    )  # fmt: skip
    return inter.select_rows(~dup)


# ----------------------------------------------------------------------------- track tables


@dataclass
class TrackReadStats:
    """What a track-table read skipped, for messages and ``prepare``'s drop ledger."""

    n_rows: int = 0  # rows read, over every file
    n_blank_id: int = 0  # rows without a track id (skipped; only when incomplete rows are kept)
    n_incomplete: int = 0  # rows with a missing or invalid feature (or popularity)
    n_duplicates: int = 0  # rows whose track id came earlier (the first complete row won)
    first_bad: tuple[Path, int, str, str] | None = None  # (file, row, column, problem)
    files: list[Path] = field(default_factory=list)


@dataclass(frozen=True)
class _TrackFile:
    """The resolved columns of one track-table file."""

    path: Path
    id: str
    features: tuple[str, ...]
    popularity: str | None
    name: str | None
    artist: str | None

    @property
    def usecols(self) -> list[str]:
        extra = (self.popularity, self.name, self.artist)
        return list(dict.fromkeys([self.id, *self.features, *(c for c in extra if c)]))


def _track_file(
    path: Path,
    what: str,
    names: dict[str, str | None],
    features: Sequence[str] | None,
    guess: bool,
    required: Collection[str],
    hints: Mapping[str, str],
) -> _TrackFile:
    header = read_csv_header(path, what)
    found: dict[str, str | None] = {}
    if guess:  # prepare: say first which id column is missing, as its flag names
        found["id"] = _resolve(header, path, what, "id", names["id"], TRACK_CANDIDATES, True, hints)
    if features is not None:
        feats = tuple(features)
        missing = [c for c in feats if c not in header]
        fix = [hints.get("features", CONFIG_HINTS["features"])] if missing else []
        id_col = names["id"]
        if id_col is not None and id_col not in header and not guess:
            missing.insert(0, id_col)  # one message for every missing required column
            fix.insert(0, hints.get("id", CONFIG_HINTS["id"]))
        if missing:
            raise DataError(
                f"{path}: {what} file has no column {', '.join(repr(m) for m in missing)} "
                f"(columns: {_shown(header)}); fix the file or {' / '.join(fix)}"
            )
    else:
        feats = tuple(c for c in DEFAULT_FEATURES if c in header)
        if not feats:
            raise DataError(
                f"{path}: none of the audio feature columns {', '.join(DEFAULT_FEATURES)}; "
                f"name yours with {hints.get('features', CONFIG_HINTS['features'])}"
            )
    for role, candidates in (
        ("id", TRACK_CANDIDATES),
        ("popularity", POPULARITY_CANDIDATES),
        ("name", NAME_CANDIDATES),
        ("artist", ARTIST_CANDIDATES),
    ):
        if role in found:
            continue
        need = role == "id" or role in required
        found[role] = _resolve(
            header, path, what, role, names[role], candidates if guess else None, need, hints
        )
    return _TrackFile(path, found["id"], feats, found["popularity"], found["name"], found["artist"])  # type: ignore[arg-type]


Problems = list[tuple[np.ndarray, str, str]]  # (bad rows mask, column, what is wrong)


def _feature_values(chunk: pd.DataFrame, col: str, problems: Problems) -> np.ndarray:
    """(n,) float64 feature values; text and missing cells are noted in ``problems``."""
    values = pd.to_numeric(chunk[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    text = np.isnan(values) & chunk[col].notna().to_numpy() & ~_empty(chunk[col])
    if text.any():
        shown = chunk[col].iloc[int(np.flatnonzero(text)[0])]
        problems.append((text, col, f"is not a number ({shown!r}); audio features must be numeric"))
    missing = ~np.isfinite(values) & ~text
    problems.append((missing, col, "is missing, NaN or infinite; fill or drop that track"))
    return values


def _popularity_values(
    chunk: pd.DataFrame,
    col: str,
    file_rows: np.ndarray,
    policy: _Policy,
    problems: Problems,
    path: Path,
) -> np.ndarray:
    """(n,) float64 popularity, NaN where unknown. Outside 0..100 is an error naming the row
    (``file_rows``), unless incomplete rows are kept; a blank cell is a problem unless it may
    be unknown."""
    values = pd.to_numeric(chunk[col], errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    out = np.isfinite(values) & ((values < 0) | (values > 100))
    if out.any() and not policy.keep_incomplete:
        r = int(np.flatnonzero(out)[0])
        raise DataError(
            f"{path}: column {col!r} row {file_rows[r]} is {values[r]}; "
            "popularity must be in 0..100"
        )
    unknown = _empty(chunk[col]) if policy.blank_popularity_unknown else np.zeros(len(values), bool)
    not_number = ~np.isfinite(values) & ~unknown
    problems.append((not_number, col, "is not a number; popularity must be 0..100"))
    problems.append((out, col, "is outside 0..100"))
    return values


@dataclass(frozen=True)
class _Policy:
    """What :func:`iter_track_table` does with incomplete rows (see there)."""

    drop_incomplete: bool
    keep_incomplete: bool
    blank_popularity_unknown: bool


def iter_track_table(
    path: str | Path | Sequence[str | Path],
    track_column: str | None,
    feature_columns: Sequence[str] | None,
    popularity_column: str | None = None,
    name_column: str | None = None,
    artist_column: str | None = None,
    what: str = "track features",
    drop_incomplete: bool = False,
    *,
    keep_incomplete: bool = False,
    guess_columns: bool = False,
    required: Collection[str] = (),
    hints: Mapping[str, str] | None = None,
    blank_popularity_unknown: bool = False,
    stats: TrackReadStats | None = None,
    digest: Any = None,
    rows: int | None = None,
    new_ids: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Iterator[TrackTable]:
    """Read track tables CHUNK_ROWS rows at a time: the one track-table reader.

    Yields one :class:`TrackTable` per chunk with normalised ids, float64 features and the
    artist cells split (:func:`deepvibe.data.artists.split_artists`). Every file must have the
    id and feature columns; popularity, name and artist columns are read where present, and
    are an error where missing only when their role ("popularity", "name", "artist") is in
    ``required``. ``guess_columns`` fills columns given as None from common spellings
    (features: the 12 default ones the file has). A missing or non-numeric feature, or a
    popularity that is not a number, makes a row incomplete; popularity outside 0..100 is an
    error (with ``keep_incomplete``: incomplete). ``blank_popularity_unknown`` keeps rows with
    a blank popularity (NaN: unknown) instead.

    Incomplete rows are an error naming the first bad cell, or are skipped
    (``drop_incomplete``), or are kept with ``complete`` False (``keep_incomplete``; then blank
    ids are skipped and counted, not an error). Without ``keep_incomplete`` a track id seen
    before (after normalising) is skipped, so the first complete row of each id wins.
    ``stats`` receives the counts. ``digest`` hashes the files as they are parsed (see
    :func:`iter_chunks`), ``rows`` sets the chunk size, and ``new_ids`` (ids -> mask of the
    first occurrences) replaces the set of seen ids (e.g. a sorted array of 64-bit hashes for
    millions of tracks).
    """
    paths = [Path(p) for p in ([path] if isinstance(path, (str, os.PathLike)) else path)]
    hints = hints or CONFIG_HINTS
    stats = stats if stats is not None else TrackReadStats()
    names = {"id": track_column, "popularity": popularity_column, "name": name_column,
             "artist": artist_column}  # fmt: skip
    seen: set[str] = set()
    policy = _Policy(drop_incomplete, keep_incomplete, blank_popularity_unknown)
    columns: tuple[str, ...] | None = None
    for raw_path in paths:
        p = check_input_file(raw_path, what)
        spec = _track_file(p, what, names, feature_columns, guess_columns, required, hints)
        if columns is not None and spec.features != columns:
            raise DataError(
                f"{p}: feature columns differ from the first track table "
                f"({', '.join(columns)}); name them with "
                f"{hints.get('features', CONFIG_HINTS['features'])}"
            )
        columns = spec.features
        stats.files.append(p)
        text_cols = [c for c in (spec.id, spec.name, spec.artist) if c]
        start = stats.n_rows
        for chunk in iter_chunks(p, spec.usecols, text_cols, what, rows, digest):
            offset = stats.n_rows - start
            stats.n_rows += len(chunk)
            table = _track_chunk(chunk.reset_index(drop=True), spec, offset, stats, policy)
            if not keep_incomplete:
                if new_ids is not None:
                    fresh = new_ids(table.track_ids)
                else:
                    fresh = ~pd.Index(table.track_ids).duplicated(keep="first")
                    if seen:
                        fresh &= np.fromiter((t not in seen for t in table.track_ids), bool)
                    seen.update(table.track_ids[fresh].tolist())
                stats.n_duplicates += int((~fresh).sum())
                table = table.take(np.flatnonzero(fresh))
            yield table
        if stats.n_rows == start:
            raise DataError(f"{p}: {what} file has a header but no rows")


def _track_chunk(
    chunk: pd.DataFrame, spec: _TrackFile, offset: int, stats: TrackReadStats, policy: _Policy
) -> TrackTable:
    """One chunk as a TrackTable; applies the incomplete-row policy of :func:`iter_track_table`.
    ``offset``: rows of the file before this chunk, for row numbers in messages."""
    p = spec.path
    blank = _empty(chunk[spec.id])
    if blank.any() and not policy.keep_incomplete:
        r = int(np.flatnonzero(blank)[0])
        raise DataError(f"{p}: column {spec.id!r} row {offset + r + 2} has no track id")
    stats.n_blank_id += int(blank.sum())
    file_rows = offset + np.flatnonzero(~blank) + 2  # row numbers in the file, for messages
    chunk = chunk.iloc[np.flatnonzero(~blank)].reset_index(drop=True)
    problems: Problems = []
    feats = np.empty((len(chunk), len(spec.features)), dtype=np.float64)
    for j, col in enumerate(spec.features):
        feats[:, j] = _feature_values(chunk, col, problems)
    popularity = None
    if spec.popularity:
        popularity = _popularity_values(chunk, spec.popularity, file_rows, policy, problems, p)
    complete = np.ones(len(chunk), dtype=bool)
    first: tuple[int, str, str] | None = None  # the earliest bad cell: (row, column, problem)
    for bad, col, problem in problems:
        if bad.any():
            r = int(np.flatnonzero(bad)[0])
            if first is None or r < first[0]:
                first = (r, col, problem)
            complete &= ~bad
    if first is not None:
        r, col, problem = first
        if stats.first_bad is None:
            stats.first_bad = (p, int(file_rows[r]), col, problem)
        if not (policy.drop_incomplete or policy.keep_incomplete):
            raise DataError(f"{p}: column {col!r} row {file_rows[r]} {problem}")
    stats.n_incomplete += int((~complete).sum())

    def text(col: str | None) -> np.ndarray | None:
        return None if not col else chunk[col].fillna("").astype(str).to_numpy(dtype=object)

    artists = text(spec.artist)
    table = TrackTable(
        normalize_track_ids(chunk[spec.id]),
        feats,
        spec.features,
        popularity,
        text(spec.name),
        artists,
        None if artists is None else split_artist_column(artists),
        complete if policy.keep_incomplete else None,
    )
    return table if policy.keep_incomplete else table.take(np.flatnonzero(complete))


def load_track_table(
    path: str | Path | Sequence[str | Path],
    track_column: str | None,
    feature_columns: Sequence[str] | None,
    popularity_column: str | None = None,
    name_column: str | None = None,
    artist_column: str | None = None,
    what: str = "track features",
    drop_incomplete: bool = False,
    max_incomplete: float = 1.0,
    **options: object,
) -> TrackTable:
    """The whole of :func:`iter_track_table` (same arguments) as one table.

    With ``drop_incomplete``, incomplete rows are skipped with a warning that counts them, as
    long as they are at most ``max_incomplete`` of the rows (more suggests a wrong column or a
    broken file: an error naming the first bad cell). Duplicate track ids keep their first
    complete row, with a warning; with ``keep_incomplete``, an id without a complete row keeps
    its first row.
    """
    stats = options.pop("stats", None) or TrackReadStats()
    assert isinstance(stats, TrackReadStats)
    keep = bool(options.get("keep_incomplete", False))
    chunks = list(
        iter_track_table(
            path, track_column, feature_columns, popularity_column, name_column, artist_column,
            what, drop_incomplete, stats=stats, **options,  # type: ignore[arg-type]
        )
    )  # fmt: skip
    table = _concat_tracks(chunks)
    where = ""
    if stats.first_bad is not None:
        f, row, col, problem = stats.first_bad
        in_file = f"{f} " if len(stats.files) > 1 else ""
        where = f"first: {in_file}column {col!r} row {row} {problem.split(';')[0]}"
    if drop_incomplete and stats.n_incomplete:
        n_read = stats.n_rows - stats.n_blank_id
        if stats.n_incomplete == n_read or stats.n_incomplete > max_incomplete * n_read:
            raise DataError(
                f"{stats.files[0]}: {stats.n_incomplete} of {n_read} {what} rows have missing "
                f"or non-numeric values ({where}); check the file and data.feature_columns"
            )
        log.warning(
            "%s: skipped %d of %d rows with missing or non-numeric values (%s)",
            stats.files[0], stats.n_incomplete, n_read, where,
        )  # fmt: skip
    if keep:
        table, stats.n_duplicates = _first_complete_of_each_id(table)
    elif stats.n_duplicates:
        log.warning(
            "%s: %d duplicate track ids; kept the first row of each",
            stats.files[0], stats.n_duplicates,
        )  # fmt: skip
    return table


def _concat_tracks(chunks: list[TrackTable]) -> TrackTable:
    first = chunks[0]

    def cat(name: str) -> np.ndarray | None:
        parts = [getattr(c, name) for c in chunks]
        return None if parts[0] is None else np.concatenate(parts)

    lists = None
    if first.artist_lists is not None:
        lists = [a for c in chunks for a in c.artist_lists or []]
    return TrackTable(
        np.concatenate([c.track_ids for c in chunks]).astype(object),
        np.concatenate([c.features for c in chunks]),
        first.feature_columns,
        cat("popularity"),
        cat("names"),
        cat("artists"),
        lists,
        cat("complete"),
    )


def _first_complete_of_each_id(table: TrackTable) -> tuple[TrackTable, int]:
    """Keep one row per id: its first complete row, else its first row (file order kept)."""
    complete = table.complete if table.complete is not None else np.ones(len(table.track_ids), bool)
    order = np.lexsort((np.arange(len(complete)), ~complete))
    dup = pd.Index(table.track_ids[order]).duplicated(keep="first")
    keep = np.sort(order[~dup])
    return table.take(keep), int(dup.sum())


def with_complete_rows(table: TrackTable) -> TrackTable:
    """Only the complete rows of a table read with ``keep_incomplete``."""
    if table.complete is None:
        return table
    return replace(table.take(np.flatnonzero(table.complete)), complete=None)
