"""The one time parser: what a value in a time column means.

A time column holds one of five kinds, decided for the whole column (never cell by cell):

- ISO 8601 week labels, ``2024-W03``;
- ISO 8601 dates or date-times, ``2024-01-15``, ``2024-01-15T10:00:00Z`` (no zone = UTC);
- Unix seconds, numbers from 1e8 to 1e10 (1973 to 2286);
- Unix milliseconds, numbers from 1e11 to 1e13 (the same years);
- week numbers, whole numbers from 0 to 99,999 (the original design's ``week`` column).

Anything else is refused with one line naming the column and an example value: a number such as
``20240115`` (a date written as digits), ``202403`` or ``5e10`` fits none of the ranges, and text
such as ``01/02/2024`` could be January or February. Kinds are never guessed per cell, so a
column of milliseconds cannot turn into weeks in the year 56013.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from deepvibe.errors import DataError

ISO_WEEK = "ISO weeks"
DATES = "ISO dates and times"
UNIX_SECONDS = "Unix seconds"
UNIX_MS = "Unix milliseconds"
WEEK_NUMBER = "week numbers"

MAX_WEEK_NUMBER = 100_000  # week numbers are whole numbers below this
_UNIX_SECONDS = (1e8, 1e10)
_UNIX_MS = (1e11, 1e13)
_ISO_WEEK = r"\d{4}-W(0[1-9]|[1-4]\d|5[0-3])"
_NS_PER_DAY = 86_400 * 10**9


@dataclass(frozen=True)
class Times:
    """A parsed time column.

    ``values``: (n,) int64 week numbers, object ISO-week labels, or int64 UTC nanoseconds
    (for dates and Unix times); within one kind they sort in time order.
    """

    kind: str
    values: np.ndarray

    @property
    def is_instant(self) -> bool:
        return self.kind in (DATES, UNIX_SECONDS, UNIX_MS)

    def weeks(self) -> np.ndarray:
        """(n,) the ISO week of each value (``2024-W03``); week numbers stay numbers."""
        if self.kind == WEEK_NUMBER:
            return self.values.astype(object)
        if self.kind == ISO_WEEK:
            return self.values
        return week_labels_of_ns(self.values)


def scale(kind: str, weekly: bool) -> str:
    """Kinds on one scale can share a column: under ``weekly`` every calendar kind becomes an
    ISO week; otherwise dates and Unix times share the instant scale."""
    if kind == WEEK_NUMBER:
        return WEEK_NUMBER
    if kind == ISO_WEEK or weekly:
        return ISO_WEEK
    return "instants"


class TimeAxis:
    """Checks that every chunk and every source of one read put their times on one scale
    (:func:`scale`): week numbers cannot be placed among calendar weeks."""

    def __init__(self, weekly: bool) -> None:
        self.weekly = weekly
        self.kinds: dict[str, str] = {}  # kind -> the first source that had it, for messages

    def add(self, kind: str, where: str) -> None:
        mine = scale(kind, self.weekly)
        for other, first in self.kinds.items():
            if scale(other, self.weekly) != mine:
                raise DataError(
                    f"{where} holds {kind} but {first} holds {other}; they cannot share one time "
                    "axis (week numbers have no calendar date): give every source dates, Unix "
                    "times or ISO weeks, or every source week numbers"
                )
        self.kinds.setdefault(kind, where)


def _fail(source: object, column: str, detail: str) -> DataError:
    return DataError(
        f"{source}: column {column!r} {detail}; write times as ISO dates (2024-01-15), "
        "date-times (2024-01-15T10:00:00Z), ISO weeks (2024-W03), Unix seconds or "
        "milliseconds, or week numbers (whole numbers below 100,000)"
    )


def _number_kind(values: np.ndarray) -> np.ndarray:
    """(n,) the kind each number fits, '' where it fits none."""
    out = np.full(len(values), "", dtype=object)
    whole = values == np.round(values)
    out[whole & (values >= 0) & (values < MAX_WEEK_NUMBER)] = WEEK_NUMBER
    out[(values >= _UNIX_SECONDS[0]) & (values < _UNIX_SECONDS[1])] = UNIX_SECONDS
    out[(values >= _UNIX_MS[0]) & (values < _UNIX_MS[1])] = UNIX_MS
    return out


def _parse_numbers(values: np.ndarray, source: object, column: str) -> Times:
    kinds = _number_kind(values)
    bad = np.flatnonzero(kinds != kinds[0]) if kinds[0] else np.array([0])
    if len(bad):
        example = _show(values[bad[0]])
        if kinds[bad[0]]:
            detail = (
                f"mixes {kinds[0]} ({_show(values[0])}) with {kinds[bad[0]]} ({example}); "
                "one column holds one kind of time"
            )
        else:
            detail = f"holds {example}, which is not a week number, Unix seconds or milliseconds"
        raise _fail(source, column, detail)
    kind = kinds[0]
    if kind == WEEK_NUMBER:
        return Times(kind, values.astype(np.int64))
    per_second = 10**9 if kind == UNIX_SECONDS else 10**6
    return Times(kind, np.round(values * per_second).astype(np.int64))


def _show(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def parse_times(col: pd.Series, source: str | Path, column: str, row_offset: int = 0) -> Times:
    """Parse one time column (or one chunk of it; ``row_offset`` numbers its rows in messages).

    Raises DataError naming the column, the row of an empty cell, or an example value that
    fits no kind.
    """
    text = col.astype(str).str.strip()
    empty = (col.isna() | (text == "")).to_numpy()
    if empty.any():
        r = int(np.flatnonzero(empty)[0])
        raise DataError(
            f"{source}: column {column!r} row {row_offset + r + 2} is empty; every row needs a time"
        )
    if len(col) == 0:
        return Times(WEEK_NUMBER, np.zeros(0, dtype=np.int64))
    if text.str.fullmatch(_ISO_WEEK).all():
        return Times(ISO_WEEK, text.to_numpy(dtype=object))
    numbers = pd.to_numeric(col, errors="coerce")
    if numbers.notna().all():
        values = numbers.to_numpy(dtype=np.float64)
        if not np.isfinite(values).all():
            r = int(np.flatnonzero(~np.isfinite(values))[0])
            raise _fail(source, column, f"row {row_offset + r + 2} is {col.iloc[r]!r}")
        return _parse_numbers(values, source, column)
    stamps = to_instants(text)
    if stamps.isna().any():
        r = int(np.flatnonzero(stamps.isna().to_numpy())[0])
        raise _fail(
            source,
            column,
            f"row {row_offset + r + 2} holds {col.iloc[r]!r}, which is not an ISO date or "
            "time, ISO week, Unix time or week number",
        )
    return Times(DATES, stamps.to_numpy(dtype="datetime64[ns]").astype(np.int64))


def to_instants(text: pd.Series, fmt: str = "ISO8601") -> pd.Series:
    """UTC datetimes of ISO 8601 text (or of ``fmt``, for Spotify's fixed formats); NaT where
    a value does not parse."""
    return pd.to_datetime(text, utc=True, errors="coerce", format=fmt).astype("datetime64[ns, UTC]")


def week_labels(stamps: pd.Series) -> np.ndarray:
    """(n,) ISO 8601 week labels (``2024-W07``, Monday to Sunday, UTC) of UTC datetimes."""
    ns = stamps.astype("datetime64[ns, UTC]").to_numpy(dtype="datetime64[ns]").astype(np.int64)
    return week_labels_of_ns(ns)


def week_labels_of_ns(ns: np.ndarray) -> np.ndarray:
    """(n,) ISO week labels of UTC nanoseconds; computed once per distinct day."""
    days, inverse = np.unique(ns // _NS_PER_DAY, return_inverse=True)
    stamps = pd.Series(pd.to_datetime(days * _NS_PER_DAY, unit="ns", utc=True))
    iso = stamps.dt.isocalendar()
    labels = (
        iso["year"].astype(int).astype(str)
        + "-W"
        + iso["week"].astype(int).astype(str).str.zfill(2)
    )
    return labels.to_numpy(dtype=object)[inverse.ravel()]
