"""The track-database cache and the scan, on synthetic databases with known answers (no model:
the Vibe DNA is set by hand)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import deepvibe.data.tables as tables_mod
from deepvibe.data.tables import FeatureScaler
from deepvibe.discovery import database as dbm
from deepvibe.discovery import scan as sc

FEATURES = (
    "danceability", "energy", "key", "loudness", "mode", "speechiness", "acousticness",
    "instrumentalness", "liveness", "valence", "tempo", "duration_ms",
)  # fmt: skip


def _open(path: Path, **kw) -> dbm.TrackDatabase:
    return dbm.TrackDatabase.open(
        path, FEATURES, "track_id", "popularity", "track_name", "artists", **kw
    )


def _scaler(frame: pd.DataFrame) -> FeatureScaler:
    return FeatureScaler.fit(frame[list(FEATURES)].to_numpy(np.float64), FEATURES)


# ----------------------------------------------------------------------------- defect 5


def test_defect5_blank_popularity_is_scanned_in_standard_mode(toy, tmp_path) -> None:
    frame = toy.database.copy()
    blank = np.zeros(len(frame), dtype=bool)
    blank[::4] = True  # 25% of the tracks have no popularity
    frame.loc[blank, "popularity"] = np.nan
    frame.to_csv(tmp_path / "db.csv", index=False)
    db = _open(tmp_path / "db.csv")
    assert db.n_tracks == len(frame)  # nothing dropped: popularity is not needed to scan
    assert db.unknown_popularity == int(blank.sum())
    scaler = _scaler(frame)
    dna = scaler.transform(frame[list(FEATURES)].to_numpy(np.float64)[blank][:3])
    std = sc.scan_database(db, scaler, dna, 5, chunk_size=1000, progress=False)
    for u in range(3):
        assert blank[std[u].rows[0]]  # a track of unknown popularity is its own best match
        assert std[u].similarity[0] == pytest.approx(1.0)
    gems = sc.scan_database(db, scaler, dna, 50, gems_lambda=0.2, chunk_size=1000, progress=False)
    for hits in gems:  # gems mode needs popularity: unknown popularity is never ranked
        assert not blank[hits.rows].any() and len(hits.rows) == 50
    pops = db.take(gems[0].rows)["popularity"].to_numpy()
    assert np.allclose(gems[0].score, gems[0].similarity - 0.2 * pops / 100)


# ----------------------------------------------------------------------------- defect 6


def test_defect6_cache_build_streams_the_source_in_chunks(toy, tmp_path, monkeypatch) -> None:
    toy.database.to_csv(tmp_path / "whole.csv", index=False)
    whole = _open(tmp_path / "whole.csv")
    sizes: list[int] = []
    parse = tables_mod._track_chunk  # the one track-table reader's chunk parser

    def spy(frame, *args, **kwargs):  # noqa: ANN001, ANN202
        sizes.append(len(frame))
        return parse(frame, *args, **kwargs)

    monkeypatch.setattr(dbm, "PARSE_ROWS", 700)
    monkeypatch.setattr(tables_mod, "_track_chunk", spy)
    toy.database.to_csv(tmp_path / "pieces.csv", index=False)
    pieces = _open(tmp_path / "pieces.csv")
    assert max(sizes) == 700 and sum(sizes) == len(toy.database) and len(sizes) == 5
    rows = np.arange(whole.n_tracks)
    assert pieces.n_tracks == whole.n_tracks
    pd.testing.assert_frame_equal(
        pieces.take(rows, ["track_id", "track_name", *FEATURES]),
        whole.take(rows, ["track_id", "track_name", *FEATURES]),
    )
    assert np.allclose(pieces.quantiles, whole.quantiles)


def test_streamed_build_skips_bad_rows_and_duplicates_across_chunks(toy, tmp_path, caplog):
    frame = toy.database.iloc[:1000].copy().astype({"tempo": object})
    frame.loc[5, "energy"] = np.nan
    frame.loc[650, "tempo"] = "fast"
    frame = pd.concat([frame, frame.iloc[[3, 640, 999]]])  # duplicates in later chunks
    frame.to_csv(tmp_path / "db.csv", index=False)
    pytest.MonkeyPatch().setattr(dbm, "PARSE_ROWS", 300)
    db = _open(tmp_path / "db.csv")
    assert db.n_tracks == 1000 - 2
    ids = db.take(np.arange(db.n_tracks))["track_id"]
    assert ids.is_unique and list(ids[:3]) == list(frame["track_id"].iloc[:3])
    assert any("skipped 2 of 1003 rows" in n and "column 'energy' row 7" in n for n in db.notes)
    assert any("3 duplicate track ids" in n for n in db.notes)


# ----------------------------------------------------------------------------- defect 7


def test_defect7_cache_notices_a_same_size_edit_with_the_mtime_restored(toy, tmp_path) -> None:
    big = pd.concat([toy.database] * 10, ignore_index=True)  # > 2 MiB: the middle is unhashed
    big["track_id"] = [f"t{i:09d}" for i in range(len(big))]
    src = tmp_path / "db.csv"
    big.to_csv(src, index=False)
    assert src.stat().st_size > 3 * 2**20
    db = _open(src)
    middle = len(big) // 2
    old_name = db.take(np.array([middle]))["track_name"].iloc[0]
    st = src.stat()
    text = src.read_bytes()
    at = text.index(f"t{middle:09d},".encode())
    line_end = text.index(b"\n", at)
    line = text[at:line_end]
    name = old_name.encode()
    new_line = line.replace(name, b"X" * len(name), 1)
    assert len(new_line) == len(line) and new_line != line
    src.write_bytes(text[:at] + new_line + text[line_end:])
    os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))  # as cp -p or rsync -t leave it
    assert src.stat().st_size == st.st_size and src.stat().st_mtime_ns == st.st_mtime_ns
    again = _open(src)
    assert again.take(np.array([middle]))["track_name"].iloc[0] == "X" * len(name)


def test_cache_survives_a_touch_without_parsing_again(toy, tmp_path, monkeypatch) -> None:
    src = tmp_path / "db.csv"
    toy.database.iloc[:500].to_csv(src, index=False)
    first = _open(src)

    def no_parse(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("parsed again")

    monkeypatch.setattr(dbm, "iter_track_chunks", no_parse)
    os.utime(src)  # new times, same content: the whole-file hash says keep the cache
    assert _open(src).n_tracks == first.n_tracks
    key = dbm.TrackColumnNames("track_id", FEATURES).as_key()
    assert key["features"] == list(FEATURES)
    monkeypatch.setattr(dbm, "CACHE_VERSION", dbm.CACHE_VERSION + 1)
    with pytest.raises(AssertionError, match="parsed again"):  # a new cache format rebuilds
        _open(src)


# ----------------------------------------------------------------------------- defect 8


@pytest.mark.parametrize("chunk_size", [7, 64, 1_000_000])
def test_defect8_ties_across_chunks_are_ordered_by_database_row(toy, tmp_path, chunk_size):
    frame = toy.database.iloc[:300].copy()
    same = frame.iloc[[0] * 100].copy()  # 100 copies of row 0's features, other ids
    same["track_id"] = [f"same{i:03d}" for i in range(100)]
    frame = pd.concat([frame.iloc[:150], same, frame.iloc[150:]], ignore_index=True)
    frame.to_csv(tmp_path / "db.csv", index=False)
    db = _open(tmp_path / "db.csv")
    scaler = _scaler(frame)
    dna = scaler.transform(frame[list(FEATURES)].to_numpy(np.float64)[[150]])
    hits = sc.scan_database(db, scaler, dna, 10, chunk_size=chunk_size, progress=False)[0]
    assert hits.rows[:10].tolist() == [0, *range(150, 159)]  # 101 ties: in database order
    assert hits.score[0] == hits.score[9]


def test_scan_is_exact_and_the_same_for_any_block(toy, tmp_path) -> None:
    """The block scan equals a float64 brute force, whatever the users around a user."""
    frame = toy.database
    frame.to_csv(tmp_path / "db.csv", index=False)
    db = _open(tmp_path / "db.csv")
    scaler = _scaler(frame.iloc[:500])
    rng = np.random.default_rng(0)
    dna = rng.normal(size=(70, len(FEATURES)))
    for method in ("cosine", "pearson"):
        scorer = sc.DnaScorer(dna, scaler, method)
        rows, scores = sc.scan(db, scorer, 40, chunk_size=999, progress=False)
        one_rows, one_scores = sc.scan(db, scorer.select(np.array([33])), 40, chunk_size=5000)
        assert np.array_equal(one_rows[0], rows[33]) and np.array_equal(one_scores[0], scores[33])
        feats = scaler.transform(frame[list(FEATURES)].to_numpy(np.float64))
        from deepvibe.discovery.dna import similarity_to

        sims = similarity_to(dna, feats, method)
        for u in (0, 33, 69):
            assert np.allclose(scores[u], np.sort(sims[u])[::-1][:40], atol=1e-6)


def test_scan_floor_guess_that_is_too_high_is_rescanned(toy, tmp_path, monkeypatch) -> None:
    frame = toy.database.iloc[:2000]
    frame.to_csv(tmp_path / "db.csv", index=False)
    db = _open(tmp_path / "db.csv")
    scaler = _scaler(frame)
    dna = np.random.default_rng(1).normal(size=(5, len(FEATURES)))
    want = sc.scan(db, sc.DnaScorer(dna, scaler), 30, chunk_size=500)
    monkeypatch.setattr(sc, "_estimated_floor", lambda db, scorer, k: np.full(5, 0.999))
    got = sc.scan(db, sc.DnaScorer(dna, scaler), 30, chunk_size=500)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])


def test_scan_goes_on_with_the_given_tops_of_its_user_groups(toy, tmp_path) -> None:
    """``tops`` (one per user group) are the scan's own top-k buffers: a scan into empty
    ones equals a plain scan, and one into buffers that hold rows keeps them; they need the
    floor they were filled above, and one per group."""
    frame = toy.database.iloc[:3000]
    frame.to_csv(tmp_path / "db.csv", index=False)
    db = _open(tmp_path / "db.csv")
    dna = np.random.default_rng(2).normal(size=(70, len(FEATURES)))
    scorer, floor = sc.DnaScorer(dna, _scaler(frame)), np.full(70, -np.inf)
    groups = sc.user_groups(70)
    want = sc.scan(db, scorer, 40, chunk_size=700, floor=floor)
    tops = [sc.group_top_k(b - a, 40) for a, b in groups]
    got = sc.scan(db, scorer, 40, chunk_size=700, floor=floor, tops=tops)
    assert np.array_equal(got[0], want[0]) and np.array_equal(got[1], want[1])
    held = [sc.group_top_k(b - a, 40, ordered=False) for a, b in groups]
    held[0].push(np.array([0]), np.array([10**6]), np.array([2.0]))  # above any similarity
    rows, _ = sc.scan(db, scorer, 40, chunk_size=700, floor=floor, tops=held)
    assert rows[0, 0] == 10**6 and np.array_equal(rows[0, 1:], want[0][0, :-1])
    with pytest.raises(ValueError, match="floor"):
        sc.scan(db, scorer, 40, tops=[sc.group_top_k(b - a, 40) for a, b in groups])
    with pytest.raises(ValueError, match="one per user group"):
        sc.scan(db, scorer, 40, floor=floor, tops=[*tops, tops[0]])
