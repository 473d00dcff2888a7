"""The files a training run writes: checkpoints, snapshots and the per-epoch CSV log."""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import os
import shutil
from pathlib import Path

from deepvibe.config import Config
from deepvibe.fileio import atomic_path, ensure_writable_dir, write_text_atomic

log = logging.getLogger(__name__)

# ``validation`` is the validator's name (a string); every other column is a number. Metrics a
# validator reports beyond these three get their own ``val_*`` columns after ``validation``.
LOG_COLUMNS = (
    "epoch", "step", "loss", "reconstruction", "audio", "kl", "beta", "lr",
    "val_ndcg@100", "val_recall@20", "val_recall@50", "seconds", "validation",
)  # fmt: skip
_TEXT_COLUMNS = ("validation",)

Row = dict[str, float | str]


class RunFiles:
    def __init__(self, cfg: Config) -> None:
        self.best = cfg.best_checkpoint_path
        self.snapshots = cfg.snapshots_dir
        self.last = self.snapshots / "last.pth"
        self.csv = Path(cfg.paths.logs_dir) / "hybrid_training.log"

    def prepare(self) -> None:
        """Fail now, not after the first hour-long epoch, if a folder cannot be written."""
        ensure_writable_dir(self.snapshots, "checkpoint folder (paths.models_dir)")
        ensure_writable_dir(self.csv.parent, "log folder (paths.logs_dir)")
        self.remove_stale_temp_files()

    def remove_stale_temp_files(self) -> None:
        """Delete temp files that a killed run left mid-write (SIGKILL runs no cleanup).

        Only the hidden names :func:`deepvibe.fileio.atomic_path` gives this run's own files
        are touched; one training per output folder is assumed, as for ``last.pth`` itself.
        """
        patterns = [
            (self.snapshots, ".last.pth.*.tmp"),
            (self.snapshots, ".epoch_*.pth.*.tmp"),
            (self.best.parent, f".{self.best.name}.*.tmp"),
            (self.csv.parent, f".{self.csv.name}.*.tmp"),
        ]
        stale = [p for folder, pattern in patterns for p in folder.glob(pattern) if p.is_file()]
        for p in stale:
            with contextlib.suppress(OSError):
                p.unlink()
        if stale:
            log.info("removed %d temp files left by an interrupted write", len(stale))

    def snapshot(self, epoch: int) -> Path:
        return self.snapshots / f"epoch_{epoch:04d}.pth"

    def keep_snapshot(self, epoch: int) -> Path:
        """Keep the just-written ``last.pth`` as ``epoch_NNNN.pth`` too, without serialising
        the model a second time: a hard link (``last.pth`` is only ever replaced by rename,
        so the link keeps this epoch's bytes), or a copy where links are not supported."""
        target = self.snapshot(epoch)
        with atomic_path(target) as tmp:
            tmp.unlink()
            try:
                os.link(self.last, tmp)
            except OSError:
                shutil.copyfile(self.last, tmp)
        return target

    def write_history(self, history: list[Row]) -> None:
        extra = [k for row in history for k in row if k.startswith("val_") and k not in LOG_COLUMNS]
        columns = list(LOG_COLUMNS) + list(dict.fromkeys(extra))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: _fmt(row.get(k, "")) for k in columns})
        write_text_atomic(self.csv, buf.getvalue())

    def read_history(self, up_to_epoch: int) -> list[Row]:
        """Rows of the training log up to ``up_to_epoch``; an unreadable log is skipped."""
        if not self.csv.exists():
            return []
        try:
            with open(self.csv, encoding="utf-8") as fh:
                rows = list(csv.DictReader(fh))
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            log.warning("%s: cannot read the training log (%s); starting a new one", self.csv, exc)
            return []
        out = []
        for r in rows:
            try:
                parsed: Row = {
                    k: v if k in _TEXT_COLUMNS else float(v)
                    for k, v in r.items()
                    if isinstance(k, str) and (k in LOG_COLUMNS or k.startswith("val_")) and v
                }
            except (ValueError, TypeError):
                continue
            if float(parsed.get("epoch", math.inf)) <= up_to_epoch:
                out.append(parsed)
        return out


def _fmt(v: object) -> object:
    if isinstance(v, float):
        return f"{v:.6g}"
    return v
