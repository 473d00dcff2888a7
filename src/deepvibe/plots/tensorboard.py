"""TensorBoard scalars per epoch, for users who install ``deepvibe[tensorboard]``.

A thin wrapper around ``torch.utils.tensorboard.SummaryWriter``: :meth:`ScalarWriter.write`
takes one training-log row (a dict of numbers) and records each number at ``step = epoch``.
Keys starting ``val_`` go under ``validation/``, everything else under ``train/``; ``epoch``
and ``step`` are the x axis, not scalars. Values that are not finite numbers are skipped.
"""

from __future__ import annotations

import logging
import math
import numbers
import os
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

from deepvibe.errors import ConfigError

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'deepvibe[tensorboard]'"
_AXES = {"epoch", "step"}


def _summary_writer_class() -> Any:
    """``SummaryWriter``, or a one-line ConfigError when the tensorboard package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:  # torch raises ImportError when tensorboard is absent
        raise ConfigError(
            f"TensorBoard logging needs the tensorboard package: {INSTALL_HINT}"
        ) from exc
    return SummaryWriter


class ScalarWriter:
    """Write one dict of scalars per epoch to a TensorBoard event file in ``log_dir``.

    Use as a context manager (closing flushes the event file)::

        with ScalarWriter("runs/tb") as tb:
            tb.write(epoch, {"reconstruction": 81.2, "val_ndcg@100": 0.41})
    """

    def __init__(self, log_dir: str | os.PathLike[str]) -> None:
        writer_class = _summary_writer_class()
        self.log_dir = Path(log_dir)
        self._writer = writer_class(log_dir=str(self.log_dir))
        log.info("TensorBoard events in %s", self.log_dir)

    def write(self, epoch: int, scalars: Mapping[str, Any]) -> dict[str, float]:
        """Record every finite number in ``scalars`` at step ``epoch``; returns tag -> value."""
        written: dict[str, float] = {}
        for key, value in scalars.items():
            if key in _AXES or isinstance(value, bool) or not isinstance(value, numbers.Real):
                continue
            v = float(value)
            if not math.isfinite(v):
                continue
            tag = f"validation/{key[4:]}" if key.startswith("val_") else f"train/{key}"
            self._writer.add_scalar(tag, v, global_step=int(epoch))
            written[tag] = v
        return written

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()

    def __enter__(self) -> ScalarWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
