"""The one time parser, deepvibe.data.time, on values with a known meaning."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from deepvibe.data.time import (
    DATES,
    ISO_WEEK,
    UNIX_MS,
    UNIX_SECONDS,
    WEEK_NUMBER,
    TimeAxis,
    parse_times,
)
from deepvibe.errors import DataError

MONDAY_2024_W03 = pd.Timestamp("2024-01-15T00:00:00Z")


@pytest.mark.parametrize(
    ("values", "kind", "weeks"),
    [
        (["2024-W03", "2023-W52"], ISO_WEEK, ["2024-W03", "2023-W52"]),
        (["2024-01-15", "2024-01-21T23:59:59Z"], DATES, ["2024-W03", "2024-W03"]),
        (["2024-01-22 00:00", "2024-12-30T01:00:00+00:00"], DATES, ["2024-W04", "2025-W01"]),
        ([1_705_276_800, 1_705_276_800.5], UNIX_SECONDS, ["2024-W03", "2024-W03"]),
        ([1_705_276_800_000, 1_704_067_200_000], UNIX_MS, ["2024-W03", "2024-W01"]),
        ([1, 2, 52, 99_999], WEEK_NUMBER, [1, 2, 52, 99_999]),
        (["1", "7"], WEEK_NUMBER, [1, 7]),
    ],
)
def test_each_kind_is_read_by_its_rule(values: list, kind: str, weeks: list) -> None:
    times = parse_times(pd.Series(values), "t.csv", "when")
    assert times.kind == kind
    assert list(times.weeks()) == weeks


def test_seconds_milliseconds_and_dates_give_the_same_instant() -> None:
    ns = MONDAY_2024_W03.value
    secs = parse_times(pd.Series([ns // 10**9]), "a", "t").values
    millis = parse_times(pd.Series([ns // 10**6]), "a", "t").values
    dates = parse_times(pd.Series(["2024-01-15T00:00:00Z"]), "a", "t").values
    assert secs[0] == millis[0] == dates[0] == ns


@pytest.mark.parametrize(
    ("values", "shown"),
    [
        ([20240115, 20240116], "20240115"),  # a date written as digits
        ([202403], "202403"),  # year and week run together
        ([5e10], "50000000000"),  # between seconds and milliseconds
        ([1.5, 2.0], "1.5"),  # a week number is whole
        ([-3], "-3"),
        ([1, 1_705_276_800], "1705276800"),  # week numbers mixed with Unix seconds
        (["01/02/2024"], "'01/02/2024'"),  # January or February?
        (["2024-01-15", "soon"], "'soon'"),
    ],
)
def test_ambiguous_values_are_one_line_errors_naming_column_and_value(
    values: list, shown: str
) -> None:
    with pytest.raises(DataError) as err:
        parse_times(pd.Series(values), "t.csv", "when")
    text = str(err.value)
    assert text.startswith("t.csv: column 'when'") and shown in text and "\n" not in text


def test_an_empty_time_names_its_row() -> None:
    with pytest.raises(DataError, match=r"column 'when' row 12 is empty"):
        parse_times(pd.Series(["2024-W01", None]), "t.csv", "when", row_offset=9)


def test_time_axis_refuses_week_numbers_beside_calendar_times() -> None:
    weekly = TimeAxis(weekly=True)
    weekly.add(UNIX_MS, "a.csv: column 'ts'")
    weekly.add(ISO_WEEK, "b.csv: column 'week'")  # both become ISO weeks
    with pytest.raises(DataError, match=r"c\.csv: column 'week' holds week numbers"):
        weekly.add(WEEK_NUMBER, "c.csv: column 'week'")
    rows = TimeAxis(weekly=False)
    rows.add(DATES, "a")
    rows.add(UNIX_SECONDS, "b")  # both are instants
    with pytest.raises(DataError):
        rows.add(ISO_WEEK, "c")


def test_week_labels_are_computed_per_day_without_changing_order() -> None:
    rng = np.random.default_rng(0)
    ns = MONDAY_2024_W03.value + rng.integers(0, 30 * 86_400, size=1000) * 10**9
    times = parse_times(pd.Series(ns // 10**9), "a", "t")
    expected = [
        f"{d.isocalendar()[0]}-W{d.isocalendar()[1]:02d}" for d in pd.to_datetime(ns, utc=True)
    ]
    assert list(times.weeks()) == expected
