"""One listener's history, for ``discover --history`` and ``prepare``: a long table, or a
Spotify download whose plays get track ids (account-data plays matched by name).

``prepare`` reads many downloads through :func:`export_plays` and :func:`drop_overlap`;
``discover --history`` reads one through :func:`load_history`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deepvibe.config import DataConfig
from deepvibe.data.spotify import (
    ACCOUNT,
    EXTENDED,
    NameIndex,
    Streams,
    find_export,
    history_artist_key,
    looks_like_export,
    read_streams,
)
from deepvibe.data.tables import (
    PLAYS,
    TRACK,
    USER,
    Interactions,
    LongColumns,
    TrackTable,
    long_to_interactions,
    read_long_table,
)
from deepvibe.data.time import to_instants
from deepvibe.errors import DataError
from deepvibe.fileio import check_input_file, read_csv_header

log = logging.getLogger(__name__)

NO_MATCH = "no track with this artist and title in the track table"
OVERLAP = "account-data play already covered by the same user's extended history"

_NEED_TRACKS = (
    "account-data history (StreamingHistory_music_*.json) has no track ids; pass --tracks with "
    "a track table that has track names and artists to match them"
)


@dataclass
class ExportPlays:
    """Plays of the downloads, one row per play: user_id, track_id, time."""

    plays: pd.DataFrame
    unmatched: pd.DataFrame  # user_id, artist, track, plays, first_played, last_played
    n_account: int  # account-data plays that needed matching (after overlap removal)
    n_matched: int

    @property
    def n_unmatched(self) -> int:
        return self.n_account - self.n_matched


def drop_overlap(streams: list[Streams]) -> int:
    """Drop account-data plays inside the time span of the same user's extended history: they
    are the same plays counted twice (the account download covers the last year). Returns how
    many were dropped."""
    spans: dict[str, tuple[pd.Timestamp, pd.Timestamp]] = {}
    for s in streams:
        ext = s.frame.loc[s.frame["schema"] == EXTENDED, "time"]
        if len(ext):
            lo, hi = ext.min(), ext.max()
            if s.user_id in spans:
                lo, hi = min(lo, spans[s.user_id][0]), max(hi, spans[s.user_id][1])
            spans[s.user_id] = (lo, hi)
    dropped = 0
    for s in streams:
        if s.user_id not in spans:
            continue
        lo, hi = spans[s.user_id]
        inside = (s.frame["schema"] == ACCOUNT) & s.frame["time"].between(lo, hi)
        if inside.any():
            dropped += int(inside.sum())
            s.frame = s.frame[~inside.to_numpy()].reset_index(drop=True)
    return dropped


def export_plays(
    streams: list[Streams],
    tracks: TrackTable | None,
    prefer: np.ndarray | None = None,
    need_tracks: str = _NEED_TRACKS,
) -> ExportPlays:
    """Give every play a track id: extended plays have one; account-data plays are matched by
    normalised artist and title against ``tracks`` (``prefer``: rows that win a tie)."""
    frames = []
    for s in streams:
        f = s.frame.copy()
        f[USER] = s.user_id
        frames.append(f)
    if not frames:
        empty = pd.DataFrame(
            {USER: [], TRACK: [], "time": to_instants(pd.Series([], dtype=object))}
        )
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
        unmatched = allp[miss]
        allp = allp[~miss]
    plays = allp[[USER, "track_id", "time"]].rename(columns={"track_id": TRACK})
    return ExportPlays(
        plays.reset_index(drop=True), _unmatched_frame(unmatched), n_account, n_matched
    )


def _unmatched_frame(rows: pd.DataFrame) -> pd.DataFrame:
    cols = [USER, "artist", "track", PLAYS, "first_played", "last_played"]
    if len(rows) == 0:
        return pd.DataFrame({c: [] for c in cols})
    g = rows.groupby([USER, "artist", "track"], sort=False)["time"]
    out = g.agg(["size", "min", "max"]).reset_index()
    out.columns = cols
    out = out.sort_values([USER, PLAYS, "artist", "track"], ascending=[True, False, True, True])
    for c in ("first_played", "last_played"):
        out[c] = out[c].dt.strftime("%Y-%m-%dT%H:%M:%SZ")
    return out.reset_index(drop=True)


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
    n_overlap = drop_overlap([streams])
    exp = export_plays(
        [streams],
        tracks,
        None,
        f"{p}: account-data history (StreamingHistory_music_*.json) has no track ids and no "
        "track names and artists were given to match it; use the Extended streaming history",
    )
    if len(exp.plays) == 0:
        matched = (
            f" ({exp.n_account} account-data plays, none matched a track by name)"
            if exp.n_account
            else ""
        )
        raise DataError(
            f"{p}: no music plays of at least {min_ms / 1000:g} s in this history{matched}"
        )
    long = exp.plays.groupby([USER, TRACK], sort=False).size().rename(PLAYS).reset_index()
    drops = dict(streams.drops)
    drops.update({r: n for r, n in ((OVERLAP, n_overlap), (NO_MATCH, exp.n_unmatched)) if n})
    history = History(
        long_to_interactions(long),
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


def load_history(
    path: str | Path, data: DataConfig | None = None, tracks: TrackTable | None = None
) -> Interactions:
    """A listening history for users outside the training data: a Spotify download (one user,
    :func:`read_history_file`) or a long table.

    Long tables hold one row per (user, track): ``user_id, track_id[, plays]``, or the column
    names of ``data`` when given and present. Without a plays column each row counts one play;
    repeated rows are summed; all of a user's rows form one listening vector.
    """
    if looks_like_export(path):
        return read_history_file(path, tracks)
    data = data or DataConfig()
    p = check_input_file(path, "history")
    header = read_csv_header(p, "history")
    user_col = data.user_column if data.user_column in header else "user_id"
    track_col = data.track_column if data.track_column in header else "track_id"
    if user_col not in header or track_col not in header:
        raise DataError(
            f"{p}: history file needs columns user_id and track_id (and optionally plays); "
            f"it has {', '.join(header[:8]) or 'none'}"
        )
    plays_col = next((c for c in (data.plays_column, "plays") if c and c in header), None)
    table = read_long_table(p, LongColumns(user_col, track_col, plays_col), what="history")
    if table.n_merged:
        log.warning("%s: %d duplicate rows were merged by summing plays", p, table.n_merged)
    return long_to_interactions(table.frame)
