"""One rank of a test job: the deepvibe CLI under an audit hook (not a test module itself).

torchrun (or the test, setting RANK and friends by hand) runs ``python dist_worker.py ARGS``.

- ``DEEPVIBE_AUDIT_ROOT``/``DEEPVIBE_AUDIT_OUT``: every file this rank creates, opens for
  writing, renames, links or removes under the root is listed in ``OUT/writes_rank<R>.txt``
  when the process exits.
- ``DEEPVIBE_TEST_SIGINT_AT=K``: rank 1 sends SIGINT to its parent (torchrun) at its K-th loss,
  the way a Ctrl-C in the terminal reaches torchrun.
"""

from __future__ import annotations

import atexit
import os
import signal
import sys
from pathlib import Path

import torch

torch.set_num_threads(1)
RANK = os.environ.get("RANK", "0")
ROOT = os.environ.get("DEEPVIBE_AUDIT_ROOT")
WRITES: list[str] = []
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
_PATH_EVENTS = {"os.rename": 1, "os.link": 1, "os.mkdir": 0, "os.remove": 0, "os.rmdir": 0}


def _under_root(path: object) -> bool:
    if not isinstance(path, (str, bytes, os.PathLike)):
        return False
    return os.path.realpath(os.fsdecode(path)).startswith(os.path.realpath(ROOT or "/") + os.sep)


def _audit(event: str, args: tuple) -> None:
    if event == "open":
        path, mode, flags = args
        writing = bool(mode and set(str(mode)) & set("wax+")) or bool((flags or 0) & _WRITE_FLAGS)
        if writing and _under_root(path):
            WRITES.append(f"open {os.fsdecode(path)}")
    elif event in _PATH_EVENTS and _under_root(args[_PATH_EVENTS[event]]):
        WRITES.append(f"{event} {os.fsdecode(args[_PATH_EVENTS[event]])}")


def _report() -> None:
    out = Path(os.environ["DEEPVIBE_AUDIT_OUT"]) / f"writes_rank{RANK}.txt"
    out.write_text("".join(f"{w}\n" for w in WRITES), encoding="utf-8")


if ROOT:
    sys.addaudithook(_audit)
    atexit.register(_report)

if os.environ.get("DEEPVIBE_TEST_SIGINT_AT") and RANK == "1":
    import deepvibe.training.train as train_module

    at, calls, original = int(os.environ["DEEPVIBE_TEST_SIGINT_AT"]), [0], train_module.vae_loss

    def _loss_then_ctrl_c(*args: object, **kwargs: object) -> object:
        calls[0] += 1
        if calls[0] == at:
            os.kill(os.getppid(), signal.SIGINT)
        return original(*args, **kwargs)

    train_module.vae_loss = _loss_then_ctrl_c

from deepvibe.cli import app  # noqa: E402

app()
