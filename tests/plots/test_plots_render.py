"""The plots need no display and leave the process's matplotlib backend alone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import deepvibe

SCRIPT = """
import sys
from deepvibe.plots.dna import plot_dna
plot_dna(["energy"], [0.5], [50.0], sys.argv[1])
assert "matplotlib.pyplot" not in sys.modules, "pyplot was imported"
"""


def test_plots_without_a_display_whatever_mplbackend_says(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env["MPLBACKEND"] = "TkAgg"  # a GUI backend: using it without a display would fail
    src = str(Path(deepvibe.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))
    out = tmp_path / "dna.png"
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(out)], env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
