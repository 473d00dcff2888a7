"""The layout's promises (issue 9): imports point down the pipeline, and a table is read, an
id normalised and a time parsed in one place each."""

from __future__ import annotations

import ast
import re
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "deepvibe"

# Higher may import lower, never the other way round (equal: only within the same package).
LEVEL = {
    "cli": 7, "__main__": 8,
    "evaluation": 6,
    "discovery": 5, "plots": 5,
    "prepare": 4, "training": 4,
    "data": 3,
    "config": 2, "fileio": 2,
    "ranking": 1, "model": 1, "errors": 0, "logs": 0, "__init__": 0,
}  # fmt: skip


def _package(path: Path) -> str:
    rel = path.relative_to(SRC)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):  # lazy imports inside functions count too
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("deepvibe"):
            found.append(node.module)
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("deepvibe")]
    return found


def test_imports_only_point_down_the_pipeline() -> None:
    upward = []
    for path in sorted(SRC.rglob("*.py")):
        mine = _package(path)
        for module in _imports(path):
            parts = module.split(".")
            if len(parts) < 2:
                continue
            theirs = parts[1]
            if theirs != mine and LEVEL[theirs] >= LEVEL[mine]:
                upward.append(f"{path.relative_to(SRC)} imports {module}")
    assert upward == []


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    bad = tmp_path / "x.py"
    bad.write_text("def f():\n    from deepvibe.discovery.hybrid import why\n")
    assert _imports(bad) == ["deepvibe.discovery.hybrid"]
    assert LEVEL["discovery"] >= LEVEL["data"]  # so data importing it would be reported


def _defined(pattern: str) -> list[str]:
    return [
        f"{p.relative_to(SRC)}"
        for p in sorted(SRC.rglob("*.py"))
        if re.search(pattern, p.read_text(encoding="utf-8"), re.MULTILINE)
    ]


def test_one_table_reader_one_id_normaliser_one_time_parser() -> None:
    # CSV files are parsed in data/tables.py (chunked) and fileio.read_table (small tables)
    assert _defined(r"pd\.read_csv\(") == ["data/tables.py", "fileio.py"]
    assert _defined(r"^def normalize_track_ids?\(") == ["data/ids.py"]
    assert _defined(r"^def parse_times\(") == ["data/time.py"]
    assert _defined(r"^def iter_track_table\(") == ["data/tables.py"]
    assert _defined(r"^def top_k\(") == ["ranking/topk.py"]
