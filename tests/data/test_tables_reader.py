"""The one track-table reader and the one long-table reader, in chunks and whole."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepvibe.data import tables
from deepvibe.data.history import load_history
from deepvibe.data.ids import normalize_track_ids
from deepvibe.data.tables import (
    LongColumns,
    TrackReadStats,
    iter_track_table,
    load_track_table,
    read_long_table,
)
from deepvibe.errors import DataError

SID = "4uLU6hMCjMI75M1A2tKUQC"


def test_id_normaliser_is_vectorised_over_every_form() -> None:
    raw = [SID, f"spotify:track:{SID}", f"https://open.spotify.com/intl-de/track/{SID}?si=1",
           " 51.0 ", "51", "Cafe\u0301", None]  # fmt: skip
    got = normalize_track_ids(np.array(raw, dtype=object))
    assert list(got) == [SID, SID, SID, "51", "51", "Caf\u00e9", ""]


def _write_tracks(path: Path) -> None:
    pd.DataFrame(
        {
            "track_id": ["a", "b", "a", "c", "spotify:track:" + SID, "d", "b"],
            "f": [0.1, None, 0.3, 0.4, 0.5, 0.6, 0.7],
            "popularity": [10, 20, 30, None, 50, 60, 70],
        }
    ).to_csv(path, index=False)


def test_streamed_chunks_equal_the_whole_table(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "t.csv"
    _write_tracks(p)
    whole = load_track_table(p, "track_id", ("f",), "popularity", drop_incomplete=True)
    # b's first row lacks f and c lacks popularity; the second a and second b come later.
    assert list(whole.track_ids) == ["a", SID, "d", "b"]
    np.testing.assert_allclose(whole.features[:, 0], [0.1, 0.5, 0.6, 0.7])
    monkeypatch.setattr(tables, "CHUNK_ROWS", 2)
    stats = TrackReadStats()
    chunks = list(
        iter_track_table(p, "track_id", ("f",), "popularity", drop_incomplete=True, stats=stats)
    )
    assert len(chunks) == 4
    assert [t for c in chunks for t in c.track_ids] == list(whole.track_ids)
    assert (stats.n_rows, stats.n_incomplete, stats.n_duplicates) == (7, 2, 1)
    assert stats.first_bad is not None and stats.first_bad[1:3] == (3, "f")


def test_blank_popularity_can_count_as_unknown(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    _write_tracks(p)
    table = load_track_table(
        p, "track_id", ("f",), "popularity", drop_incomplete=True, blank_popularity_unknown=True
    )
    assert list(table.track_ids) == ["a", "c", SID, "d", "b"]
    assert np.isnan(table.popularity[1]) and table.popularity[0] == 10


def test_kept_incomplete_rows_lose_to_a_later_complete_row(tmp_path: Path) -> None:
    p = tmp_path / "t.csv"
    _write_tracks(p)
    stats = TrackReadStats()
    table = load_track_table(
        [p, p], "track_id", ("f",), "popularity", keep_incomplete=True, stats=stats
    )
    # Rows stay in file order of the row that won: b's complete row is its last one.
    assert list(table.track_ids) == ["a", "c", SID, "d", "b"]
    assert list(table.complete) == [True, False, True, True, True]
    assert table.features[4, 0] == 0.7
    assert stats.n_rows == 14 and stats.n_duplicates == 9


def test_long_reader_counts_or_refuses_unusable_rows(tmp_path: Path) -> None:
    p = tmp_path / "l.csv"
    p.write_text("listener,song,n\nu,a,2\nu,,3\nv,b,0\nu,a,1\nv,c,4\n")
    cols = LongColumns(guess=False, user="listener", track="song", plays="n")
    with pytest.raises(DataError, match=r"l\.csv: column 'song' row 3 is empty"):
        read_long_table(p, cols)
    table = read_long_table(p, cols, skip_unusable=True)
    assert (table.n_rows, table.n_missing_id, table.plays_missing_id, table.n_zero) == (5, 1, 3, 1)
    assert table.n_merged == 1
    assert table.frame.values.tolist() == [["u", "a", 3.0], ["v", "c", 4.0]]
    guessed = LongColumns(plays="n", guess=True, required=frozenset({"user", "track"}))
    with pytest.raises(DataError, match="cannot tell which column is the user id"):
        read_long_table(p, guessed)


def test_history_long_table_and_plays_default(tmp_path: Path) -> None:
    p = tmp_path / "h.csv"
    p.write_text(f"user_id,track_id\nme,spotify:track:{SID}\nme,{SID}\nme,x\n")
    inter = load_history(p)
    assert list(inter.row_users) == ["me"]
    assert dict(zip(inter.track_ids, inter.matrix.toarray()[0], strict=True)) == {SID: 2, "x": 1}
