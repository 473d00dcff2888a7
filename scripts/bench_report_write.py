"""Benchmark of the per-user report files of ``discover --all`` (the writing side alone).

A synthetic block of ``--users`` users with ``--rows`` report rows each (distinct tracks drawn
from a ``--tracks``-track pool with Spotify ids, names, artists and some missing popularity)
is written by ``ReportWriter.write_block`` of this package and of ``--baseline-rev`` (its
``src`` extracted with ``git archive``), each in a fresh child process, runs alternating.
Prints CPU-ms (user + system) and wall-ms per user of each (median of ``--repeat`` runs),
their ratio, and checks that both wrote the same bytes. ``files_only`` is the floor: the same
folders and files made with bare system calls, their bytes ready in memory (on this machine's
ext4 the file creations alone can cost more than the formatting).

    PYTHONPATH=src python scripts/bench_report_write.py --users 1024 --rows 1000 --baseline-rev main
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from deepvibe.config import DEFAULT_FEATURES
from deepvibe.discovery import report as rep

REPO = Path(__file__).resolve().parents[1]
ALPHABET = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"))


def synthetic_block(n_users: int, n_rows: int, n_tracks: int, seed: int = 0) -> rep.DiscoveryBlock:
    """A DiscoveryBlock shaped like the DNA scan's: each user's rows are distinct tracks."""
    rng = np.random.default_rng(seed)
    ids = ["".join(r) for r in ALPHABET[rng.integers(0, len(ALPHABET), (n_tracks, 22))]]
    words = np.array(["Love", "Night", "Blue", "Song", "Dance", "Rain", "Fire", "Heart", "Go"])
    names = [" ".join(words[rng.integers(0, len(words), 3)]) for _ in range(n_tracks)]
    artists = [f"Artist {g}-{n}" for g, n in rng.integers(0, 500, (n_tracks, 2))]
    popularity = rng.integers(0, 100, n_tracks).astype(np.float64)
    popularity[rng.random(n_tracks) < 0.05] = np.nan
    meta = pa.table({"track_id": ids, "track_name": names, "artists": artists,
                     "popularity": popularity})  # fmt: skip
    tracks = rep.track_table(meta)
    row_track = np.concatenate(
        [rng.choice(n_tracks, n_rows, replace=False) for _ in range(n_users)]
    ).astype(np.int64)
    score = np.round(np.sort(rng.random((n_users, n_rows)), axis=1)[:, ::-1].ravel(), 6)
    base = np.round(score * 0.9 + 0.05, 6)
    f = len(DEFAULT_FEATURES)
    return rep.DiscoveryBlock(
        users=np.array([f"user_{u}" for u in range(n_users)], dtype=object), mode="standard",
        source="db", dna=rng.standard_normal((n_users, f)),
        dna_raw=rng.standard_normal((n_users, f)) * 100,
        dna_percentile=rng.random((n_users, f)) * 100,
        tracks=tracks, row_track=row_track, base="similarity", base_values=base, score=score,
        offsets=np.arange(n_users + 1) * n_rows,
    )  # fmt: skip


def timed(write, *args) -> tuple[float, float]:  # noqa: ANN001, ANN002
    """(CPU, wall) seconds of ``write(*args)``; CPU counts user and system time."""
    c0, t0 = os.times(), time.perf_counter()
    write(*args)
    c1 = os.times()
    return c1.user - c0.user + c1.system - c0.system, time.perf_counter() - t0


def files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.csv"))}


def files_only(out: Path, written: dict[str, bytes]) -> None:
    """The floor: the same folders and files made with bare system calls (mkdir, open, write,
    close, rename, one sync), their bytes ready in memory."""
    os.mkdir(out)
    for name, data in written.items():
        folder, base = os.path.split(os.path.join(out, name))
        if not os.path.isdir(folder):
            os.mkdir(folder)
        tmp = os.path.join(folder, f".{base}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        os.write(fd, data)
        os.close(fd)
        os.replace(tmp, os.path.join(folder, base))
    os.sync()


def child(args: argparse.Namespace) -> None:
    """One timed ``write_block`` of the synthetic block by the package on ``sys.path``."""
    block = synthetic_block(args.users, args.rows, args.tracks)
    cpu, wall = timed(rep.ReportWriter(args.child, "best", DEFAULT_FEATURES).write_block, block)
    print(json.dumps({"cpu": cpu, "wall": wall}))


def run_child(src: Path, out: Path, args: argparse.Namespace) -> tuple[float, float]:
    env = {**os.environ, "PYTHONPATH": str(src)}
    sizes = ["--users", str(args.users), "--rows", str(args.rows), "--tracks", str(args.tracks)]
    res = subprocess.run([sys.executable, __file__, "--child", str(out), *sizes], env=env,
                         capture_output=True, text=True, check=True)  # fmt: skip
    times = json.loads(res.stdout.strip().splitlines()[-1])
    return times["cpu"], times["wall"]


def old_src(tmp: Path, rev: str) -> Path:
    """``src/`` of the package at git revision ``rev``, extracted under ``tmp``."""
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], capture_output=True,
                             check=True)  # fmt: skip
    (tmp / "old").mkdir()
    subprocess.run(["tar", "-x", "-C", str(tmp / "old")], input=archive.stdout, check=True)
    return tmp / "old" / "src"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1024)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--tracks", type=int, default=300_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--baseline-rev", default="main", help="git revision of the baseline")
    parser.add_argument("--dir", default=None, help="where to write (default: the temp folder)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args)
        return 0
    tmp = Path(tempfile.mkdtemp(prefix="bench_report_write.", dir=args.dir))
    try:
        srcs = {"baseline": old_src(tmp, args.baseline_rev), "write_block": REPO / "src"}
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in (*srcs, "files_only")}
        for _ in range(args.repeat):  # alternating, so that a change of load hits all three
            for name, src in srcs.items():
                shutil.rmtree(tmp / name, ignore_errors=True)
                runs[name].append(run_child(src, tmp / name, args))
            runs["files_only"].append(timed(files_only, tmp / "floor", files(tmp / "write_block")))
            shutil.rmtree(tmp / "floor")
        same = files(tmp / "baseline") == files(tmp / "write_block")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    per_user = {k: 1e3 * np.median(v, axis=0) / args.users for k, v in runs.items()}
    print(f"{args.users} users x {args.rows} rows under {tmp.parent}; baseline {args.baseline_rev}")
    for name, (cpu, wall) in per_user.items():
        print(f"{name:12s} cpu {cpu:6.3f} ms/user  wall {wall:6.3f} ms/user")
    ratio = per_user["baseline"][0] / per_user["write_block"][0]
    above = [per_user[k][0] - per_user["files_only"][0] for k in srcs]
    print(
        f"CPU speed-up {ratio:.2f}x; CPU above the file-system floor: baseline {above[0]:.3f}, "
        f"write_block {above[1]:.3f} ms/user ({above[0] / above[1]:.2f}x)"
    )
    print(f"identical files: {same}; load average {os.getloadavg()}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
