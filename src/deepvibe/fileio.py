"""Atomic writes and guarded table reads.

Every file deepvibe writes goes to a temporary file in the destination folder and is renamed
into place (``os.replace`` is atomic on POSIX and Windows), so a crash or kill at any moment
leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pandas as pd

from deepvibe.errors import DataError, DeepVibeError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds."""
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DeepVibeError(
            f"{target.parent}: cannot create output folder ({exc.strerror}); "
            "choose a writable location"
        ) from exc
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise DeepVibeError(
            f"{target.parent}: cannot write here ({exc.strerror}); choose a writable location"
        ) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file normal permissions
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
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
    buf = io.StringIO()
    frame.to_csv(buf, index=False)
    write_text_atomic(path, buf.getvalue())


def check_input_file(path: str | os.PathLike[str], what: str) -> Path:
    """Return ``path`` as a Path after checking that it is a readable, non-empty file."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: {what} file not found; check the path in your config or flags")
    if p.is_dir():
        raise DataError(f"{p}: {what} path is a directory, expected a file")
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
        return pd.read_csv(p, usecols=usecols, dtype=dtype, encoding="utf-8", sep=csv_separator(p))
    except DeepVibeError:
        raise
    except UnicodeDecodeError as exc:
        raise DataError(
            f"{p}: {what} file is not UTF-8 text (byte {exc.start}); re-save it as UTF-8 CSV"
        ) from exc
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{p}: cannot parse {what} file ({first})") from exc
    except Exception as exc:  # pyarrow raises its own types for corrupt Parquet
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{p}: cannot read {what} file ({first})") from exc


def read_csv_header(path: Path, what: str) -> list[str]:
    """Column names of a CSV (or Parquet) file, with a hint when the delimiter looks wrong."""
    if is_parquet(path):
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except Exception as exc:
            raise DataError(f"{path}: cannot read {what} Parquet schema ({exc})") from exc
    try:
        with open(path, encoding="utf-8") as fh:
            first = fh.readline()
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: {what} file is not UTF-8 text; re-save it as UTF-8 CSV") from exc
    if not first.strip():
        raise DataError(f"{path}: {what} file has an empty header line")
    sep = csv_separator(path)
    header = pd.read_csv(io.StringIO(first), nrows=0, sep=sep).columns.tolist()
    if len(header) == 1 and sep == ",":
        for sep, name in (("\t", "tab"), (";", "semicolon"), ("|", "pipe")):
            if sep in first:
                raise DataError(
                    f"{path}: {what} file looks {name}-separated; deepvibe reads comma-separated "
                    "CSV or Parquet, so convert it first"
                )
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise DataError(f"{path}: duplicated column(s) {', '.join(dupes)} in {what} file")
    return [str(c) for c in header]


def _missing_columns_message(path: Path, what: str, missing: list[str], have: list[str]) -> str:
    shown = ", ".join(have[:8]) + (", ..." if len(have) > 8 else "")
    return (
        f"{path}: {what} file has no column {', '.join(repr(m) for m in missing)} "
        f"(columns: {shown}); fix the file or the column name in the config"
    )


_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralise_formula(text: object) -> object:
    """Make a cell safe to open in a spreadsheet (OWASP CSV injection).

    Text that starts with ``= + - @``, a tab or a carriage return is prefixed with a single
    quote so spreadsheet programs show it as text instead of evaluating it. Numbers pass through.
    """
    if isinstance(text, str) and text.startswith(_FORMULA_START):
        return "'" + text
    return text


def safe_path_component(name: str, max_len: int = 100) -> str:
    """A user id as one harmless path component: no separators, no '..', no control chars."""
    cleaned = "".join(c if (c.isalnum() or c in "-_.@+") else "_" for c in str(name))
    cleaned = cleaned.strip(".") or "_"
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
