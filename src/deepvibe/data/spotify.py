"""Spotify's personal-data downloads read as plays.

Two schemas exist, both JSON arrays of one object per stream:

- Extended streaming history (``Streaming_History_Audio_*.json``, before 2023 ``endsong_*.json``):
  ``ts`` (UTC, ISO 8601), ``ms_played``, ``spotify_track_uri`` (null for podcast episodes,
  audiobooks and local files), ``skipped``, ``master_metadata_*`` names, and in older downloads
  ``username``.
- Account data (``StreamingHistory_music_*.json``, before 2023 ``StreamingHistory*.json``):
  ``endTime`` (UTC, ``YYYY-MM-DD HH:MM``), ``artistName``, ``trackName``, ``msPlayed``. There is
  no track id, so these plays are matched to a track table by normalised artist and title.

One *export* is one person: a zip of the download, a folder holding it, or loose history files
taken from one folder. A multi-year extended history is tens of MB of JSON per file, which
``json.loads`` handles one file at a time.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import unicodedata
import zipfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from deepvibe.data.ids import normalize_track_ids
from deepvibe.data.tables import TrackTable
from deepvibe.data.time import to_instants
from deepvibe.errors import DataError

log = logging.getLogger(__name__)

EXTENDED = "extended"
ACCOUNT = "account"

_EXTENDED_NAME = re.compile(r"^(streaming_history_audio_.*|endsong_\d+)\.json$", re.IGNORECASE)
_ACCOUNT_NAME = re.compile(r"^streaminghistory(_music)?_?\d+\.json$", re.IGNORECASE)
_IGNORED_NAME = re.compile(
    r"^(streaming_history_video_.*|streaminghistory_podcast_\d+)\.json$", re.IGNORECASE
)
_EXTENDED_KEYS = ("ts", "ms_played", "spotify_track_uri")
_ACCOUNT_KEYS = ("endTime", "msPlayed", "trackName", "artistName")
_SNIFF_BYTES = 65_536
_MAX_MEMBER_BYTES = 2**31  # a real history file is tens of MB; refuse to inflate more than 2 GiB

# Reasons a stream is not a play; the summary prints them in this order.
PODCAST = "podcast episode (no track URI)"
AUDIOBOOK = "audiobook (no track URI)"
NO_URI = "no track URI (local file or unavailable)"
SKIPPED = "skipped"
BAD_TIME = "unreadable timestamp"


def too_short(min_ms: int) -> str:
    return f"played under {min_ms / 1000:g} s"


# ----------------------------------------------------------------------------- finding files


@dataclass(frozen=True)
class ExportFile:
    name: str  # shown in messages: a path, or zip!member
    read: Callable[[], bytes]


@dataclass(frozen=True)
class Export:
    """The history files of one person's download."""

    source: Path  # the zip, the folder, or the folder of loose files
    files: tuple[ExportFile, ...]
    ignored: tuple[str, ...] = ()  # video and podcast histories, not read
    username: str | None = None  # from Userdata.json (account data), when present

    @property
    def default_user(self) -> str:
        """Label when neither --user nor a username field names the person: the folder/zip name."""
        return self.source.stem if self.source.suffix.lower() == ".zip" else self.source.name


def _classify_name(name: str) -> str | None:
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    if _IGNORED_NAME.match(base):
        return "ignored"
    if _EXTENDED_NAME.match(base) or _ACCOUNT_NAME.match(base):
        return "history"
    return None


def _sniff_json(head: bytes) -> str | None:
    """Which export schema a JSON file's first bytes look like (None: neither)."""
    text = head.decode("utf-8", errors="ignore").lstrip("\ufeff \t\r\n")
    if not text.startswith("["):
        return None
    if all(f'"{k}"' in text for k in _EXTENDED_KEYS):
        return EXTENDED
    if all(f'"{k}"' in text for k in _ACCOUNT_KEYS):
        return ACCOUNT
    return None


def _userdata_username(raw: bytes) -> str | None:
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (ValueError, UnicodeDecodeError):
        return None
    name = data.get("username") if isinstance(data, dict) else None
    if not name:
        return None
    return str(name).strip() or None


def _zip_export(path: Path) -> Export | None:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DataError(f"{path}: cannot open zip ({exc}); re-download the Spotify data") from exc
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
    files: list[ExportFile] = []
    ignored: list[str] = []
    username = None

    def reader(member: str) -> Callable[[], bytes]:
        def read() -> bytes:
            with zipfile.ZipFile(path) as z:
                return z.read(member)

        return read

    for info in sorted(infos, key=lambda i: i.filename):
        kind = _classify_name(info.filename)
        if kind == "history":
            if info.file_size > _MAX_MEMBER_BYTES:
                raise DataError(
                    f"{path}!{info.filename}: {info.file_size:,} bytes uncompressed, more than "
                    "any Spotify history file; extract the zip and check it"
                )
            files.append(ExportFile(f"{path}!{info.filename}", reader(info.filename)))
        elif kind == "ignored":
            ignored.append(info.filename)
        elif info.filename.rsplit("/", 1)[-1].lower() == "userdata.json":
            username = _userdata_username(reader(info.filename)())
    if not files:
        return None
    return Export(path, tuple(files), tuple(ignored), username)


def _folder_export(path: Path) -> Export | None:
    files: list[ExportFile] = []
    ignored: list[str] = []
    username = None
    for p in sorted(path.rglob("*.json")):
        kind = _classify_name(p.name)
        if kind == "history":
            files.append(ExportFile(str(p), p.read_bytes))
        elif kind == "ignored":
            ignored.append(str(p))
        elif p.name.lower() == "userdata.json":
            username = _userdata_username(p.read_bytes())
    if not files:
        return None
    return Export(path, tuple(files), tuple(ignored), username)


def _json_file_schema(path: Path) -> str | None:
    if path.suffix.lower() != ".json" or not path.is_file():
        return None
    with open(path, "rb") as fh:
        return _sniff_json(fh.read(_SNIFF_BYTES))


def find_export(path: str | Path) -> Export | None:
    """The Spotify history inside ``path`` (zip, folder or one JSON file), or None if none."""
    p = Path(path)
    if not p.exists():
        return None
    if p.is_dir():
        return _folder_export(p)
    if p.suffix.lower() == ".zip" or zipfile.is_zipfile(p):
        return _zip_export(p)
    if _json_file_schema(p) is not None:
        return Export(p.parent, (ExportFile(str(p), p.read_bytes),))
    return None


def is_spotify_export(path: str | Path) -> bool:
    """True when ``path`` is a Spotify history download, a folder of one, or one history file."""
    try:
        return find_export(path) is not None
    except (DataError, OSError):
        return False


def looks_like_export(path: str | Path) -> bool:
    """Whether a history path should be read as a Spotify download (a folder, a zip or a JSON
    file), so that a wrong one gets the export reader's precise error, not a CSV parse error."""
    p = Path(path)
    return p.is_dir() or p.suffix.lower() in {".zip", ".json"} or is_spotify_export(p)


def group_loose_files(paths: list[Path]) -> list[Export]:
    """Loose history JSON files from the same folder are one export (one person)."""
    groups: dict[Path, list[ExportFile]] = {}
    for p in paths:
        groups.setdefault(p.parent, []).append(ExportFile(str(p), p.read_bytes))
    return [Export(folder, tuple(files)) for folder, files in groups.items()]


# ----------------------------------------------------------------------------- reading streams


@dataclass
class Streams:
    """The music plays of one export, before any id matching.

    ``frame`` has one row per play: ``time`` (datetime64 UTC), ``track_id`` (bare id; None for
    account-data rows, which still need matching), ``artist``, ``track``, ``schema``.
    """

    export: Export
    user_id: str
    frame: pd.DataFrame
    n_streams: int
    drops: Counter[str] = field(default_factory=Counter)


def _load_records(f: ExportFile) -> list[dict]:
    try:
        raw = f.read()
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f"{f.name}: cannot read history file ({exc})") from exc
    try:
        records = json.loads(raw.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise DataError(f"{f.name}: history file is not UTF-8 JSON") from exc
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{f.name}: not valid JSON (line {exc.lineno}, column {exc.colno}); "
            "re-download or re-extract the Spotify data"
        ) from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise DataError(f"{f.name}: expected a JSON array of stream objects")
    return records


def _schema_of(records: list[dict], name: str) -> str | None:
    if not records:
        return None
    keys = set(records[0])
    if all(k in keys for k in ("ts", "ms_played")):
        return EXTENDED
    if all(k in keys for k in ("endTime", "msPlayed")):
        return ACCOUNT
    raise DataError(
        f"{name}: not a Spotify streaming history (first entry has keys "
        f"{', '.join(sorted(keys)[:8])}); expected ts/ms_played or endTime/msPlayed"
    )


def _column(frame: pd.DataFrame, name: str) -> pd.Series:
    if name in frame.columns:
        return frame[name]
    return pd.Series([None] * len(frame), index=frame.index, dtype=object)


def _present(col: pd.Series) -> np.ndarray:
    return (col.notna() & (col.astype(str).str.strip() != "")).to_numpy()


def _extended_plays(records: list[dict], min_ms: int, drops: Counter[str]) -> pd.DataFrame:
    cols = [
        "ts",
        "ms_played",
        "spotify_track_uri",
        "skipped",
        "master_metadata_album_artist_name",
        "master_metadata_track_name",
        "spotify_episode_uri",
        "episode_name",
        "audiobook_uri",
        "audiobook_title",
        "audiobook_chapter_uri",
        "username",
    ]
    frame = pd.DataFrame.from_records(records, columns=cols)
    uri = frame["spotify_track_uri"].astype(object).where(frame["spotify_track_uri"].notna(), "")
    is_track = uri.astype(str).str.startswith("spotify:track:").to_numpy()
    episode = ~is_track & (_present(frame["spotify_episode_uri"]) | _present(frame["episode_name"]))
    audiobook = (
        ~is_track
        & ~episode
        & (
            _present(frame["audiobook_uri"])
            | _present(frame["audiobook_title"])
            | _present(frame["audiobook_chapter_uri"])
        )
    )
    other = ~is_track & ~episode & ~audiobook
    ms = pd.to_numeric(frame["ms_played"], errors="coerce").fillna(0).to_numpy()
    short = is_track & (ms < min_ms)
    skipped_col = frame["skipped"].map(lambda v: v is True or v == 1 or v == "true")
    skipped = is_track & ~short & skipped_col.to_numpy(dtype=bool)
    time = to_instants(frame["ts"])
    bad_time = is_track & ~short & ~skipped & time.isna().to_numpy()
    keep = is_track & ~short & ~skipped & ~bad_time
    for reason, mask in (
        (PODCAST, episode),
        (AUDIOBOOK, audiobook),
        (NO_URI, other),
        (too_short(min_ms), short),
        (SKIPPED, skipped),
        (BAD_TIME, bad_time),
    ):
        drops[reason] += int(mask.sum())
    kept = frame[keep]
    return pd.DataFrame(
        {
            "time": time[keep].to_numpy(),
            "track_id": normalize_track_ids(uri[keep]),
            "artist": kept["master_metadata_album_artist_name"].astype(object).to_numpy(),
            "track": kept["master_metadata_track_name"].astype(object).to_numpy(),
            "schema": EXTENDED,
            "username": kept["username"].astype(object).to_numpy(),
        }
    )


def _account_plays(records: list[dict], min_ms: int, drops: Counter[str]) -> pd.DataFrame:
    frame = pd.DataFrame.from_records(
        records, columns=["endTime", "artistName", "trackName", "msPlayed"]
    )
    ms = pd.to_numeric(frame["msPlayed"], errors="coerce").fillna(0).to_numpy()
    short = ms < min_ms
    time = to_instants(frame["endTime"], "%Y-%m-%d %H:%M")
    bad_time = ~short & time.isna().to_numpy()
    keep = ~short & ~bad_time
    drops[too_short(min_ms)] += int(short.sum())
    drops[BAD_TIME] += int(bad_time.sum())
    kept = frame[keep]
    return pd.DataFrame(
        {
            "time": time[keep].to_numpy(),
            "track_id": None,
            "artist": kept["artistName"].fillna("").astype(str).to_numpy(dtype=object),
            "track": kept["trackName"].fillna("").astype(str).to_numpy(dtype=object),
            "schema": ACCOUNT,
            "username": None,
        }
    )


_FRAME_COLUMNS = ["time", "track_id", "artist", "track", "schema", "username"]


def read_streams(export: Export, min_ms: int = 30_000, user: str | None = None) -> Streams:
    """Every stream of ``export`` that counts as a play: a music track played at least
    ``min_ms`` milliseconds and not skipped. Podcasts, audiobooks and the rest are counted."""
    drops: Counter[str] = Counter()
    parts: list[pd.DataFrame] = []
    n_streams = 0
    for f in export.files:
        records = _load_records(f)
        n_streams += len(records)
        schema = _schema_of(records, f.name)
        if schema == EXTENDED:
            parts.append(_extended_plays(records, min_ms, drops))
        elif schema == ACCOUNT:
            parts.append(_account_plays(records, min_ms, drops))
        del records
    parts = [p for p in parts if len(p)]
    if parts:
        frame = pd.concat(parts, ignore_index=True)
    else:
        frame = pd.DataFrame({c: pd.Series(dtype=object) for c in _FRAME_COLUMNS})
        frame["time"] = to_instants(frame["time"])
    names = frame["username"].dropna().astype(str)
    names = names[names.str.strip() != ""]
    if user is None:
        if len(names):
            user = str(names.value_counts().index[0])
        elif export.username:
            user = export.username
        else:
            user = export.default_user
    return Streams(export, user, frame.drop(columns="username"), n_streams, drops)


# ----------------------------------------------------------------------------- name matching

_FEAT_BRACKET = re.compile(r"[\(\[]\s*(feat\.?|ft\.?|featuring|with)\s[^\)\]]*[\)\]]", re.I)
_FEAT_TAIL = re.compile(r"\s[-–—]?\s*(feat\.?|ft\.?|featuring)\s.*$", re.I)
_REMASTER_BRACKET = re.compile(r"[\(\[][^\)\]]*remaster[^\)\]]*[\)\]]", re.I)
_REMASTER_TAIL = re.compile(r"\s[-–—]\s[^-–—]*remaster[^-–—]*$", re.I)
_NON_WORD = re.compile(r"[^\w]+")
_APOSTROPHES = re.compile(r"['’`´]")


@functools.lru_cache(maxsize=200_000)
def normalise_name(text: str) -> str:
    """Case, accents and punctuation removed: ``"Beyoncé & JAY-Z"`` -> ``"beyonce and jay z"``."""
    decomposed = unicodedata.normalize("NFKD", text)
    plain = "".join(c for c in decomposed if not unicodedata.combining(c)).casefold()
    plain = _APOSTROPHES.sub("", plain.replace("&", " and "))
    return " ".join(_NON_WORD.sub(" ", plain).replace("_", " ").split())


@functools.lru_cache(maxsize=200_000)
def normalise_title(text: str) -> str:
    """A track title without "feat." credits and remaster suffixes, then :func:`normalise_name`.

    ``"Jump - 2015 Remaster"``, ``"Jump (Remastered)"`` and ``"jump"`` all give ``"jump"``.
    """
    t = _FEAT_BRACKET.sub(" ", text)
    t = _REMASTER_BRACKET.sub(" ", t)
    t = _REMASTER_TAIL.sub("", t)
    t = _FEAT_TAIL.sub("", t)
    return normalise_name(t) or normalise_name(text)


def artist_keys(text: str) -> set[str]:
    """Normalised artist names a table cell stands for.

    Cells list several artists (``"A, B"``, ``"A;B"``, ``"['A', 'B']"``); a name can itself
    contain a comma (``"Tyler, The Creator"``), so every run of consecutive parts is a key.
    """
    cell = text.strip().strip("[]")
    parts = [p.strip().strip("'\"").strip() for p in re.split(r"[;,]", cell)]
    parts = [p for p in parts if p]
    keys = {normalise_name(_FEAT_TAIL.sub("", cell.replace("'", "")))}
    for i in range(len(parts)):
        for j in range(i + 1, min(len(parts), i + 4) + 1):
            keys.add(normalise_name(", ".join(parts[i:j])))
    keys.discard("")
    return keys


@functools.lru_cache(maxsize=200_000)
def _artist_keys_cached(text: str) -> frozenset[str]:
    return frozenset(artist_keys(text))


def history_artist_key(text: str) -> str:
    return normalise_name(_FEAT_TAIL.sub("", text))


@dataclass(frozen=True)
class NameIndex:
    """(normalised artist, normalised title) -> row of a track table."""

    index: dict[tuple[str, str], int]

    @classmethod
    def build(
        cls,
        tracks: TrackTable,
        prefer: np.ndarray | None = None,
        artists: set[str] | None = None,
    ) -> NameIndex:
        """Index every track by each artist it credits and its title.

        When several rows share a key (album, single and compilation versions), the row with
        ``prefer`` True wins, then the most popular, then the first. ``artists`` (normalised
        names, see :func:`history_artist_key`) limits the index to tracks crediting one of
        them, which skips most title work on a large track dump.
        """
        if tracks.names is None or tracks.artists is None:
            raise DataError(
                "the tracks have no names and artists, which are needed to match account-data "
                "history (it has no track ids); for prepare pass --name-col and --artist-col, "
                "or use the Extended streaming history instead"
            )
        n = len(tracks.track_ids)
        pref = np.zeros(n) if prefer is None else prefer.astype(float)
        pop = np.zeros(n) if tracks.popularity is None else np.nan_to_num(tracks.popularity, nan=-1)
        order = np.lexsort((np.arange(n), -pop, -pref))
        index: dict[tuple[str, str], int] = {}
        for r in order:
            name, artist = tracks.names[r], tracks.artists[r]
            if not name or not artist:
                continue
            keys = _artist_keys_cached(str(artist))
            if artists is not None and not keys & artists:
                continue
            title = normalise_title(str(name))
            for a in keys:
                index.setdefault((a, title), int(r))
        return cls(index)

    def lookup(self, artists: np.ndarray, titles: np.ndarray) -> np.ndarray:
        """Row of each (artist, title) pair, -1 where nothing matches."""
        out = np.full(len(artists), -1, dtype=np.int64)
        for i, (a, t) in enumerate(zip(artists, titles, strict=True)):
            if not a or not t:
                continue
            out[i] = self.index.get((history_artist_key(str(a)), normalise_title(str(t))), -1)
        return out


__all__ = [
    "ACCOUNT",
    "EXTENDED",
    "Export",
    "ExportFile",
    "NameIndex",
    "Streams",
    "find_export",
    "group_loose_files",
    "is_spotify_export",
    "looks_like_export",
    "normalise_name",
    "normalise_title",
    "read_streams",
]
