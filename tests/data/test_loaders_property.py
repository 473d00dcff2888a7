"""Property-based tests: random, often malformed, tables and configs fed to the loaders.

Every loader must either return the right answer or raise a DeepVibeError (which the CLI
prints as one line); any other exception is a crash. For generated tables whose right answer
is known (clean or with planted bad cells) the test also checks which of the two happened.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from deepvibe.config import Config, DataConfig, load_config
from deepvibe.data.tables import FeatureScaler, load_interactions, load_track_table
from deepvibe.errors import CheckpointError, ConfigError, DataError, DeepVibeError
from deepvibe.fileio import read_table
from deepvibe.model.vae import HybridVAE, VAEArch
from deepvibe.training.checkpoint import load_checkpoint, save_checkpoint

# 60 examples keep the file to seconds; DEEPVIBE_HYPOTHESIS_EXAMPLES=2000 searches harder.
SETTINGS = settings(
    max_examples=int(os.environ.get("DEEPVIBE_HYPOTHESIS_EXAMPLES", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

SPOTIFY_ID = "4uLU6hMCjMI75M1A2tKUQC"
# Three spellings of one track: they must land in one column.
TRACKS = ["t1", "t2", SPOTIFY_ID, f"spotify:track:{SPOTIFY_ID}",
          f"https://open.spotify.com/track/{SPOTIFY_ID}?si=x"]  # fmt: skip
USERS = ["u1", "u2", "Zoë", "7"]


def _norm(track: str) -> str:
    return SPOTIFY_ID if SPOTIFY_ID in track else track


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("prop")


def _csv_cell(value: object) -> str:
    if value is None:
        return ""
    text = str(value)
    if any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def _write_rows(path: Path, header: list[str], rows: list[list[object]]) -> None:
    lines = [",".join(_csv_cell(h) for h in header)]
    lines += [",".join(_csv_cell(v) for v in row) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ----------------------------------------------------------------------------- long tables

GOOD_PLAYS = st.sampled_from([0, 1, 2, 5, 0.5, "3", "1e1"])
BAD_PLAYS = st.sampled_from([-1, "-0.5", "many", None, "inf", "nan", "1,5"])


@st.composite
def long_tables(draw):
    """Clean rows, then (half the time) one planted bad cell: user, track or plays."""
    n = draw(st.integers(0, 12))
    rows = [
        [draw(st.sampled_from(USERS)), draw(st.sampled_from(TRACKS)), draw(GOOD_PLAYS)]
        for _ in range(n)
    ]
    planted = n > 0 and draw(st.booleans())
    if planted:
        r, c = draw(st.integers(0, n - 1)), draw(st.integers(0, 2))
        rows[r][c] = None if c < 2 else draw(BAD_PLAYS)
    return rows, planted or n == 0


@SETTINGS
@given(table=long_tables())
def test_long_interactions_are_right_or_a_clean_error(folder: Path, table) -> None:
    rows, should_fail = table
    path = folder / "long.csv"
    _write_rows(path, ["user_id", "track_id", "plays"], rows)
    cfg = DataConfig(interactions=str(path), format="long", time_column=None)
    try:
        inter = load_interactions(cfg)
    except DataError as err:
        event("refused")
        assert should_fail, f"unexpected error for good input: {err}"
        assert str(path) in str(err) and "\n" not in str(err)
        return
    event("accepted")
    assert not should_fail, "bad input was accepted"
    expected: dict[tuple[str, str], float] = defaultdict(float)
    for user, track, plays in rows:
        expected[(user, _norm(track))] += float(plays)
    dense = inter.matrix.toarray()
    r = {u: i for i, u in enumerate(inter.row_users)}
    c = {t: j for j, t in enumerate(inter.track_ids)}
    assert len(r) == len(inter.row_users) and len(c) == len(inter.track_ids)
    assert set(r) == {u for u, _ in expected} and set(c) == {t for _, t in expected}
    for (user, track), total in expected.items():
        assert dense[r[user], c[track]] == pytest.approx(total)
    assert dense.sum() == pytest.approx(sum(expected.values()))


# ----------------------------------------------------------------------------- wide tables


@st.composite
def wide_tables(draw):
    """Mostly distinct track columns and clean counts; sometimes a repeated or empty track
    name, an exact copy of a row, a conflicting row for the same key, or one bad cell."""
    pool = ["t1", "t2", "t3", "t4", SPOTIFY_ID]
    tracks = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4, unique=True))
    if draw(st.integers(0, 7)) == 0:  # an unnamed column or another spelling of a track
        tracks.append(draw(st.sampled_from(["", f"spotify:track:{SPOTIFY_ID}", tracks[0]])))
    timed = draw(st.booleans())
    n = draw(st.integers(0, 8))
    rows: list[list[object]] = []
    for _ in range(n):
        if rows and draw(st.integers(0, 3)) == 0:
            rows.append(list(draw(st.sampled_from(rows))))  # an exact copy of an earlier row
            continue
        user = draw(st.sampled_from(USERS + ["u3", "u4", "u5", "u6"]))
        key = [user] + ([draw(st.sampled_from([1, 2]))] if timed else [])
        rows.append(key + [draw(st.integers(0, 3)) for _ in tracks])
    if rows and draw(st.integers(0, 2)) == 0:
        r, c = draw(st.integers(0, len(rows) - 1)), draw(st.integers(0, len(tracks)))
        rows[r][0 if c == 0 else len(rows[r]) - c] = None if c == 0 else draw(BAD_PLAYS)
    header = ["user_id"] + (["week"] if timed else []) + tracks
    return header, rows, len(header) - len(tracks)


def _wide_expectation(header, rows, n_ids):
    """None when the loader must refuse the table, else (row keys, track ids, matrix)."""
    tracks = [_norm(t) for t in header[n_ids:]]
    if not rows or "" in tracks or len(set(tracks)) < len(tracks):
        return None
    kept: dict[tuple, list[float]] = {}
    for row in rows:
        key, cells = tuple(row[:n_ids]), row[n_ids:]
        if key[0] is None:
            return None
        try:
            values = [float(v) for v in cells if v is not None]
        except (TypeError, ValueError):
            return None
        if len(values) < len(cells) or any(v < 0 or not math.isfinite(v) for v in values):
            return None
        if key in kept and kept[key] != values:
            return None  # two different rows for one (user, week)
        kept.setdefault(key, values)
    return list(kept), tracks, np.array(list(kept.values()))


@SETTINGS
@given(table=wide_tables())
def test_wide_interactions_are_right_or_a_clean_error(folder: Path, table) -> None:
    header, rows, n_ids = table
    path = folder / "wide.csv"
    _write_rows(path, header, rows)
    expected = _wide_expectation(header, rows, n_ids)
    cfg = DataConfig(interactions=str(path), format="wide")
    try:
        inter = load_interactions(cfg)
    except DataError as err:
        event("refused")
        assert expected is None, f"unexpected error for good input: {err}"
        assert "\n" not in str(err)
        return
    event("accepted")
    assert expected is not None, "bad input was accepted"
    keys, tracks, matrix = expected
    assert list(inter.track_ids) == tracks
    assert list(inter.row_users) == [k[0] for k in keys]
    if n_ids == 2:
        assert list(inter.row_times) == [k[1] for k in keys]
    np.testing.assert_array_equal(inter.matrix.toarray(), matrix)


# ----------------------------------------------------------------------------- track tables

GOOD_FEATURE = st.one_of(st.floats(-100, 100, allow_nan=False), st.integers(-5, 5))
BAD_FEATURE = st.sampled_from([None, "loud", "nan", "-inf"])


@st.composite
def track_tables(draw):
    """Clean rows (ids may repeat), then sometimes a missing id, a bad feature or a
    popularity outside 0..100."""
    n = draw(st.integers(0, 8))
    rows = [
        [draw(st.sampled_from(["a", "b", "c", SPOTIFY_ID])), draw(GOOD_FEATURE),
         draw(GOOD_FEATURE), draw(st.integers(0, 100))]
        for _ in range(n)
    ]  # fmt: skip
    for _ in range(draw(st.integers(0, 2)) if n else 0):
        r, c = draw(st.integers(0, n - 1)), draw(st.integers(0, 3))
        if c == 0:
            rows[r][0] = None
        elif c < 3:
            rows[r][c] = draw(BAD_FEATURE)
        else:
            rows[r][3] = draw(st.sampled_from([None, 101, -3]))
    return rows, draw(st.booleans())


def _finite(v: object) -> bool:
    try:
        return v is not None and math.isfinite(float(v))
    except ValueError:
        return False


@SETTINGS
@given(table=track_tables())
def test_track_tables_are_right_or_a_clean_error(folder: Path, table) -> None:
    rows, drop = table
    path = folder / "tracks.csv"
    _write_rows(path, ["track_id", "f1", "f2", "popularity"], rows)
    complete = [all(_finite(v) for v in r[1:]) for r in rows]
    out_of_range = any(_finite(r[3]) and not 0 <= float(r[3]) <= 100 for r in rows)
    if not rows or any(r[0] is None for r in rows) or out_of_range:
        should_fail = True
    elif drop:
        should_fail = not any(complete)
    else:
        should_fail = not all(complete)
    try:
        table_ = load_track_table(
            path, "track_id", ("f1", "f2"), "popularity", drop_incomplete=drop
        )
    except DataError as err:
        event("refused")
        assert should_fail, f"unexpected error for good input: {err}"
        assert str(path) in str(err) and "\n" not in str(err)
        return
    event("accepted")
    assert not should_fail, "bad input was accepted"
    first: dict[str, list[object]] = {}
    for row, ok in zip(rows, complete, strict=True):
        if ok:
            first.setdefault(row[0], row)
    assert list(table_.track_ids) == list(first)
    want = np.array([[float(v) for v in r[1:3]] for r in first.values()])
    np.testing.assert_allclose(table_.features, want)
    np.testing.assert_allclose(table_.popularity, [float(r[3]) for r in first.values()])


# ----------------------------------------------------------------------------- raw garbage

RAW_PIECES = st.sampled_from(
    [b"user_id", b"track_id", b"plays", b"week", b",", b";", b"\t", b"\n", b"\r\n", b'"', b"1",
     b"-2", b"3.5", b"nan", b"inf", b"x", b"\xe9", b"\xef\xbb\xbf", b"\x00", b" ", b"Unnamed: 0",
     SPOTIFY_ID.encode()]
)  # fmt: skip


@SETTINGS
@given(
    raw=st.lists(RAW_PIECES, max_size=40).map(b"".join), suffix=st.sampled_from([".csv", ".tsv"])
)
def test_garbage_bytes_never_crash_the_loaders(folder: Path, raw: bytes, suffix: str) -> None:
    path = folder / f"garbage{suffix}"
    path.write_bytes(raw)
    for fmt in ("auto", "wide", "long"):
        try:
            inter = load_interactions(DataConfig(interactions=str(path), format=fmt))
        except DataError as err:
            event("refused")
            assert "\n" not in str(err)
        else:
            event("accepted")
            data = inter.matrix.data
            assert np.isfinite(data).all() and (data >= 0).all()
            assert inter.matrix.shape == (len(inter.row_users), len(inter.track_ids))
            assert len(set(inter.track_ids)) == len(inter.track_ids)
    with contextlib.suppress(DataError):
        load_track_table(path, "track_id", ("plays",), drop_incomplete=True)
    try:
        frame = read_table(path, "table")
    except DataError:
        pass
    else:
        assert isinstance(frame, pd.DataFrame)


# ----------------------------------------------------------------------------- configs

YAML_PIECES = st.sampled_from(
    ["seed", "data", "model", "train", "discover", "paths", "epochs", "lr", "hidden", "kl",
     "cycles", "temperature", "dropout", "bogus", ":", " ", "  ", "\n", "- ", "[", "]", "{", "}",
     ",", "1", "-1", "0", "0.5", "1e400", ".nan", "null", "true", "'", '"', "&a", "*a", "!!str",
     "!!python/name:os.system", "#", "\t", "é", "%YAML 1.1\n---\n"]
)  # fmt: skip


YAML_LINES = st.builds(
    "{}:\n  {}: {}\n".format,
    st.sampled_from(["model", "train", "discover", "bogus"]),
    st.sampled_from(["epochs", "lr", "latent", "dropout", "temperature", "hidden", "typo"]),
    st.sampled_from(["1", "0", "-1", "0.5", "2", "[8, 4]", "[]", "x", ".nan", "null"]),
)
YAML_TEXT = st.one_of(
    st.lists(YAML_PIECES, max_size=30).map("".join),
    st.lists(st.one_of(YAML_LINES, YAML_LINES, YAML_PIECES), max_size=4).map("".join),
)


@SETTINGS
@given(text=YAML_TEXT)
def test_random_yaml_gives_a_config_or_a_config_error(folder: Path, text: str) -> None:
    path = folder / "c.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        cfg = load_config(path)
    except ConfigError as err:
        event("refused")
        assert str(path) in str(err)
    else:
        event("accepted")
        assert isinstance(cfg, Config)


SECTION_KEYS = {
    "model": ["hidden", "latent", "dropout", "activation"],
    "train": ["epochs", "lr", "batch_size", "kl", "positive_weight"],
    "discover": ["temperature", "gems_lambda", "top_n"],
}
VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 300), st.floats(allow_nan=True),
    st.text(max_size=5), st.lists(st.integers(-2, 64), max_size=3),
    st.dictionaries(st.sampled_from(["cycles", "ratio", "x"]), st.integers(-1, 3), max_size=2),
)  # fmt: skip


@SETTINGS
@given(
    sets=st.lists(
        st.sampled_from(list(SECTION_KEYS)).flatmap(
            lambda s: st.tuples(st.just(s), st.sampled_from(SECTION_KEYS[s]), VALUES)
        ),
        max_size=4,
    )
)
def test_random_values_are_validated(folder: Path, sets) -> None:
    import yaml

    raw: dict = {}
    for section, key, value in sets:
        raw.setdefault(section, {})[key] = value
    path = folder / "v.yaml"
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    try:
        cfg = load_config(path)
    except ConfigError:
        event("refused")
        return
    event("accepted")
    # Accepted values obey the documented ranges.
    assert cfg.train.epochs > 0 and cfg.train.lr > 0 and math.isfinite(cfg.train.lr)
    assert 0 <= cfg.model.dropout < 1 and cfg.discover.temperature > 0
    assert all(w > 0 for w in cfg.model.hidden) and cfg.discover.gems_lambda >= 0


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def checkpoint_bytes(folder: Path) -> bytes:
    torch.manual_seed(0)
    arch = VAEArch(6, 2, (4,), 2)
    path = folder / "tiny.pth"
    save_checkpoint(
        path, HybridVAE(arch), config={"seed": 1}, epoch=1, step=3,
        track_ids=np.array([f"t{i}" for i in range(6)]),
        scaler=FeatureScaler(("a", "b"), np.zeros(2), np.ones(2)),
        track_features=np.zeros((6, 2)),
    )  # fmt: skip
    return path.read_bytes()


@SETTINGS
@given(data=st.data())
def test_damaged_checkpoints_load_or_raise_checkpoint_error(
    folder: Path, checkpoint_bytes: bytes, data
) -> None:
    raw = bytearray(checkpoint_bytes)
    how = data.draw(st.sampled_from(["truncate", "flip", "splice"]))
    if how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            i = data.draw(st.integers(0, len(raw) - 1))
            raw[i] ^= data.draw(st.integers(1, 255))
    else:
        i = data.draw(st.integers(0, len(raw)))
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=64))
    path = folder / "damaged.pth"
    path.write_bytes(bytes(raw))
    try:
        ck = load_checkpoint(path)
    except CheckpointError as err:
        event("refused")
        assert str(path) in str(err) and "\n" not in str(err)
    else:
        event("accepted")
        assert ck.arch.n_tracks == len(ck.track_ids)
        assert all(torch.isfinite(t).all() for t in ck.model.state_dict().values())


def test_deepvibe_error_is_the_only_clean_failure() -> None:
    # The properties above rely on every loader error deriving from DeepVibeError.
    assert issubclass(DataError, DeepVibeError) and issubclass(ConfigError, DeepVibeError)
    assert issubclass(CheckpointError, DeepVibeError)
