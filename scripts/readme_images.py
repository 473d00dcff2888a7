"""Remake the README's pictures (docs/img/) from toy data the package generates.

    python scripts/readme_images.py            # a few minutes on 2 cores

Synth -> train (toy config, database validation) -> discover user_1 --html, then copies the
training curves and user_1's Vibe DNA chart into docs/img/.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path) -> None:
    subprocess.run([sys.executable, "-m", "deepvibe", *args], cwd=cwd, check=True)


def main() -> None:
    out = ROOT / "docs" / "img"
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run("synth", "--out", "data", "--seed", "0", cwd=work)
        run("train", "--config", str(ROOT / "configs" / "toy.yaml"), "--no-progress", cwd=work)
        run("discover", "user_1", "--html", cwd=work)
        shutil.copyfile(work / "logs" / "training_curves.png", out / "training_curves.png")
        dna = next((work / "recommendations" / "user_1").glob("*_standard.png"))
        shutil.copyfile(dna, out / "vibe_dna.png")
    print(f"wrote {out / 'training_curves.png'} and {out / 'vibe_dna.png'}")


if __name__ == "__main__":
    main()
