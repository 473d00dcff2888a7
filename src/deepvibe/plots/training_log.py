"""Read the training log CSV (``logs/hybrid_training.log``) into per-epoch arrays.

The trainer rewrites the whole log atomically after every epoch with the columns
``epoch, step, loss, reconstruction, audio, kl, beta, lr, val_ndcg@100, val_recall@20,
val_recall@50, seconds``; the validation columns are empty on epochs without validation
(``train.eval_every``). The reader is deliberately more tolerant than that writer:

* only ``epoch`` is required; any other column may be missing, and unknown columns are kept
  (numeric ones as numbers, others such as a future ``validation`` column as text);
* a last line without its newline is a row still being written and is ignored;
* a row whose field count is wrong or whose epoch is not a number is skipped with a warning;
* empty, ``nan`` or unparseable numbers become NaN;
* an epoch that appears twice (a log appended to after a resume) keeps its last row.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deepvibe.errors import DataError
from deepvibe.fileio import check_input_file, first_line

log = logging.getLogger(__name__)

WHAT = "training log"
BEST_METRIC = "val_ndcg@100"  # the trainer keeps the checkpoint with the highest value


@dataclass(frozen=True)
class TrainingLog:
    """A parsed training log; every array is aligned with ``epochs``."""

    path: Path
    epochs: np.ndarray  # (E,) int64, strictly increasing
    numbers: dict[str, np.ndarray]  # column -> (E,) float64, NaN where empty or unparseable
    text: dict[str, np.ndarray]  # non-numeric column -> (E,) object (str), e.g. "validation"

    def column(self, name: str) -> np.ndarray | None:
        """The numeric column ``name``, or None when the log has no such column."""
        return self.numbers.get(name)

    @property
    def best_epoch(self) -> int | None:
        """The epoch with the highest validation NDCG@100 (the first on ties, as the trainer
        keeps it); None when the log has no finite validation NDCG@100."""
        ndcg = self.column(BEST_METRIC)
        if ndcg is None or not np.isfinite(ndcg).any():
            return None
        return int(self.epochs[int(np.nanargmax(ndcg))])


def read_training_log(path: str | os.PathLike[str]) -> TrainingLog:
    """Parse the training log at ``path``; DataError (naming the file) when it cannot be."""
    p = check_input_file(path, WHAT)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise DataError(f"{p}: cannot read the {WHAT} ({exc.strerror})") from exc
    if b"\x00" in raw:
        raise DataError(f"{p}: the {WHAT} is binary, not CSV text; give logs/hybrid_training.log")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: the {WHAT} is not UTF-8 text ({first_line(exc)})") from exc
    header, rows = _complete_rows(p, text)
    return _to_arrays(p, header, rows)


def _complete_rows(p: Path, text: str) -> tuple[list[str], list[list[str]]]:
    """The header and the data rows, without a last line that is still being written."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith(("\n", "\r")) and len(lines) > 1:
        log.debug("%s: ignoring the unfinished last line %r", p, lines[-1][:80])
        lines = lines[:-1]
    try:
        parsed = list(csv.reader(io.StringIO("".join(lines))))
    except csv.Error as exc:
        raise DataError(f"{p}: cannot parse the {WHAT} as CSV ({first_line(exc)})") from exc
    parsed = [r for r in parsed if r]  # blank lines
    if not parsed:
        raise DataError(f"{p}: the {WHAT} has no header line")
    header = [h.strip() for h in parsed[0]]
    if "epoch" not in header:
        shown = ", ".join(header[:8]) + (", ..." if len(header) > 8 else "")
        raise DataError(
            f"{p}: the {WHAT} has no 'epoch' column (columns: {shown}); is this "
            "logs/hybrid_training.log?"
        )
    return header, parsed[1:]


def _to_arrays(p: Path, header: list[str], rows: list[list[str]]) -> TrainingLog:
    e_col = header.index("epoch")
    by_epoch: dict[int, list[str]] = {}
    for number, row in enumerate(rows, start=2):
        epoch = _number(row[e_col]) if len(row) == len(header) else math.nan
        if not math.isfinite(epoch):
            log.warning("%s: line %d is not a complete epoch row; skipped", p, number)
            continue
        by_epoch[int(epoch)] = row  # a repeated epoch keeps its last row
    if not by_epoch:
        raise DataError(f"{p}: the {WHAT} has a header but no complete epoch rows yet")
    epochs = np.array(sorted(by_epoch), dtype=np.int64)
    cells = [by_epoch[int(e)] for e in epochs]
    numbers: dict[str, np.ndarray] = {}
    text: dict[str, np.ndarray] = {}
    for j, name in enumerate(header):
        if name == "epoch" or not name:
            continue
        column = [r[j].strip() for r in cells]
        values = np.array([_number(v) for v in column], dtype=np.float64)
        # numeric unless some non-empty cell is not a number (e.g. validation="test")
        if all(
            v == "" or not math.isnan(x) or v.lower() == "nan"
            for v, x in zip(column, values, strict=True)
        ):
            numbers[name] = values
        else:
            text[name] = np.array(column, dtype=object)
    return TrainingLog(p, epochs, numbers, text)


def _number(cell: str) -> float:
    try:
        return float(cell)
    except ValueError:
        return math.nan
