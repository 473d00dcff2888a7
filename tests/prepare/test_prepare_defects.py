"""Issue 9 defects of `deepvibe prepare`, each test named after its defect.

Driven through the command line so that they hold whatever the module layout.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from deepvibe.cli import app

runner = CliRunner()
A, B, C = (f"trk{i:019d}" for i in (1, 2, 3))  # 22 characters, like Spotify ids
ROOT = Path(__file__).resolve().parents[2]


def _prepare(*args: str) -> tuple[int, str, str]:
    res = runner.invoke(app, ["prepare", *args])
    return res.exit_code, res.stdout, res.stderr


def _pairs(path: Path) -> dict[tuple, float]:
    frame = pd.read_csv(path, dtype=str)
    keys = [c for c in frame.columns if c != "plays"]
    return {tuple(r[k] for k in keys): float(r["plays"]) for _, r in frame.iterrows()}


# ----------------------------------------------------------------------------- defect 3


def test_defect3_unix_milliseconds_become_the_right_iso_week(tmp_path: Path) -> None:
    # 2024-01-15 (Monday of 2024-W03) and 2024-01-22 (2024-W04), as Unix milliseconds.
    ms = [1_705_312_800_000, 1_705_917_600_000]
    pd.DataFrame({"user_id": ["u", "u"], "track_id": [A, B], "ts": ms}).to_csv(
        tmp_path / "ms.csv", index=False
    )
    code, out, err = _prepare(
        "-i", str(tmp_path / "ms.csv"), "--weekly", "--time-col", "ts", "--out", str(tmp_path / "o")
    )
    assert code == 0, err
    assert _pairs(tmp_path / "o" / "interactions.csv") == {
        ("u", "2024-W03", A): 1.0,
        ("u", "2024-W04", B): 1.0,
    }
    assert "Unix milliseconds" in out  # how the numbers were read is said in the summary


def test_defect3_unix_seconds_are_detected_and_said(tmp_path: Path) -> None:
    pd.DataFrame({"user_id": ["u"], "track_id": [A], "ts": [1_705_312_800]}).to_csv(
        tmp_path / "s.csv", index=False
    )
    code, out, err = _prepare(
        "-i", str(tmp_path / "s.csv"), "--weekly", "--time-col", "ts", "--out", str(tmp_path / "o")
    )
    assert code == 0, err
    assert _pairs(tmp_path / "o" / "interactions.csv") == {("u", "2024-W03", A): 1.0}
    assert "Unix seconds" in out


def test_defect3_ambiguous_number_is_a_one_line_error(tmp_path: Path) -> None:
    # 20240115 is a date written as a number: neither a week number nor a Unix time.
    pd.DataFrame({"user_id": ["u", "u"], "track_id": [A, B], "day": [20240115, 20240116]}).to_csv(
        tmp_path / "d.csv", index=False
    )
    code, _, err = _prepare(
        "-i", str(tmp_path / "d.csv"), "--weekly", "--time-col", "day", "--out", str(tmp_path / "o")
    )
    assert code == 1
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "'day'" in err and "20240115" in err
    assert not (tmp_path / "o" / "interactions.csv").exists()


def test_defect3_week_numbers_with_a_spotify_download_do_not_crash(tmp_path: Path) -> None:
    pd.DataFrame({"user_id": ["u", "u"], "track_id": [A, B], "week": [1, 2]}).to_csv(
        tmp_path / "w.csv", index=False
    )
    folder = tmp_path / "export"
    folder.mkdir()
    entry = {"ts": "2024-02-12T08:00:00Z", "ms_played": 200_000,
             "spotify_track_uri": f"spotify:track:{C}"}  # fmt: skip
    (folder / "Streaming_History_Audio_2024_0.json").write_text(json.dumps([entry]))
    res = runner.invoke(
        app,
        ["prepare", "-i", str(tmp_path / "w.csv"), "-i", str(folder), "--weekly",
         "--out", str(tmp_path / "o")],
        catch_exceptions=False,
    )  # fmt: skip
    assert res.exit_code == 1
    assert res.stderr.count("\n") == 1 and "Traceback" not in res.output
    assert "week numbers" in res.stderr and "'week'" in res.stderr


# ----------------------------------------------------------------------------- defect 4


def test_defect4_binary_is_applied_after_min_plays(tmp_path: Path) -> None:
    # u played A 3 times and B once; v played A twice and C once.
    pd.DataFrame(
        {"user_id": ["u", "u", "v", "v"], "track_id": [A, B, A, C], "plays": [3, 1, 2, 1]}
    ).to_csv(tmp_path / "p.csv", index=False)
    code, _, err = _prepare(
        "-i", str(tmp_path / "p.csv"), "--binary", "--min-plays", "2", "--out", str(tmp_path / "o")
    )
    assert code == 0, err
    assert _pairs(tmp_path / "o" / "interactions.csv") == {("u", A): 1.0, ("v", A): 1.0}


# ----------------------------------------------------------------------------- defect 10


def test_defect10_docs_do_not_promise_that_prepare_ignores_held_out_users() -> None:
    """`prepare --max-tracks` ranks tracks over every user; the docs must say so, and must
    not claim that held-out users never shape a catalogue that prepare cut."""
    data_md = " ".join((ROOT / "docs" / "DATA.md").read_text(encoding="utf-8").split())
    assert not re.search(r"so held-out users never shape it", data_md)
    assert "ranks tracks over every user" in data_md
