"""Artists as data: splitting artist cells, the matching key, the incidence matrix."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from deepvibe.config import DataConfig
from deepvibe.data.artists import artist_key, artist_matrix, split_artist_column, split_artists
from deepvibe.data.catalogue import load_catalogue_features
from deepvibe.data.tables import load_track_table
from deepvibe.errors import DataError


@pytest.mark.parametrize(
    ("cell", "names"),
    [
        ("Lady Gaga, Bruno Mars", ("Lady Gaga", "Bruno Mars")),
        ("A;B", ("A", "B")),
        (" A ; B ;", ("A", "B")),
        ("['A', 'B']", ("A", "B")),
        ('["Tyler, The Creator", "Frank Ocean"]', ("Tyler, The Creator", "Frank Ocean")),
        ("Tyler, The Creator;Kali Uchis", ("Tyler, The Creator", "Kali Uchis")),
        ("Tyler, The Creator", ("Tyler", "The Creator")),  # ambiguous: commas split (documented)
        ("AC/DC", ("AC/DC",)),
        ("Simon & Garfunkel", ("Simon & Garfunkel",)),
        ("['Beyoncé', 'JAY-Z']", ("Beyoncé", "JAY-Z")),
        ("['A', 'B'", ("A", "B")),  # a broken literal: the names inside
        ("A, a, A ", ("A",)),  # the same artist twice counts once
        ("", ()),
        ("  ", ()),
        ("[]", ()),
        (None, ()),
        (float("nan"), ()),
    ],
)
def test_split_artists_known_answers(cell: object, names: tuple[str, ...]) -> None:
    assert split_artists(cell) == names


def test_artist_key_folds_case_width_and_spaces_but_keeps_punctuation() -> None:
    assert artist_key("  Beyoncé ") == artist_key("BEYONCÉ") == "beyoncé"
    assert artist_key("Ｂｅｙｏｎｃｅ") == "beyonce"  # full-width letters (NFKC)
    assert artist_key("Simon \t  &\nGarfunkel") == "simon & garfunkel"
    assert artist_key("AC/DC") == "ac/dc" != artist_key("ACDC")


def test_artist_matrix_known_answer_and_fixed_vocabulary() -> None:
    lists = [("A", "B"), ("b",), (), ("C", "A")]
    vocab, m = artist_matrix(lists)
    assert list(vocab) == ["a", "b", "c"]
    np.testing.assert_array_equal(m.toarray(), [[1, 1, 0], [0, 1, 0], [0, 0, 0], [1, 0, 1]])
    vocab2, m2 = artist_matrix(lists, vocabulary=np.array(["c", "A", "z"]))
    assert list(vocab2) == ["c", "a", "z"]
    np.testing.assert_array_equal(m2.toarray(), [[0, 1, 0], [0, 0, 0], [0, 0, 0], [1, 1, 0]])
    assert m2.dtype == np.float32
    vocab3, m3 = artist_matrix([("Ｂ ", "x"), (), ("b",), (" B",)])  # one key, names apart
    assert list(vocab3) == ["b", "x"] and m3[:, 0].toarray().ravel().tolist() == [1, 0, 1, 1]
    vocab4, m4 = artist_matrix([(), ()])  # no credit at all
    assert len(vocab4) == 0 and m4.shape == (2, 0)


def _tracks(path: Path, artists: list[str] | None) -> Path:
    frame = pd.DataFrame({"track_id": ["t1", "t2", "t3"], "f": [0.1, 0.2, 0.3]})
    if artists is not None:
        frame["artists"] = artists
    frame.to_csv(path, index=False)
    return path


def test_an_arrow_artist_column_splits_like_python_cells_into_the_same_matrix() -> None:
    """The fast path (Arrow factorisation, one shared tuple per distinct cell, each read once
    by artist_matrix) against cells split one by one into fresh tuples."""
    cells = ["A, B", None, "['C', 'a']", "A, B", "", "D;E, F", "b", "A, B"]
    arrow = pd.Series(cells, dtype="string[pyarrow]")
    lists = split_artist_column(arrow)
    assert lists == [split_artists(c) for c in cells]
    assert lists[0] is lists[3]  # one tuple per distinct cell
    fresh = [tuple(split_artists(c)) for c in cells]
    keys, shared = artist_matrix(lists)
    keys_fresh, alone = artist_matrix(fresh)
    assert keys.tolist() == keys_fresh.tolist() == ["a", "b", "c", "d", "e, f"]
    assert np.array_equal(shared.toarray(), alone.toarray())
    assert shared.toarray()[[0, 2, 6]].tolist() == [
        [1, 1, 0, 0, 0],
        [1, 0, 1, 0, 0],
        [0, 1, 0, 0, 0],
    ]


def test_track_table_carries_display_cells_and_artist_lists(tmp_path: Path) -> None:
    p = _tracks(tmp_path / "t.csv", ["A, B", "['C', 'D, E']", ""])
    table = load_track_table(p, "track_id", ("f",), artist_column="artists")
    assert list(table.artists) == ["A, B", "['C', 'D, E']", ""]
    assert table.artist_lists == [("A", "B"), ("C", "D, E"), ()]
    assert table.take(np.array([2, 0])).artist_lists == [(), ("A", "B")]


def test_missing_artist_column_is_an_error_only_when_required(tmp_path: Path) -> None:
    p = _tracks(tmp_path / "t.csv", None)
    cfg = DataConfig(features=str(p), feature_columns=("f",))
    table = load_catalogue_features(cfg)  # optional, as for reports: read when present
    assert table is not None and table.artists is None and table.artist_lists is None
    with pytest.raises(DataError) as err:
        load_catalogue_features(cfg, require_artists=True)
    text = str(err.value)
    assert str(p) in text and "'artists'" in text and "data.artist_column" in text
