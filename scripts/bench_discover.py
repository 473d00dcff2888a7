"""Benchmark of discover's database scan.

1. A synthetic 1,000,000-track database (toy generator, Spotify-like columns) as CSV.
   Times, in one process: the first scan (parse the CSV + write the Parquet cache + scan),
   repeat scans (open the cache + scan + read the report rows), and the naive approach
   (``pandas.read_csv`` + standardise + similarity to every row + sort, on every call, as
   the original prototype does, but vectorised). Reported as a ratio.
2. ``--cli``: the same through ``deepvibe discover`` (process start, torch import and model
   load included) with a tiny model trained on toy data.
3. Peak memory: a 10,000,000-track cache written directly in chunks, scanned in a fresh
   subprocess per (database size, chunk size); peak RSS minus the RSS before the scan.

    python scripts/bench_discover.py --tracks 1000000 --big 10000000 --cli
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from deepvibe.config import DEFAULT_FEATURES
from deepvibe.data.synth import make_toy_data
from deepvibe.data.tables import FeatureScaler, TrackTable
from deepvibe.discovery import discoverer as dv

FEATURES = DEFAULT_FEATURES
N_REPORT = 1000  # rows per report, the default top_n


def rss_mb() -> float:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def reset_peak() -> bool:
    """Restart this process's peak-RSS counter (Linux >= 4.0); False where not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_mb() -> float:
    """Peak RSS of this process (VmHWM). Not ru_maxrss: on Linux that one carries the
    parent's peak across fork + exec, which made every child look as big as the parent."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def scaler_and_dna(frame: pd.DataFrame, seed: int = 0) -> tuple[FeatureScaler, np.ndarray]:
    """A scaler fitted on 10,000 rows (a catalogue) and one user's DNA: a random track's
    standardised features."""
    head = frame[list(FEATURES)].to_numpy(np.float64)[:10_000]
    scaler = FeatureScaler.fit(head, FEATURES)
    rng = np.random.default_rng(seed)
    return scaler, scaler.transform(head[rng.integers(len(head))])[None, :]


def naive(csv: Path, scaler: FeatureScaler, dna: np.ndarray) -> np.ndarray:
    frame = pd.read_csv(csv)
    feats = scaler.transform(frame[list(FEATURES)].to_numpy(np.float64))
    sims = dv.similarity_to(dna[0], feats, "cosine")
    return frame["track_id"].to_numpy()[np.argsort(-sims, kind="stable")[:N_REPORT]]


def deepvibe_scan(csv: Path, scaler: FeatureScaler, dna: np.ndarray, chunk: int) -> np.ndarray:
    db = dv.TrackDatabase.open(csv, FEATURES)
    hits = dv.scan_database(db, scaler, dna, N_REPORT, "cosine", chunk_size=chunk, progress=False)
    return db.take(hits[0].rows)["track_id"].to_numpy()


def timed(fn, repeat: int = 1) -> tuple[float, object]:  # noqa: ANN001
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), out


def bench_speed(tmp: Path, n_tracks: int, chunk: int, repeat: int) -> dict[str, float]:
    t0 = time.perf_counter()
    toy = make_toy_data(users=8, tracks=8, db_tracks=n_tracks, groups=4, weeks=1, seed=0)
    csv = tmp / "global_tracks.csv"
    toy.database.to_csv(csv, index=False)
    print(f"generated {n_tracks:,} tracks ({csv.stat().st_size / 2**20:.0f} MiB CSV) "
          f"in {time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
    scaler, dna = scaler_and_dna(toy.database)
    del toy
    first, ids_first = timed(lambda: deepvibe_scan(csv, scaler, dna, chunk))
    repeat_s, ids_repeat = timed(lambda: deepvibe_scan(csv, scaler, dna, chunk), repeat)
    naive_s, ids_naive = timed(lambda: naive(csv, scaler, dna), max(1, repeat // 2))
    scan_only, _ = timed(
        lambda: dv.scan_database(
            dv.TrackDatabase.open(csv, FEATURES), scaler, dna, N_REPORT, "cosine",
            chunk_size=chunk, progress=False,
        ),
        repeat,
    )  # fmt: skip
    same = float(np.mean(np.asarray(ids_repeat) == np.asarray(ids_naive)))
    assert list(ids_first) == list(ids_repeat)
    cache = dv.cache_path_for(csv)
    return {
        "tracks": n_tracks,
        "csv_mib": csv.stat().st_size / 2**20,
        "cache_mib": cache.stat().st_size / 2**20,
        "first_scan_s": first,
        "repeat_scan_s": repeat_s,
        "repeat_scan_without_report_rows_s": scan_only,
        "naive_s": naive_s,
        "naive_over_repeat": naive_s / repeat_s,
        "first_over_repeat": first / repeat_s,
        "top1000_same_as_naive": same,
    }


def bench_cli(tmp: Path, csv: Path, repeat: int) -> dict[str, float]:
    """deepvibe discover end to end with a tiny model whose database is the big CSV."""
    run = tmp / "cli"
    run.mkdir()
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    exe = [sys.executable, "-m", "deepvibe.cli"]

    def call(*args: str) -> float:
        t0 = time.perf_counter()
        subprocess.run([*exe, *args], cwd=run, env=env, check=True, capture_output=True)
        return time.perf_counter() - t0

    call("synth", "--out", "data", "--users", "200", "--tracks", "100", "--db-tracks", "200")
    sets = ["--set", "model.hidden=[64]", "--set", "model.latent=16", "--set", "train.epochs=2"]
    call("train", *sets)
    args = ["discover", "user_1", "--no-progress", "--set", f"data.database={csv}"]
    dv.cache_path_for(csv).unlink()  # left by the in-process runs: make the first call build it
    first = call(*args)
    again = float(np.median([call(*args) for _ in range(repeat)]))
    catalogue = float(np.median([call(*args, "--source", "catalogue") for _ in range(repeat)]))
    return {
        "cli_first_s": first,
        "cli_repeat_s": again,
        "cli_catalogue_only_s": catalogue,
        "cli_scan_share_s": again - catalogue,
    }


# ----------------------------------------------------------------------------- memory


def write_big_cache(path: Path, n_tracks: int, piece: int = 500_000) -> None:
    """A cache of ``n_tracks`` rows written piece by piece (never all in memory)."""
    rng = np.random.default_rng(1)

    def pieces():  # noqa: ANN202
        for start in range(0, n_tracks, piece):
            n = min(piece, n_tracks - start)
            ids = np.char.zfill(np.arange(start, start + n).astype(str), 22).astype(object)
            feats = rng.normal(size=(n, len(FEATURES))) * 10 + 50
            pop = rng.integers(0, 101, size=n).astype(np.float64)
            names = np.char.add("Track ", np.arange(start, start + n).astype(str)).astype(object)
            yield TrackTable(ids, feats, FEATURES, pop, names, names)

    dv.write_database_cache(path, pieces(), {"source": "synthetic"}, n_tracks)


def memory_child(cache: str, chunk: int) -> None:
    """Run in a fresh process: peak RSS of one scan (and of a gems scan) of ``cache``."""
    db = dv.TrackDatabase.from_cache(cache)
    rng = np.random.default_rng(0)
    scaler = FeatureScaler(FEATURES, np.full(12, 50.0), np.full(12, 10.0))
    dna = rng.normal(size=(1, 12))
    # Touch the code paths once on a tiny slice so lazy imports are not counted as the scan.
    next(db.chunks(1000))
    before = rss_mb()
    reset = reset_peak()
    t0 = time.perf_counter()
    hits = dv.scan_database(db, scaler, dna, N_REPORT, "cosine", chunk_size=chunk, progress=False)
    hits_g = dv.scan_database(
        db, scaler, dna, N_REPORT, "cosine", gems_lambda=0.2, chunk_size=chunk, progress=False
    )
    rows = db.take(hits[0].rows)
    seconds = time.perf_counter() - t0
    assert len(rows) == N_REPORT and len(hits_g[0].rows) == N_REPORT
    print(json.dumps({
        "tracks": db.n_tracks, "chunk": chunk, "rss_before_mib": before,
        "peak_rss_mib": peak_mb(), "scan_peak_over_before_mib": peak_mb() - before,
        "peak_counter_reset": reset, "two_scans_s": seconds,
    }))  # fmt: skip


def bench_memory(tmp: Path, sizes: list[int], chunks: list[int]) -> list[dict[str, float]]:
    out = []
    for n in sizes:
        cache = tmp / f"big_{n}.dvcache"
        t0 = time.perf_counter()
        write_big_cache(cache, n)
        print(f"wrote a {n:,}-track cache ({cache.stat().st_size / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - t0:.0f} s", flush=True)  # fmt: skip
        for chunk in chunks:
            res = subprocess.run(
                [sys.executable, __file__, "--memory-child", str(cache), str(chunk)],
                check=True, capture_output=True, text=True,
            )  # fmt: skip
            out.append(json.loads(res.stdout.strip().splitlines()[-1]))
            print(out[-1], flush=True)
        cache.unlink()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tracks", type=int, default=1_000_000)
    ap.add_argument("--big", type=int, default=10_000_000, help="tracks in the memory test")
    ap.add_argument("--chunk", type=int, default=262_144)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--cli", action="store_true", help="also time deepvibe discover end to end")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--memory-child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = ap.parse_args(argv)
    if args.memory_child:
        memory_child(args.memory_child[0], int(args.memory_child[1]))
        return 0
    result: dict[str, object] = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB",
        "load_average_at_start": os.getloadavg(),
    }
    tmp = Path(tempfile.mkdtemp(prefix="bench_discover_"))
    try:
        result["speed"] = bench_speed(tmp, args.tracks, args.chunk, args.repeat)
        print(json.dumps(result["speed"], indent=1), flush=True)
        if args.cli:
            result["cli"] = bench_cli(tmp, tmp / "global_tracks.csv", args.repeat)
            print(json.dumps(result["cli"], indent=1), flush=True)
        (tmp / "global_tracks.csv").unlink()
        if not args.skip_memory:
            sizes = sorted({min(args.tracks, args.big), args.big})
            result["memory"] = bench_memory(tmp, sizes, sorted({65_536, args.chunk, 1_048_576}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["load_average_at_end"] = os.getloadavg()
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
