"""``deepvibe prepare``: raw listening data -> the files ``train`` and ``discover`` read.

Sources are long tables (CSV/Parquet rows of user, track and optionally plays and time) and
Spotify history downloads; track tables give ids, audio features, popularity, names and
artists. All are read by :mod:`deepvibe.data`; this module filters the plays and keeps the
drop ledger, and :mod:`deepvibe.prepare.writing` writes the files and the summary.

Every drop is counted under one reason, in pipeline order: a stream or row is read, then
aggregated into (user[, week], track) entries, which are filtered by plays, features,
catalogue membership and finally by how many tracks their user has left.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from deepvibe.config import DEFAULT_FEATURES
from deepvibe.data.history import (
    NO_MATCH,
    OVERLAP,
    ExportPlays,
    drop_overlap,
    export_plays,
)
from deepvibe.data.spotify import Export, Streams, find_export, group_loose_files, read_streams
from deepvibe.data.tables import (
    TIME,
    LongColumns,
    TrackReadStats,
    TrackTable,
    load_track_table,
    read_long_table,
)
from deepvibe.data.time import DATES, TimeAxis, week_labels
from deepvibe.errors import DataError
from deepvibe.prepare.writing import (
    OUT_PLAYS,
    OUT_TRACK,
    OUT_USER,
    OUT_WEEK,
    summary_text,
    write_outputs,
    write_summary,
)

log = logging.getLogger(__name__)

# How messages name the flag that fixes a column.
FLAG_HINTS = {
    "user": "--user-col", "track": "--track-col", "plays": "--plays-col", "time": "--time-col",
    "id": "--id-col", "features": "--feature-cols", "popularity": "--popularity-col",
    "name": "--name-col", "artist": "--artist-col",
}  # fmt: skip


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

# Stages, in pipeline order, with their heading and unit in the summary.
TRACKS = "tracks"  # track-table rows
STREAMS = "streams"  # Spotify export entries
ROWS = "rows"  # long-table rows
MATCH = "match"  # account-data plays matched by name
ENTRIES = "entries"  # (user[, week], track) entries after aggregation
USERS = "users"
STAGE_TITLES = {
    TRACKS: ("track tables", "rows"),
    STREAMS: ("Spotify streams", "streams"),
    ROWS: ("table rows", "rows"),
    MATCH: ("account-data plays", "plays"),
    ENTRIES: ("entries", "entries"),
    USERS: ("users", "users"),
}

NOT_IN_TABLE = "track not in the track table"
INCOMPLETE = "track has missing or invalid audio features"
MISSING_ID = "missing user or track id"
ZERO_PLAYS = "zero plays"


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

    def lines(self, entry_unit: str = "(user, track)") -> str:
        """Every drop, one line per reason under a heading per stage, for the summary."""
        out = []
        for stage, (title, unit) in STAGE_TITLES.items():
            items = self.stage(stage)
            if not items:
                continue
            out.append(f"  {entry_unit + ' ' + title if stage == ENTRIES else title}:")
            for reason, count, plays in items:
                extra = f" ({plays:,.0f} plays)" if stage in (ROWS, ENTRIES) else ""
                out.append(f"    - {reason}: {count:,} {unit}{extra}")
        return "\n".join(out) if out else "  nothing"

    def inline(self) -> str:
        """Every drop on one line, for error messages."""
        parts = [
            f"{reason} {count:,} {STAGE_TITLES[stage][1]}"
            for stage in STAGE_TITLES
            for reason, count, _ in self.stage(stage)
        ]
        return "; ".join(parts) or "nothing"


# ----------------------------------------------------------------------------- reading


@dataclass(frozen=True)
class TrackDump:
    """Every distinct track of the track tables; features may be NaN where ``complete`` is False."""

    table: TrackTable
    complete: np.ndarray  # (n,) bool: all features (and popularity, when given) valid
    n_rows: int


def read_track_tables(
    paths: list[Path], cols: TrackColumns, ledger: Ledger | None = None
) -> TrackDump:
    """The track tables as one dump (first complete row of each id wins), drops counted."""
    ledger = ledger if ledger is not None else Ledger()
    given = {"popularity": cols.popularity, "name": cols.name, "artist": cols.artist}
    stats = TrackReadStats()
    table = load_track_table(
        paths, cols.id, cols.features, cols.popularity, cols.name, cols.artist, "track table",
        keep_incomplete=True, guess_columns=True, hints=FLAG_HINTS, stats=stats,
        required=[role for role, name in given.items() if name is not None],
    )  # fmt: skip
    dropped = [c for c in DEFAULT_FEATURES if c not in table.feature_columns]
    if cols.features is None and dropped:
        log.warning("%s: no column %s; using the other features", paths[0], ", ".join(dropped))
    ledger.add(TRACKS, "no track id", stats.n_blank_id)
    ledger.add(TRACKS, "duplicate track id (kept the first complete row)", stats.n_duplicates)
    assert table.complete is not None
    complete = table.complete
    ledger.add(TRACKS, "missing or invalid audio features or popularity", int((~complete).sum()))
    if len(table.track_ids) == 0:
        raise DataError(f"{paths[0]}: track table has no rows with a track id")
    return TrackDump(table, complete, stats.n_rows)


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


def _read_tables(
    paths: list[Path], cols: TableColumns, weekly: bool, ledger: Ledger, axis: TimeAxis
) -> tuple[list[pd.DataFrame], list[str]]:
    """Each long table summed per entry (columns user_id[, week], track_id, plays) and a line
    for the summary saying what was read."""
    explicit = {"plays": cols.plays, "time": cols.time if weekly else None}
    required = {"user", "track"} | {r for r, name in explicit.items() if name is not None}
    if weekly:
        required.add("time")
    columns = LongColumns(cols.user, cols.track, cols.plays, cols.time, True, frozenset(required))
    parts, lines = [], []
    for path in paths:
        table = read_long_table(
            path, columns, time="weeks" if weekly else None, skip_unusable=True,
            hints=FLAG_HINTS, axis=axis,
        )  # fmt: skip
        ledger.add(ROWS, MISSING_ID, table.n_missing_id, table.plays_missing_id)
        ledger.add(ROWS, ZERO_PLAYS, table.n_zero, 0.0)
        frame = table.frame.rename(columns={TIME: OUT_WEEK})
        parts.append(frame)
        line = f"  {path}: {table.n_rows:,} rows, {frame[OUT_PLAYS].sum():,.0f} plays"
        if table.time_kind is not None:
            line += f"; times in column {table.time_column!r} read as {table.time_kind}"
        lines.append(line)
    return parts, lines


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


def _export_entries(
    found: Sources,
    dump: TrackDump | None,
    options: PrepareOptions,
    ledger: Ledger,
    axis: TimeAxis,
) -> tuple[pd.DataFrame | None, ExportPlays, list[str]]:
    """The downloads' plays summed per entry, the matching result and summary lines."""
    streams = _name_exports(found, options, ledger)
    ledger.add(MATCH, OVERLAP, drop_overlap(streams))
    exp = export_plays(
        streams,
        None if dump is None else dump.table,
        None if dump is None else dump.complete,
    )
    ledger.add(MATCH, NO_MATCH, exp.n_unmatched)
    lines = []
    for s in streams:
        kinds = "+".join(sorted(set(s.frame["schema"]))) or "no plays"
        lines.append(
            f"  {s.export.source}: Spotify export ({kinds}) of user {s.user_id!r}: "
            f"{s.n_streams:,} streams, {len(s.frame):,} plays"
        )
    if not len(exp.plays):
        return None, exp, lines
    p = exp.plays.copy()
    p[OUT_PLAYS] = 1.0
    keys = [OUT_USER, OUT_TRACK]
    if options.weekly:
        axis.add(DATES, f"{streams[0].export.source}: Spotify download")
        p[OUT_WEEK] = week_labels(p["time"])
        keys = [OUT_USER, OUT_WEEK, OUT_TRACK]
    return p.groupby(keys, sort=False, as_index=False)[OUT_PLAYS].sum(), exp, lines


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


class _Entries:
    """The (user[, week], track) entries being filtered; every drop goes to the ledger."""

    def __init__(self, pairs: pd.DataFrame, ledger: Ledger) -> None:
        self.pairs = pairs
        self.ledger = ledger

    def drop(self, mask: np.ndarray, reason: str) -> None:
        plays = float(self.pairs[OUT_PLAYS].to_numpy()[mask].sum())
        self.ledger.add(ENTRIES, reason, int(mask.sum()), plays)
        self.pairs = self.pairs[~mask].reset_index(drop=True)


def filter_entries(
    pairs: pd.DataFrame, dump: TrackDump | None, options: PrepareOptions, ledger: Ledger
) -> tuple[pd.DataFrame, np.ndarray, pd.DataFrame]:
    """Apply the filters in pipeline order: ``--min-plays`` (on the plays as read), then
    ``--binary``, tracks missing from the track tables or incomplete there, the catalogue
    (the ``--max-tracks`` most played, over every user), ``--min-user-tracks``.

    Returns (kept entries, catalogue ids most played first, the entries as read, in the units
    of the kept ones).
    """
    too_few = np.zeros(len(pairs), dtype=bool)
    if options.min_plays > 1:  # on real play counts, before --binary makes every entry 1
        total = pairs.groupby([OUT_USER, OUT_TRACK])[OUT_PLAYS].transform("sum").to_numpy()
        too_few = total < options.min_plays
    if options.binary:
        pairs = pairs.assign(**{OUT_PLAYS: 1.0})
    entries = _Entries(pairs, ledger)
    read = pairs
    entries.drop(too_few, f"user played the track fewer than {options.min_plays} times")
    if dump is not None:
        # Row of each entry's track in the dump (-1: absent); hashing, never isin on text ids.
        row = pd.Index(dump.table.track_ids).get_indexer(entries.pairs[OUT_TRACK].to_numpy())
        entries.drop(row < 0, NOT_IN_TABLE)
        entries.drop(~dump.complete[row[row >= 0]], INCOMPLETE)
    per_track = entries.pairs.groupby(OUT_TRACK, sort=False)[OUT_PLAYS].sum()
    ranked = per_track.reset_index().sort_values([OUT_PLAYS, OUT_TRACK], ascending=[False, True])
    catalogue = ranked[OUT_TRACK].to_numpy(dtype=object)[: options.max_tracks]
    in_catalogue = pd.Index(catalogue).get_indexer(entries.pairs[OUT_TRACK].to_numpy()) >= 0
    entries.drop(~in_catalogue, f"track outside the {options.max_tracks:,} most-played tracks")
    if options.min_user_tracks > 1:
        p = entries.pairs
        small = p.groupby(OUT_USER)[OUT_TRACK].transform("nunique").to_numpy()
        small = small < options.min_user_tracks
        reason = f"fewer than {options.min_user_tracks} tracks left"
        ledger.add(USERS, reason, int(p.loc[small, OUT_USER].nunique()))
        entries.drop(small, f"user has fewer than {options.min_user_tracks} tracks")
    if len(entries.pairs) == 0:
        raise DataError(
            f"nothing left after filtering (dropped: {ledger.inline()}); "
            "lower --min-plays / --min-user-tracks or check that the track ids overlap"
        )
    # The catalogue keeps its most-played-first order; tracks whose users all left drop out.
    still = pd.Index(pd.unique(entries.pairs[OUT_TRACK]))
    catalogue = catalogue[still.get_indexer(catalogue) >= 0]
    return entries.pairs, catalogue, read


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
    keys = [OUT_USER, OUT_WEEK, OUT_TRACK] if options.weekly else [OUT_USER, OUT_TRACK]
    axis = TimeAxis(weekly=True)
    parts, read_lines = _read_tables(found.tables, table_columns, options.weekly, ledger, axis)
    from_exports, exp, export_lines = _export_entries(found, dump, options, ledger, axis)
    parts = [p for p in [*parts, from_exports] if p is not None and len(p)]
    if not parts:
        raise DataError(f"no plays left after reading the sources (dropped: {ledger.inline()})")
    pairs = (
        pd.concat(parts, ignore_index=True)
        .groupby(keys, sort=False, as_index=False)[OUT_PLAYS]
        .sum()
    )
    pairs, catalogue_ids, read = filter_entries(pairs, dump, options, ledger)
    paths = write_outputs(out, pairs, catalogue_ids, dump, exp, options)
    plays_read = float(read[OUT_PLAYS].sum())
    on_catalogue = pd.Index(catalogue_ids).get_indexer(read[OUT_TRACK].to_numpy()) >= 0
    result = PrepareResult(
        paths=paths,
        n_users=int(pairs[OUT_USER].nunique()),
        n_rows=len(pairs.drop_duplicates(keys[:-1])),
        n_catalogue=len(catalogue_ids),
        n_global=0 if dump is None else int(dump.complete.sum()),
        nnz=len(pairs),
        plays_read=plays_read,
        plays_kept=float(pairs[OUT_PLAYS].sum()),
        coverage=float(read[OUT_PLAYS].to_numpy()[on_catalogue].sum()) / plays_read,
        ledger=ledger,
        summary="",
    )
    result.summary = summary_text(result, read_lines + export_lines, dump, exp, options, len(read))
    write_summary(paths["summary"], result.summary)
    return result
