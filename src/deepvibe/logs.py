"""Logging set-up: short lines on stderr, a detailed event log in a file during training."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path

LOGGER = "deepvibe"


def configure_console(verbose: bool = False) -> None:
    logger = logging.getLogger(LOGGER)
    logger.setLevel(logging.DEBUG)
    for h in list(logger.handlers):
        if getattr(h, "_deepvibe_console", False):
            logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.DEBUG if verbose else logging.INFO)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    handler._deepvibe_console = True  # type: ignore[attr-defined]
    logger.addHandler(handler)
    logger.propagate = False


@contextlib.contextmanager
def file_log(path: str | Path) -> Iterator[None]:
    """Append every deepvibe event (DEBUG and up) to ``path`` while the block runs."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(p, encoding="utf-8")
    handler.setLevel(logging.DEBUG)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger = logging.getLogger(LOGGER)
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()
