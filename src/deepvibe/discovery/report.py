"""Reports: the ranked tracks and the Vibe DNA of each user, as files and as text.

Per user: ``{out}/{user}/{user}_{label}_{mode}.csv`` (rank, track_id, track_name, artists,
popularity, similarity or decoder_score, score, spotify_url) and ``..._dna.csv`` beside it.
For many users, :class:`ReportWriter` writes a whole block of users at once (one flush to disk
per block, every file still atomic), and :class:`LongTableWriter` writes every user into one
long Parquet table (user, rank, track_id, score, ...) that ``pandas.read_parquet`` reads in one
call. Text cells are neutralised against spreadsheet formula injection; user ids are made safe
path components that cannot leave the output folder.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd

from deepvibe.data.ids import is_spotify_id
from deepvibe.discovery.scan import workers
from deepvibe.fileio import (
    FORMULA_PREFIXES,
    atomic_batch,
    atomic_path,
    neutralise_formula,
    path_inside,
    safe_path_component,
    write_csv_atomic,
)

if TYPE_CHECKING:
    import pyarrow as pa

Mode = Literal["standard", "gems", "new-artists", "gems-new-artists"]
Source = Literal["db", "catalogue"]
TEXT_COLUMNS = ("track_id", "track_name", "artists")
_SPOTIFY_TRACK = "https://open.spotify.com/track/"
_WRITE_USERS = 256  # users per Parquet row group of the long table


def report_columns(base: str) -> list[str]:
    """A report's columns, in order; ``base`` is ``similarity`` or ``decoder_score``."""
    return ["rank", "track_id", "track_name", "artists", "popularity", base, "score", "spotify_url"]


@dataclass(frozen=True)
class Discovery:
    """One user's result: the DNA and the ranked tracks, best first."""

    user: str
    mode: Mode
    source: Source
    dna: np.ndarray  # (f,) standardised
    dna_raw: np.ndarray  # (f,) original units
    dna_percentile: np.ndarray  # (f,) 0..100 within the database (or catalogue)
    table: pd.DataFrame  # report_columns(similarity or decoder_score)


@dataclass(frozen=True)
class DiscoveryBlock:
    """The results of a block of users as one long table, best first per user: result row r
    is track ``row_track[r]`` of ``tracks`` (each distinct track once, so names are stored
    once per block), and user u's rows are ``offsets[u]:offsets[u + 1]``."""

    users: np.ndarray  # (b,) user ids
    mode: Mode
    source: Source
    dna: np.ndarray  # (b, f) standardised
    dna_raw: np.ndarray  # (b, f) original units
    dna_percentile: np.ndarray  # (b, f) 0..100
    tracks: pa.Table  # distinct tracks: track_id, track_name, artists, popularity, spotify_url
    row_track: np.ndarray  # (R,) row of ``tracks``
    base: str  # "similarity" (database) or "decoder_score" (catalogue)
    base_values: np.ndarray  # (R,) rounded to 6 decimals
    score: np.ndarray  # (R,) rounded to 6 decimals
    offsets: np.ndarray  # (b + 1,)
    # (R,) the hybrid's reason per row, as categories (a few hundred distinct texts per
    # block, made safe and escaped once each, not once per row); None: no such column
    why: pd.Categorical | None = None

    def __len__(self) -> int:
        return len(self.users)

    @property
    def columns(self) -> list[str]:
        """The report's columns: report_columns(base), and ``why`` when the block has it."""
        columns = report_columns(self.base)
        if self.why is not None:  # the hybrid's reason, after the numbers
            columns.insert(columns.index("spotify_url"), "why")
        return columns

    @property
    def rank(self) -> np.ndarray:
        """(R,) 1-based rank of each row within its user."""
        counts = np.diff(self.offsets)
        return np.arange(len(self.row_track)) - np.repeat(self.offsets[:-1], counts) + 1

    @functools.cached_property
    def table(self) -> pd.DataFrame:
        """Every row as a report table (report_columns(base))."""
        import pyarrow as pa

        frame = self.tracks.take(pa.array(self.row_track)).to_pandas()
        frame.insert(0, "rank", self.rank)
        frame.insert(5, self.base, self.base_values)
        frame.insert(6, "score", self.score)
        if self.why is not None:
            frame["why"] = np.asarray(self.why, dtype=object)
        return frame[self.columns]

    def arrow(self, safe_text: bool = False, users: slice = slice(None)) -> pa.Table:
        """The rows of ``users`` (default all) as an Arrow table (report_columns(base), and
        ``why`` when the block has it); ``safe_text`` neutralises the text as the CSV reports
        need."""
        import pyarrow as pa

        first, last, _ = users.indices(len(self.users))
        rows = slice(int(self.offsets[first]), int(self.offsets[max(first, last)]))
        distinct = self._safe_tracks if safe_text else self._plain_tracks
        tracks = distinct.take(pa.array(self.row_track[rows]))
        columns = {"rank": pa.array(self.rank[rows])}
        for name in ("track_id", "track_name", "artists", "popularity"):
            columns[name] = tracks.column(name)
        columns[self.base] = pa.array(self.base_values[rows])
        columns["score"] = pa.array(self.score[rows])
        if self.why is not None:
            columns["why"] = self._reasons(rows, _safe_text if safe_text else None)
        columns["spotify_url"] = tracks.column("spotify_url")
        return pa.table(columns)

    def csv_rows(self, users: slice = slice(None)) -> tuple[memoryview, np.ndarray]:
        """The rows of ``users`` (default all) as the CSV reports hold them, header aside: the
        text, and (n + 1,) byte offsets into it where each user's rows start (the last: where
        they end). The bytes ``pyarrow.csv.write_csv(quoting_style="needed")`` writes for the
        rows of :meth:`arrow` with ``safe_text``, made for many users at once and cut per user
        by the offsets (one Arrow writer per user cost more than the file)."""
        import pyarrow as pa
        import pyarrow.compute as pc

        first, last, _ = users.indices(len(self.users))
        last = max(first, last)
        rows = slice(int(self.offsets[first]), int(self.offsets[last]))
        head, tail = self._csv_tracks
        track = pa.array(self.row_track[rows])
        cells = [_csv_number(pa.array(self.rank[rows])), head.take(track),
                 _csv_number(pa.array(self.base_values[rows])),
                 _csv_number(pa.array(self.score[rows]))]  # fmt: skip
        if self.why is not None:
            cells.append(self._reasons(rows, lambda text: _csv_text(_escaped(_safe_text(text)))))
        cells.append(tail.take(track))
        text = pc.binary_join_element_wise(*cells, _large(","))  # (R,) one line per row
        ends = np.frombuffer(text.buffers()[1], np.int64, len(text) + 1, 8 * text.offset)
        data = text.buffers()[2]
        starts = ends[self.offsets[first : last + 1] - self.offsets[first]]
        return (memoryview(data) if data is not None else memoryview(b"")), starts

    def _reasons(self, rows: slice, form: Callable[[pa.Array], pa.Array] | None) -> pa.Array:
        """The ``why`` of ``rows`` as Arrow strings, each distinct text put in ``form`` once."""
        import pyarrow as pa

        assert self.why is not None
        texts = pa.array([*self.why.categories, None], pa.string())  # last: a missing one
        if form is not None:
            texts = _one_array(form(texts))
        codes = self.why.codes[rows]
        return texts.take(pa.array(np.where(codes < 0, len(texts) - 1, codes)))

    @functools.cached_property
    def _csv_tracks(self) -> tuple[pa.Array, pa.Array]:
        """Each distinct track's CSV cells before the row's numbers (track_id, track_name,
        artists, popularity) and after them (spotify_url and the line end)."""
        import pyarrow.compute as pc

        safe = self._safe_tracks
        pop = _csv_number(safe.column("popularity"))
        text = [_escaped(safe.column(c)) for c in TEXT_COLUMNS]
        if any(t.null_count for t in text):  # a missing text is an empty cell, not ""
            head = pc.binary_join_element_wise(*map(_csv_text, text), pop, _large(","))
        else:  # the quotes and commas in one pass: "id","name","artists",popularity
            pieces = [_large('"'), text[0], _large('","'), text[1], _large('","'), text[2]]
            head = pc.binary_join_element_wise(*pieces, _large('",'), pop, _large(""))
        tail = pc.binary_join_element_wise(
            _csv_text(_escaped(safe.column("spotify_url"))), _large("\n"), _large("")
        )
        return _one_array(head), _one_array(tail)

    @property
    def _plain_tracks(self) -> pa.Table:
        return self.tracks

    @functools.cached_property
    def _safe_tracks(self) -> pa.Table:
        safe = {c: self.tracks.column(c) for c in self.tracks.column_names}
        for c in TEXT_COLUMNS:
            safe[c] = _safe_text(safe[c])
        return type(self.tracks).from_pydict(safe)

    def discovery(self, u: int) -> Discovery:
        rows = self.table.iloc[self.offsets[u] : self.offsets[u + 1]].reset_index(drop=True)
        return Discovery(
            str(self.users[u]), self.mode, self.source, self.dna[u], self.dna_raw[u],
            self.dna_percentile[u], rows,
        )  # fmt: skip

    def discoveries(self) -> list[Discovery]:
        return [self.discovery(u) for u in range(len(self.users))]


def track_table(meta: pa.Table) -> pa.Table:
    """Distinct tracks (``meta``: track_id and any of track_name, artists, popularity) with
    the report's track columns: blank text and null popularity where the source has none,
    and their Spotify links."""
    import pyarrow as pa
    import pyarrow.compute as pc

    n = meta.num_rows
    ids = meta.column("track_id").cast(pa.string())
    columns = {"track_id": ids}
    for col in ("track_name", "artists"):
        if col in meta.column_names:
            columns[col] = pc.fill_null(meta.column(col).cast(pa.string()), "")
        else:
            columns[col] = pa.array([""] * n, pa.string())
    pop = np.full(n, np.nan)
    if "popularity" in meta.column_names:
        pop = meta.column("popularity").to_numpy().astype(np.float64)
    columns["popularity"] = pa.array(pop, from_pandas=True)  # NaN -> null
    bare = pc.replace_substring_regex(ids, "^spotify:track:", "")
    is_spotify = pc.fill_null(pc.match_substring_regex(bare, "^[0-9A-Za-z]{22}$"), False)
    link = pc.binary_join_element_wise(_SPOTIFY_TRACK, bare, "")
    columns["spotify_url"] = pc.if_else(is_spotify, link, "")
    return pa.table(columns)


def spotify_url(track_id: str) -> str:
    """``https://open.spotify.com/track/<id>`` for a Spotify id, else ''."""
    tid = str(track_id)
    if tid.startswith("spotify:track:"):
        tid = tid[len("spotify:track:") :]
    return f"{_SPOTIFY_TRACK}{tid}" if is_spotify_id(tid) else ""


def spotify_urls(track_ids: np.ndarray) -> np.ndarray:
    """:func:`spotify_url` of many ids at once, (n,) object."""
    ids = pd.Series(np.asarray(track_ids, dtype=object), dtype=object).astype(str)
    bare = ids.str.removeprefix("spotify:track:")
    ok = bare.str.fullmatch(r"[0-9A-Za-z]{22}").to_numpy(dtype=bool)
    return np.where(ok, _SPOTIFY_TRACK + bare.to_numpy(dtype=object), "").astype(object)


def finish_table(frame: pd.DataFrame, base: str) -> pd.DataFrame:
    """Report columns in a fixed order: rank, ids and text, numbers, the Spotify link."""
    frame = frame.copy()
    for col in ("track_name", "artists"):
        if col not in frame:
            frame[col] = ""
    if "popularity" not in frame:
        frame["popularity"] = np.nan
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    for col in (base, "score"):  # float32 arithmetic: 6 decimals is all the precision there is
        frame[col] = np.round(frame[col].astype(np.float64), 6)
    frame["spotify_url"] = spotify_urls(frame["track_id"].to_numpy(dtype=object))
    columns = report_columns(base)
    if "why" in frame:  # the hybrid's reason, after the numbers
        columns.insert(columns.index("spotify_url"), "why")
    return frame[columns]


# ----------------------------------------------------------------------------- files


def user_folder_name(user_id: str) -> str:
    """A user id as a folder/file name. When cleaning changed it, a short hash of the real id
    is added so two ids never share a report (``a/b`` and ``a_b``)."""
    safe = safe_path_component(str(user_id))
    if safe != str(user_id):
        safe = f"{safe}-{hashlib.sha1(str(user_id).encode('utf-8')).hexdigest()[:8]}"
    return safe


def report_paths(out_dir: str | Path, user: str, label: str, mode: str) -> tuple[Path, Path]:
    """(report, DNA) paths of one user, checked to stay inside ``out_dir``."""
    name = user_folder_name(user)
    folder = path_inside(out_dir, name)  # the file names below are plain components
    stem = f"{name}_{label}_{mode}"
    return folder / f"{stem}.csv", folder / f"{stem}_dna.csv"


def dna_frame(
    feature_columns: tuple[str, ...], raw: np.ndarray, std: np.ndarray, pct: np.ndarray
) -> pd.DataFrame:
    return pd.DataFrame(
        {"feature": list(feature_columns), "value": raw, "standardised": std, "percentile": pct}
    )


def write_recommendations(
    result: Discovery, out_dir: str | Path, label: str, feature_columns: tuple[str, ...]
) -> tuple[Path, Path]:
    """Write one user's report and DNA file atomically (see the module doc)."""
    report_path, dna_path = report_paths(out_dir, result.user, label, result.mode)
    table = result.table.copy()
    for col in TEXT_COLUMNS:
        table[col] = [neutralise_formula(v) for v in table[col]]
    write_csv_atomic(table, report_path)
    frame = dna_frame(feature_columns, result.dna_raw, result.dna, result.dna_percentile)
    write_csv_atomic(frame, dna_path)
    return report_path, dna_path


_FORMULA = "^[" + re.escape("".join(FORMULA_PREFIXES)) + "]"


def _safe_text(values: pa.Array) -> pa.Array:
    """Arrow strings neutralised like :func:`neutralise_formula`, then bare carriage returns
    written as newlines (as ``write_csv_atomic`` does)."""
    import pyarrow.compute as pc

    risky = pc.fill_null(pc.match_substring_regex(values, _FORMULA), False)
    if pc.any(risky).as_py():  # each step only where needed: most text has nothing to fix
        values = pc.if_else(risky, pc.binary_join_element_wise("'", values, ""), values)
    if pc.any(pc.match_substring(values, "\r")).as_py():
        values = pc.replace_substring(pc.replace_substring(values, "\r\n", "\n"), "\r", "\n")
    return values


def _large(text: str) -> pa.Scalar:
    import pyarrow as pa

    return pa.scalar(text, pa.large_string())


def _one_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    return values.combine_chunks() if hasattr(values, "combine_chunks") else values


def _escaped(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Text with its quotes doubled, as large strings (a block's rows may pass 2 GiB)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    values = pc.cast(values, pa.large_string())
    if pc.any(pc.match_substring(values, '"')).as_py():
        values = pc.replace_substring(values, '"', '""')
    return values


def _csv_text(escaped: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """:func:`_escaped` text as CSV cells the way Arrow's CSV writer writes them
    (``quoting_style="needed"`` quotes every text value): in quotes; nothing for a missing
    value."""
    import pyarrow.compute as pc

    quote = _large('"')
    return pc.fill_null(pc.binary_join_element_wise(quote, escaped, quote, _large("")), _large(""))


def _csv_number(values: pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """Numbers as CSV cells the way Arrow's CSV writer writes them (it casts them to text
    too): unquoted, nothing for a missing value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.fill_null(pc.cast(values, pa.large_string()), _large(""))


class ReportWriter:
    """Per-user report and DNA files for whole blocks of users (see the module doc)."""

    def __init__(self, out_dir: str | Path, label: str, feature_columns: tuple[str, ...]):
        self.out_dir = Path(out_dir)
        self.label = label
        self.feature_columns = tuple(feature_columns)
        self._root = self.out_dir.resolve()

    def paths(self, user: str, mode: str) -> tuple[Path, Path]:
        """:func:`report_paths`, resolving only the output folder once: a user's folder name
        is one plain component, so only a symbolic link in its place could lead elsewhere."""
        name = user_folder_name(user)
        folder = self._root / name
        if folder.is_symlink():
            return report_paths(self.out_dir, user, self.label, mode)
        stem = f"{name}_{self.label}_{mode}"
        return folder / f"{stem}.csv", folder / f"{stem}_dna.csv"

    @functools.cached_property
    def _features(self) -> list[str]:
        """Feature names as quoted, neutralised CSV cells."""
        cells = []
        for name in self.feature_columns:
            text = str(neutralise_formula(name)).replace("\r\n", "\n").replace("\r", "\n")
            cells.append('"' + text.replace('"', '""') + '"')
        return cells

    def _dna_files(self, block: DiscoveryBlock) -> list[bytes]:
        """Each user's DNA file: a header and a row per feature (value, standardised,
        percentile: the shortest text that reads back the same number; empty for NaN)."""
        numbers = np.stack([block.dna_raw, block.dna, block.dna_percentile], axis=-1)
        cells = [repr(v) if v == v else "" for v in numbers.astype(np.float64).ravel().tolist()]
        names = self._features * len(block)
        lines = [f"{n},{a},{b},{c}\n" for n, a, b, c in
                 zip(names, cells[0::3], cells[1::3], cells[2::3], strict=True)]  # fmt: skip
        f = len(self.feature_columns)
        head = "feature,value,standardised,percentile\n"
        return [(head + "".join(lines[u * f : (u + 1) * f])).encode() for u in range(len(block))]

    def write_block(self, block: DiscoveryBlock) -> list[tuple[Path, Path]]:
        """Write every user's two files; they appear together when the block is done. The
        rows of ``_WRITE_USERS`` users are formatted at a time and cut into their files, a
        piece per thread: creating a file is kernel time that threads share out (about
        0.1-0.8 ms a file on the benchmark machine, docs/BENCHMARKS.md)."""
        paths = [self.paths(str(user), block.mode) for user in block.users]
        header = (",".join(block.columns) + "\n").encode("utf-8")
        dna = self._dna_files(block)

        def write_piece(first: int) -> None:
            text, starts = block.csv_rows(slice(first, first + _WRITE_USERS))
            for i, (report, dna_path) in enumerate(paths[first : first + _WRITE_USERS]):
                batch.write(report, header, text[starts[i] : starts[i + 1]])
                batch.write(dna_path, dna[first + i])

        firsts = range(0, len(block), _WRITE_USERS)
        with atomic_batch() as batch, ThreadPoolExecutor(min(workers(), len(firsts))) as pool:
            for done in [pool.submit(write_piece, first) for first in firsts]:
                done.result()  # the first failure discards the whole block
        return paths


class LongTableWriter:
    """Every user's recommendations in one Parquet table, one row group per block:
    user, rank, track_id, score, track_name, artists, popularity, similarity or
    decoder_score. Written to a temporary file, renamed into place when all blocks are in."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._writer = None

    @contextmanager
    def open(self) -> Iterator[LongTableWriter]:
        import pyarrow.parquet as pq

        with atomic_path(self.path) as tmp:
            self._tmp = tmp
            try:
                yield self
            finally:
                if self._writer is not None:
                    self._writer.close()
                    self._writer = None
            if not tmp.stat().st_size:  # no block at all: still a readable, empty table
                pq.write_table(self._arrow(None), tmp)

    def _arrow(self, block: DiscoveryBlock | None, users: slice = slice(None)) -> pa.Table:
        import pyarrow as pa

        if block is None:
            fields = [("user", pa.string()), ("rank", pa.int64()), ("track_id", pa.string()),
                      ("score", pa.float64())]  # fmt: skip
            return pa.table({n: pa.array([], t) for n, t in fields})
        rows = block.arrow(users=users)
        first, last, _ = users.indices(len(block.users))
        owner = np.repeat(np.arange(first, last), np.diff(block.offsets[first : last + 1]))
        names = pa.array(np.asarray(block.users, dtype=object).astype(str), pa.string())
        columns = {"user": names.take(pa.array(owner))}
        for name in ("rank", "track_id", "score", "track_name", "artists", "popularity"):
            columns[name] = rows.column(name)
        columns[block.base] = rows.column(block.base)
        return pa.table(columns)

    def write_block(self, block: DiscoveryBlock) -> None:
        """Append the block, ``_WRITE_USERS`` users at a time (one row group each)."""
        import pyarrow.parquet as pq

        for a in range(0, len(block.users), _WRITE_USERS):
            table = self._arrow(block, slice(a, a + _WRITE_USERS))
            if self._writer is None:
                self._writer = pq.ParquetWriter(self._tmp, table.schema)
            self._writer.write_table(table)


# ----------------------------------------------------------------------------- text


def _fmt_value(v: float) -> str:
    return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3f}"


def format_dna(result: Discovery, feature_columns: tuple[str, ...], where: str) -> str:
    """The DNA as a readable profile: value in original units, a bar, the percentile."""
    if len(feature_columns) == 0:
        return f"Vibe DNA of {result.user}: the model has no audio features"
    lines = [f"Vibe DNA of {result.user} (percentile within the {where}):"]
    width = max(len(c) for c in feature_columns)
    for name, v, p in zip(feature_columns, result.dna_raw, result.dna_percentile, strict=True):
        filled = int(round(p / 5))
        bar = "#" * filled + "." * (20 - filled)
        lines.append(f"  {name:<{width}} {_fmt_value(v):>10}  [{bar}] {p:5.1f}%")
    return "\n".join(lines)


def format_top(result: Discovery, k: int = 10) -> str:
    """The top ``k`` rows as a plain-text table."""
    t = result.table.head(k)
    if t.empty:
        return "  (no tracks left to recommend)"
    base = "similarity" if "similarity" in t.columns else "decoder_score"
    head = "similarity" if base == "similarity" else "decoder"

    def cut(s: object, w: int) -> str:
        text = str(s)
        return text if len(text) <= w else text[: w - 1] + "~"

    lines = [f"  {'#':>3}  {'track':<28} {'artists':<22} {'pop':>4} {head:>10} {'score':>7}"]
    for r in t.itertuples(index=False):
        name = r.track_name or r.track_id
        pop = "" if pd.isna(r.popularity) else f"{r.popularity:.0f}"
        lines.append(
            f"  {r.rank:>3}  {cut(name, 28):<28} {cut(r.artists, 22):<22} {pop:>4} "
            f"{getattr(r, base):>10.4f} {r.score:>7.4f}"
        )
    return "\n".join(lines)


def checkpoint_label(ck_path: Path, best_name: str, epoch: int) -> str:
    """``best`` for the best checkpoint, else the checkpoint's epoch number."""
    return "best" if ck_path.name == best_name else str(int(epoch))
