"""Helpers for the plots tests: PNG header checks, training-log writers, a tiny PNG.

Plain functions, not fixtures: a ``conftest.py`` here would shadow ``tests/conftest.py`` for
the suite's ``from conftest import small_config`` (tests/ folders have no ``__init__.py``).
"""

from __future__ import annotations

import csv
import io
import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

# The trainer's columns (training.train.LOG_COLUMNS), written the way its write_history does:
# csv.DictWriter, numbers as %.6g, empty validation cells on epochs without validation.
LOG_COLUMNS = (
    "epoch", "step", "loss", "reconstruction", "audio", "kl", "beta", "lr",
    "val_ndcg@100", "val_recall@20", "val_recall@50", "seconds",
)  # fmt: skip


def png_size(data: bytes | Path) -> tuple[int, int]:
    """(width, height) of a PNG, after checking its signature and that IHDR comes first."""
    raw = data.read_bytes() if isinstance(data, Path) else data
    assert raw[:8] == PNG_SIGNATURE, "not a PNG file"
    assert raw[12:16] == b"IHDR", "PNG without a leading IHDR chunk"
    return struct.unpack(">II", raw[16:24])


def check_png(data: bytes | Path) -> tuple[int, int]:
    """Assert a readable PNG (600..4000 px wide, 300..4000 px high); return its size."""
    width, height = png_size(data)
    assert 600 <= width <= 4000, width
    assert 300 <= height <= 4000, height
    return width, height


def log_rows(n: int, best: int, eval_every: int = 1) -> list[dict[str, object]]:
    """n epochs of plausible numbers; validation NDCG@100 peaks at epoch ``best``."""
    rows = []
    for e in range(1, n + 1):
        row: dict[str, object] = {
            "epoch": e, "step": 9 * e, "loss": 700 / e + 100, "reconstruction": 690 / e + 80,
            "audio": 15 / e + 1, "kl": 3 * e, "beta": min(1.0, e / 5), "lr": 1e-3,
            "seconds": 0.3,
        }  # fmt: skip
        if e % eval_every == 0 or e == n:
            ndcg = 0.45 - 0.01 * abs(e - best)
            row.update({"val_ndcg@100": ndcg, "val_recall@20": ndcg + 0.1, "val_recall@50": 0.7})
        rows.append(row)
    return rows


def log_text(rows: Sequence[dict[str, object]], columns: Sequence[str] = LOG_COLUMNS) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: f"{v:.6g}" if isinstance(v, float) else v for k, v in row.items()})
    return buf.getvalue()


def write_log(
    folder: Path,
    rows: Sequence[dict[str, object]],
    columns: Sequence[str] = LOG_COLUMNS,
    tail: str = "",
) -> Path:
    """Write ``folder/logs/hybrid_training.log`` (plus ``tail``, e.g. an unfinished line)."""
    path = folder / "logs" / "hybrid_training.log"
    path.parent.mkdir(exist_ok=True)
    path.write_text(log_text(rows, columns) + tail, encoding="utf-8", newline="")
    return path


def tiny_png() -> bytes:
    """A valid 2 x 2 RGB PNG (no matplotlib needed)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    pixels = b"".join(b"\x00" + bytes([200, 30, 30, 30, 200, 30]) for _ in range(2))
    ihdr = struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0)
    idat = zlib.compress(pixels)
    return PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
