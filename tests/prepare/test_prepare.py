"""`deepvibe prepare` on fixture files written here in each exact source schema.

The world (see ``world``): a track table with every id form, a Spotify Extended history zip
(alice), an account-data folder (bob) and a long CSV (carol, dave). Each expected count below
is worked out by hand from those rows.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from deepvibe.cli import app
from deepvibe.config import DEFAULT_FEATURES, load_config
from deepvibe.data import tables
from deepvibe.data.history import NO_MATCH, OVERLAP, read_history, read_history_file
from deepvibe.data.spotify import (
    AUDIOBOOK,
    NO_URI,
    PODCAST,
    SKIPPED,
    is_spotify_export,
    normalise_name,
    normalise_title,
    too_short,
)
from deepvibe.data.tables import load_interactions, load_track_table
from deepvibe.prepare import pipeline as prep
from deepvibe.prepare.pipeline import (
    INCOMPLETE,
    MATCH,
    NOT_IN_TABLE,
    PrepareOptions,
    TableColumns,
    TrackColumns,
    prepare,
    read_track_tables,
)


def tid(n: int) -> str:
    return f"trk{n:019d}"  # 22 alphanumeric characters, like a Spotify id


A, B, C, D, E, Z = (tid(i) for i in range(1, 7))  # Z is in no track table


def _features(seed: int, n: int) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.1, 0.9, size=(n, len(DEFAULT_FEATURES)))


def write_tracks(path: Path) -> None:
    """A, B, C complete, each with a different id form; D lacks energy; E is never played;
    a second row for A (a duplicate) comes last."""
    ids = [A, f"spotify:track:{B}", f"https://open.spotify.com/track/{C}?si=x1", D, E, A]
    frame = pd.DataFrame(_features(0, len(ids)), columns=list(DEFAULT_FEATURES))
    frame.loc[3, "energy"] = np.nan
    frame.insert(0, "track_id", ids)
    frame["track_name"] = ["Halo", "Jump - 2015 Remaster", "Song X", "Broken", "Quiet", "Halo"]
    frame["artists"] = [
        "Beyoncé",
        "Van Halen",
        "Artist A, Artist B",
        "Someone",
        "Nobody Known",
        "X",
    ]
    frame["popularity"] = [80, 70, 50, 10, 5, 1]
    frame.to_csv(path, index=False)


def ext(ts: str, uri: str | None, ms: int = 200_000, skipped: bool | None = False, **kw) -> dict:
    """One Extended streaming history entry, every field of the 2024 schema."""
    entry = {
        "ts": ts,
        "platform": "android",
        "ms_played": ms,
        "conn_country": "DE",
        "ip_addr": "192.0.2.1",
        "master_metadata_track_name": "name",
        "master_metadata_album_artist_name": "artist",
        "master_metadata_album_album_name": "album",
        "spotify_track_uri": uri,
        "episode_name": None,
        "episode_show_name": None,
        "spotify_episode_uri": None,
        "audiobook_title": None,
        "audiobook_uri": None,
        "audiobook_chapter_uri": None,
        "audiobook_chapter_title": None,
        "reason_start": "trackdone",
        "reason_end": "trackdone",
        "shuffle": False,
        "skipped": skipped,
        "offline": False,
        "offline_timestamp": 0,
        "incognito_mode": False,
    }
    entry.update(kw)
    return entry


def write_extended_zip(path: Path, username: str | None = "alice") -> None:
    """alice: A x3, B x2, D x1, Z x1 count; plus one of each kind that does not."""
    first = [
        ext("2024-02-12T08:00:00Z", f"spotify:track:{A}"),
        ext("2024-02-13T08:00:00Z", f"spotify:track:{A}"),
        ext("2024-02-14T08:00:00Z", f"spotify:track:{B}"),
        ext("2024-02-14T09:00:00Z", f"spotify:track:{A}", ms=10_000),  # too short
        ext("2024-02-14T10:00:00Z", f"spotify:track:{B}", ms=60_000, skipped=True),
        ext(
            "2024-02-15T10:00:00Z",
            None,
            episode_name="Ep 1",
            spotify_episode_uri="spotify:episode:e1",
        ),
    ]
    second = [
        ext("2024-02-20T08:00:00Z", f"spotify:track:{A}"),
        ext("2024-02-21T08:00:00Z", f"spotify:track:{B}", skipped=None),  # null = not skipped
        ext("2024-02-21T09:00:00Z", f"spotify:track:{D}"),
        ext("2024-02-21T10:00:00Z", f"spotify:track:{Z}"),
        ext("2024-02-22T10:00:00Z", None, audiobook_title="Book", audiobook_uri="spotify:show:b"),
        ext("2024-02-22T11:00:00Z", None),  # local file: no URI at all
    ]
    if username is not None:
        for e in first + second:
            e["username"] = username
    folder = "Spotify Extended Streaming History"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{folder}/Streaming_History_Audio_2024_0.json", json.dumps(first))
        zf.writestr(f"{folder}/Streaming_History_Audio_2024_1.json", json.dumps(second))
        zf.writestr(f"{folder}/Streaming_History_Video_2024.json", json.dumps([ext("x", None)]))
        zf.writestr(f"{folder}/ReadMeFirst_ExtendedStreamingHistory.pdf", b"%PDF-1.4")


def acc(end: str, artist: str, track: str, ms: int = 200_000) -> dict:
    return {"endTime": end, "artistName": artist, "trackName": track, "msPlayed": ms}


def write_account_folder(folder: Path) -> None:
    """bob (from Userdata.json): A x2, B x1, C x1 by name; 'Nobody - Nothing' x2 unmatched."""
    folder.mkdir(parents=True)
    plays = [
        acc("2024-03-01 10:00", "BEYONCE", "Halo (Remastered 2009)"),
        acc("2024-03-01 10:05", "Beyoncé", "halo"),
        acc("2024-03-01 10:10", "Van Halen", "Jump"),
        acc("2024-03-01 10:15", "Artist B", "Song X (feat. Someone)"),
        acc("2024-03-01 10:20", "Nobody", "Nothing"),
        acc("2024-03-02 10:20", "Nobody", "Nothing"),
        acc("2024-03-02 10:25", "Van Halen", "Jump", ms=5_000),  # too short
    ]
    (folder / "StreamingHistory_music_0.json").write_text(json.dumps(plays))
    podcast = [
        {"endTime": "2024-03-01 11:00", "podcastName": "P", "episodeName": "E", "msPlayed": 1}
    ]
    (folder / "StreamingHistory_podcast_0.json").write_text(json.dumps(podcast))
    (folder / "Userdata.json").write_text(json.dumps({"username": "bob", "country": "SE"}))


def write_long(path: Path) -> None:
    """carol: A 5, C 1 + 2 (two id forms); dave: B 4; one zero-play row, one without a track."""
    pd.DataFrame(
        {
            "user_id": ["carol", "carol", "carol", "dave", "dave", "dave"],
            "track_id": [
                f"spotify:track:{A}",
                C,
                f"https://open.spotify.com/track/{C}",
                B,
                A,
                None,
            ],
            "plays": [5, 1, 2, 4, 0, 3],
        }
    ).to_csv(path, index=False)


@pytest.fixture()
def world(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "tracks": tmp_path / "tracks.csv",
        "extended": tmp_path / "my_spotify_data.zip",
        "account": tmp_path / "account" / "MyData",
        "long": tmp_path / "long.csv",
        "out": tmp_path / "out",
    }
    write_tracks(paths["tracks"])
    write_extended_zip(paths["extended"])
    write_account_folder(paths["account"])
    write_long(paths["long"])
    return paths


def _run(world: dict[str, Path], **options) -> prep.PrepareResult:
    sources = [world["extended"], world["account"], world["long"]]
    return prepare(sources, [world["tracks"]], world["out"], PrepareOptions(**options))


def _pairs(path: Path) -> dict[tuple, float]:
    frame = pd.read_csv(path, dtype={"user_id": str, "track_id": str})
    keys = [c for c in frame.columns if c != "plays"]
    return {tuple(r[k] for k in keys): r["plays"] for _, r in frame.iterrows()}


# ----------------------------------------------------------------------------- the whole world


def test_prepare_matrix_catalogue_and_drop_counts(world: dict[str, Path]) -> None:
    r = _run(world)
    assert _pairs(r.paths["interactions"]) == {
        ("alice", A): 3, ("alice", B): 2,
        ("bob", A): 2, ("bob", B): 1, ("bob", C): 1,
        ("carol", A): 5, ("carol", C): 3,
        ("dave", B): 4,
    }  # fmt: skip
    # Catalogue: most played first (A 10, B 7, C 4); database: every complete track.
    cat = pd.read_csv(r.paths["features"])
    assert list(cat["track_id"]) == [A, B, C]
    assert list(cat.columns[1:13]) == list(DEFAULT_FEATURES)
    assert cat.loc[0, "track_name"] == "Halo" and cat.loc[0, "popularity"] == 80  # first row of A
    assert set(pd.read_csv(r.paths["database"])["track_id"]) == {A, B, C, E}

    led = r.ledger
    assert led.count("streams", PODCAST) == 1
    assert led.count("streams", AUDIOBOOK) == 1
    assert led.count("streams", NO_URI) == 1
    assert led.count("streams", too_short(30_000)) == 2  # alice's 10 s + bob's 5 s
    assert led.count("streams", SKIPPED) == 1
    assert led.count("rows", "missing user or track id") == 1
    assert led.count("rows", "zero plays") == 1
    assert led.count(MATCH, NO_MATCH) == 2
    assert led.count("entries", NOT_IN_TABLE) == 1  # alice - Z
    assert led.count("entries", INCOMPLETE) == 1  # alice - D
    assert led.count("tracks", "duplicate track id (kept the first complete row)") == 1
    assert (r.n_users, r.n_rows, r.n_catalogue, r.n_global, r.nnz) == (4, 4, 3, 4, 8)
    assert r.plays_read == 23 and r.plays_kept == 21
    assert r.coverage == pytest.approx(21 / 23)
    assert "4 of 6 plays matched" in r.summary and "(66.7%)" in r.summary

    unmatched = pd.read_csv(r.paths["unmatched"])
    assert unmatched[["user_id", "artist", "track", "plays"]].values.tolist() == [
        ["bob", "Nobody", "Nothing", 2]
    ]
    assert unmatched.loc[0, "first_played"] == "2024-03-01T10:20:00Z"


def test_generated_config_loads_the_same_matrix(world: dict[str, Path]) -> None:
    r = _run(world)
    cfg = load_config(r.paths["config"])
    inter = load_interactions(cfg.data)
    users, matrix = inter.user_matrix()
    got = {
        (u, inter.track_ids[j]): matrix[i, j]
        for i, u in enumerate(users)
        for j in matrix[i].indices
    }
    assert got == _pairs(r.paths["interactions"])
    cat = load_track_table(
        cfg.data.features, cfg.data.feature_track_column, cfg.data.feature_columns,
        cfg.data.popularity_column, cfg.data.name_column, cfg.data.artist_column,
    )  # fmt: skip
    assert list(cat.track_ids) == [A, B, C]
    assert cfg.data.max_tracks == 3 and cfg.data.time_column is None


def test_max_tracks_min_plays_and_min_user_tracks(world: dict[str, Path]) -> None:
    r = _run(world, max_tracks=2)
    assert r.ledger.counts[("entries", "track outside the 2 most-played tracks")] == [2, 4.0]
    assert ("carol", C) not in _pairs(r.paths["interactions"])

    r = _run(world, min_plays=2, min_user_tracks=2)
    # min-plays 2 drops bob's B and C (1 play each) and nothing else; then bob (A only) and
    # dave (B only) have fewer than 2 tracks.
    assert r.ledger.counts[("entries", "user played the track fewer than 2 times")][0] == 4
    assert r.ledger.count("users", "fewer than 2 tracks left") == 2
    assert _pairs(r.paths["interactions"]) == {
        ("alice", A): 3, ("alice", B): 2, ("carol", A): 5, ("carol", C): 3,
    }  # fmt: skip


def test_binary_counts_each_kept_entry_once(world: dict[str, Path]) -> None:
    r = _run(world, binary=True)
    assert set(_pairs(r.paths["interactions"]).values()) == {1}
    assert r.plays_kept == r.nnz == 8


def test_play_threshold_is_configurable(world: dict[str, Path]) -> None:
    r = _run(world, min_ms=5_000)
    # alice's 10 s stream of A and bob's 5 s Jump now count; the skipped one still does not.
    pairs = _pairs(r.paths["interactions"])
    assert pairs[("alice", A)] == 4 and pairs[("bob", B)] == 2
    assert r.ledger.count("streams", too_short(5_000)) == 0


# ----------------------------------------------------------------------------- single sources


def test_weekly_buckets_by_iso_week_across_a_year_end(tmp_path: Path) -> None:
    write_tracks(tmp_path / "t.csv")
    plays = [
        ext("2024-12-29T23:00:00Z", f"spotify:track:{A}"),  # Sunday of 2024-W52
        ext("2024-12-30T01:00:00Z", f"spotify:track:{A}"),  # Monday of 2025-W01
        ext("2024-12-31T01:00:00Z", f"spotify:track:{B}"),
        ext("2025-01-07T01:00:00Z", f"spotify:track:{B}"),  # 2025-W02
    ]
    folder = tmp_path / "export"
    folder.mkdir()
    (folder / "Streaming_History_Audio_2024-2025_0.json").write_text(json.dumps(plays))
    r = prepare([folder], [tmp_path / "t.csv"], tmp_path / "out", PrepareOptions(weekly=True))
    assert _pairs(r.paths["interactions"]) == {
        ("export", "2024-W52", A): 1,
        ("export", "2025-W01", A): 1,
        ("export", "2025-W01", B): 1,
        ("export", "2025-W02", B): 1,
    }
    inter = load_interactions(load_config(r.paths["config"]).data)
    assert list(inter.row_times[inter.latest_rows()[1]]) == ["2025-W02"]  # latest = current


def test_long_table_weekly_from_timestamps_and_week_numbers(tmp_path: Path) -> None:
    pd.DataFrame(
        {"listener": ["u", "u", "u"], "song": [A, A, B],
         "when": ["2024-01-01T10:00:00Z", "2024-01-02T10:00:00Z", "2024-01-08T10:00:00Z"]}
    ).to_csv(tmp_path / "a.csv", index=False)  # fmt: skip
    cols = TableColumns(user="listener", track="song", time="when")
    r = prepare([tmp_path / "a.csv"], None, tmp_path / "o1", PrepareOptions(weekly=True), cols)
    assert _pairs(r.paths["interactions"]) == {("u", "2024-W01", A): 2, ("u", "2024-W02", B): 1}
    assert "features" not in r.paths  # no track table: collaborative only
    assert load_config(r.paths["config"]).data.features is None

    pd.DataFrame({"user_id": ["u", "u"], "track_id": [A, B], "week": [1, 2]}).to_csv(
        tmp_path / "b.csv", index=False
    )
    r = prepare([tmp_path / "b.csv"], None, tmp_path / "o2", PrepareOptions(weekly=True))
    assert _pairs(r.paths["interactions"]) == {("u", 1, A): 1, ("u", 2, B): 1}


def test_chunked_reading_gives_the_same_result(
    world: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    whole = _run(world)
    expected = _pairs(whole.paths["interactions"])
    pd.read_csv(world["tracks"]).to_parquet(tmp_path / "tracks.parquet")
    monkeypatch.setattr(tables, "CHUNK_ROWS", 2)  # every file is read in several chunks
    r = prepare(
        [world["extended"], world["account"], world["long"]],
        [tmp_path / "tracks.parquet"],
        tmp_path / "chunked",
    )
    assert _pairs(r.paths["interactions"]) == expected
    assert r.ledger.counts == whole.ledger.counts


def test_track_table_column_flags(tmp_path: Path) -> None:
    frame = pd.DataFrame({"uri": [f"spotify:track:{A}", B], "pop": [1, 2], "a": [0.1, 0.2],
                          "b": [0.3, np.nan]})  # fmt: skip
    frame.to_csv(tmp_path / "t.csv", index=False)
    dump = read_track_tables(
        [tmp_path / "t.csv"], TrackColumns(id="uri", features=("a", "b"), popularity="pop")
    )
    assert list(dump.table.track_ids) == [A, B]
    assert list(dump.complete) == [True, False]
    assert dump.table.names is None


def test_same_user_extended_and_account_plays_are_not_counted_twice(tmp_path: Path) -> None:
    write_tracks(tmp_path / "t.csv")
    folder = tmp_path / "both"
    folder.mkdir()
    extended = [ext("2024-03-01T10:00:00Z", f"spotify:track:{A}"),
                ext("2024-03-05T10:00:00Z", f"spotify:track:{A}")]  # fmt: skip
    account = [
        acc("2024-03-03 10:00", "Beyoncé", "Halo"),
        acc("2024-04-01 10:00", "Beyoncé", "Halo"),
    ]
    (folder / "Streaming_History_Audio_2024.json").write_text(json.dumps(extended))
    (folder / "StreamingHistory_music_0.json").write_text(json.dumps(account))
    r = prepare([folder], [tmp_path / "t.csv"], tmp_path / "out")
    assert r.ledger.count(MATCH, OVERLAP) == 1  # 03-03 is inside the extended span
    assert _pairs(r.paths["interactions"]) == {("both", A): 3}


def test_loose_files_of_one_folder_are_one_user(world: dict[str, Path], tmp_path: Path) -> None:
    with zipfile.ZipFile(world["extended"]) as zf:
        zf.extractall(tmp_path / "x")
    files = sorted((tmp_path / "x").rglob("Streaming_History_Audio_*.json"))
    assert len(files) == 2
    r = prepare(files, [world["tracks"]], tmp_path / "out", PrepareOptions(users=("me",)))
    assert _pairs(r.paths["interactions"]) == {("me", A): 3, ("me", B): 2}


# ----------------------------------------------------------------------------- name matching


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("Jump - 2015 Remaster", "jump"),
        ("Jump (Remastered)", "JUMP"),
        ("Heroes - 2017 Remastered Version", "Heroes"),
        ("Song X (feat. Someone)", "song x"),
        ("Song X [ft. Someone]", "Song X"),
        ("Song X - feat. Someone", "Song X"),
        ("Déjà Vu", "deja vu"),
        ("Don't Stop Me Now", "dont stop me now"),
    ],
)
def test_titles_normalise_to_the_same_key(a: str, b: str) -> None:
    assert normalise_title(a) == normalise_title(b)


def test_different_titles_stay_different() -> None:
    assert normalise_title("Jump") != normalise_title("Jump Around")
    assert normalise_title("Live Forever - Live") != normalise_title("Live Forever")
    assert normalise_name("Simon & Garfunkel") == normalise_name("simon and garfunkel")


def test_name_index_prefers_complete_then_popular(tmp_path: Path) -> None:
    pd.DataFrame(
        {"track_id": [A, B, C], "danceability": [np.nan, 0.5, 0.6], "popularity": [90, 10, 60],
         "track_name": ["Same", "Same", "Same"], "artists": ["Band", "Band", "Band"]}
    ).to_csv(tmp_path / "t.csv", index=False)  # fmt: skip
    dump = read_track_tables([tmp_path / "t.csv"], TrackColumns(features=("danceability",)))
    from deepvibe.data.spotify import NameIndex

    rows = NameIndex.build(dump.table, dump.complete).lookup(np.array(["band"]), np.array(["same"]))
    assert dump.table.track_ids[rows[0]] == C  # A is incomplete; C beats B on popularity


# ----------------------------------------------------------------------------- discover --history


def test_read_history_file_from_zip_and_account_folder(world: dict[str, Path]) -> None:
    assert is_spotify_export(world["extended"]) and is_spotify_export(world["account"])
    assert not is_spotify_export(world["long"])
    inter = read_history_file(world["extended"])
    assert list(inter.row_users) == ["alice"]
    got = dict(zip(inter.track_ids, inter.matrix.toarray()[0], strict=True))
    assert got == {A: 3, B: 2, D: 1, Z: 1}

    table = read_track_tables([world["tracks"]], TrackColumns()).table
    hist = read_history(world["account"], table)
    got = dict(zip(hist.interactions.track_ids, hist.interactions.matrix.toarray()[0], strict=True))
    assert hist.user_id == "bob" and got == {A: 2, B: 1, C: 1}
    assert (hist.n_account, hist.n_matched) == (6, 4)


# ----------------------------------------------------------------------------- CLI and errors


def test_cli_prepare(world: dict[str, Path]) -> None:
    sources = [world["extended"], world["account"], world["long"]]
    args = ["prepare", *(a for p in sources for a in ("-i", str(p)))]
    args += ["-t", str(world["tracks"]), "--out", str(world["out"])]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "kept: 4 users in 4 rows, 3 catalogue tracks" in res.stdout
    assert f"{PODCAST}: 1 streams" in res.stdout
    assert f"next: deepvibe train --config {world['out'] / 'deepvibe.yaml'}" in res.stdout
    assert (world["out"] / "prepare_summary.txt").read_text().startswith("read:")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-i", "missing.csv"], "missing.csv: interactions source not found"),
        (["--user", "a", "--user", "b"], "--user was given 2 time(s) but there are 1"),
        (["--feature-cols", "danceability,nope"], "no column 'nope'"),
        (["--track-col", "song"], "no column 'song' for the track id"),
    ],
)
def test_cli_errors_are_one_line(world: dict[str, Path], extra: list[str], message: str) -> None:
    args = ["prepare", "-i", str(world["extended"]), "-i", str(world["long"]),
            "-t", str(world["tracks"]), "--out", str(world["out"]), *extra]  # fmt: skip
    res = CliRunner().invoke(app, args, catch_exceptions=False)
    assert res.exit_code == 1
    assert message in res.stderr
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.output
    assert not (world["out"] / "interactions.csv").exists()


def test_account_history_without_a_track_table_is_an_error(world: dict[str, Path]) -> None:
    res = CliRunner().invoke(
        app, ["prepare", "-i", str(world["account"]), "--out", str(world["out"])]
    )
    assert res.exit_code == 1
    assert "account-data history" in res.stderr and "--tracks" in res.stderr


def test_folder_without_history_and_same_default_names(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(prep.DataError, match="no Spotify streaming history"):
        prepare([tmp_path / "empty"], None, tmp_path / "out")
    for d in ("a", "b"):
        write_extended_zip(tmp_path / d, username=None)
        (tmp_path / d).rename(tmp_path / f"{d}.zip")
        (tmp_path / f"{d}_copy").mkdir()
        with zipfile.ZipFile(tmp_path / f"{d}.zip") as zf:
            zf.extractall(tmp_path / f"{d}_copy" / "my_spotify_data")
    same = [tmp_path / "a_copy" / "my_spotify_data", tmp_path / "b_copy" / "my_spotify_data"]
    with pytest.raises(prep.DataError, match="would both be user 'my_spotify_data'"):
        prepare(same, None, tmp_path / "out")
    r = prepare(same, None, tmp_path / "out", PrepareOptions(users=("ann", "ben")))
    assert r.n_users == 2


# ----------------------------------------------------------------------------- train accepts it


def test_train_accepts_prepared_toy_data(tmp_path: Path, toy) -> None:
    """The toy world as a long table + a track dump with URI ids -> prepare -> train."""
    from deepvibe.training.train import train

    long = toy.matrix.melt(id_vars=["user_id", "week"], var_name="track_id", value_name="plays")
    long[long["plays"] > 0].to_csv(tmp_path / "long.csv", index=False)
    db = toy.database.copy()
    db["track_id"] = "spotify:track:" + db["track_id"]
    db.to_csv(tmp_path / "db.csv", index=False)
    r = prepare(
        [tmp_path / "long.csv"], [tmp_path / "db.csv"], tmp_path / "out",
        PrepareOptions(weekly=True, max_tracks=200),
    )  # fmt: skip
    assert r.n_catalogue == 200 and r.n_users == toy.matrix["user_id"].nunique()
    cfg = load_config(
        r.paths["config"],
        ["model.hidden=[32]", "model.latent=8", "train.epochs=2", "train.batch_size=128",
         f"paths.models_dir={tmp_path / 'models'}", f"paths.logs_dir={tmp_path / 'logs'}"],
    )  # fmt: skip
    result = train(cfg)
    assert np.isfinite(result.best_metric)
    assert cfg.best_checkpoint_path.exists()

    # discover --history takes a Spotify download of catalogue tracks directly.
    catalogue = pd.read_csv(r.paths["features"])["track_id"].tolist()
    plays = [ext(f"2024-05-0{1 + i % 9}T10:00:00Z", f"spotify:track:{t}", username="zoe")
             for i, t in enumerate(catalogue[:12] * 2)]  # fmt: skip
    plays.append(ext("2024-05-09T11:00:00Z", None, episode_name="Ep"))
    with zipfile.ZipFile(tmp_path / "zoe.zip", "w") as zf:
        zf.writestr("Streaming_History_Audio_2024_0.json", json.dumps(plays))
    res = CliRunner().invoke(
        app,
        ["discover", "--config", str(r.paths["config"]), "--history", str(tmp_path / "zoe.zip"),
         "--set", f"paths.models_dir={tmp_path / 'models'}",
         "--set", f"paths.recommendations_dir={tmp_path / 'recs'}", "--top", "5"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    report = pd.read_csv(next((tmp_path / "recs" / "zoe").glob("zoe_*_standard.csv")))
    assert len(report) == 5
    assert not set(report["track_id"]) & set(catalogue[:12])  # never recommends heard tracks
