"""The discover benchmark runs only the parts asked for."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "bench_discover.py"


def _bench():  # noqa: ANN202 - the script as a module
    spec = importlib.util.spec_from_file_location("bench_discover", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_defect10_bench_discover_runs_the_10m_test_only_when_asked() -> None:
    bench = _bench()
    assert bench.plan(bench.parse_args(["--tracks", "100000"])) == ["speed"]
    asked = bench.parse_args(["--tracks", "100000", "--big", "10000000", "--batch", "2000"])
    assert bench.plan(asked) == ["speed", "batch", "memory"]


def test_bench_discover_compares_the_hybrid_only_when_asked() -> None:
    bench = _bench()
    assert not bench.parse_args(["--batch", "2000"]).hybrid
    assert bench.parse_args(["--batch", "2000", "--hybrid", "--baseline-rev", "none"]).hybrid


def test_bench_discover_finds_a_long_table_user_whose_order_differs(tmp_path: Path) -> None:
    import pandas as pd

    bench = _bench()
    table = {"user": list("aabb"), "rank": [2, 1, 1, 2], "track_id": ["t2", "t1", "t1", "t2"]}
    pd.DataFrame(table).to_parquet(tmp_path / "recs.parquet")
    for user, ids in (("a", ["t1", "t2"]), ("b", ["t2", "t1"])):  # b's order differs
        (tmp_path / "alone" / user).mkdir(parents=True)
        pd.DataFrame({"track_id": ids}).to_csv(tmp_path / "alone" / user / f"{user}_1.csv")
        pd.DataFrame({"x": [1]}).to_csv(tmp_path / "alone" / user / f"{user}_1_dna.csv")
    assert bench.same_long_table(tmp_path / "recs.parquet", tmp_path / "alone") == (1, 2)


def test_zipf_credits_give_a_head_artist_a_long_tail_and_the_known_names() -> None:
    import numpy as np

    from deepvibe.data.artists import artist_matrix, split_artist_column

    bench = _bench()
    known = np.array([f"Artist {i}" for i in range(50)], dtype=object)
    cells = bench.zipf_credits(np.random.default_rng(0), 200_000, 5_000, known)
    keys, credits = artist_matrix(split_artist_column(list(cells)))
    sizes = np.sort(np.asarray(credits.sum(axis=0)).ravel())[::-1]
    assert sizes[0] > 100 * np.median(sizes)  # Zipf: a head and a long tail
    assert 4_000 < len(keys) <= 5_000
    assert 0.12 < np.mean(np.diff(credits.indptr) == 2) < 0.16  # 15% credit a second artist
    assert {"artist 0", "artist 49"} <= set(keys)  # the toy's names among them


def test_bench_discover_blocks_says_how_two_sources_reports_differ(tmp_path: Path) -> None:
    spec = importlib.util.spec_from_file_location(
        "bench_discover_blocks", SCRIPT.with_name("bench_discover_blocks.py")
    )
    assert spec is not None and spec.loader is not None
    blocks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(blocks)
    import numpy as np

    offsets = np.array([0, 3, 5])  # user 0: rows 0-2, user 1: rows 3-4
    ids = np.array(["a", "b", "c", "d", "e"])
    np.savez(tmp_path / "old.npz", dna=np.zeros((2, 3)), offsets=offsets, ids=ids)
    swapped = np.array(["b", "a", "c", "d", "x"])  # user 0 reordered, user 1 a new track
    np.savez(tmp_path / "new.npz", dna=np.full((2, 3), 1e-7), offsets=offsets, ids=swapped)
    said = blocks.compare(tmp_path / "old.npz", tmp_path / "new.npz")
    assert said == "largest DNA change 1e-07; rows differing 60.000%; top 100 differs: 1"
