"""Reading interactions and track features into the shapes the model uses.

Interactions are always a ``scipy.sparse.csr_matrix`` of shape (rows, tracks) holding plays
(or 0/1); a row is one training example: one user, or one (user, week) pair when the input has
a time column. Nothing here ever builds a dense rows x tracks array.
"""

from __future__ import annotations

import logging
import re
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from deepvibe.config import DataConfig
from deepvibe.errors import DataError
from deepvibe.fileio import (
    check_input_file,
    csv_separator,
    first_line,
    is_parquet,
    not_utf8_error,
    read_csv_header,
    read_table,
)

log = logging.getLogger(__name__)

_SPOTIFY_ID = re.compile(r"^[0-9A-Za-z]{22}$")
_SPOTIFY_URL = re.compile(r"open\.spotify\.com/(?:intl-[a-z-]+/)?track/([0-9A-Za-z]{22})")
_WIDE_CHUNK_ROWS = 2_000


def normalize_track_id(raw: object) -> str:
    """One form for a track id: Spotify URIs and URLs become the bare 22-character id."""
    text = unicodedata.normalize("NFC", str(raw)).strip()
    if text.startswith("spotify:track:"):
        return text[len("spotify:track:") :]
    match = _SPOTIFY_URL.search(text)
    if match:
        return match.group(1)
    # Numeric ids read back from a CSV header or a float column ("51.0") stay integers.
    if text.endswith(".0") and text[:-2].isdigit():
        return text[:-2]
    return text


def is_spotify_id(track_id: str) -> bool:
    return bool(_SPOTIFY_ID.match(track_id))


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
        _, first = np.unique(self.row_users, return_index=True)
        return self.row_users[np.sort(first)]

    def select_columns(self, track_ids: np.ndarray) -> Interactions:
        """Keep only (and reorder to) ``track_ids``; unknown ids are an error."""
        index = {t: i for i, t in enumerate(self.track_ids)}
        try:
            cols = np.fromiter((index[t] for t in track_ids), dtype=np.int64, count=len(track_ids))
        except KeyError as exc:
            raise DataError(f"track {exc.args[0]!r} is not in the interactions") from None
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
        latest: dict[str, int] = {}
        for r in order:
            latest[self.row_users[r]] = int(r)
        wanted = self.user_ids if users is None else np.asarray(users)
        rows = np.array([latest[u] for u in wanted], dtype=np.int64)
        return wanted, rows

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
    popularity: np.ndarray | None = None  # (n,) float in [0, 100]
    names: np.ndarray | None = None  # (n,) str
    artists: np.ndarray | None = None  # (n,) str

    def take(self, index: np.ndarray) -> TrackTable:
        def opt(a: np.ndarray | None) -> np.ndarray | None:
            return None if a is None else a[index]

        return TrackTable(
            self.track_ids[index],
            self.features[index],
            self.feature_columns,
            opt(self.popularity),
            opt(self.names),
            opt(self.artists),
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


# ----------------------------------------------------------------------------- interactions


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
    fmt = detect_format(header, cfg)
    if fmt == "long":
        return _load_long(path, header, cfg)
    return _load_wide(path, header, cfg)


def _check_values(values: np.ndarray, path: Path, columns: list[str], row_offset: int) -> None:
    bad = ~np.isfinite(values)
    if bad.any():
        r, c = np.argwhere(bad)[0]
        raise DataError(
            f"{path}: column {columns[c]!r} row {row_offset + r + 2} is NaN or infinite; "
            "plays must be finite numbers (use 0 for not played)"
        )
    neg = values < 0
    if neg.any():
        r, c = np.argwhere(neg)[0]
        raise DataError(
            f"{path}: column {columns[c]!r} row {row_offset + r + 2} is negative "
            f"({values[r, c]}); plays must be >= 0"
        )


def _numeric_block(frame: pd.DataFrame, path: Path, row_offset: int) -> np.ndarray:
    try:
        return frame.to_numpy(dtype=np.float64)
    except (ValueError, TypeError):
        for col in frame.columns:
            converted = pd.to_numeric(frame[col], errors="coerce")
            bad = converted.isna() & frame[col].notna()
            if bad.any():
                r = int(np.flatnonzero(bad.to_numpy())[0])
                raise DataError(
                    f"{path}: column {col!r} row {row_offset + r + 2} is not a number "
                    f"({frame[col].iloc[r]!r}); plays must be numeric"
                ) from None
        raise


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
    track_ids = np.array([normalize_track_id(c) for c in track_cols], dtype=object)
    uniq, counts = np.unique(track_ids, return_counts=True)
    if (counts > 1).any():
        raise DataError(
            f"{path}: track {uniq[counts > 1][0]!r} appears in more than one column "
            "(after normalising Spotify URIs); merge those columns"
        )
    blocks: list[sp.csr_matrix] = []
    users: list[np.ndarray] = []
    times: list[np.ndarray] = []
    dtypes = {cfg.user_column: str}
    if is_parquet(path):
        chunks = [read_table(path, "interactions")]
    else:
        try:
            chunks = pd.read_csv(
                path,
                dtype=dtypes,
                chunksize=_WIDE_CHUNK_ROWS,
                encoding="utf-8-sig",
                sep=csv_separator(path),
            )
        except UnicodeDecodeError as exc:
            raise not_utf8_error(path, "interactions") from exc
        except (ValueError, OSError) as exc:
            raise DataError(f"{path}: cannot parse interactions file ({first_line(exc)})") from exc
    offset = 0
    try:
        for chunk in chunks:
            values = _numeric_block(chunk[track_cols], path, offset)
            _check_values(values, path, track_cols, offset)
            blocks.append(sp.csr_matrix(values.astype(np.float32)))
            users.append(_user_labels(chunk[cfg.user_column], path, cfg.user_column, offset))
            if len(id_cols) == 2:
                times.append(_time_values(chunk[id_cols[1]], path, id_cols[1], offset))
            offset += len(chunk)
    except UnicodeDecodeError as exc:
        raise not_utf8_error(path, "interactions") from exc
    except (pd.errors.ParserError, ValueError) as exc:
        raise DataError(f"{path}: cannot parse interactions file ({first_line(exc)})") from None
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


def _label(value: object) -> str:
    """A cell value for a message: 3 rather than np.float64(3.0), quotes around text."""
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    if isinstance(value, (int, float, np.number)):
        return str(value)
    return repr(str(value))


def _user_labels(col: pd.Series, path: Path, name: str, offset: int) -> np.ndarray:
    if col.isna().any():
        r = int(np.flatnonzero(col.isna().to_numpy())[0])
        raise DataError(f"{path}: column {name!r} row {offset + r + 2} has no user id")
    return col.astype(str).str.strip().to_numpy(dtype=object)


def _time_values(col: pd.Series, path: Path, name: str, offset: int) -> np.ndarray:
    if col.isna().any():
        r = int(np.flatnonzero(col.isna().to_numpy())[0])
        raise DataError(f"{path}: column {name!r} row {offset + r + 2} is empty")
    numeric = pd.to_numeric(col, errors="coerce")
    if numeric.notna().all():
        return numeric.to_numpy(dtype=np.float64)
    text = col.astype(str).str.strip()
    if text.str.fullmatch(r"\d{4}-W\d{2}").all():
        return text.to_numpy(dtype=object)  # ISO weeks such as 2024-W07 sort as text
    with warnings.catch_warnings():  # "could not infer format": we only test parseability
        warnings.simplefilter("ignore", UserWarning)
        stamps = pd.to_datetime(col, errors="coerce", utc=True, format="mixed")
    if stamps.notna().all():
        return stamps.astype("int64").to_numpy(dtype=np.float64)
    return text.to_numpy(dtype=object)  # other labels sort as text


def _load_long(path: Path, header: list[str], cfg: DataConfig) -> Interactions:
    cols = [cfg.user_column, cfg.track_column]
    plays_col = cfg.plays_column if cfg.plays_column and cfg.plays_column in header else None
    time_col = cfg.time_column if cfg.time_column and cfg.time_column in header else None
    cols += [c for c in (plays_col, time_col) if c]
    frame = read_table(
        path, "interactions", usecols=cols, dtype={cfg.user_column: str, cfg.track_column: str}
    )
    return interactions_from_long(
        frame, cfg.user_column, cfg.track_column, plays_col, time_col, path
    )


def interactions_from_long(
    frame: pd.DataFrame,
    user_column: str,
    track_column: str,
    plays_column: str | None = None,
    time_column: str | None = None,
    source: Path | str = "interactions",
) -> Interactions:
    """Build Interactions from long rows; duplicate (user, [time,] track) rows are summed."""
    if len(frame) == 0:
        raise DataError(f"{source}: interactions table has a header but no rows")
    for col in (user_column, track_column):
        if frame[col].isna().any():
            r = int(np.flatnonzero(frame[col].isna().to_numpy())[0])
            raise DataError(f"{source}: column {col!r} row {r + 2} is empty")
    users = frame[user_column].astype(str).str.strip().to_numpy(dtype=object)
    tracks = np.array([normalize_track_id(t) for t in frame[track_column]], dtype=object)
    if plays_column:
        plays = _numeric_block(frame[[plays_column]], Path(str(source)), 0)[:, 0]
        _check_values(plays[:, None], Path(str(source)), [plays_column], 0)
    else:
        plays = np.ones(len(frame))
    if time_column:
        times = _time_values(frame[time_column], Path(str(source)), time_column, 0)
        row_key = pd.MultiIndex.from_arrays([users, times])
        row_codes, row_labels = pd.factorize(row_key, sort=False)
        row_users = np.array([lab[0] for lab in row_labels], dtype=object)
        row_times = np.array([lab[1] for lab in row_labels])
    else:
        row_codes, row_labels = pd.factorize(users, sort=False)
        row_users = np.asarray(row_labels, dtype=object)
        row_times = None
    col_codes, col_labels = pd.factorize(tracks, sort=False)
    n_pairs = len(frame)
    matrix = sp.coo_matrix(
        (plays.astype(np.float32), (row_codes, col_codes)),
        shape=(len(row_labels), len(col_labels)),
    ).tocsr()  # duplicates are summed here
    matrix.sum_duplicates()
    if matrix.nnz < n_pairs:
        log.warning(
            "%s: %d duplicate rows were merged by summing plays", source, n_pairs - matrix.nnz
        )
    matrix.eliminate_zeros()
    return Interactions(matrix, row_users, row_times, np.asarray(col_labels, dtype=object))


def filter_min_counts(
    inter: Interactions, min_track_users: int, min_user_tracks: int
) -> Interactions:
    """Drop tracks heard by fewer than ``min_track_users`` users, then users with too few tracks.

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


# ----------------------------------------------------------------------------- tracks


def load_track_table(
    path: str | Path,
    track_column: str,
    feature_columns: tuple[str, ...],
    popularity_column: str | None = None,
    name_column: str | None = None,
    artist_column: str | None = None,
    what: str = "track features",
    drop_incomplete: bool = False,
    max_incomplete: float = 1.0,
) -> TrackTable:
    """Read a track table. NaN or non-numeric features are an error unless ``drop_incomplete``.

    With ``drop_incomplete`` such rows are skipped with a warning that counts them, as long as
    they are at most ``max_incomplete`` of the rows (more suggests a wrong column or a broken
    file, and is an error naming the first bad cell). Duplicate track ids keep their first row,
    with a warning.
    """
    p = check_input_file(path, what)
    header = read_csv_header(p, what)
    required = [track_column, *feature_columns]
    missing = [c for c in required if c not in header]
    if missing:
        shown = ", ".join(header[:10]) + (", ..." if len(header) > 10 else "")
        raise DataError(
            f"{p}: {what} file has no column {', '.join(repr(m) for m in missing)} "
            f"(columns: {shown}); fix the file or data.feature_columns / the id column setting"
        )
    optional = [c for c in (popularity_column, name_column, artist_column) if c and c in header]
    optional = list(dict.fromkeys(c for c in optional if c not in required))
    frame = read_table(p, what, usecols=required + optional, dtype={track_column: str})
    if len(frame) == 0:
        raise DataError(f"{p}: {what} file has a header but no rows")
    ids = frame[track_column]
    blank = ids.isna() | (ids.astype(str).str.strip() == "")
    if blank.any():
        r = int(np.flatnonzero(blank.to_numpy())[0])
        raise DataError(f"{p}: column {track_column!r} row {r + 2} has no track id")
    track_ids = np.array([normalize_track_id(t) for t in ids], dtype=object)
    feats = np.empty((len(frame), len(feature_columns)), dtype=np.float64)
    complete = np.ones(len(frame), dtype=bool)
    first_bad: tuple[int, str, str] | None = None  # (row index, column, what is wrong with it)

    def note(bad: np.ndarray, col: str, problem: str) -> None:
        nonlocal first_bad, complete
        if not bad.any():
            return
        r = int(np.flatnonzero(bad)[0])
        if first_bad is None or r < first_bad[0]:
            first_bad = (r, col, problem)
        if not drop_incomplete:
            raise DataError(f"{p}: column {col!r} row {r + 2} {problem}")
        complete &= ~bad

    for j, col in enumerate(feature_columns):
        values = pd.to_numeric(frame[col], errors="coerce")
        non_numeric = (values.isna() & frame[col].notna()).to_numpy()
        if non_numeric.any():
            r = int(np.flatnonzero(non_numeric)[0])
            note(
                non_numeric, col,
                f"is not a number ({frame[col].iloc[r]!r}); audio features must be numeric",
            )  # fmt: skip
        arr = values.to_numpy(dtype=np.float64)
        note(~np.isfinite(arr), col, "is missing, NaN or infinite; fill or drop that track")
        feats[:, j] = arr
    popularity = None
    if popularity_column and popularity_column in frame.columns:
        pop = pd.to_numeric(frame[popularity_column], errors="coerce").to_numpy(dtype=np.float64)
        note(~np.isfinite(pop), popularity_column, "is not a number; popularity must be 0..100")
        out_of_range = np.isfinite(pop) & ((pop < 0) | (pop > 100))
        if out_of_range.any():
            r = int(np.flatnonzero(out_of_range)[0])
            raise DataError(
                f"{p}: column {popularity_column!r} row {r + 2} is {pop[r]}; "
                "popularity must be in 0..100"
            )
        popularity = pop

    def text(col: str | None) -> np.ndarray | None:
        if not col or col not in frame.columns:
            return None
        return frame[col].fillna("").astype(str).to_numpy(dtype=object)

    table = TrackTable(
        track_ids, feats, tuple(feature_columns), popularity, text(name_column), text(artist_column)
    )
    n_bad = int((~complete).sum())
    if n_bad and first_bad is not None:
        r, col, problem = first_bad
        where = f"first: column {col!r} row {r + 2} {problem.split(';')[0]}"
        if n_bad == len(complete) or n_bad > max_incomplete * len(complete):
            raise DataError(
                f"{p}: {n_bad} of {len(complete)} {what} rows have missing or non-numeric "
                f"values ({where}); check the file and data.feature_columns"
            )
        log.warning(
            "%s: skipped %d of %d rows with missing or non-numeric values (%s)",
            p, n_bad, len(complete), where,
        )  # fmt: skip
        table = table.take(np.flatnonzero(complete))
    _, first = np.unique(table.track_ids.astype(str), return_index=True)
    if len(first) < len(table.track_ids):
        log.warning(
            "%s: %d duplicate track ids; kept the first row of each",
            p,
            len(table.track_ids) - len(first),
        )
        table = table.take(np.sort(first))
    return table


def load_catalogue_features(cfg: DataConfig) -> TrackTable | None:
    """The features table of the config, or None for pure collaborative filtering.

    A few rows with missing or non-numeric values (at most 10%) are skipped with a warning;
    those tracks then count as tracks without features.
    """
    if not cfg.features or not cfg.feature_columns:
        return None
    return load_track_table(
        cfg.features,
        cfg.feature_track_column,
        cfg.feature_columns,
        cfg.popularity_column,
        cfg.name_column,
        cfg.artist_column,
        drop_incomplete=True,
        max_incomplete=0.1,
    )


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
        has_features = np.isin(inter.track_ids, tracks.track_ids)
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
