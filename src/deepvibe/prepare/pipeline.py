"""``deepvibe prepare``: raw listening data -> the files ``train`` and ``discover`` read.

Sources are long tables (CSV/Parquet rows of user, track and optionally plays and time) and
Spotify history downloads (:mod:`deepvibe.data.spotify`). Track tables give ids, audio
features, popularity, names and artists. Written to the output folder:

- ``interactions.csv``: long rows ``user_id[, week], track_id, plays``, only catalogue tracks;
- ``top_10k_features.csv``: the catalogue, the ``max_tracks`` most-played tracks with complete
  features, most played first;
- ``global_tracks.csv``: every track with complete features (the database ``discover`` scans);
- ``unmatched_plays.csv``: account-data plays no track matched (only when there are any sources
  of that kind);
- ``deepvibe.yaml``: a config whose ``data`` section points at these files;
- ``prepare_summary.txt``: what was kept and dropped, and why.

Every drop is counted under one reason, in pipeline order: a stream or row is read, then
aggregated into (user[, week], track) entries, which are filtered by plays, features,
catalogue membership and finally by how many tracks their user has left.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from deepvibe.config import DEFAULT_FEATURES, config_from_dict
from deepvibe.data.spotify import (
    ACCOUNT,
    EXTENDED,
    Export,
    NameIndex,
    Streams,
    find_export,
    group_loose_files,
    history_artist_key,
    read_streams,
)
from deepvibe.data.tables import (
    Interactions,
    TrackTable,
    interactions_from_long,
    normalize_track_id,
)
from deepvibe.errors import DataError, DeepVibeError
from deepvibe.fileio import (
    atomic_path,
    check_input_file,
    csv_separator,
    is_parquet,
    neutralise_formula,
    read_csv_header,
    write_text_atomic,
)

log = logging.getLogger(__name__)

CHUNK_ROWS = 200_000  # rows of a table read at a time

USER_CANDIDATES = ("user_id", "user", "userid", "username", "user_name")
TRACK_CANDIDATES = (
    "track_id",
    "trackid",
    "spotify_track_uri",
    "track_uri",
    "spotify_id",
    "uri",
    "id",
    "track",
)
PLAYS_CANDIDATES = ("plays", "play_count", "playcount", "plays_count", "n_plays", "count", "weight")
TIME_CANDIDATES = ("week", "ts", "timestamp", "time", "played_at", "datetime", "date", "endtime")
POPULARITY_CANDIDATES = ("popularity", "track_popularity")
NAME_CANDIDATES = ("track_name", "name", "title", "song", "song_name", "track")
ARTIST_CANDIDATES = (
    "artists",
    "artist",
    "artist_name",
    "artist_names",
    "artists_names",
    "track_artist",
)

_ISO_WEEK = re.compile(r"^\d{4}-W\d{2}$")
_MAX_WEEK_NUMBER = 10_000_000  # below: week numbers; from here: Unix seconds (1970-04 on)

# Output column names: the defaults of configs/default.yaml, so the generated config is short.
OUT_USER, OUT_TRACK, OUT_PLAYS, OUT_WEEK = "user_id", "track_id", "plays", "week"
OUT_POPULARITY, OUT_NAME, OUT_ARTISTS = "popularity", "track_name", "artists"


@dataclass(frozen=True)
class TableColumns:
    """Column names of long interaction tables; None means detect from common names."""

    user: str | None = None
    track: str | None = None
    plays: str | None = None
    time: str | None = None


@dataclass(frozen=True)
class TrackColumns:
    """Column names of track tables; None means detect (features: the 12 default ones present)."""

    id: str | None = None
    features: tuple[str, ...] | None = None
    popularity: str | None = None
    name: str | None = None
    artist: str | None = None


@dataclass(frozen=True)
class PrepareOptions:
    max_tracks: int = 10_000  # catalogue size
    min_plays: int = 1  # a user must have played a track this often (over all weeks) to keep it
    min_user_tracks: int = 1  # then users with fewer distinct tracks are dropped
    min_ms: int = 30_000  # Spotify exports: a stream counts from this many milliseconds
    weekly: bool = False  # one row per (user, ISO week) instead of one per user
    binary: bool = False  # every kept entry counts 1 (e.g. playlists as users)
    users: tuple[str, ...] = ()  # names for the Spotify exports, in argument order
    parquet: bool = False  # write Parquet instead of CSV


# ----------------------------------------------------------------------------- the drop ledger


@dataclass
class Ledger:
    """Counts of everything dropped, by (stage, reason), in the order first seen."""

    counts: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def add(self, stage: str, reason: str, count: int, plays: float | None = None) -> None:
        if count <= 0:
            return
        entry = self.counts.setdefault((stage, reason), [0, 0.0])
        entry[0] += count
        entry[1] += plays if plays is not None else count

    def count(self, stage: str, reason: str) -> int:
        return int(self.counts.get((stage, reason), [0, 0.0])[0])

    def stage(self, stage: str) -> list[tuple[str, int, float]]:
        return [(r, int(c), p) for (s, r), (c, p) in self.counts.items() if s == stage]


# Stages and their units in the summary.
STREAMS = "streams"  # Spotify export entries
ROWS = "rows"  # long-table rows
MATCH = "match"  # account-data plays matched by name
ENTRIES = "entries"  # (user[, week], track) entries after aggregation
USERS = "users"

NOT_IN_TABLE = "track not in the track table"
INCOMPLETE = "track has missing or invalid audio features"
NO_MATCH = "no track with this artist and title in the track table"
OVERLAP = "account-data play already covered by the same user's extended history"
MISSING_ID = "missing user or track id"
ZERO_PLAYS = "zero plays"


# ----------------------------------------------------------------------------- reading helpers


def _detect(header: list[str], wanted: str | None, candidates: tuple[str, ...]) -> str | None:
    if wanted is not None:
        return wanted
    lower = {h.lower(): h for h in header}
    for c in candidates:
        if c in lower:
            return lower[c]
    return None


def _require(header: list[str], col: str | None, path: Path, what: str, flag: str) -> str:
    shown = ", ".join(header[:12]) + (", ..." if len(header) > 12 else "")
    if col is None:
        raise DataError(
            f"{path}: cannot tell which column is the {what} (columns: {shown}); pass {flag}"
        )
    if col not in header:
        raise DataError(f"{path}: no column {col!r} for the {what} (columns: {shown}); fix {flag}")
    return col


def _iter_chunks(
    path: Path, columns: list[str], text_cols: list[str], what: str
) -> Iterator[pd.DataFrame]:
    """``columns`` of a CSV or Parquet file, CHUNK_ROWS rows at a time."""
    try:
        if is_parquet(path):
            import pyarrow.parquet as pq

            for batch in pq.ParquetFile(path).iter_batches(batch_size=CHUNK_ROWS, columns=columns):
                yield batch.to_pandas()
            return
        reader = pd.read_csv(
            path,
            usecols=columns,
            dtype={c: str for c in text_cols},
            chunksize=CHUNK_ROWS,
            encoding="utf-8",
            sep=csv_separator(path),
        )
        with reader:
            yield from reader
    except DeepVibeError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: {what} file is not UTF-8 text; re-save it as UTF-8") from exc
    except Exception as exc:  # pandas and pyarrow parse errors
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot read {what} file ({first})") from exc


def _normalise_ids(values: pd.Series) -> np.ndarray:
    """Bare track ids; each distinct raw value is normalised once, and the two common forms
    (a bare 22-character id, a ``spotify:track:`` URI) without a Python call per value."""
    codes, uniques = pd.factorize(values.astype(str), sort=False)
    raw = pd.Series(np.asarray(uniques, dtype=object), dtype=object)
    norm = raw.copy()
    bare = raw.str.fullmatch(r"[0-9A-Za-z]{22}").to_numpy(dtype=bool)
    uri = raw.str.fullmatch(r"spotify:track:[0-9A-Za-z]{22}").to_numpy(dtype=bool)
    norm[uri] = raw[uri].str.slice(len("spotify:track:"))
    rest = ~(bare | uri)
    norm[rest] = [normalize_track_id(u) for u in raw[rest]]
    return norm.to_numpy(dtype=object)[codes]


def _empty(col: pd.Series) -> np.ndarray:
    return (col.isna() | (col.astype(str).str.strip() == "")).to_numpy()


def week_labels(times: pd.Series) -> np.ndarray:
    """ISO 8601 week labels (``2024-W07``) of UTC timestamps; they sort as text."""
    iso = times.dt.isocalendar()
    year = iso["year"].astype(int).astype(str)
    week = iso["week"].astype(int).astype(str).str.zfill(2)
    return (year + "-W" + week).to_numpy(dtype=object)


def _weeks_of(col: pd.Series, path: Path, name: str, offset: int) -> np.ndarray:
    """Week labels of a time column: ISO week labels and small integers (week numbers, as in
    the original design's ``week`` column) pass through; larger numbers are Unix seconds;
    text is parsed as dates."""
    text = col.astype(str).str.strip()
    if text.str.fullmatch(_ISO_WEEK.pattern).all():
        return text.to_numpy(dtype=object)
    numeric = pd.to_numeric(col, errors="coerce")
    if numeric.notna().all():
        values = numeric.to_numpy(dtype=np.float64)
        if np.all(values == np.round(values)) and np.abs(values).max() < _MAX_WEEK_NUMBER:
            return values.astype(np.int64).astype(object)  # week numbers already: keep them
        stamps = pd.to_datetime(numeric, unit="s", utc=True)
    else:
        stamps = pd.to_datetime(col, utc=True, errors="coerce", format="ISO8601")
        if stamps.isna().any():
            stamps = pd.to_datetime(col, utc=True, errors="coerce", format="mixed")
    if stamps.isna().any():
        r = int(np.flatnonzero(stamps.isna().to_numpy())[0])
        raise DataError(
            f"{path}: column {name!r} row {offset + r + 2} ({col.iloc[r]!r}) is not a date, "
            "Unix time or ISO week; --weekly needs a readable time on every row"
        )
    return week_labels(stamps)


# ----------------------------------------------------------------------------- track tables


@dataclass(frozen=True)
class TrackDump:
    """Every distinct track of the track tables; features may be NaN where ``complete`` is False."""

    table: TrackTable
    complete: np.ndarray  # (n,) bool: all features (and popularity, when given) valid
    n_rows: int


def read_track_tables(
    paths: list[Path], cols: TrackColumns, ledger: Ledger | None = None
) -> TrackDump:
    """Read one or more track tables in chunks; ids are normalised, the first complete row of
    each id wins."""
    ledger = ledger if ledger is not None else Ledger()
    parts: list[pd.DataFrame] = []
    feature_cols: tuple[str, ...] | None = None
    have: dict[str, bool] = {}
    n_rows = 0
    for path in paths:
        path = check_input_file(path, "track table")
        header = read_csv_header(path, "track table")
        id_col = _require(
            header, _detect(header, cols.id, TRACK_CANDIDATES), path, "track id", "--id-col"
        )
        if cols.features is not None:
            feats = tuple(cols.features)
            missing = [c for c in feats if c not in header]
            if missing:
                raise DataError(
                    f"{path}: no feature column {', '.join(map(repr, missing))}; fix --feature-cols"
                )
        else:
            feats = tuple(c for c in DEFAULT_FEATURES if c in header)
            if not feats:
                raise DataError(
                    f"{path}: none of the audio feature columns {', '.join(DEFAULT_FEATURES)}; "
                    "name yours with --feature-cols"
                )
        if feature_cols is None:
            feature_cols = feats
            dropped = [c for c in DEFAULT_FEATURES if c not in feats]
            if cols.features is None and dropped:
                log.warning("%s: no column %s; using the other features", path, ", ".join(dropped))
        elif feats != feature_cols:
            raise DataError(
                f"{path}: feature columns differ from the first track table "
                f"({', '.join(feature_cols)}); pass --feature-cols"
            )
        pop_col = _detect(header, cols.popularity, POPULARITY_CANDIDATES)
        name_col = _detect(header, cols.name, NAME_CANDIDATES)
        artist_col = _detect(header, cols.artist, ARTIST_CANDIDATES)
        for flag, col in (
            ("--popularity-col", pop_col),
            ("--name-col", name_col),
            ("--artist-col", artist_col),
        ):
            if col is not None and col not in header:
                raise DataError(f"{path}: no column {col!r}; fix {flag}")
        extras = {OUT_POPULARITY: pop_col, OUT_NAME: name_col, OUT_ARTISTS: artist_col}
        for k, v in extras.items():
            have[k] = have.get(k, True) and v is not None
        usecols = list(dict.fromkeys([id_col, *feature_cols, *(c for c in extras.values() if c)]))
        text_cols = [c for c in (id_col, name_col, artist_col) if c]
        for chunk in _iter_chunks(path, usecols, text_cols, "track table"):
            n_rows += len(chunk)
            no_id = _empty(chunk[id_col])
            ledger.add("tracks", "no track id", int(no_id.sum()))
            chunk = chunk[~no_id]
            part = pd.DataFrame({OUT_TRACK: _normalise_ids(chunk[id_col])})
            for c in feature_cols:
                part[c] = pd.to_numeric(chunk[c], errors="coerce").to_numpy(dtype=np.float64)
            for out_name, col in extras.items():
                if col is None:
                    continue
                if out_name == OUT_POPULARITY:
                    part[out_name] = pd.to_numeric(chunk[col], errors="coerce").to_numpy(
                        dtype=np.float64
                    )
                else:
                    part[out_name] = chunk[col].fillna("").astype(str).to_numpy(dtype=object)
            parts.append(part)
    assert feature_cols is not None
    frame = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({OUT_TRACK: []})
    if len(frame) == 0:
        raise DataError(f"{paths[0]}: track table has no rows with a track id")
    feats = frame[list(feature_cols)].to_numpy(dtype=np.float64)
    complete = np.isfinite(feats).all(axis=1)
    popularity = None
    if have.get(OUT_POPULARITY):
        popularity = frame[OUT_POPULARITY].to_numpy(dtype=np.float64)
        complete &= np.isfinite(popularity) & (popularity >= 0) & (popularity <= 100)
    # First complete row of each id wins (a later complete duplicate beats an incomplete first).
    order = np.lexsort((np.arange(len(frame)), ~complete))
    dup = pd.Index(frame[OUT_TRACK].to_numpy()[order]).duplicated(keep="first")
    ledger.add("tracks", "duplicate track id (kept the first complete row)", int(dup.sum()))
    keep = np.sort(order[~dup])
    ledger.add(
        "tracks", "missing or invalid audio features or popularity", int((~complete[keep]).sum())
    )

    def text(name: str) -> np.ndarray | None:
        return frame[name].to_numpy(dtype=object)[keep] if have.get(name) else None

    table = TrackTable(
        frame[OUT_TRACK].to_numpy(dtype=object)[keep],
        feats[keep],
        feature_cols,
        None if popularity is None else popularity[keep],
        text(OUT_NAME),
        text(OUT_ARTISTS),
    )
    return TrackDump(table, complete[keep], n_rows)


# ----------------------------------------------------------------------------- long tables


def read_long_table(
    path: Path, cols: TableColumns, weekly: bool, ledger: Ledger
) -> tuple[pd.DataFrame, int]:
    """(user_id[, week], track_id, plays) summed per entry, and the number of rows read."""
    path = check_input_file(path, "interactions")
    header = read_csv_header(path, "interactions")
    user_col = _require(
        header, _detect(header, cols.user, USER_CANDIDATES), path, "user id", "--user-col"
    )
    track_col = _require(
        header, _detect(header, cols.track, TRACK_CANDIDATES), path, "track id", "--track-col"
    )
    plays_col = _detect(header, cols.plays, PLAYS_CANDIDATES)
    if cols.plays is not None:
        _require(header, plays_col, path, "play count", "--plays-col")
    time_col = _detect(header, cols.time, TIME_CANDIDATES) if weekly else None
    if weekly and (time_col is None or time_col not in header):
        raise DataError(
            f"{path}: --weekly needs a time column (dates, Unix seconds or ISO weeks); "
            "pass --time-col"
        )
    usecols = list(dict.fromkeys(c for c in (user_col, track_col, plays_col, time_col) if c))
    keys = [OUT_USER, OUT_WEEK, OUT_TRACK] if weekly else [OUT_USER, OUT_TRACK]
    parts: list[pd.DataFrame] = []
    offset = 0
    for chunk in _iter_chunks(path, usecols, [user_col, track_col], "interactions"):
        chunk = chunk.reset_index(drop=True)
        n = len(chunk)
        if plays_col:
            plays = pd.to_numeric(chunk[plays_col], errors="coerce")
            bad = plays.isna().to_numpy() | ~np.isfinite(
                plays.to_numpy(dtype=np.float64, na_value=np.nan)
            )
            if bad.any():
                r = int(np.flatnonzero(bad)[0])
                raise DataError(
                    f"{path}: column {plays_col!r} row {offset + r + 2} "
                    f"({chunk[plays_col].iloc[r]!r}) is not a finite number; plays must be numeric"
                )
            plays = plays.to_numpy(dtype=np.float64)
            if (plays < 0).any():
                r = int(np.flatnonzero(plays < 0)[0])
                raise DataError(
                    f"{path}: column {plays_col!r} row {offset + r + 2} is negative ({plays[r]}); "
                    "plays must be >= 0"
                )
        else:
            plays = np.ones(n)
        missing = _empty(chunk[user_col]) | _empty(chunk[track_col])
        zero = ~missing & (plays == 0)
        ledger.add(ROWS, MISSING_ID, int(missing.sum()), float(plays[missing].sum()))
        ledger.add(ROWS, ZERO_PLAYS, int(zero.sum()), 0.0)
        keep = ~missing & ~zero
        sub = chunk[keep]
        part = pd.DataFrame(
            {
                OUT_USER: sub[user_col].astype(str).str.strip().to_numpy(dtype=object),
                OUT_TRACK: _normalise_ids(sub[track_col]),
                OUT_PLAYS: plays[keep],
            }
        )
        if weekly:
            part[OUT_WEEK] = _weeks_of(sub[time_col].reset_index(drop=True), path, time_col, offset)
        parts.append(part.groupby(keys, sort=False, as_index=False)[OUT_PLAYS].sum())
        offset += n
    if offset == 0:
        raise DataError(f"{path}: interactions file has a header but no rows")
    frame = pd.concat(parts, ignore_index=True)
    return frame.groupby(keys, sort=False, as_index=False)[OUT_PLAYS].sum(), offset


# ----------------------------------------------------------------------------- Spotify exports


@dataclass
class ExportPlays:
    """Plays of the exports, one row per play: user_id, track_id, time."""

    plays: pd.DataFrame
    unmatched: pd.DataFrame  # user_id, artist, track, plays, first_played, last_played
    n_account: int  # account-data plays that needed matching (after overlap removal)
    n_matched: int


def drop_overlap(streams: list[Streams], ledger: Ledger) -> None:
    """Account-data plays inside the time span of the same user's extended history are the same
    plays counted twice (the account download covers the last year); drop them."""
    spans: dict[str, tuple[pd.Timestamp, pd.Timestamp]] = {}
    for s in streams:
        ext = s.frame.loc[s.frame["schema"] == EXTENDED, "time"]
        if len(ext):
            lo, hi = ext.min(), ext.max()
            if s.user_id in spans:
                lo, hi = min(lo, spans[s.user_id][0]), max(hi, spans[s.user_id][1])
            spans[s.user_id] = (lo, hi)
    for s in streams:
        if s.user_id not in spans:
            continue
        lo, hi = spans[s.user_id]
        inside = (s.frame["schema"] == ACCOUNT) & s.frame["time"].between(lo, hi)
        if inside.any():
            ledger.add(MATCH, OVERLAP, int(inside.sum()))
            s.frame = s.frame[~inside.to_numpy()].reset_index(drop=True)


_NEED_TRACKS = (
    "account-data history (StreamingHistory_music_*.json) has no track ids; pass --tracks with "
    "a track table that has track names and artists to match them"
)


def export_plays(
    streams: list[Streams],
    tracks: TrackTable | None,
    prefer: np.ndarray | None,
    ledger: Ledger,
    need_tracks: str = _NEED_TRACKS,
) -> ExportPlays:
    """Give every play a track id: extended plays have one; account-data plays are matched by
    normalised artist and title against ``tracks``."""
    frames = []
    for s in streams:
        f = s.frame.copy()
        f[OUT_USER] = s.user_id
        frames.append(f)
    if not frames:
        empty = pd.DataFrame({OUT_USER: [], OUT_TRACK: [], "time": pd.to_datetime([], utc=True)})
        return ExportPlays(empty, _unmatched_frame(pd.DataFrame()), 0, 0)
    allp = pd.concat(frames, ignore_index=True)
    account = (allp["schema"] == ACCOUNT).to_numpy()
    n_account = int(account.sum())
    unmatched = pd.DataFrame()
    n_matched = 0
    if n_account:
        if tracks is None:
            raise DataError(need_tracks)
        artists = allp.loc[account, "artist"].to_numpy(dtype=object)
        wanted = {history_artist_key(str(a)) for a in set(artists) if a}
        index = NameIndex.build(tracks, prefer, wanted)
        rows = index.lookup(artists, allp.loc[account, "track"].to_numpy(dtype=object))
        ids = allp["track_id"].to_numpy(dtype=object).copy()
        acc_idx = np.flatnonzero(account)
        hit = rows >= 0
        ids[acc_idx[hit]] = tracks.track_ids[rows[hit]]
        allp["track_id"] = ids
        n_matched = int(hit.sum())
        miss = np.zeros(len(allp), dtype=bool)
        miss[acc_idx[~hit]] = True
        ledger.add(MATCH, NO_MATCH, int(miss.sum()))
        unmatched = allp[miss]
        allp = allp[~miss]
    plays = allp[[OUT_USER, "track_id", "time"]].rename(columns={"track_id": OUT_TRACK})
    return ExportPlays(
        plays.reset_index(drop=True), _unmatched_frame(unmatched), n_account, n_matched
    )


def _unmatched_frame(rows: pd.DataFrame) -> pd.DataFrame:
    cols = [OUT_USER, "artist", "track", OUT_PLAYS, "first_played", "last_played"]
    if len(rows) == 0:
        return pd.DataFrame({c: [] for c in cols})
    g = rows.groupby([OUT_USER, "artist", "track"], sort=False)["time"]
    out = g.agg(["size", "min", "max"]).reset_index()
    out.columns = cols
    out = out.sort_values(
        [OUT_USER, OUT_PLAYS, "artist", "track"], ascending=[True, False, True, True]
    )
    for c in ("first_played", "last_played"):
        out[c] = out[c].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return out.reset_index(drop=True)


# ----------------------------------------------------------------------------- sources


@dataclass
class Sources:
    exports: list[Export]
    tables: list[Path]


def classify_sources(paths: list[Path]) -> Sources:
    """Spotify downloads (zip, folder, loose history files grouped by folder) and long tables,
    in argument order."""
    exports: list[Export | list[Path]] = []
    loose: dict[Path, list[Path]] = {}
    tables: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            raise DataError(f"{p}: interactions source not found; check the --interactions path")
        export = find_export(p)
        if export is not None and p.is_file() and p.suffix.lower() == ".json":
            if p.parent not in loose:
                loose[p.parent] = []
                exports.append(loose[p.parent])
            loose[p.parent].append(p)
        elif export is not None:
            exports.append(export)
        elif p.is_dir() or p.suffix.lower() in {".zip", ".json"}:
            raise DataError(
                f"{p}: no Spotify streaming history in it (Streaming_History_Audio_*.json or "
                "StreamingHistory_music_*.json); for other data give a CSV or Parquet table"
            )
        else:
            tables.append(p)
    resolved = [e if isinstance(e, Export) else group_loose_files(e)[0] for e in exports]
    return Sources(resolved, tables)


def _name_exports(sources: Sources, options: PrepareOptions, ledger: Ledger) -> list[Streams]:
    if options.users and len(options.users) != len(sources.exports):
        raise DataError(
            f"--user was given {len(options.users)} time(s) but there are "
            f"{len(sources.exports)} Spotify export(s); give one --user per export, in order"
        )
    streams: list[Streams] = []
    for i, export in enumerate(sources.exports):
        name = options.users[i] if options.users else None
        s = read_streams(export, options.min_ms, name)
        if name is None and s.user_id == export.default_user:
            for other in streams:
                if other.user_id == s.user_id and other.export.source != export.source:
                    raise DataError(
                        f"{other.export.source} and {export.source} would both be user "
                        f"{s.user_id!r}; name each export with --user"
                    )
        for reason, n in s.drops.items():
            ledger.add(STREAMS, reason, n)
        for ignored in export.ignored:
            log.info("%s: not read (video or podcast history)", ignored)
        streams.append(s)
    return streams


# ----------------------------------------------------------------------------- the pipeline


@dataclass
class PrepareResult:
    paths: dict[str, Path]
    n_users: int
    n_rows: int
    n_catalogue: int
    n_global: int
    nnz: int
    plays_read: float
    plays_kept: float
    coverage: float  # share of all plays read (any user) that are on catalogue tracks
    ledger: Ledger
    summary: str


def prepare(
    sources: list[Path],
    track_files: list[Path] | None,
    out: Path,
    options: PrepareOptions = PrepareOptions(),
    table_columns: TableColumns = TableColumns(),
    track_columns: TrackColumns = TrackColumns(),
) -> PrepareResult:
    """Read, filter and write the training layout into ``out`` (see the module docstring)."""
    if not sources:
        raise DataError("no interactions given; pass --interactions FILE (repeatable)")
    out = Path(out)
    ledger = Ledger()
    dump = read_track_tables(list(track_files), track_columns, ledger) if track_files else None
    found = classify_sources(list(sources))
    weekly = options.weekly
    keys = [OUT_USER, OUT_WEEK, OUT_TRACK] if weekly else [OUT_USER, OUT_TRACK]

    parts: list[pd.DataFrame] = []
    read_lines: list[str] = []
    for path in found.tables:
        frame, n_rows = read_long_table(path, table_columns, weekly, ledger)
        parts.append(frame)
        read_lines.append(f"  {path}: {n_rows:,} rows, {frame[OUT_PLAYS].sum():,.0f} plays")

    streams = _name_exports(found, options, ledger)
    drop_overlap(streams, ledger)
    exp = export_plays(
        streams,
        None if dump is None else dump.table,
        None if dump is None else dump.complete,
        ledger,
    )
    for s in streams:
        kinds = "+".join(sorted(set(s.frame["schema"]))) or "no plays"
        read_lines.append(
            f"  {s.export.source}: Spotify export ({kinds}) of user {s.user_id!r}: "
            f"{s.n_streams:,} streams, {len(s.frame):,} plays"
        )
    if len(exp.plays):
        p = exp.plays.copy()
        p[OUT_PLAYS] = 1.0
        if weekly:
            p[OUT_WEEK] = week_labels(p["time"])
        parts.append(p.groupby(keys, sort=False, as_index=False)[OUT_PLAYS].sum())

    parts = [p for p in parts if len(p)]
    if not parts:
        raise DataError(
            f"no plays left after reading the sources (dropped: {_drops_inline(ledger)})"
        )
    pairs = (
        pd.concat(parts, ignore_index=True)
        .groupby(keys, sort=False, as_index=False)[OUT_PLAYS]
        .sum()
    )
    if options.binary:
        pairs[OUT_PLAYS] = 1.0
    plays_read = float(pairs[OUT_PLAYS].sum())
    n_entries_read = len(pairs)
    pairs_read = pairs

    def drop(mask: np.ndarray, reason: str) -> None:
        nonlocal pairs
        ledger.add(ENTRIES, reason, int(mask.sum()), float(pairs[OUT_PLAYS].to_numpy()[mask].sum()))
        pairs = pairs[~mask].reset_index(drop=True)

    if options.min_plays > 1:
        total = pairs.groupby([OUT_USER, OUT_TRACK])[OUT_PLAYS].transform("sum").to_numpy()
        drop(
            total < options.min_plays, f"user played the track fewer than {options.min_plays} times"
        )
    if dump is not None:
        # Row of each entry's track in the dump (-1: absent); hashing beats isin on 1M ids.
        row = pd.Index(dump.table.track_ids).get_indexer(pairs[OUT_TRACK].to_numpy(dtype=object))
        drop(row < 0, NOT_IN_TABLE)
        row = row[row >= 0]
        drop(~dump.complete[row], INCOMPLETE)
    per_track = pairs.groupby(OUT_TRACK, sort=False)[OUT_PLAYS].sum()
    ranked = per_track.reset_index().sort_values([OUT_PLAYS, OUT_TRACK], ascending=[False, True])
    catalogue_ids = ranked[OUT_TRACK].to_numpy(dtype=object)[: options.max_tracks]
    drop(
        ~pairs[OUT_TRACK].isin(catalogue_ids).to_numpy(),
        f"track outside the {options.max_tracks:,} most-played tracks",
    )
    if options.min_user_tracks > 1:
        n_tracks = pairs.groupby(OUT_USER)[OUT_TRACK].transform("nunique").to_numpy()
        small = n_tracks < options.min_user_tracks
        ledger.add(
            USERS,
            f"fewer than {options.min_user_tracks} tracks left",
            int(pairs.loc[small, OUT_USER].nunique()),
        )
        drop(small, f"user has fewer than {options.min_user_tracks} tracks")
    if len(pairs) == 0:
        raise DataError(
            f"nothing left after filtering (dropped: {_drops_inline(ledger)}); "
            "lower --min-plays / --min-user-tracks or check that the track ids overlap"
        )

    # The catalogue keeps its most-played-first order; tracks whose users all left drop out.
    still = set(pairs[OUT_TRACK])
    catalogue_ids = np.array([t for t in catalogue_ids if t in still], dtype=object)
    pairs = _sorted_pairs(pairs, keys)

    paths = _write_outputs(out, pairs, catalogue_ids, dump, exp, options, weekly)
    n_rows = len(pairs.drop_duplicates([OUT_USER, OUT_WEEK] if weekly else [OUT_USER]))
    n_users = int(pairs[OUT_USER].nunique())
    nnz = len(pairs)
    n_global = 0 if dump is None else int(dump.complete.sum())
    plays_kept = float(pairs[OUT_PLAYS].sum())
    on_catalogue = pairs_read[OUT_TRACK].isin(catalogue_ids).to_numpy()
    coverage = float(pairs_read[OUT_PLAYS].to_numpy()[on_catalogue].sum()) / plays_read
    result = PrepareResult(
        paths,
        n_users,
        n_rows,
        len(catalogue_ids),
        n_global,
        nnz,
        plays_read,
        plays_kept,
        coverage,
        ledger,
        "",
    )
    result.summary = _summary(result, read_lines, dump, exp, options, n_entries_read)
    write_text_atomic(paths["summary"], result.summary + "\n")
    return result


def _sorted_pairs(pairs: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    order = [OUT_USER, OUT_WEEK] if OUT_WEEK in keys else [OUT_USER]
    pairs = pairs.sort_values(
        [*order, OUT_PLAYS, OUT_TRACK], ascending=[True] * len(order) + [False, True]
    )
    plays = pairs[OUT_PLAYS].to_numpy()
    if np.all(plays == np.round(plays)):
        pairs[OUT_PLAYS] = plays.astype(np.int64)
    return pairs[[*order, OUT_TRACK, OUT_PLAYS]].reset_index(drop=True)


def _track_frame(table: TrackTable, index: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({OUT_TRACK: table.track_ids[index]})
    for j, c in enumerate(table.feature_columns):
        frame[c] = table.features[index, j]
    if table.popularity is not None:
        frame[OUT_POPULARITY] = table.popularity[index]
    if table.names is not None:
        frame[OUT_NAME] = table.names[index]
    if table.artists is not None:
        frame[OUT_ARTISTS] = table.artists[index]
    return frame


def _write_table(frame: pd.DataFrame, path: Path, parquet: bool) -> None:
    """Atomic CSV or Parquet; CSV through pyarrow, whose number formatting is ~10x faster than
    pandas' on a million-row track database (shortest round-trip floats, UTF-8)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    table = pa.Table.from_pandas(frame, preserve_index=False)
    with atomic_path(path) as tmp:
        if parquet:
            import pyarrow.parquet as pq

            pq.write_table(table, tmp)
        else:
            pacsv.write_csv(table, tmp, pacsv.WriteOptions(quoting_style="needed"))


def _write_outputs(
    out: Path,
    pairs: pd.DataFrame,
    catalogue_ids: np.ndarray,
    dump: TrackDump | None,
    exp: ExportPlays,
    options: PrepareOptions,
    weekly: bool,
) -> dict[str, Path]:
    ext = ".parquet" if options.parquet else ".csv"
    paths = {
        "interactions": out / f"interactions{ext}",
        "summary": out / "prepare_summary.txt",
        "config": out / "deepvibe.yaml",
    }
    if dump is not None:
        paths["features"] = out / f"top_10k_features{ext}"
        paths["database"] = out / f"global_tracks{ext}"
    if exp.n_account:
        paths["unmatched"] = out / "unmatched_plays.csv"
    config = _config_dict(paths, dump, weekly, len(catalogue_ids))
    config_from_dict(config, source="generated config")  # never write a config train rejects

    _write_table(pairs, paths["interactions"], options.parquet)
    if dump is not None:
        pos = {t: i for i, t in enumerate(dump.table.track_ids)}
        cat_index = np.array([pos[t] for t in catalogue_ids], dtype=np.int64)
        _write_table(_track_frame(dump.table, cat_index), paths["features"], options.parquet)
        _write_table(
            _track_frame(dump.table, np.flatnonzero(dump.complete)),
            paths["database"],
            options.parquet,
        )
    if exp.n_account:
        listing = exp.unmatched.copy()
        for c in (OUT_USER, "artist", "track"):  # people open this file in spreadsheets
            listing[c] = listing[c].map(neutralise_formula)
        _write_table(listing, paths["unmatched"], parquet=False)
    header = (
        "# Written by `deepvibe prepare`; train with: deepvibe train --config THIS_FILE\n"
        "# Paths are absolute. Add model/train/discover/paths sections as in "
        "configs/default.yaml.\n"
    )
    write_text_atomic(paths["config"], header + yaml.safe_dump(config, sort_keys=False))
    return paths


def _config_dict(
    paths: dict[str, Path], dump: TrackDump | None, weekly: bool, n_catalogue: int
) -> dict:
    data: dict = {
        "interactions": str(paths["interactions"].resolve()),
        "format": "long",
        "user_column": OUT_USER,
        "time_column": OUT_WEEK if weekly else None,
        "track_column": OUT_TRACK,
        "plays_column": OUT_PLAYS,
    }
    if dump is None:
        data.update({"features": None, "database": None})
    else:
        t = dump.table
        data.update(
            {
                "features": str(paths["features"].resolve()),
                "feature_track_column": OUT_TRACK,
                "feature_columns": list(t.feature_columns),
                "popularity_column": OUT_POPULARITY if t.popularity is not None else None,
                "name_column": OUT_NAME if t.names is not None else None,
                "artist_column": OUT_ARTISTS if t.artists is not None else None,
                "database": str(paths["database"].resolve()),
            }
        )
    data["max_tracks"] = max(1, n_catalogue)
    return {"data": data}


def _drops_inline(ledger: Ledger) -> str:
    parts = [
        f"{reason} {count:,} {_STAGE_TITLES[stage][1]}"
        for stage in _STAGE_TITLES
        for reason, count, _ in ledger.stage(stage)
    ]
    return "; ".join(parts) or "nothing"


_STAGE_TITLES = {  # stage -> (heading, unit)
    "tracks": ("track tables", "rows"),
    STREAMS: ("Spotify streams", "streams"),
    ROWS: ("table rows", "rows"),
    MATCH: ("account-data plays", "plays"),
    ENTRIES: ("entries", "entries"),
    USERS: ("users", "users"),
}


def _drops_text(ledger: Ledger, entry_unit: str = "(user, track)") -> str:
    lines = []
    for stage, (title, unit) in _STAGE_TITLES.items():
        items = ledger.stage(stage)
        if not items:
            continue
        lines.append(f"  {entry_unit + ' ' + title if stage == ENTRIES else title}:")
        for reason, count, plays in items:
            extra = f" ({plays:,.0f} plays)" if stage in (ROWS, ENTRIES) else ""
            lines.append(f"    - {reason}: {count:,} {unit}{extra}")
    return "\n".join(lines) if lines else "  nothing"


def _summary(
    r: PrepareResult,
    read_lines: list[str],
    dump: TrackDump | None,
    exp: ExportPlays,
    options: PrepareOptions,
    n_entries_read: int,
) -> str:
    unit = "(user, week, track)" if options.weekly else "(user, track)"
    lines = ["read:", *read_lines]
    if dump is not None:
        lines.append(
            f"  track tables: {dump.n_rows:,} rows, {len(dump.table.track_ids):,} distinct tracks, "
            f"{int(dump.complete.sum()):,} with complete features"
        )
    if exp.n_account:
        rate = exp.n_matched / exp.n_account
        lines.append(
            f"account-data matching: {exp.n_matched:,} of {exp.n_account:,} plays matched a track "
            f"by artist and title ({rate:.1%}); {len(exp.unmatched):,} unmatched (artist, track) "
            f"pairs listed in {r.paths['unmatched']}"
        )
    lines.append(
        "dropped (each under the first reason that applies):\n" + _drops_text(r.ledger, unit)
    )
    if options.binary:
        lines.append("plays: --binary, every kept entry counts 1")
    density = r.nnz / max(1, r.n_rows * r.n_catalogue)
    lines += [
        f"kept: {r.n_users:,} users in {r.n_rows:,} rows, {r.n_catalogue:,} catalogue tracks, "
        f"{r.nnz:,} of {n_entries_read:,} {unit} entries, {r.plays_kept:,.0f} plays "
        f"(density {density:.4%})",
        f"catalogue coverage: {r.coverage:.1%} of the {r.plays_read:,.0f} plays read are on "
        f"catalogue tracks; {r.plays_kept / r.plays_read:.1%} are kept",
    ]
    if dump is not None:
        lines.append(f"database: {r.n_global:,} tracks with complete features")
    lines.append("wrote:")
    lines += [f"  {k:>12}: {p}" for k, p in r.paths.items()]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- discover --history


@dataclass
class History:
    """One person's listening read from a Spotify download, ready to score."""

    interactions: Interactions  # one row: all-time plays per track
    user_id: str
    n_streams: int
    n_plays: int
    n_account: int
    n_matched: int
    drops: dict[str, int]
    unmatched: pd.DataFrame

    def summary(self) -> str:
        parts = [
            f"{self.n_streams:,} streams, {self.n_plays:,} plays of "
            f"{self.interactions.matrix.shape[1]:,} tracks"
        ]
        if self.n_account:
            parts.append(
                f"{self.n_matched:,} of {self.n_account:,} account-data plays matched by name"
            )
        dropped = ", ".join(f"{k} {v:,}" for k, v in self.drops.items() if v)
        if dropped:
            parts.append(f"not counted: {dropped}")
        return f"history of {self.user_id!r}: " + "; ".join(parts)


def read_history(
    path: str | Path,
    tracks: TrackTable | None = None,
    min_ms: int = 30_000,
    user: str | None = None,
) -> History:
    """Read a Spotify download (zip, folder or one history JSON file) as one listening row.

    ``tracks`` (names and artists) is needed only for account-data files, which carry no ids;
    pass the database or the checkpoint's catalogue.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: history not found")
    export = find_export(p)
    if export is None:
        raise DataError(
            f"{p}: not a Spotify streaming history (expected a download zip, a folder, or a "
            "Streaming_History_Audio_*.json / StreamingHistory_music_*.json file)"
        )
    streams = read_streams(export, min_ms, user)
    ledger = Ledger()
    drop_overlap([streams], ledger)
    exp = export_plays(
        [streams],
        tracks,
        None,
        ledger,
        f"{p}: account-data history (StreamingHistory_music_*.json) has no track ids and no "
        "track names and artists were given to match it; use the Extended streaming history",
    )
    if len(exp.plays) == 0:
        raise DataError(
            f"{p}: no music plays of at least {min_ms / 1000:g} s in this history"
            + (
                f" ({exp.n_account} account-data plays, none matched a track by name)"
                if exp.n_account
                else ""
            )
        )
    long = (
        exp.plays.groupby([OUT_USER, OUT_TRACK], sort=False).size().rename(OUT_PLAYS).reset_index()
    )
    inter = interactions_from_long(long, OUT_USER, OUT_TRACK, OUT_PLAYS, None, p)
    drops = dict(streams.drops)
    drops.update({r: c for r, c, _ in ledger.stage(MATCH)})
    history = History(
        inter,
        streams.user_id,
        streams.n_streams,
        len(exp.plays),
        exp.n_account,
        exp.n_matched,
        drops,
        exp.unmatched,
    )
    log.info("%s", history.summary())
    return history


def read_history_file(path: str | Path, tracks: TrackTable | None = None) -> Interactions:
    """:func:`read_history` for ``discover --history``: the plays as a one-row Interactions."""
    return read_history(path, tracks).interactions
