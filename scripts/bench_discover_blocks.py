"""In-process cost of a batch's blocks: ``Discoverer._block`` for one user, then the same
block sizes as ``discover --all`` (users 0-1,023, 1,024-1,999, then 0-1,023 again), hybrid
(``--source db``) and DNA-only, each in a fresh process, so the first block carries what a
batch does once (the hybrid's scan index, built, or read back where an earlier run saved it
beside the database cache; first-touched memory) and the later ones do not. ``--src``
(repeatable): other package sources to time the same way, e.g. a ``git archive`` of an
older commit, for an A/B in one run; with two or more, the first round's reports of users
0-1,023 are compared with the first source's (largest DNA change, share of report rows that
differ, users whose top 100 differ as a set).

The data are ``bench_discover.py``'s (toy data, ``--zipf-artists`` as there, a tiny model),
built once under ``--workdir`` and reused when it exists.

    python scripts/bench_discover_blocks.py --tracks 1000000 --zipf-artists 50000 --rounds 3
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

SCRIPTS = Path(__file__).resolve().parent
BLOCK = 1024  # users per block, as discover --all's default
TOP_N = 1000  # rows per report, the default top_n


def child(source: str, root: Path, n_users: int, dump: Path) -> None:
    """Print the (wall, CPU) seconds of each block, as JSON, for one source; save the DNA
    and report rows of users 0-1,023 to ``dump``."""
    from deepvibe.config import config_from_dict
    from deepvibe.discovery.discoverer import Discoverer
    from deepvibe.discovery.users import align_users, load_training_users
    from deepvibe.training.checkpoint import load_checkpoint

    os.chdir(root)
    ck = load_checkpoint(Path("models/hybrid_deepvibe_best.pth"))
    cfg = config_from_dict(ck.config, source="checkpoint")
    found = Discoverer.from_checkpoint(ck, cfg, source=source, progress=False)
    space = found.hybrid.space.track_ids if found.hybrid is not None else None
    users = align_users(load_training_users(cfg.data), ck.track_ids, None, "bench", space)
    blocks = [slice(0, 1), slice(0, BLOCK), slice(BLOCK, n_users), slice(0, BLOCK)]
    times = []
    for i, block in enumerate(blocks):
        t, c = time.perf_counter(), time.process_time()
        out = found._block(users.select(block), TOP_N, "standard")
        times.append((time.perf_counter() - t, time.process_time() - c))
        if i == 1:
            ids = out.tracks.column("track_id").to_numpy(zero_copy_only=False)
            np.savez(dump, dna=out.dna, offsets=out.offsets, ids=ids[out.row_track].astype(str))
    print(json.dumps(times))


def compare(old: Path, new: Path) -> str:
    """How the reports saved by two children differ."""
    a, b = np.load(old), np.load(new)
    dna = float(np.abs(a["dna"] - b["dna"]).max())
    if not np.array_equal(a["offsets"], b["offsets"]):
        return f"largest DNA change {dna:.2g}; report lengths differ"
    rows = float(np.mean(a["ids"] != b["ids"]))
    bounds = zip(a["offsets"][:-1], a["offsets"][1:], strict=True)  # each user's rows
    top = sum(
        set(a["ids"][s : min(s + 100, e)]) != set(b["ids"][s : min(s + 100, e)]) for s, e in bounds
    )
    return f"largest DNA change {dna:.2g}; rows differing {rows:.3%}; top 100 differs: {top}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tracks", type=int, default=1_000_000)
    ap.add_argument("--zipf-artists", type=int, default=50_000)
    ap.add_argument("--users", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--src", action="append", default=[], type=Path, help="package sources")
    ap.add_argument("--workdir", type=Path, default=None, help="data kept here (default: temp)")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    ap.add_argument("--dump", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child[0], Path(args.child[1]), args.users, Path(args.dump))
        return 0
    sys.path.insert(0, str(SCRIPTS))
    import bench_discover as bench

    temp = Path(tempfile.mkdtemp(prefix="deepvibe-blocks-"))
    root = args.workdir or temp
    if not (root / "models" / "hybrid_deepvibe_best.pth").exists():
        bench.make_database(root, args.tracks, args.users, args.zipf_artists)
        bench.run_cli(root, ["train", *bench.TINY_MODEL], src=None)
    sources = args.src or [None]
    times: dict[tuple[str, str], list] = {}
    for r in range(args.rounds):  # interleaved, so a change of load hits every variant
        for j, src in enumerate(sources):
            for source in ("dna", "db"):
                dump = temp / f"{source}-{j}-{r}.npz"
                env = {**os.environ, "PYTHONWARNINGS": "ignore"}
                if src is not None:
                    env["PYTHONPATH"] = str(src)
                cmd = [sys.executable, __file__, "--users", str(args.users), "--dump",
                       str(dump), "--child", source, str(root)]  # fmt: skip
                out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
                times.setdefault((str(src or "this checkout"), source), []).append(
                    json.loads(out.stdout.strip().splitlines()[-1])
                )
    print(f"Discoverer._block, {args.tracks:,} tracks, {args.zipf_artists:,} Zipf artists, "
          f"k = {TOP_N}, wall s (min-max over {args.rounds} rounds); CPU s median")  # fmt: skip
    labels = ["1 user", f"users 0-{BLOCK - 1}", f"users {BLOCK}-{args.users - 1}", "0-1023 again"]
    for (src, source), runs in times.items():
        wall, cpu = np.asarray(runs)[..., 0], np.asarray(runs)[..., 1]  # (rounds, blocks)
        cells = [
            f"{label}: {wall[:, i].min():.2f}-{wall[:, i].max():.2f} ({np.median(cpu[:, i]):.2f})"
            for i, label in enumerate(labels)
        ]
        print(f"{src} [{source}] " + "; ".join(cells), flush=True)
    for j in range(1, len(sources)):
        for source in ("dna", "db"):
            diff = compare(temp / f"{source}-0-0.npz", temp / f"{source}-{j}-0.npz")
            print(f"{sources[j]} against {sources[0]} [{source}]: {diff}")
    shutil.rmtree(temp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
