"""ReportWriter formats a block's rows together and cuts them per user: the files must hold the
bytes the per-user Arrow writer (one ``pyarrow.csv.write_csv`` call per user) wrote, on text
that is hard to write (quotes, commas, line ends, formula prefixes, missing values)."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pcsv
import pytest

from deepvibe.discovery import report as rep
from deepvibe.fileio import atomic_batch

FEATURES = ("danceability", "=energy", 'say "hi", ok', "tempo")
TRICKY = [
    'a "quoted", name', "=HYPERLINK(1)", "+1", "-2", "@x", "\tlead", "line\nbreak", "cr\ronly",
    "crlf\r\nend", "\r=starts", "＝full-width", "Sigur Rós", "", "plain", "'already", ",", '"',
]  # fmt: skip


def _per_user_report(block: rep.DiscoveryBlock, u: int) -> bytes:
    """The writer ``ReportWriter`` had before: one Arrow table and write_csv call per user."""
    table = block.arrow(safe_text=True, users=slice(u, u + 1))
    buf = io.BytesIO()
    buf.write((",".join(table.column_names) + "\n").encode("utf-8"))
    pcsv.write_csv(table, buf, pcsv.WriteOptions(include_header=False, quoting_style="needed"))
    return buf.getvalue()


def _per_user_dna(block: rep.DiscoveryBlock, u: int) -> bytes:
    rows = ["feature,value,standardised,percentile"]
    for j, name in enumerate(FEATURES):
        cell = '"' + rep.neutralise_formula(name).replace('"', '""') + '"'
        values = (block.dna_raw[u, j], block.dna[u, j], block.dna_percentile[u, j])
        rows.append(cell + "," + ",".join("" if v != v else repr(float(v)) for v in values))
    return ("\n".join(rows) + "\n").encode("utf-8")


def _tricky_block(why: bool, base: str) -> rep.DiscoveryBlock:
    rng = np.random.default_rng(3)
    n = 40
    ids = [f"{i:022d}".replace("0", "A") for i in range(n)]  # Spotify-shaped: a link each
    ids[: len(TRICKY)] = TRICKY  # and ids that are no Spotify id (no link, formula text)
    names = [TRICKY[(i * 7) % len(TRICKY)] for i in range(n)]
    if why:  # a missing name (an empty cell, not a quoted one), formatted the slower way
        names[5] = None
    popularity = rng.integers(0, 100, n).astype(np.float64)
    popularity[::3] = np.nan  # unknown popularity: an empty cell
    popularity[1] = 55.5
    meta = pa.table({"track_id": ids, "track_name": pa.array(names, pa.string()),
                     "artists": [TRICKY[(i * 5) % len(TRICKY)] for i in range(n)],
                     "popularity": popularity})  # fmt: skip
    tracks = rep.track_table(meta)
    tracks = tracks.set_column(1, "track_name", meta.column("track_name"))  # keep the null
    counts = np.array([0, 7, 1, 0, 12, 3, 0])  # users with no rows at all, first and last
    row_track = np.concatenate([rng.choice(n, c, replace=False) for c in counts]).astype(int)
    values = rng.standard_normal(len(row_track)) * 10.0 ** rng.integers(-6, 8, len(row_track))
    values[:6] = [np.nan, -0.0, 1e-6, 1e21, -123456.000001, np.inf]
    f = len(FEATURES)
    dna = rng.standard_normal((len(counts), f))
    dna[1, 2] = np.nan
    reasons = np.array([TRICKY[i % len(TRICKY)] for i in range(len(row_track))], dtype=object)
    reasons[2] = None
    return rep.DiscoveryBlock(
        users=np.array(["u0", "a/b", "a_b", "=u", "u 4", "u5", "last"], dtype=object),
        mode="standard", source="db", dna=dna, dna_raw=dna * 1e4, dna_percentile=dna * 0 + 50.5,
        tracks=tracks, row_track=row_track, base=base, base_values=np.round(values, 6),
        score=np.round(values[::-1] * 3, 6), offsets=np.concatenate([[0], np.cumsum(counts)]),
        why=pd.Categorical(reasons) if why else None,
    )  # fmt: skip


@pytest.mark.parametrize(("why", "base"), [(False, "similarity"), (True, "decoder_score")])
@pytest.mark.parametrize("users_at_a_time", [2, 256])
def test_block_reports_hold_the_bytes_of_the_per_user_writer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, why: bool, base: str, users_at_a_time: int
) -> None:
    monkeypatch.setattr(rep, "_WRITE_USERS", users_at_a_time)  # cut across formatting batches
    block = _tricky_block(why, base)
    paths = rep.ReportWriter(tmp_path, "best", FEATURES).write_block(block)
    assert len(paths) == len(block)
    for u, (report, dna) in enumerate(paths):
        assert report.read_bytes() == _per_user_report(block, u), block.users[u]
        assert dna.read_bytes() == _per_user_dna(block, u), block.users[u]
    text = "".join(report.read_text(encoding="utf-8") for report, _ in paths)
    assert "'=HYPERLINK(1)" in text and '"a ""quoted"", name"' in text and "\r" not in text
    assert paths[0][0].read_text().count("\n") == 1  # a user with no rows: the header only
    assert paths[1][0].parent != paths[2][0].parent  # a/b and a_b keep apart


def test_batch_write_appears_only_on_commit(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "f.csv"
    with atomic_batch() as batch:
        batch.write(target, b"head\n", memoryview(b"xbody\n")[1:])
        assert not target.exists() and len(list(target.parent.iterdir())) == 1
    assert target.read_bytes() == b"head\nbody\n" and list(target.parent.iterdir()) == [target]
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask
    with pytest.raises(RuntimeError), atomic_batch() as batch:
        batch.write(target, b"new\n")
        raise RuntimeError("stop")
    assert target.read_bytes() == b"head\nbody\n" and list(target.parent.iterdir()) == [target]


def test_batch_write_finishes_a_short_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def short_writev(fd: int, parts: list[bytes]) -> int:  # the kernel took 3 bytes only
        return os.write(fd, bytes(parts[0][:3]))

    monkeypatch.setattr(os, "writev", short_writev)
    with atomic_batch() as batch:
        batch.write(tmp_path / "f.csv", b"head\n", b"body\n")
    assert (tmp_path / "f.csv").read_bytes() == b"head\nbody\n"


def test_a_block_whose_piece_fails_in_another_thread_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rep, "_WRITE_USERS", 2)  # 4 pieces of the 7 users, written by threads
    block = _tricky_block(False, "similarity")
    csv_rows = rep.DiscoveryBlock.csv_rows

    def fails_on_the_third_piece(self: rep.DiscoveryBlock, users: slice):  # noqa: ANN202
        if users.start == 4:
            raise OSError("disk full")
        return csv_rows(self, users)

    monkeypatch.setattr(rep.DiscoveryBlock, "csv_rows", fails_on_the_third_piece)
    with pytest.raises(OSError, match="disk full"):
        rep.ReportWriter(tmp_path, "best", FEATURES).write_block(block)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # nor a temporary file


def test_batch_writes_from_many_threads_keep_apart(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    def write(batch, t: int) -> None:  # noqa: ANN001
        for i in range(50):
            batch.write(tmp_path / f"d{i % 5}" / f"{t}_{i}.csv", f"{t},{i}\n".encode())

    with atomic_batch() as batch, ThreadPoolExecutor(8) as pool:
        for done in [pool.submit(write, batch, t) for t in range(8)]:
            done.result()
    files = sorted(tmp_path.rglob("*.*"))
    assert len(files) == 400 and not [f for f in files if f.name.startswith(".")]
    assert all(f.read_text() == f"{f.stem.replace('_', ',')}\n" for f in files)
