"""Bad input through the CLI: one line on stderr naming the file and the row, column or key,
saying what to do; exit status 1; no traceback. Safe repairs warn with a count and go on."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner, Result

from deepvibe.cli import app
from deepvibe.errors import DataError
from deepvibe.training.checkpoint import load_checkpoint

runner = CliRunner()


@pytest.fixture(scope="module")
def frames(toy_dir: Path) -> dict[str, pd.DataFrame]:
    data = toy_dir / "data"
    return {
        "matrix": pd.read_csv(data / "full_training_matrix.csv"),
        "features": pd.read_csv(data / "top_10k_features.csv"),
    }


@pytest.fixture
def world(toy_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A tmp working folder with a fast config (train.yaml) over the session's toy data."""
    data = toy_dir / "data"
    (tmp_path / "train.yaml").write_text(
        f"data:\n  interactions: {data / 'full_training_matrix.csv'}\n"
        f"  features: {data / 'top_10k_features.csv'}\n"
        f"  database: {data / 'global_tracks.csv'}\n  max_tracks: 1000\n"
        "model:\n  hidden: [16]\n  latent: 4\ntrain:\n  epochs: 1\n  batch_size: 128\n"
    )
    monkeypatch.chdir(tmp_path)
    return tmp_path


def train(*extra: str) -> Result:
    return runner.invoke(app, ["train", "-c", "train.yaml", *extra])


def assert_error(res: Result, *parts: str) -> str:
    """Exit 1, exactly one ``error:`` line (the last one on stderr), holding every part."""
    assert res.exit_code == 1, res.output
    assert "Traceback" not in res.output
    lines = res.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], res.stderr
    for part in parts:
        assert part in errors[0], errors[0]
    return errors[0]


def write(path: Path, content: str | bytes | pd.DataFrame) -> str:
    if isinstance(content, pd.DataFrame):
        content.to_csv(path, index=False)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return str(path)


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("train:\n  epochs: [1,\n", ["YAML syntax error at line 3"]),
        ("train:\n  epoch: 3\n", ["train.epoch: unknown key", "configs/default.yaml"]),
        ("train:\n  epochs: many\n", ["train.epochs:", "integer", "'many'"]),
        ("train:\n  epochs: 0\n", ["train.epochs: input should be greater than 0"]),
        ("discover:\n  temperature: 0\n", ["discover.temperature: input should be greater than 0"]),
        ("discover:\n  temperature: -1.5\n", ["discover.temperature"]),
        ("model:\n  dropout: 1.0\n", ["model.dropout: input should be less than 1"]),
        ("model:\n  dropout: -0.1\n", ["model.dropout: input should be greater than or equal"]),
        ("train:\n  audio_weight: -1\n", ["train.audio_weight: input should be greater than or"]),
        ("train:\n  positive_weight: 0\n", ["train.positive_weight"]),
        ("discover:\n  gems_lambda: -0.2\n", ["discover.gems_lambda"]),
        ("train:\n  lr: .inf\n", ["train.lr"]),
        ("model:\n  hidden: [64, 0]\n", ["model.hidden", "positive"]),
        ("data:\n  feature_columns: [energy, energy]\n", ["data.feature_columns", "energy"]),
        ("- 1\n- 2\n", ["expected a mapping of sections"]),
        ("train: 5\n", ["train: input should be a valid dictionary"]),
        ("seed: !!python/object/apply:os.system ['touch pwned']\n", ["line 1", "python/object"]),
        ("   \n\n", ["config file is empty", "leave out --config"]),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_config_errors_name_the_file_and_key(world: Path, text: str, expected: list[str]) -> None:
    bad = write(world / "bad.yaml", text)
    assert_error(runner.invoke(app, ["train", "-c", bad]), bad, *expected)
    assert not (world / "pwned").exists()


def test_config_path_problems(world: Path) -> None:
    assert_error(runner.invoke(app, ["train", "-c", "nope.yaml"]), "nope.yaml", "not found")
    (world / "folder.yaml").mkdir()
    assert_error(runner.invoke(app, ["train", "-c", "folder.yaml"]), "folder.yaml", "directory")
    write(world / "latin.yaml", b"seed: 1\n# caf\xe9\n")
    assert_error(
        runner.invoke(app, ["train", "-c", "latin.yaml"]), "latin.yaml", "not UTF-8", "line 2"
    )


def test_unreadable_config(world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # chmod 000 does not stop root, so the refusal is simulated where the file is read.
    original = Path.read_text

    def refuse(self: Path, *args, **kwargs):
        if self.name == "train.yaml":
            raise PermissionError(13, "Permission denied", str(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse)
    assert_error(train(), "train.yaml", "Permission denied", "permissions")


def test_bad_overrides(world: Path) -> None:
    assert_error(train("--set", "train"), "--set 'train'", "section.key=value")
    assert_error(train("--set", "train.epochs=-3"), "train.epochs")
    assert_error(train("--set", "seed=1", "--set", "seed.x=1"), "seed is not a section")


# ----------------------------------------------------------------------------- interactions


def test_interactions_path_problems(world: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert_error(train("--set", "data.interactions=none.csv"), "none.csv", "not found")
    assert_error(train("--set", f"data.interactions={world}"), str(world), "directory")
    empty = write(world / "empty.csv", "")
    assert_error(train("--set", f"data.interactions={empty}"), empty, "is empty")
    only_header = write(world / "header.csv", "user_id,week,a,b\n")
    assert_error(train("--set", f"data.interactions={only_header}"), only_header, "no rows")
    # chmod 000 does not stop root, so the refusal is simulated for that one file.
    access = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: access(p, mode) and "full_training" not in str(p)
    )
    assert_error(train(), "full_training_matrix.csv", "not readable", "permissions")


def _cell(frame: pd.DataFrame, row: int, col: int, value: object) -> pd.DataFrame:
    out = frame.astype({frame.columns[col]: object})
    out.iat[row, col] = value
    return out


WIDE_CASES: dict[str, tuple[Callable[[pd.DataFrame], str | bytes | pd.DataFrame], list[str]]] = {
    "semicolon": (lambda m: m.head(5).to_csv(index=False, sep=";"), ["semicolon-separated"]),
    "tab": (lambda m: m.head(5).to_csv(index=False, sep="\t"), ["tab-separated"]),
    "latin1": (
        lambda m: m.head(30).to_csv(index=False).encode() + b"caf\xe9,1" + b",0" * 240 + b"\n",
        ["not UTF-8 text", "line 32", "0xe9", "re-save it as UTF-8"],
    ),
    "utf16": (lambda m: m.head(5).to_csv(index=False).encode("utf-16"), ["not UTF-8 text"]),
    "binary": (lambda m: bytes(range(256)) * 4, ["not"]),
    "no-user-column": (
        lambda m: m.rename(columns={"user_id": "listener"}),
        ["no user column 'user_id'", "data.user_column"],
    ),
    "duplicated-column": (
        lambda m: m.rename(columns={m.columns[3]: m.columns[2]}),
        ["duplicated column(s)", "rename or remove"],
    ),
    "unnamed-column": (
        lambda m: m.to_csv(index=True),
        ["column 1 of the interactions header has no name", "remove index columns"],
    ),
    "non-numeric": (lambda m: _cell(m, 3, 5, "lots"), ["row 5", "is not a number ('lots')"]),
    "negative": (lambda m: _cell(m, 6, 7, -2), ["row 8", "is negative", "plays must be >= 0"]),
    "empty-cell": (lambda m: _cell(m, 2, 4, None), ["row 4", "NaN or infinite", "use 0"]),
    "infinite": (lambda m: _cell(m, 9, 4, float("inf")), ["row 11", "NaN or infinite"]),
    "ragged": (
        lambda m: m.head(3).to_csv(index=False) + "user_x,1" + ",0" * 300 + "\n",
        ["cannot parse interactions file", "line 5"],
    ),
    "no-user-id": (lambda m: _cell(m, 4, 0, None), ["column 'user_id' row 6 has no user id"]),
    "conflicting-duplicate": (
        lambda m: pd.concat([m, _cell(m.iloc[[0]], 0, 5, 99)]),
        ["rows 2 and 802", "user_id 'user_1' and week 1", "different plays", "merge them"],
    ),
}


@pytest.mark.parametrize("case", list(WIDE_CASES))
def test_wide_interaction_errors(world: Path, frames, case: str) -> None:
    make, expected = WIDE_CASES[case]
    bad = write(world / f"{case}.csv", make(frames["matrix"]))
    err = assert_error(train("--set", f"data.interactions={bad}"), bad, *expected)
    if case in {"non-numeric", "negative", "empty-cell", "infinite"}:
        assert "column '" in err  # the track column is named


def test_long_interaction_errors(world: Path) -> None:
    base = "user_id,track_id,plays\n" + "".join(
        f"u{i % 7},t{i % 11},{i % 4 + 1}\n" for i in range(60)
    )
    long_sets = ["--set", "data.format=long", "--set", "data.features=null"]
    cases = {
        "plays-text": (base + "u1,t1,many\n", ["column 'plays' row 62", "not a number"]),
        "plays-negative": (base + "u1,t1,-4\n", ["column 'plays' row 62", "negative"]),
        "no-track": (base + "u1,,3\n", ["column 'track_id' row 62 is empty"]),
        "no-track-column": (base.replace("track_id", "song"), ["no column 'track_id'"]),
    }
    for name, (text, expected) in cases.items():
        bad = write(world / f"{name}.csv", text)
        assert_error(train("--set", f"data.interactions={bad}", *long_sets), bad, *expected)


def test_corrupt_parquet(world: Path) -> None:
    bad = write(world / "matrix.parquet", b"PAR1 this is not parquet")
    assert_error(train("--set", f"data.interactions={bad}"), bad, "Parquet")


# ----------------------------------------------------------------------------- track features


FEATURE_CASES: dict[str, tuple[Callable[[pd.DataFrame], str | bytes | pd.DataFrame], list[str]]] = {
    "missing-column": (
        lambda f: f.drop(columns=["energy"]),
        ["no column 'energy'", "data.feature_columns"],
    ),
    "missing-id-column": (lambda f: f.drop(columns=["track_id"]), ["no column 'track_id'"]),
    "duplicated-column": (
        lambda f: f.rename(columns={"valence": "energy"}),
        ["duplicated column(s) 'energy'"],
    ),
    "text-column": (
        lambda f: f.assign(tempo="fast"),
        ["240 of 240", "column 'tempo' row 2 is not a number ('fast')"],
    ),
    "popularity-range": (
        lambda f: _cell(f, 5, f.columns.get_loc("popularity"), 140),
        ["column 'popularity' row 7 is 140", "0..100"],
    ),
    "blank-id": (lambda f: _cell(f, 1, 0, None), ["column 'track_id' row 3 has no track id"]),
    "no-overlap": (
        lambda f: f.assign(track_id="zz" + f["track_id"]),
        ["full_training_matrix.csv", "do not overlap", "data.feature_track_column"],
    ),
}


@pytest.mark.parametrize("case", list(FEATURE_CASES))
def test_feature_table_errors(world: Path, frames, case: str) -> None:
    make, expected = FEATURE_CASES[case]
    bad = write(world / f"{case}.csv", make(frames["features"]))
    assert_error(train("--set", f"data.features={bad}"), bad, *expected)


def test_features_file_missing(world: Path) -> None:
    assert_error(
        train("--set", "data.features=feats.csv"), "feats.csv", "track features", "not found"
    )


# ----------------------------------------------------------------------------- safe repairs


def _warnings(res: Result) -> str:
    assert res.exit_code == 0, res.output
    return "\n".join(line for line in res.stderr.splitlines() if line.startswith("WARNING"))


def test_duplicate_rows_are_dropped_with_a_count(world: Path, frames) -> None:
    m = frames["matrix"]
    path = write(world / "dup.csv", pd.concat([m, m.iloc[:7]]))
    assert "dropped 7 duplicate rows" in _warnings(train("--set", f"data.interactions={path}"))


def test_long_duplicates_are_summed_with_a_count(world: Path) -> None:
    rows = "".join(f"u{i % 20},t{i % 13},1\n" for i in range(400))
    path = write(world / "long.csv", "user_id,track_id,plays\n" + rows + "u1,t1,1\nu1,t1,1\n")
    res = train(
        "--set", f"data.interactions={path}", "--set", "data.features=null",
        "--set", "train.val_fraction=0.3",
    )  # fmt: skip
    assert "duplicate rows were merged by summing plays" in _warnings(res)


def test_a_few_tracks_without_features_are_left_out_with_a_count(world: Path, frames) -> None:
    f = frames["features"]
    path = write(world / "feats.csv", f.drop(index=[0, 1, 2]))
    warned = _warnings(train("--set", f"data.features={path}"))
    assert "3 of 240 played tracks" in warned and "no audio features" in warned


def test_a_few_incomplete_feature_rows_are_skipped_with_a_count(world: Path, frames) -> None:
    f = _cell(_cell(frames["features"], 3, 2, None), 8, 4, "loud")
    path = write(world / "feats.csv", f)
    warned = _warnings(train("--set", f"data.features={path}"))
    assert "skipped 2 of 240 rows" in warned and "row 5" in warned


def test_duplicate_feature_ids_keep_the_first(world: Path, frames) -> None:
    f = frames["features"]
    path = write(world / "feats.csv", pd.concat([f, f.iloc[:4]]))
    assert "4 duplicate track ids" in _warnings(train("--set", f"data.features={path}"))


def test_empty_histories_are_skipped_with_a_count(world: Path, frames) -> None:
    m = frames["matrix"].copy()
    m.iloc[[0, 5], 2:] = 0
    path = write(world / "m.csv", m)
    assert "2 of 800 interaction rows have no plays" in _warnings(
        train("--set", f"data.interactions={path}")
    )


def test_too_few_users_to_validate_trains_and_keeps_the_last_epoch(world: Path, frames) -> None:
    """Issue 14: a data set too small to validate trains train.epochs and keeps the last epoch,
    with a warning that says why, instead of exiting."""
    path = write(world / "m.csv", frames["matrix"].head(6))
    res = train("--set", f"data.interactions={path}", "--set", "train.epochs=2", "--no-plots")
    assert res.exit_code == 0, res.output
    assert "keeps the last epoch" in res.stderr and "add users" in res.stderr
    assert "too few users to validate: kept the last epoch (2)" in res.stdout
    assert load_checkpoint(world / "models" / "hybrid_deepvibe_best.pth").epoch == 2


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def trained(toy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch run of the world config; returns its last.pth."""
    root = tmp_path_factory.mktemp("trained")
    data = toy_dir / "data"
    (root / "train.yaml").write_text(
        f"data:\n  interactions: {data / 'full_training_matrix.csv'}\n"
        f"  features: {data / 'top_10k_features.csv'}\n  max_tracks: 1000\n"
        "model:\n  hidden: [16]\n  latent: 4\ntrain:\n  epochs: 1\n  batch_size: 128\n"
        f"paths:\n  models_dir: {root / 'models'}\n  logs_dir: {root / 'logs'}\n"
    )
    res = runner.invoke(app, ["train", "-c", str(root / "train.yaml")])
    assert res.exit_code == 0, res.output
    return root / "models" / "snapshots" / "last.pth"


def test_checkpoint_file_problems(world: Path, trained: Path) -> None:
    assert_error(train("--resume", "nope.pth"), "nope.pth", "checkpoint not found")
    assert_error(train("--resume", str(world)), str(world), "directory")
    empty = write(world / "empty.pth", b"")
    assert_error(train("--resume", empty), empty, "checkpoint file is empty")
    good = trained.read_bytes()
    cut = write(world / "cut.pth", good[: len(good) // 3])
    assert_error(train("--resume", cut), cut, "not a readable checkpoint", "earlier snapshot")
    text = write(world / "table.pth", "user_id,week\nu1,1\n")
    assert_error(train("--resume", text), text, "checkpoint")
    other = world / "other.pth"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, other)
    assert_error(train("--resume", str(other)), str(other), "not a deepvibe checkpoint")
    raw = torch.load(trained, weights_only=True)
    old = world / "old.pth"
    torch.save({**raw, "version": 0}, old)
    assert_error(train("--resume", str(old)), str(old), "format version 0", "retrain")


def test_checkpoint_for_other_config_or_data(world: Path, frames, trained: Path) -> None:
    ck = str(trained)
    assert_error(train("--resume", ck, "--set", "seed=3"), ck, "seed 42", "resume with seed 42")
    assert_error(train("--resume", ck, "--set", "model.latent=8"), ck, "network", "latent 4")
    assert_error(train("--resume", ck, "--set", "data.max_tracks=100"), ck, "network")
    f = frames["features"].copy()
    f["tempo"] = f["tempo"].to_numpy()[::-1]  # same statistics, other tracks' values
    feats = write(world / "feats.csv", f)
    assert_error(train("--resume", ck, "--set", f"data.features={feats}"), ck, "audio features")
    # Same tracks, but two of them trade their plays: the catalogue order changes.
    m = frames["matrix"]
    a, b = m.columns[2], m.columns[3]
    assert m[a].sum() != m[b].sum()
    swapped = write(world / "m.csv", m.rename(columns={a: b, b: a}))
    assert_error(train("--resume", ck, "--set", f"data.interactions={swapped}"), ck, "catalogue")


# ----------------------------------------------------------------------------- output folders


def test_unwritable_output_folders(world: Path) -> None:
    (world / "blocker").write_text("a file where a folder should be")
    assert_error(
        train("--set", "paths.models_dir=blocker/models"), "blocker/models", "paths.models_dir"
    )
    assert_error(train("--set", "paths.logs_dir=blocker/logs"), "blocker/logs", "paths.logs_dir")


def test_debug_flag_shows_the_exception(world: Path) -> None:
    res = runner.invoke(
        app, ["--debug", "train", "-c", "train.yaml", "--set", "data.interactions=x.csv"]
    )
    assert res.exit_code == 1
    assert isinstance(res.exception, DataError)  # re-raised: Python prints its traceback


# ----------------------------------------------------------------------------- discover


@pytest.fixture(scope="module")
def model_root(toy_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A one-epoch model trained from ``root/disc.yaml`` (relative paths, so tests chdir)."""
    root = tmp_path_factory.mktemp("discover")
    (root / "data").symlink_to(toy_dir / "data")
    (root / "disc.yaml").write_text(
        "data:\n  max_tracks: 1000\nmodel:\n  hidden: [16]\n  latent: 4\n"
        "train:\n  epochs: 1\n  batch_size: 128\ndiscover:\n  top_n: 50\n"
    )
    cwd = Path.cwd()
    os.chdir(root)
    try:
        res = runner.invoke(app, ["train", "-c", "disc.yaml"])
    finally:
        os.chdir(cwd)
    assert res.exit_code == 0, res.output
    return root


@pytest.fixture
def in_model_root(model_root: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(model_root)
    return model_root


def discover(*args: str) -> Result:
    return runner.invoke(app, ["discover", *args, "--no-progress"])


def test_discover_unknown_user_ids(in_model_root: Path) -> None:
    assert_error(discover("nobody"), "user 'nobody' not found in data/full_training_matrix.csv")
    outside = in_model_root.parent / "escaped"
    assert_error(discover("../escaped"), "user '../escaped' not found")
    assert not outside.exists()


HISTORY_CASES = {
    "missing": (None, ["history file not found"]),
    "empty": ("", ["history file is empty"]),
    "columns": ("listener,song\na,b\n", ["needs columns user_id and track_id", "listener, song"]),
    "negative": ("user_id,track_id,plays\nx,{t},-1\n", ["column 'plays' row 2 is negative"]),
    "text-plays": ("user_id,track_id,plays\nx,{t},lots\n", ["row 2 is not a number ('lots')"]),
    "no-user": ("user_id,track_id\n,{t}\n", ["column 'user_id' row 2 is empty"]),
    "latin1": (b"user_id,track_id\nJos\xe9,{t}\n", ["not UTF-8 text (line 2, byte 0xe9)"]),
    "no-catalogue-track": (
        "user_id,track_id\nghost,NOTINANYTABLE000000000\n",
        ["user 'ghost' has no track in the model's catalogue"],
    ),
}


@pytest.mark.parametrize("case", list(HISTORY_CASES))
def test_discover_history_errors(in_model_root: Path, frames, case: str) -> None:
    content, expected = HISTORY_CASES[case]
    path = in_model_root / f"h_{case}.csv"
    track = frames["matrix"].columns[5]
    if isinstance(content, bytes):
        path.write_bytes(content.replace(b"{t}", track.encode()))
    elif content is not None:
        path.write_text(content.replace("{t}", track))
    assert_error(discover("--history", str(path)), str(path), *expected)
    assert not list(in_model_root.glob("recommendations/ghost*"))


def test_discover_unwritable_report_folder(in_model_root: Path) -> None:
    (in_model_root / "blocker").write_text("a file")
    assert_error(
        discover("user_1", "--set", "paths.recommendations_dir=blocker/recs"),
        "blocker is a file, not a folder",
    )


def _database(root: Path, name: str, change: Callable[[pd.DataFrame], pd.DataFrame]) -> str:
    db = pd.read_csv(root / "data" / "global_tracks.csv")
    return write(root / name, change(db))


def test_discover_database_problems(in_model_root: Path) -> None:
    def db(*args: str) -> Result:
        return discover("user_1", "--source", "db", *args)

    assert_error(db("--set", "data.database=none.csv"), "none.csv", "track database", "not found")
    assert_error(db("--set", "data.database=data"), "data", "directory")
    no_tempo = _database(in_model_root, "db_no_tempo.csv", lambda f: f.drop(columns=["tempo"]))
    assert_error(db("--set", f"data.database={no_tempo}"), no_tempo, "no column 'tempo'")
    all_nan = _database(in_model_root, "db_nan.csv", lambda f: f.assign(energy=float("nan")))
    assert_error(
        db("--set", f"data.database={all_nan}"), all_nan, "3000 of 3000", "column 'energy' row 2"
    )
    no_pop = _database(in_model_root, "db_nopop.csv", lambda f: f.drop(columns=["popularity"]))
    assert_error(
        db("--gems", "--set", f"data.database={no_pop}"), no_pop, "needs a popularity column"
    )


def test_discover_database_with_a_few_nan_rows_is_repaired(in_model_root: Path) -> None:
    def damage(f: pd.DataFrame) -> pd.DataFrame:
        f.loc[[3, 9, 10], "valence"] = float("nan")
        return f

    path = _database(in_model_root, "db_few.csv", damage)
    res = discover("user_2", "--source", "db", "--set", f"data.database={path}")
    assert res.exit_code == 0, res.output
    assert "skipped 3 of 3000 rows" in res.stderr and "column 'valence' row 5" in res.stderr


def test_discover_checkpoint_problems(in_model_root: Path, tmp_path: Path) -> None:
    assert_error(discover("user_1", "--checkpoint", "none.pth"), "none.pth", "not found")
    text = write(tmp_path / "t.pth", "not a model")
    assert_error(discover("user_1", "--checkpoint", text), text, "checkpoint")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    evil = tmp_path / "evil.pth"
    torch.save({"format": "deepvibe-checkpoint", "x": Evil()}, evil)
    assert_error(discover("user_1", "--checkpoint", str(evil)), str(evil), "refused to load")
    assert not marker.exists()
    raw = torch.load(in_model_root / "models" / "hybrid_deepvibe_best.pth", weights_only=True)
    stale = tmp_path / "stale.pth"
    torch.save({**raw, "config": {**raw["config"], "train": {"old_key": 1}}}, stale)
    assert_error(discover("user_1", "--checkpoint", str(stale)), "stored config", "train.old_key")


def test_discover_users_outside_the_checkpoint_catalogue(in_model_root: Path, frames) -> None:
    m = frames["matrix"]
    other = m.rename(columns={c: "zz" + c for c in m.columns[2:]})
    path = write(in_model_root / "other_matrix.csv", other)
    assert_error(
        discover("user_1", "--set", f"data.interactions={path}"),
        path,
        "has no track in the model's catalogue",
    )


def test_discover_user_ids_and_names_from_files_are_made_safe(in_model_root: Path, frames) -> None:
    m = frames["matrix"].copy()
    m.loc[m["user_id"] == "user_1", "user_id"] = "../../escaped"
    matrix = write(in_model_root / "m_trav.csv", m)

    def poison(f: pd.DataFrame) -> pd.DataFrame:
        f["track_name"] = '=HYPERLINK("http://evil.example","x")'
        f["artists"] = "@SUM(1+1)"
        return f

    db = _database(in_model_root, "db_poison.csv", poison)
    res = discover(
        "../../escaped", "--source", "db",
        "--set", f"data.interactions={matrix}", "--set", f"data.database={db}",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    recs = (in_model_root / "recommendations").resolve()
    reports = [p for p in recs.rglob("*_standard.csv") if "escaped" in p.name]
    assert len(reports) == 1 and recs in reports[0].parents
    assert not (in_model_root.parent / "escaped").exists()
    import csv

    with open(reports[0], encoding="utf-8", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(r["track_name"].startswith("'=HYPERLINK") for r in rows)
    assert all(r["artists"] == "'@SUM(1+1)" for r in rows)


def test_discover_option_errors(in_model_root: Path) -> None:
    res = discover("user_1", "--temperature", "0")
    assert res.exit_code == 2 and "--temperature must be > 0" in res.stderr
    assert_error(discover("user_1", "--set", "discover.temperature=-1"), "discover.temperature")


# ----------------------------------------------------------------------------- evaluate


def evaluate(*args: str) -> Result:
    return runner.invoke(app, ["evaluate", "--no-progress", *args])


def test_evaluate_bad_checkpoint_and_options(in_model_root: Path, tmp_path: Path) -> None:
    text = write(tmp_path / "t.pth", "not a model")
    assert_error(evaluate("--checkpoint", text, "--baselines", "none"), text, "checkpoint")
    assert_error(evaluate("--baselines", "toppop,foo"), "unknown baseline 'foo'")
    assert_error(evaluate("--test-fraction", "1.5"), "--test-fraction")
    assert_error(evaluate("--cold-fraction", "-1"), "--cold-fraction")
    assert_error(evaluate("--ease-lambdas", "a,b"), "--ease-lambdas")
    assert_error(evaluate("-c", "disc.yaml", "--set", "train.epochs=0"), "train.epochs")


def test_evaluate_unwritable_report(in_model_root: Path) -> None:
    (in_model_root / "blocker").write_text("a file")
    best = str(in_model_root / "models" / "hybrid_deepvibe_best.pth")
    res = evaluate("--checkpoint", best, "--baselines", "toppop", "--json", "blocker/r.json")
    assert_error(res, "blocker is a file, not a folder")


def test_evaluate_checkpoint_for_changed_data(toy_dir: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    for name in ("full_training_matrix.csv", "top_10k_features.csv"):
        (tmp_path / "data" / name).write_bytes((toy_dir / "data" / name).read_bytes())
    (tmp_path / "c.yaml").write_text(
        "data:\n  max_tracks: 1000\n  database: null\nmodel:\n  hidden: [16]\n  latent: 4\n"
        "train:\n  epochs: 1\n  batch_size: 128\n"
    )
    assert runner.invoke(app, ["train", "-c", "c.yaml"]).exit_code == 0
    features = tmp_path / "data" / "top_10k_features.csv"
    f = pd.read_csv(features)
    f.iloc[:-20].to_csv(features, index=False)  # 20 catalogue tracks lose their features
    res = evaluate("--checkpoint", "models/hybrid_deepvibe_best.pth", "--baselines", "none")
    assert_error(res, "hybrid_deepvibe_best.pth", "catalogue", "differs")


# ----------------------------------------------------------------------------- prepare


def prepare(*args: str) -> Result:
    return runner.invoke(app, ["prepare", *args])


def test_prepare_input_and_output_errors(world: Path) -> None:
    long = write(
        world / "long.csv",
        "user_id,track_id,plays\n" + "".join(f"u{i % 5},t{i % 7},1\n" for i in range(40)),
    )
    assert_error(prepare("-i", "none.csv", "--out", "p"), "none.csv", "not found")
    (world / "blocker").write_text("a file")
    assert_error(prepare("-i", long, "--out", "blocker/p"), "blocker is a file, not a folder")
    odd = write(world / "odd.csv", "listener,song\na,b\n")
    assert_error(prepare("-i", odd, "--out", "p"), odd, "user id", "--user-col")
    assert_error(prepare("-i", long, "-t", odd, "--out", "p"), odd, "track id", "--id-col")
    bad_zip = write(world / "export.zip", b"PK\x03\x04 not really a zip")
    assert_error(prepare("-i", bad_zip, "--out", "p"), bad_zip, "zip")
    latin = write(world / "latin.csv", b"user_id,track_id\nJos\xe9,t1\n")
    assert_error(prepare("-i", latin, "--out", "p"), latin, "UTF-8")
    assert not (world / "p").exists() or not any((world / "p").iterdir())
