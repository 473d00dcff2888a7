"""discover for many users: blocks, skipped users, account-data histories, the long table, and
reports identical to discovering each user alone."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import small_config
from deepvibe.cli import app
from deepvibe.discovery import discoverer as dmod
from deepvibe.discovery import hybrid_scan
from deepvibe.discovery import report as rep
from deepvibe.discovery import users as du
from deepvibe.discovery.discoverer import Discoverer
from deepvibe.fileio import AtomicBatch
from deepvibe.training.train import train


@pytest.fixture(scope="module")
def model(toy_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("batch")
    cfg = small_config(root, toy_dir / "data", **{"train.epochs": 6})
    train(cfg, progress=False)
    return cfg


def _discover(model, *args: str):
    ck = str(model.best_checkpoint_path)
    return CliRunner().invoke(app, ["discover", *args, "--checkpoint", ck, "--no-progress"])


def _reports(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.csv"))}


# ----------------------------------------------------------------------------- batch == alone


@pytest.mark.parametrize("source", ["db", "db-pruned", "dna", "catalogue"])
def test_batch_reports_are_identical_to_per_user_reports(
    model, tmp_path, monkeypatch, source
) -> None:
    if source == "db-pruned":  # the pruned ranking of a big database, on this small one
        monkeypatch.setattr(hybrid_scan, "_MIN_SPACE", 0)
        monkeypatch.setattr(hybrid_scan, "_SAMPLE", 512)
        source = "db"
    users = [f"user_{i}" for i in (1, 5, 9, 30, 77, 150, 222, 399)]
    common = ["--source", source, "--top", "40"]
    res = _discover(model, *users, *common, "--set", f"paths.recommendations_dir={tmp_path / 'b'}",
                    "--set", "discover.user_block=3")  # fmt: skip
    assert res.exit_code == 0, res.output
    for u in users:
        alone = _discover(model, u, *common, "--set", f"paths.recommendations_dir={tmp_path / 'a'}")
        assert alone.exit_code == 0, alone.output
    batch, single = _reports(tmp_path / "b"), _reports(tmp_path / "a")
    assert len(batch) == 2 * len(users) and batch.keys() == single.keys()
    for name in batch:
        assert batch[name] == single[name], name  # same ids, same order, same numbers


def test_defect6_users_are_discovered_in_blocks(model, monkeypatch) -> None:
    finder = Discoverer.from_checkpoint(model.best_checkpoint_path, source="dna", progress=False)
    finder.settings = finder.settings.model_copy(update={"user_block": 64})
    inter = du.load_training_users(model.data)
    batch = du.align_users(inter, finder.track_ids)  # all 400 users
    seen_blocks: list[int] = []
    scan = dmod.scan

    def spy(db, scorer, k, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        seen_blocks.append(scorer.n_users)
        return scan(db, scorer, k, *args, **kwargs)

    monkeypatch.setattr(dmod, "scan", spy)
    blocks = list(finder.discover_blocks(batch, 20))
    assert seen_blocks == [64] * 6 + [16]  # one database pass per block of 64 users
    assert [len(b) for b in blocks] == seen_blocks
    assert all(len(b.table) == 20 * len(b) for b in blocks)
    first = finder.discover(batch.plays[:1], 20, "standard", batch.history[:1])[0]
    assert first.table.equals(blocks[0].discovery(0).table)


def test_long_table_output_matches_the_reports(model, tmp_path) -> None:
    out = tmp_path / "recs.parquet"
    users = ["user_2", "user_3", "user_4"]
    res = _discover(model, *users, "--top", "25", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert f"recommendations: {out} (3 users, 75 rows)" in res.output
    table = pd.read_parquet(out)
    assert list(table.columns[:4]) == ["user", "rank", "track_id", "score"]
    assert {"track_name", "artists", "popularity", "similarity"} <= set(table.columns)
    assert table["user"].tolist() == [u for u in users for _ in range(25)]
    res = _discover(model, *users, "--top", "25", "--set", f"paths.recommendations_dir={tmp_path}")
    for u in users:
        report = pd.read_csv(tmp_path / u / f"{u}_best_standard.csv")
        mine = table[table["user"] == u].reset_index(drop=True)
        assert mine["track_id"].tolist() == report["track_id"].tolist()
        assert np.array_equal(mine["rank"], report["rank"])
        assert np.allclose(mine["score"], report["score"])
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["recs.parquet"]
    assert _discover(model, "user_2", "--out", str(tmp_path / "x.csv")).exit_code == 2


# ----------------------------------------------------------------------------- defect 2


def test_defect2_user_without_catalogue_tracks_does_not_abort_the_batch(
    model, toy, tmp_path
) -> None:
    finder = Discoverer.from_checkpoint(model.best_checkpoint_path, progress=False)
    cat = list(finder.track_ids)
    outside = [t for t in toy.database["track_id"] if t not in set(cat)]
    rows = [("fan", t) for t in cat[:15]] + [("ghost", t) for t in outside[:5]]
    rows += [(f"stranger{i}", "NOTINANYTABLE000000000") for i in range(7)]
    rows += [("fan2", t) for t in cat[20:30]]
    pd.DataFrame(rows, columns=["user_id", "track_id"]).to_csv(tmp_path / "h.csv", index=False)
    out = tmp_path / "recs"
    # The Vibe DNA alone (--source dna) needs catalogue tracks; the hybrid places 'ghost' too
    # (tests/discovery/test_hybrid_discovery.py).
    res = _discover(model, "--all", "--history", str(tmp_path / "h.csv"), "--top", "10",
                    "--source", "dna", "--set", f"paths.recommendations_dir={out}")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in out.iterdir()) == ["fan", "fan2"]
    warnings = [line for line in res.stderr.splitlines() if "skipped" in line]
    assert len(warnings) == 1  # once, with the count, the first few users and the reason
    assert (
        "skipped 8 of 10 users" in warnings[0]
        and "no track in the model's catalogue" in (warnings[0])
    )
    assert "'ghost', 'stranger0', 'stranger1', 'stranger2', 'stranger3' ..." in warnings[0]


# ----------------------------------------------------------------------------- defect 1


def test_defect1_account_history_is_never_recommended_back(model, toy, tmp_path) -> None:
    """An account-data download (names, no ids) of tracks in the catalogue and tracks only in
    the database: none of them comes back, and the database-only ones are matched too."""
    finder = Discoverer.from_checkpoint(model.best_checkpoint_path, progress=False)
    db = toy.database.set_index("track_id")
    cat = [t for t in finder.track_ids if toy.track_group[t] == 1][:20]
    outside = [t for t in db.index if t not in set(finder.track_ids) and toy.track_group[t] == 1]
    played = cat + outside[:40]
    plays = [
        {"endTime": f"2024-03-01 10:{i % 60:02d}", "artistName": db.loc[t, "artists"],
         "trackName": db.loc[t, "track_name"], "msPlayed": 200_000}
        for i, t in enumerate(played)
    ]  # fmt: skip
    folder = tmp_path / "my_spotify_data"
    folder.mkdir()
    (folder / "StreamingHistory_music_0.json").write_text(json.dumps(plays))
    out = tmp_path / "recs"
    res = _discover(model, "--history", str(folder), "--top", "200",
                    "--set", f"paths.recommendations_dir={out}")  # fmt: skip
    assert res.exit_code == 0, res.output
    report = pd.read_csv(next(out.rglob("*_standard.csv")))
    assert len(report) == 200
    assert (report["track_id"].map(toy.track_group) == 1).mean() > 0.9  # the test can fail
    assert not set(report["track_id"]) & set(played)
    assert "40 played tracks are not in the model's catalogue" in res.output


# ----------------------------------------------------------------------------- defect 9


def test_defect9_catalogue_path_matches_ids_by_hash(model, monkeypatch) -> None:
    finder = Discoverer.from_checkpoint(model.best_checkpoint_path, source="catalogue")
    batch = du.align_users(du.load_training_users(model.data), finder.track_ids, ["user_1"])

    def quadratic(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("np.isin compares every pair of object ids")

    monkeypatch.setattr(np, "isin", quadratic)
    result = finder.discover(batch.plays, 30, "standard", batch.history)[0]
    assert len(result.table) == 30 and not set(result.table["track_id"]) & batch.history[0]


def test_report_writer_leaves_no_half_block(model, tmp_path, monkeypatch) -> None:
    finder = Discoverer.from_checkpoint(model.best_checkpoint_path, progress=False)
    batch = du.align_users(
        du.load_training_users(model.data), finder.track_ids, ["user_1", "user_2", "user_3"]
    )
    block = next(finder.discover_blocks(batch, 10))
    reports = [0]
    write = AtomicBatch.write

    def dies_on_the_third_report(self, target, *parts):  # noqa: ANN001, ANN002, ANN202
        if not str(target).endswith("_dna.csv"):
            reports[0] += 1
            if reports[0] == 3:
                raise OSError("disk full")
        return write(self, target, *parts)

    monkeypatch.setattr(AtomicBatch, "write", dies_on_the_third_report)
    with pytest.raises(OSError, match="disk full"):
        rep.ReportWriter(tmp_path, "best", tuple(finder.scaler.columns)).write_block(block)
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]  # no report, no temporary file
    monkeypatch.undo()
    paths = rep.ReportWriter(tmp_path, "best", tuple(finder.scaler.columns)).write_block(block)
    assert len(paths) == 3 and all(a.exists() and b.exists() for a, b in paths)
    dna = pd.read_csv(paths[0][1])
    assert list(dna.columns) == ["feature", "value", "standardised", "percentile"]


def test_prepared_chunks_follow_a_change_of_settings(model) -> None:
    """The standardised chunks kept across blocks belong to one scorer set-up: switching the
    similarity (as the DNA sweeps do) must not reuse cosine chunks for Pearson. The chunks
    belong to the DNA scan (``--source dna``); the hybrid holds its database in memory."""
    finder = Discoverer.from_checkpoint(model.best_checkpoint_path, source="dna", progress=False)
    batch = du.align_users(du.load_training_users(model.data), finder.track_ids, ["user_8"])
    cosine = finder.discover(batch.plays, 20, "standard", batch.history)[0].table
    pearson = finder.settings.model_copy(update={"similarity": "pearson"})
    finder.settings = pearson
    again = finder.discover(batch.plays, 20, "standard", batch.history)[0].table
    fresh = Discoverer.from_checkpoint(model.best_checkpoint_path, source="dna", progress=False)
    fresh.settings = pearson
    want = fresh.discover(batch.plays, 20, "standard", batch.history)[0].table
    assert again.equals(want) and not np.allclose(again["similarity"], cosine["similarity"])


def test_the_printed_top_never_claims_more_rows_than_the_report_has(model, tmp_path) -> None:
    res = _discover(model, "user_1", "--top", "5", "--set",
                    f"paths.recommendations_dir={tmp_path}")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "Top 5 of 5 for user_1:" in res.output and "Top 10" not in res.output


@pytest.mark.parametrize(
    ("n_users", "size", "granule"),
    [
        (2000, 1024, 1),
        (2048, 1024, 256),
        (300, 1024, 256),
        (400, 64, 1),
        (1, 1024, 1),
        (1030, 512, 1),
    ],  # fmt: skip
)
def test_block_bounds_cover_every_user_once_with_a_short_last_block(
    n_users: int, size: int, granule: int
) -> None:
    bounds = dmod.block_bounds(n_users, size, granule)
    assert bounds[0][0] == 0 and bounds[-1][1] == n_users
    assert all(b0 == a1 for (_, b0), (a1, _) in itertools.pairwise(bounds))  # no gap, no overlap
    assert all(0 < b - a <= size and a % granule == 0 for a, b in bounds)
    regular = -(-n_users // size)  # blocks of `size` users
    last = n_users - (regular - 1) * size
    assert len(bounds) == regular + (last >= 2 * dmod._MIN_TAIL)  # a long last block: halved
