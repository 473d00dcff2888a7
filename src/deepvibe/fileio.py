"""Atomic writes and guarded table reads.

Every file deepvibe writes goes to a temporary file in the destination folder and is renamed
into place (``os.replace`` is atomic on POSIX and Windows), so a crash or kill at any moment
leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import itertools
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import pandas as pd

from deepvibe.errors import DataError, DeepVibeError

T = TypeVar("T")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    target = Path(path)
    if target.is_dir():
        raise DeepVibeError(f"{target}: is a folder; give a file name to write to")
    fd, tmp_name = _beside(target, tempfile.mkstemp)
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_folder(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; if the block succeeds, sync its files and
    rename it onto ``path``, so a reader sees all of the folder or none of it. A folder cannot
    replace another in one step: where ``path`` exists already (another run wrote it first),
    it is kept and the new one dropped."""
    target = Path(path)
    tmp = Path(_beside(target, tempfile.mkdtemp))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; give the folder normal permissions
    try:
        yield tmp
        for file in tmp.iterdir():
            with open(file, "rb+") as fh:
                os.fsync(fh.fileno())
        _fsync_dir(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(tmp)  # another writer's folder got there first: it is kept
            return
        _fsync_dir(target.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _beside(target: Path, make: Callable[..., T]) -> T:
    """``make`` (tempfile.mkstemp or mkdtemp) of a hidden temporary beside ``target``, its
    folder made first; a DeepVibeError naming the folder where it cannot be written."""
    _make_folder(target.parent, "output folder")
    try:
        return make(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise DeepVibeError(
            f"{target.parent}: cannot write here ({exc.strerror}); choose a writable location"
        ) from exc


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    with contextlib.suppress(OSError, AttributeError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class AtomicBatch:
    """Many files written atomically with one flush to disk instead of one per file.

    Each file goes to a temporary name beside its target (:meth:`path`); :meth:`commit` syncs
    the file system once, renames every file onto its target, and syncs once more for the
    renames. Readers never see half a file, and a crash leaves each file old or new.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[str, str]] = []  # (temporary, target)
        self._folders: set[str] = set()  # made already: one mkdir per folder
        self._count = itertools.count(1)  # next() is atomic: threads may write files at once
        self._tag = f"{os.getpid()}.{id(self):x}"

    def _temporary(self, target: str | os.PathLike[str]) -> tuple[int, str]:
        final = os.fspath(target)  # plain strings: thousands of files per batch
        folder, name = os.path.split(final)
        if folder not in self._folders:
            if os.path.isdir(final):
                raise DeepVibeError(f"{final}: is a folder; give a file name to write to")
            _make_folder(Path(folder or "."), "output folder")
            self._folders.add(folder)
        tmp = os.path.join(folder, f".{name}.{self._tag}.{next(self._count)}.tmp")
        try:  # a name no other writer uses; O_EXCL refuses to follow or reuse anything there
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
        except FileExistsError:  # left by a crashed run with the same process id: a new name
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder or ".")
            os.chmod(tmp, 0o666 & ~_umask())
        except OSError as exc:
            raise DeepVibeError(
                f"{folder}: cannot write here ({exc.strerror}); choose a writable location"
            ) from exc
        self._pending.append((tmp, final))
        return fd, tmp

    def write(self, target: str | os.PathLike[str], *parts: bytes | memoryview) -> None:
        """Write ``parts``, one after the other, as ``target``'s new content (one open, one
        write, one close: no buffered file object)."""
        fd, _ = self._temporary(target)
        try:
            total = sum(len(p) for p in parts)
            done = os.writev(fd, parts) if hasattr(os, "writev") else 0
            if done < total:  # a short write (rare on files), or no writev (Windows)
                rest = memoryview(b"".join(parts))[done:]
                while rest:
                    rest = rest[os.write(fd, rest) :]
        finally:
            os.close(fd)

    def path(self, target: str | os.PathLike[str]) -> Path:
        """A temporary path to write ``target``'s new content to."""
        fd, tmp = self._temporary(target)
        os.close(fd)
        return Path(tmp)

    @contextlib.contextmanager
    def open(self, target: str | os.PathLike[str]) -> Iterator[IO[bytes]]:
        """``target``'s temporary file, opened for binary writing."""
        fd, _ = self._temporary(target)
        with os.fdopen(fd, "wb") as fh:
            yield fh

    def commit(self) -> None:
        if not self._pending:
            return
        _sync_all([tmp for tmp, _ in self._pending])
        for tmp, final in self._pending:
            os.replace(tmp, final)
        _sync_all([os.path.dirname(final) or "." for _, final in self._pending])
        self._pending.clear()

    def discard(self) -> None:
        for tmp, _ in self._pending:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self._pending.clear()


def _sync_all(paths: list[str]) -> None:
    """Flush written files (or renames in folders) to disk: one ``sync`` where there is one,
    else an fsync per distinct path."""
    if hasattr(os, "sync"):
        os.sync()
        return
    for p in map(Path, dict.fromkeys(paths)):  # pragma: no cover - Windows
        if p.is_dir():
            _fsync_dir(p)
        else:
            with contextlib.suppress(OSError), open(p, "rb+") as fh:
                os.fsync(fh.fileno())


@contextlib.contextmanager
def atomic_batch() -> Iterator[AtomicBatch]:
    """An :class:`AtomicBatch` committed when the block succeeds, discarded when it fails."""
    batch = AtomicBatch()
    try:
        yield batch
        batch.commit()
    except BaseException:
        batch.discard()
        raise


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; it replaces ``path`` only when the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode, **kwargs) as fh:
        yield fh


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    with atomic_open(path, "w", encoding="utf-8", newline="") as fh:
        fh.write(text)


def write_csv_atomic(frame: pd.DataFrame, path: str | os.PathLike[str]) -> None:
    """Write ``frame`` as UTF-8 CSV atomically.

    A bare carriage return inside a text cell is written as a newline: the CSV writer quotes
    cells holding the line terminator (``\n``) but not ``\r``, which a reader or spreadsheet
    would take as the end of the row (and a crafted name could start a new row there).
    """
    text_cols = [
        c
        for c in frame.columns
        if frame[c].dtype == object or pd.api.types.is_string_dtype(frame[c].dtype)
    ]
    fix = [c for c in text_cols if frame[c].map(lambda v: isinstance(v, str) and "\r" in v).any()]
    if fix:
        frame = frame.copy()
        for c in fix:
            frame[c] = frame[c].map(
                lambda v: v.replace("\r\n", "\n").replace("\r", "\n") if isinstance(v, str) else v
            )
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    write_text_atomic(path, buf.getvalue())


def _make_folder(folder: Path, what: str) -> None:
    """``mkdir -p`` with a one-line error naming the folder (or the file in its way)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        blocker = next((p for p in (folder, *folder.parents) if p.is_file()), None)
        reason = f"{blocker} is a file, not a folder" if blocker is not None else exc.strerror
        raise DeepVibeError(
            f"{folder}: cannot create the {what} ({reason}); choose a writable location"
        ) from exc


def ensure_writable_dir(path: str | os.PathLike[str], what: str) -> Path:
    """Create ``path`` if needed and prove a file can be written there (then remove it)."""
    folder = Path(path)
    _make_folder(folder, what)
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise DeepVibeError(
            f"{folder}: cannot write to the {what} ({exc.strerror}); choose a writable location"
        ) from exc
    return folder


def check_input_file(path: str | os.PathLike[str], what: str) -> Path:
    """Return ``path`` as a Path after checking that it is a readable, non-empty file."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: {what} file not found; check the path in your config or flags")
    if p.is_dir():
        raise DataError(f"{p}: {what} path is a directory, expected a file")
    if not p.is_file():
        raise DataError(f"{p}: {what} path is not a regular file (a pipe or device?)")
    if not os.access(p, os.R_OK):
        raise DataError(f"{p}: {what} file is not readable; check its permissions")
    if p.stat().st_size == 0:
        raise DataError(f"{p}: {what} file is empty")
    return p


def is_parquet(path: Path) -> bool:
    return path.suffix.lower() in {".parquet", ".pq"}


def csv_separator(path: Path) -> str:
    """Tab for .tsv/.tab/.dat files (e.g. the HetRec Last.fm set), comma otherwise."""
    return "\t" if path.suffix.lower() in {".tsv", ".tab", ".dat"} else ","


def read_table(
    path: str | os.PathLike[str],
    what: str,
    usecols: list[str] | None = None,
    dtype: dict[str, Any] | None = None,
) -> pd.DataFrame:
    """Read a CSV or Parquet table with one-line errors that name the file."""
    p = check_input_file(path, what)
    try:
        if is_parquet(p):
            frame = pd.read_parquet(p)
            if usecols is not None:
                missing = [c for c in usecols if c not in frame.columns]
                if missing:
                    raise DataError(_missing_columns_message(p, what, missing, list(frame.columns)))
                frame = frame[usecols]
            return frame
        header = read_csv_header(p, what)
        if usecols is not None:
            missing = [c for c in usecols if c not in header]
            if missing:
                raise DataError(_missing_columns_message(p, what, missing, header))
        return pd.read_csv(
            p, usecols=usecols, dtype=dtype, encoding="utf-8-sig", sep=csv_separator(p)
        )
    except DeepVibeError:
        raise
    except UnicodeDecodeError as exc:
        raise not_utf8_error(p, what) from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError) as exc:
        raise DataError(f"{p}: cannot parse {what} file ({first_line(exc)})") from exc
    except Exception as exc:  # pyarrow raises its own types for corrupt Parquet
        raise DataError(f"{p}: cannot read {what} file ({first_line(exc)})") from exc


def first_line(exc: BaseException) -> str:
    """An exception's message squeezed onto one line (pandas' parser errors span two)."""
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def not_utf8_error(path: Path, what: str) -> DataError:
    """A DataError naming the first line that is not valid UTF-8 (found by rescanning)."""
    where = ""
    with contextlib.suppress(OSError), open(path, "rb") as fh:
        for number, raw in enumerate(fh, start=1):
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                where = f" (line {number}, byte 0x{raw[exc.start]:02x})"
                break
    return DataError(
        f"{path}: {what} file is not UTF-8 text{where}; re-save it as UTF-8 "
        "(e.g. iconv -f latin1 -t utf-8)"
    )


def read_csv_header(path: Path, what: str) -> list[str]:
    """Column names of a CSV (or Parquet) file, with a hint when the delimiter looks wrong.

    Duplicated or empty names are reported here, before pandas silently renames them
    (``a``, ``a.1``; ``Unnamed: 3``).
    """
    if is_parquet(path):
        import pyarrow.parquet as pq

        try:
            names = [str(c) for c in pq.read_schema(path).names]
        except Exception as exc:
            raise DataError(
                f"{path}: cannot read {what} Parquet schema ({first_line(exc)})"
            ) from exc
        _check_duplicates(path, what, names)
        return names
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            first = fh.readline()
    except UnicodeDecodeError as exc:
        raise not_utf8_error(path, what) from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot read {what} file ({exc.strerror})") from exc
    if not first.strip():
        raise DataError(f"{path}: {what} file has an empty header line")
    if "\x00" in first:
        raise DataError(f"{path}: {what} file is binary, not CSV text; give a CSV or Parquet file")
    sep = csv_separator(path)
    try:
        raw = next(csv.reader(io.StringIO(first), delimiter=sep))
    except (csv.Error, StopIteration) as exc:
        raise DataError(f"{path}: cannot parse the header of the {what} file ({exc})") from exc
    if any("\n" in c or "\r" in c for c in raw):
        raise DataError(
            f'{path}: the header line of the {what} file has an unclosed quote ("); fix the header'
        )
    # Named as pandas names them: empty names become 'Unnamed: i'.
    header = [c if c.strip() else f"Unnamed: {i}" for i, c in enumerate(raw)]
    if len(header) == 1 and sep == ",":
        for other, name in (("\t", "tab"), (";", "semicolon"), ("|", "pipe")):
            if other in first:
                raise DataError(
                    f"{path}: {what} file looks {name}-separated; deepvibe reads comma-separated "
                    "CSV or Parquet, so convert it first"
                )
    _check_duplicates(path, what, header)
    return header


def _check_duplicates(path: Path, what: str, header: list[str]) -> None:
    dupes = sorted({c for c in header if header.count(c) > 1 and c})
    if dupes:
        raise DataError(
            f"{path}: duplicated column(s) {', '.join(repr(d) for d in dupes)} in the {what} "
            "header; rename or remove the copies"
        )


def _missing_columns_message(path: Path, what: str, missing: list[str], have: list[str]) -> str:
    shown = ", ".join(have[:8]) + (", ..." if len(have) > 8 else "")
    return (
        f"{path}: {what} file has no column {', '.join(repr(m) for m in missing)} "
        f"(columns: {shown}); fix the file or the column name in the config"
    )


# OWASP's list plus the full-width forms (U+FF1D/0B/0D/20) that some spreadsheets also accept.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r", "\n", "\uff1d", "\uff0b", "\uff0d", "\uff20")
FORMULA_PREFIXES = _FORMULA_START  # for writers that neutralise whole columns at once


def neutralise_formula(text: object) -> object:
    """Make a cell safe to open in a spreadsheet (OWASP CSV injection).

    Text that starts with ``= + - @`` (ASCII or full-width), a tab, CR or LF is prefixed with a
    single quote so spreadsheet programs show it as text instead of evaluating it. Numbers pass
    through.
    """
    if isinstance(text, str) and text.startswith(_FORMULA_START):
        return "'" + text
    return text


_WINDOWS_DEVICES = frozenset(
    {"CON", "PRN", "AUX", "NUL"} | {f"{p}{i}" for p in ("COM", "LPT") for i in range(1, 10)}
)


def safe_path_component(name: str, max_len: int = 100) -> str:
    """A user id as one harmless path component: no separators, no '..', no control chars."""
    cleaned = "".join(c if (c.isalnum() or c in "-_.@+") else "_" for c in str(name))
    cleaned = cleaned.strip(".") or "_"
    if cleaned.split(".")[0].upper() in _WINDOWS_DEVICES:
        cleaned = "_" + cleaned  # CON, NUL, COM1... name devices on Windows
    if len(cleaned) > max_len:
        import hashlib

        digest = hashlib.sha1(str(name).encode("utf-8")).hexdigest()[:10]
        cleaned = f"{cleaned[: max_len - 11]}_{digest}"
    return cleaned


def path_inside(base: str | os.PathLike[str], *parts: str) -> Path:
    """``base/part/...`` after checking the result cannot leave ``base``."""
    root = Path(base).resolve()
    candidate = root.joinpath(*parts).resolve()
    if candidate != root and root not in candidate.parents:
        raise DeepVibeError(f"refusing to write outside {base}: {'/'.join(parts)}")
    return candidate


HASH_BLOCK = 1 << 20  # bytes hashed at a time


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a whole file, read a block at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


class HashingReader(io.RawIOBase):
    """A binary file whose bytes also go through a hash as they are read (so a file parsed
    once is also hashed once, e.g. to key a cache on its whole content)."""

    def __init__(self, raw: IO[bytes], digest: Any) -> None:
        super().__init__()
        self._raw = raw
        self._digest = digest

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # noqa: ANN001 - a writable buffer
        n = self._raw.readinto(buffer)  # type: ignore[attr-defined]
        if n:
            self._digest.update(memoryview(buffer)[:n])
        return n or 0

    def drain(self) -> None:
        """Hash whatever the parser did not read (nothing, normally)."""
        while block := self._raw.read(HASH_BLOCK):
            self._digest.update(block)
