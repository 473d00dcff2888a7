"""Discovery on toy data whose right answer is known: each user belongs to a taste group, and
each database track to a group (most of them outside the training catalogue)."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from conftest import small_config
from deepvibe.cli import app
from deepvibe.config import DiscoverConfig
from deepvibe.data.history import load_history
from deepvibe.data.tables import FeatureScaler, load_track_table
from deepvibe.discovery import database as dbm
from deepvibe.discovery import dna as dnamod
from deepvibe.discovery import report as rep
from deepvibe.discovery import scan
from deepvibe.discovery import users as du
from deepvibe.discovery.discoverer import Discoverer
from deepvibe.errors import DataError
from deepvibe.training.checkpoint import load_checkpoint
from deepvibe.training.train import train

FEATURES = (
    "danceability", "energy", "key", "loudness", "mode", "speechiness", "acousticness",
    "instrumentalness", "liveness", "valence", "tempo", "duration_ms",
)  # fmt: skip


@pytest.fixture(scope="module")
def run(toy_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """One small model trained once for the whole module (written to disk for the CLI).

    12 epochs rather than conftest's 8: with 8 the best validation epoch is often the 3rd, an
    undertrained model that scores one popular off-group track highest for some users.
    """
    root = tmp_path_factory.mktemp("discover")
    cfg = small_config(root, toy_dir / "data", **{"train.epochs": 12})
    train(cfg, progress=False)
    return cfg


@pytest.fixture(scope="module")
def finder(run) -> Discoverer:
    """The original design's path: the database ranked by the Vibe DNA alone."""
    return Discoverer.from_checkpoint(run.best_checkpoint_path, source="dna", progress=False)


@pytest.fixture(scope="module")
def users(run, finder, toy) -> du.UserBatch:
    """Three training users from each taste group."""
    inter = du.load_training_users(run.data)
    picked = []
    for g in range(4):
        picked += [u for u in inter.user_ids if toy.user_group[u] == g][:3]
    return du.align_users(inter, finder.track_ids, picked)


def _group_share(ids: pd.Series, toy, group: int) -> float:
    return float(np.mean([toy.track_group[t] == group for t in ids]))


# ----------------------------------------------------------------------------- what it must show


def test_group_user_gets_group_tracks_beyond_the_catalogue(finder, users, toy) -> None:
    results = finder.discover(users.plays, 50, "standard", users.history, users.users)
    catalogue = set(finder.track_ids)
    for res in results:
        group = toy.user_group[res.user]
        assert len(res.table) == 50
        assert _group_share(res.table["track_id"], toy, group) >= 0.9, res.user
        outside = (~res.table["track_id"].isin(catalogue)).sum()
        assert outside >= 25, f"{res.user}: only {outside} of 50 from outside the catalogue"


def test_gems_lowers_popularity_and_keeps_similarity(finder, users, toy) -> None:
    std = finder.discover(users.plays, 50, "standard", users.history, users.users)
    gems = finder.discover(users.plays, 50, "gems", users.history, users.users)
    for s, g in zip(std, gems, strict=True):
        pop_s, pop_g = s.table["popularity"].mean(), g.table["popularity"].mean()
        sim_s, sim_g = s.table["similarity"].mean(), g.table["similarity"].mean()
        assert pop_g < 0.5 * pop_s, f"{s.user}: gems popularity {pop_g:.1f} vs {pop_s:.1f}"
        assert sim_g > 0.9 and sim_g > sim_s - 0.05, f"{s.user}: similarity {sim_g} vs {sim_s}"
        assert _group_share(g.table["track_id"], toy, toy.user_group[s.user]) >= 0.9
        # gems score is exactly similarity - 0.2 * popularity / 100, sorted descending
        expected = g.table["similarity"] - 0.2 * g.table["popularity"] / 100
        assert np.allclose(g.table["score"], expected, atol=1e-5)
        assert (np.diff(g.table["score"]) <= 1e-9).all()


def test_history_is_never_recommended(finder, users) -> None:
    db_ids = set(pd.read_csv(finder.database.source, usecols=["track_id"])["track_id"])
    full = finder.discover(users.plays, 100_000, "standard", users.history, users.users)
    for res, hist in zip(full, users.history, strict=True):
        # The whole ranked database minus exactly the history tracks it holds.
        assert len(res.table) == len(db_ids) - len(hist & db_ids)
        assert not set(res.table["track_id"]) & hist
    # The catalogue view: the decoder ranks the user's own tracks highest, yet none come back.
    cat = Discoverer(
        finder.model, finder.track_ids, finder.scaler, finder.track_features, DiscoverConfig()
    )
    scores = cat.scores(users.plays)
    results = cat.discover(users.plays, 20, "standard", users.history, users.users)
    for u, res in enumerate(results):
        raw_top = set(cat.track_ids[np.argsort(-scores[u])[:20]])
        assert raw_top & users.history[u], "test cannot fail: no history track in raw top-20"
        assert not set(res.table["track_id"]) & users.history[u]


def test_two_runs_give_identical_reports(run, tmp_path: Path) -> None:
    outs = []
    for name in ("a", "b"):
        res = CliRunner().invoke(
            app,
            ["discover", "user_1", "user_7", "--checkpoint", str(run.best_checkpoint_path),
             "--no-progress", "--set", f"paths.recommendations_dir={tmp_path / name}"],
        )  # fmt: skip
        assert res.exit_code == 0, res.output
        outs.append(sorted((tmp_path / name).rglob("*.csv")))
    assert [p.relative_to(tmp_path / "a") for p in outs[0]] == [
        p.relative_to(tmp_path / "b") for p in outs[1]
    ]
    assert len(outs[0]) == 4  # a report and a DNA file per user
    for a, b in zip(*outs, strict=True):
        assert a.read_bytes() == b.read_bytes()


def test_dna_temperature_limits(finder, users) -> None:
    scores = finder.scores(users.plays)  # (B, n)
    feats = finder.track_features.astype(np.float64)
    cold = dnamod.vibe_dna(scores, feats, 1e-6)
    assert np.allclose(cold, feats[scores.argmax(axis=1)], atol=1e-6)
    hot = dnamod.vibe_dna(scores, feats, 1e6)
    assert np.allclose(hot, feats.mean(axis=0), atol=1e-4)
    # top-k: at a huge temperature, the plain mean of the k best tracks
    top5 = np.argsort(-scores, axis=1)[:, :5]
    assert np.allclose(
        dnamod.vibe_dna(scores, feats, 1e6, top_k=5), feats[top5].mean(axis=1), atol=1e-4
    )
    # in between, the DNA moves away from the top track as T grows
    dist = [
        np.linalg.norm(dnamod.vibe_dna(scores, feats, t) - cold, axis=1).mean()
        for t in (0.01, 0.1, 1.0)
    ]
    assert dist[0] < dist[1] < dist[2]


def test_history_user_gets_recommendations_without_retraining(run, finder, toy, tmp_path) -> None:
    ck_path = run.best_checkpoint_path
    before = hashlib.sha256(ck_path.read_bytes()).hexdigest()
    model_files = sorted(p.name for p in Path(run.paths.models_dir).rglob("*"))
    cat = list(finder.track_ids)
    db = pd.read_csv(finder.database.source, usecols=["track_id"])["track_id"]
    group_cat = [t for t in cat if toy.track_group[t] == 1][:20]
    outside = [t for t in db if t not in set(cat) and toy.track_group[t] == 1][:3]
    rows = [("new listener", t, 3) for t in group_cat + outside]
    rows.append(("new listener", "NOTINANYTABLE000000000", 5))
    rows += [("second", f"spotify:track:{t}", 1) for t in group_cat[:10]]
    hist = tmp_path / "history.csv"
    pd.DataFrame(rows, columns=["user_id", "track_id", "plays"]).to_csv(hist, index=False)
    out = tmp_path / "recs"
    res = CliRunner().invoke(
        app,
        ["discover", "--all", "--history", str(hist), "--checkpoint", str(ck_path),
         "--no-progress", "--top", "50", "--set", f"paths.recommendations_dir={out}"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "4 played tracks are not in the model's catalogue" in res.output
    name = rep.user_folder_name("new listener")
    report = pd.read_csv(out / name / f"{name}_best_standard.csv")
    assert len(report) == 50
    assert _group_share(report["track_id"], toy, 1) >= 0.9
    assert not set(report["track_id"]) & set(group_cat + outside)
    assert (out / "second" / "second_best_standard.csv").exists()
    assert hashlib.sha256(ck_path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in Path(run.paths.models_dir).rglob("*")) == model_files


# ----------------------------------------------------------------------------- the scan


def _brute_force(
    db_path: Path,
    scaler: FeatureScaler,
    dna: np.ndarray,
    n: int,
    exclude: set,
    lam: float | None = None,
    ceiling: float | None = None,
) -> pd.DataFrame:
    """The naive prototype: read everything with pandas and score every row at once."""
    frame = pd.read_csv(db_path).drop_duplicates("track_id").dropna(subset=list(FEATURES))
    frame = frame[~frame["track_id"].isin(exclude)]
    feats = scaler.transform(frame[list(FEATURES)].to_numpy(np.float64))
    sims = dnamod.similarity_to(dna, feats.astype(np.float32), "cosine")
    score = sims if lam is None else sims - lam * frame["popularity"].to_numpy() / 100
    if ceiling is not None:
        score = np.where(frame["popularity"].to_numpy() <= ceiling, score, -np.inf)
    order = np.argsort(-score, kind="stable")[:n]
    return pd.DataFrame({"track_id": frame["track_id"].to_numpy()[order], "score": score[order]})


@pytest.mark.parametrize("chunk_size", [97, 1_000_000])
def test_chunked_scan_matches_brute_force(finder, users, chunk_size) -> None:
    db = finder.database
    dna = finder.dna(finder.scores(users.plays[:2]))
    for mode, lam, ceiling in (("standard", None, None), ("gems", 0.5, 40.0)):
        hits = scan.scan_database(
            db, finder.scaler, dna, 30, gems_lambda=lam, popularity_ceiling=ceiling,
            chunk_size=chunk_size, extra=len(users.history[0] | users.history[1]), progress=False,
        )  # fmt: skip
        for u in range(2):
            ids = db.take(hits[u].rows)["track_id"]
            keep = ~ids.isin(users.history[u]).to_numpy()
            got_ids, got_score = ids[keep].to_numpy()[:30], hits[u].score[keep][:30]
            want = _brute_force(
                db.source, finder.scaler, dna[u], 30, users.history[u], lam, ceiling
            )
            assert np.allclose(got_score, want["score"], atol=1e-5), mode
            assert (got_ids == want["track_id"].to_numpy()).mean() > 0.9  # float ties may swap
            if ceiling is not None:
                pops = db.take(hits[u].rows)["popularity"]
                assert (pops <= ceiling).all()


def test_similarity_to_known_values() -> None:
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(50, 12))
    p = rng.normal(size=12)
    pearson = dnamod.similarity_to(p, feats, "pearson")
    assert np.allclose(pearson, [np.corrcoef(p, row)[0, 1] for row in feats])
    cosine = dnamod.similarity_to(p, feats, "cosine")
    assert np.allclose(cosine, feats @ p / np.linalg.norm(feats, axis=1) / np.linalg.norm(p))
    batch = dnamod.similarity_to(np.stack([p, -p]), feats, "cosine")
    assert batch.shape == (2, 50) and np.allclose(batch[1], -cosine)
    assert np.allclose(dnamod.similarity_to(np.zeros(12), feats, "pearson"), 0.0)  # 0, not NaN
    with pytest.raises(ValueError, match="3 features"):
        dnamod.similarity_to(np.zeros(3), feats)


def _copy_db(toy, path: Path, transform=None) -> Path:
    frame = toy.database.copy()
    if transform is not None:
        frame = transform(frame)
    frame.to_csv(path, index=False)
    return path


def _open(path: Path, **kw) -> dbm.TrackDatabase:
    return dbm.TrackDatabase.open(
        path, FEATURES, "track_id", "popularity", "track_name", "artists", **kw
    )


def test_cache_is_reused_and_rebuilt_when_the_source_changes(toy, tmp_path, monkeypatch) -> None:
    src = _copy_db(toy, tmp_path / "db.csv")
    first = _open(src)
    assert first.path == tmp_path / "db.csv.dvcache" and first.n_tracks == len(toy.database)

    def no_parse(*a, **k):
        raise AssertionError("the CSV was parsed again")

    monkeypatch.setattr(dbm, "iter_track_chunks", no_parse)
    again = _open(src)  # cache hit: no parsing
    assert again.n_tracks == first.n_tracks
    monkeypatch.undo()
    # Same size, new content: the hash of the file's ends notices even within one mtime tick.
    text = src.read_text()
    src.write_text(text.replace("Track 000000", "Track 999999", 1))
    rebuilt = _open(src)
    assert rebuilt.take(np.array([0]))["track_name"].iloc[0] == "Track 999999"
    # A shorter file (rows removed) is noticed too.
    _copy_db(toy, src, lambda f: f.iloc[:100])
    assert _open(src).n_tracks == 100
    # A corrupt cache is rebuilt, not trusted.
    (tmp_path / "db.csv.dvcache").write_bytes(b"garbage")
    assert _open(src).n_tracks == 100


def test_incomplete_and_duplicate_rows_are_skipped_and_reported(toy, tmp_path, caplog) -> None:
    def damage(f: pd.DataFrame) -> pd.DataFrame:
        f = f.iloc[:200].astype({"tempo": object})
        f.loc[3, "energy"] = np.nan
        f.loc[4, "tempo"] = "fast"
        return pd.concat([f, f.iloc[[10, 11]]])  # two duplicate ids

    src = _copy_db(toy, tmp_path / "db.csv", damage)
    # The CLI's console set-up stops "deepvibe" records from reaching the root logger, so
    # listen on that logger itself.
    logger = logging.getLogger("deepvibe")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="deepvibe"):
            db = _open(src)
        assert db.n_tracks == 198
        assert "skipped 2 of 202 rows" in caplog.text and "2 duplicate track ids" in caplog.text
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="deepvibe"):
            _open(src)  # from the cache: the same warnings again
        assert "skipped 2 of 202 rows" in caplog.text
    finally:
        logger.removeHandler(caplog.handler)


def test_cache_written_atomically_only(toy, tmp_path, monkeypatch) -> None:
    src = _copy_db(toy, tmp_path / "db.csv", lambda f: f.iloc[:300])
    # Fail after every row is written, while the quantiles are computed.
    monkeypatch.setattr(dbm, "_QUANTILES", np.array([2.0]))
    with pytest.raises(ValueError):
        _open(src)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["db.csv"]  # no partial cache


def test_database_percentiles(toy, tmp_path) -> None:
    db = _open(_copy_db(toy, tmp_path / "db.csv"))
    raw = toy.database[list(FEATURES)].to_numpy(np.float64)
    probe = np.median(raw, axis=0)
    pct = db.percentiles(probe)
    exact = [(np.mean(raw[:, j] < v) + np.mean(raw[:, j] <= v)) * 50 for j, v in enumerate(probe)]
    assert np.allclose(pct, exact, atol=0.2)
    assert np.allclose(db.percentiles(raw.max(axis=0) + 1), 100.0)


# ----------------------------------------------------------------------------- API and reports


def test_recommend_api_and_catalogue_source(finder, users) -> None:
    ids, scores = finder.recommend(users.plays[0].toarray()[0], N=10)
    assert ids.shape == (10,) and (np.diff(scores) <= 0).all()
    batch_ids, batch_scores = finder.recommend(users.plays[:3], N=10)
    assert batch_ids.shape == (3, 10) and list(batch_ids[0]) == list(ids)
    cat = Discoverer(
        finder.model, finder.track_ids, finder.scaler, finder.track_features, DiscoverConfig(),
        catalogue_meta={"popularity": np.zeros(len(finder.track_ids))},
    )  # fmt: skip
    res = cat.discover(users.plays[:1], 15, "standard", users.history[:1])[0]
    raw = cat.scores(users.plays[:1])[0]
    unseen = [
        i for i in np.argsort(-raw, kind="stable") if cat.track_ids[i] not in users.history[0]
    ]
    assert list(res.table["track_id"]) == list(cat.track_ids[unseen[:15]])
    assert np.allclose(res.table["decoder_score"], raw[unseen[:15]], atol=1e-6)


def test_report_is_safe(tmp_path) -> None:
    table = rep.finish_table(
        pd.DataFrame({
            "track_id": ["4uLU6hMCjMI75M1A2tKUQC", "=cmd|' /C calc'!A0"],
            "track_name": ["+SUM(A1)", "ok"], "artists": ["@x", "-y"],
            "popularity": [10.0, 20.0], "similarity": [0.9, 0.8], "score": [0.9, 0.8],
        }),
        "similarity",
    )  # fmt: skip
    res = rep.Discovery("../../etc/passwd", "standard", "db", np.zeros(12), np.zeros(12),
                       np.zeros(12), table)  # fmt: skip
    report, dna = rep.write_recommendations(res, tmp_path / "recs", "best", FEATURES)
    assert (tmp_path / "recs") in report.parents and report.parent == dna.parent
    assert report.parent.parent == (tmp_path / "recs").resolve()
    text = report.read_text()
    assert "'=cmd" in text and "'+SUM" in text and "'@x" in text and "'-y" in text
    assert "https://open.spotify.com/track/4uLU6hMCjMI75M1A2tKUQC" in text
    assert pd.read_csv(report)["spotify_url"].isna().iloc[1]  # not a Spotify id: no link
    assert rep.user_folder_name("a/b") != rep.user_folder_name("a_b")
    assert rep.user_folder_name("user_1") == "user_1"


# ----------------------------------------------------------------------------- CLI errors


def _cli(*args: str):
    return CliRunner().invoke(app, ["discover", *args, "--no-progress"])


def test_cli_unknown_user_is_named(run) -> None:
    res = _cli("user_1", "nobody_42", "--checkpoint", str(run.best_checkpoint_path))
    assert res.exit_code == 1
    assert "'nobody_42'" in res.stderr and "Traceback" not in res.output


def test_cli_gems_without_popularity_is_a_clear_error(run, toy, tmp_path) -> None:
    db = _copy_db(toy, tmp_path / "nopop.csv", lambda f: f.drop(columns=["popularity"]))
    common = [
        "user_1", "--checkpoint", str(run.best_checkpoint_path), "--set", f"data.database={db}",
        "--set", f"paths.recommendations_dir={tmp_path}",
    ]  # fmt: skip
    res = _cli(*common, "--gems")
    assert res.exit_code == 1
    assert "popularity" in res.stderr and "nopop.csv" in res.stderr
    assert not list(tmp_path.rglob("*_gems.csv"))
    ok = _cli(*common)  # standard mode works on the same database
    assert ok.exit_code == 0, ok.output


def test_cli_history_user_without_catalogue_tracks(run, tmp_path) -> None:
    hist = tmp_path / "h.csv"
    hist.write_text("user_id,track_id\nghost,NOTINANYTABLE000000000\n")
    res = _cli("--history", str(hist), "--checkpoint", str(run.best_checkpoint_path),
               "--set", f"paths.recommendations_dir={tmp_path / 'recs'}")  # fmt: skip
    assert res.exit_code == 1
    assert "'ghost'" in res.stderr and "catalogue" in res.stderr
    assert not (tmp_path / "recs").exists()


def test_cli_usage_errors(run) -> None:
    assert _cli().exit_code == 2
    assert _cli("user_1", "--all").exit_code == 2
    res = _cli("user_1", "--source", "web", "--checkpoint", str(run.best_checkpoint_path))
    assert res.exit_code == 2 and "--source" in res.output
    assert _cli("user_1", "--temperature", "0").exit_code == 2


def test_cli_catalogue_source_and_config_file(run, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text(
        f"data:\n  interactions: {run.data.interactions}\n"
        f"paths:\n  recommendations_dir: out\n  models_dir: {run.paths.models_dir}\n"
    )
    res = _cli("user_3", "--config", str(cfg_file), "--source", "catalogue", "--top", "5",
               "--temperature", "0.5")  # fmt: skip
    assert res.exit_code == 0, res.output
    report = pd.read_csv(tmp_path / "out" / "user_3" / "user_3_best_standard.csv")
    assert list(report.columns) == [
        "rank", "track_id", "track_name", "artists", "popularity", "decoder_score", "score",
        "spotify_url",
    ]  # fmt: skip
    assert len(report) == 5 and "T 0.5" in res.output and "Vibe DNA of user_3" in res.output


def test_load_history_formats(tmp_path) -> None:
    p = tmp_path / "h.csv"
    p.write_text(
        "user_id,track_id\nu,spotify:track:4uLU6hMCjMI75M1A2tKUQC\n"
        "u,https://open.spotify.com/track/4uLU6hMCjMI75M1A2tKUQC\nv,abc\n"
    )
    inter = load_history(p)
    assert list(inter.user_ids) == ["u", "v"]
    assert inter.matrix.toarray().tolist() == [[2.0, 0.0], [0.0, 1.0]]  # repeats summed
    bad = tmp_path / "bad.csv"
    bad.write_text("listener,song\na,b\n")
    with pytest.raises(DataError, match="user_id and track_id"):
        load_history(bad)


def test_load_track_table_contract_used_by_the_cache(toy, tmp_path) -> None:
    """The cache relies on load_track_table dropping incomplete rows and duplicate ids."""
    src = _copy_db(toy, tmp_path / "db.csv", lambda f: f.iloc[:50])
    table = load_track_table(src, "track_id", FEATURES, "popularity", drop_incomplete=True)
    db = _open(src)
    assert db.n_tracks == len(table.track_ids)
    assert list(db.take(np.arange(50))["track_id"]) == list(table.track_ids)


def test_checkpoint_label(run) -> None:
    ck = load_checkpoint(run.best_checkpoint_path)
    assert (
        rep.checkpoint_label(run.best_checkpoint_path, run.paths.best_checkpoint, ck.epoch)
        == "best"
    )
    assert rep.checkpoint_label(Path("models/snapshots/epoch_0004.pth"), "x.pth", 4) == "4"
