"""Data-parallel training on ``torch.distributed``, launched by ``torchrun``.

``torchrun --nproc-per-node N -m deepvibe train ...`` (or any launcher that sets ``RANK``,
``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``) starts N copies of the same
command. Each joins the process group (gloo on the CPU, NCCL on CUDA), reads the same data
files and builds the same model; DistributedDataParallel averages the gradients.

Division of the work, all pure functions of (seed, epoch, rank, world size):

- the epoch's batch order is the single-process one (``train._epoch_generators``), and global
  batch b, ``train.batch_size`` rows, is cut into ``world`` contiguous shards
  (:func:`shard_batch`); each rank's loss is weighted by its share of the global batch, so
  DDP's mean of the ranks' gradients is the gradient of the global batch's mean loss, as in
  one process: same batches, same number of steps, same beta and learning-rate schedule;
- each rank draws its own input-dropout and reparameterisation noise (:func:`rank_noise`), so
  a run with N processes is reproducible, but is not bitwise the run with another N.

Rank 0 alone validates, logs and writes checkpoints; after each epoch the others take its
validation figures (a collective that doubles as the barrier). Ctrl-C or SIGTERM on any rank
stops every rank at the same step (the stop flag travels in each step's all-reduce) and rank 0
writes a snapshot holding every rank's random streams: ``--resume`` with the same number of
processes continues bitwise, with another number it continues correctly with fresh streams.

A rank that dies (killed, out of memory, machine gone) makes the others stop with one line
that names it: every rank bumps a counter in the rendezvous store from a daemon thread
(:class:`_Health`); a failed collective is explained by the counters that stopped, and a rank
whose counter is still for ``train.dist_timeout_s`` is declared dead by the watchdog even
where the collective itself would hang (NCCL).

:func:`shard_users` is the split for sharded batch discovery (``discover --all``).
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from deepvibe.errors import ConfigError, DeepVibeError
from deepvibe.fileio import write_text_atomic
from deepvibe.model.device import resolve_device

__all__ = [
    "RankFailed",
    "Ranks",
    "SINGLE",
    "Shard",
    "current",
    "env_ranks",
    "launch_local",
    "rank_noise",
    "session",
    "shard_batch",
    "shard_users",
]

log = logging.getLogger(__name__)

# Tests set this to a folder: each rank then writes rank{r}.txt, "epoch sha256" of its weights
# after every epoch, to show that the ranks hold the same model.
WEIGHT_HASHES_ENV = "DEEPVIBE_DEBUG_WEIGHT_HASHES"
BEAT_INTERVAL_S = 0.5  # heartbeat period; a failed collective waits up to 6 periods for news
_COMM_MARKERS = ("gloo", "nccl", "connection", "timed out", "timeout", "peer", "socket")
_EXIT_OK, _EXIT_ERROR = 1, 2

T = TypeVar("T")


class RankFailed(DeepVibeError):
    """Another rank died or stopped answering; this rank stops too."""


# ---------------------------------------------------------------------------- pure functions


def _block(n: int, rank: int, world: int) -> tuple[int, int]:
    """[lo, hi) of part ``rank`` when n items are cut into ``world`` contiguous parts whose
    sizes differ by at most one (the first n % world parts are one longer), as
    ``np.array_split``."""
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not one of the {world} ranks (0 .. {world - 1})")
    base, extra = divmod(n, world)
    lo = rank * base + min(rank, extra)
    return lo, lo + base + (rank < extra)


@dataclass(frozen=True)
class Shard:
    """One rank's part of a global batch."""

    rows: np.ndarray  # (>= 1,) training rows this rank runs through the model
    size: int  # how many of them count: 0 when the global batch has fewer rows than ranks
    weight: float  # loss multiplier: size * world / global batch size


def shard_batch(batch_rows: np.ndarray, rank: int, world: int) -> Shard:
    """Rank ``rank``'s contiguous share of global batch ``batch_rows`` (a pure function).

    With ``weight`` on each rank's mean loss, the mean over ranks of the gradients (what DDP
    computes) is the gradient of the mean loss over the whole batch. A rank left without a row
    (a last batch smaller than the world) runs the batch's first row with weight 0, because
    every rank must take part in every gradient all-reduce.
    """
    n = len(batch_rows)
    if n == 0:
        raise ValueError("an empty global batch cannot be sharded")
    lo, hi = _block(n, rank, world)
    if hi == lo:
        return Shard(np.asarray(batch_rows[:1]), 0, 0.0)
    return Shard(np.asarray(batch_rows[lo:hi]), hi - lo, (hi - lo) * world / n)


S = TypeVar("S", bound=Sequence[Any])


def shard_users(user_ids: S, rank: int, world: int) -> S:
    """Rank ``rank``'s contiguous block of ``user_ids`` (list, array, pandas Index or Series;
    the same type comes back). Concatenating the blocks of ranks 0 .. world-1 gives back
    ``user_ids`` in order, so parts written per rank combine into the single-process output."""
    lo, hi = _block(len(user_ids), rank, world)
    if hasattr(user_ids, "iloc"):  # a Series slices by position only through iloc
        return user_ids.iloc[lo:hi]  # type: ignore[attr-defined,no-any-return]
    return user_ids[lo:hi]  # type: ignore[return-value]


def rank_noise(seed: int, epoch: int, rank: int, world: int) -> torch.Generator:
    """The input-dropout generator of ``rank`` in ``epoch``; also seeds torch's global stream
    (reparameterisation noise, AlphaDropout). Distinct for every (seed, epoch, rank, world)."""
    rng = np.random.default_rng([seed, 1000, epoch, world, rank])
    noise = torch.Generator().manual_seed(int(rng.integers(2**62)))
    torch.manual_seed(int(rng.integers(2**62)))
    return noise


def env_ranks() -> tuple[int, int, int]:
    """(rank, world size, local rank) from torchrun's environment; (0, 1, 0) without it."""
    names = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
    raw = {k: os.environ.get(k) for k in names}
    if raw["WORLD_SIZE"] is None:
        return 0, 1, 0
    try:
        rank, world = int(raw["RANK"] or 0), int(raw["WORLD_SIZE"] or 1)
        local = int(raw["LOCAL_RANK"] if raw["LOCAL_RANK"] is not None else rank)
    except ValueError:
        shown = ", ".join(f"{k}={v!r}" for k, v in raw.items())
        raise ConfigError(f"torchrun environment: expected integers, got {shown}") from None
    if world < 1 or not 0 <= rank < world or local < 0:
        raise ConfigError(f"torchrun environment: RANK {rank} is not in 0 .. WORLD_SIZE-1 {world}")
    return rank, world, local


# ------------------------------------------------------------------------------- health


class _Health:
    """Heartbeats through the rendezvous store, on a second client connection of its own.

    Each rank adds 1 to ``beat/<rank>`` every ``BEAT_INTERVAL_S`` and reads the others'
    counters and exit marks; ``last_change[r]`` is when rank r's counter last moved (monotonic
    clock of this machine, so no clock needs to agree across machines). A rank that is still
    for ``timeout_s`` without an exit mark is dead: the watchdog prints one line and ends this
    process, because a collective (NCCL) may never return.
    """

    def __init__(self, rank: int, world: int, timeout_s: float) -> None:
        self.rank, self.world, self.timeout_s = rank, world, timeout_s
        self.host, self.port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
        # under torchrun the store lives in the launcher; launched by hand rank 0 hosts it
        self.agent_store = os.environ.get("TORCHELASTIC_USE_AGENT_STORE", "").lower() == "true"
        self.prefix = f"deepvibe/{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/"
        self.store = dist.TCPStore(
            self.host, self.port, is_master=False, wait_for_workers=False,
            timeout=datetime.timedelta(seconds=max(5.0, min(timeout_s, 30.0))),
        )  # fmt: skip
        now = time.monotonic()
        self.others = [r for r in range(world) if r != rank]
        self.counts = dict.fromkeys(self.others, -1)
        self.last_change = dict.fromkeys(self.others, now)
        self.exits = dict.fromkeys(self.others, 0)
        self.store_down_since: float | None = None
        self.read_at = now  # when the latest read of the counters began
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="deepvibe-heartbeat", daemon=True)

    def _key(self, kind: str, rank: int) -> str:
        return f"{self.prefix}{kind}/{rank}"

    def start(self) -> _Health:
        self._beat()
        self._thread.start()
        return self

    def _beat(self) -> None:
        """One heartbeat: bump this rank's counter, read the others' (``add 0`` reads without
        blocking on a key that is not there yet). A counter that moved since the previous read
        proves its rank was alive after that read began, not later: that is what
        ``last_change`` keeps, so a beat sent just before a kill is not taken for life after."""
        started = time.monotonic()
        if self.store_down_since is not None:  # a client does not reconnect: stop asking
            return
        try:
            self.store.add(self._key("beat", self.rank), 1)
            seen = {r: self.store.add(self._key("beat", r), 0) for r in self.others}
            exits = {r: self.store.add(self._key("exit", r), 0) for r in self.others}
        except (RuntimeError, dist.DistError):  # the store is gone (its host died)
            with self._lock:
                self.store_down_since = self.store_down_since or time.monotonic()
            return
        with self._lock:
            self.store_down_since = None
            for r, n in seen.items():
                if n != self.counts[r]:
                    self.counts[r], self.last_change[r] = n, self.read_at
            self.exits.update(exits)
            self.read_at = started

    def _loop(self) -> None:
        """The watchdog: a rank silent for the whole timeout ends this process (a failed
        collective usually reports it much sooner, through :meth:`wait_for_news`)."""
        while not self._stop.wait(BEAT_INTERVAL_S):
            self._beat()
            dead = self.dead(since=time.monotonic() - self.timeout_s, errors_now=False)
            if dead:
                self._die(f"{self.describe(dead)}: no heartbeat for {self.timeout_s:g} s")

    def dead(self, since: float, errors_now: bool = True) -> list[str]:
        """Descriptions of the ranks that showed no sign of life since ``since`` (monotonic):
        silent and not finished; with ``errors_now`` also those that exited with an error."""
        with self._lock:
            if self.store_down_since is not None and self.store_down_since <= since:
                return [self._store_owner()]
            found = []
            for r in self.others:
                silent = self.last_change[r] <= since
                if self.exits[r] == _EXIT_ERROR and (errors_now or silent):
                    found.append(f"rank {r} stopped with an error (see its message)")
                elif self.exits[r] == 0 and silent:
                    found.append(f"rank {r} stopped responding (killed, or its machine is gone)")
            return found

    def _store_owner(self) -> str:
        if self.agent_store:
            return f"the torchrun launcher holding the store at {self.host}:{self.port} is gone"
        return f"rank 0 (which hosts the store at {self.host}:{self.port}) stopped responding"

    def describe(self, dead: list[str]) -> str:
        return f"rank {self.rank} of {self.world}: " + "; ".join(dead)

    def wait_for_news(self, window_s: float) -> list[str]:
        """After a failed collective: the ranks that show no sign of life from now until
        ``window_s`` has passed (returns early once every rank has moved or exited)."""
        failed_at = time.monotonic()
        while time.monotonic() - failed_at < window_s:
            with self._lock:
                quiet = [
                    r for r in self.others
                    if self.exits[r] == 0 and self.last_change[r] <= failed_at
                ]  # fmt: skip
                errored = any(self.exits[r] == _EXIT_ERROR for r in self.others)
            if not quiet or errored:
                break
            time.sleep(BEAT_INTERVAL_S / 4)
        return self.dead(since=failed_at)

    def _die(self, message: str) -> None:
        sys.stderr.write(f"error: {message}; stopping this rank too\n")
        sys.stderr.flush()
        os._exit(1)

    def stop(self, ok: bool) -> None:
        """Leave an exit mark (finished, or stopped by an error) and stop beating."""
        self._stop.set()
        self._thread.join(timeout=5)
        if self.store_down_since is None:
            with contextlib.suppress(RuntimeError, dist.DistError):
                self.store.add(self._key("exit", self.rank), _EXIT_OK if ok else _EXIT_ERROR)


# -------------------------------------------------------------------------------- ranks


@dataclass(frozen=True)
class Ranks:
    """This process's place in the group, and the collectives training needs.

    ``SINGLE`` (world 1) turns every method into the identity, so one process trains exactly
    as without this module.
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    timeout_s: float = 300.0
    comm_device: torch.device = torch.device("cpu")  # where collective tensors live
    health: _Health | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def place(self, device: torch.device) -> torch.device:
        """A CUDA device becomes this process's own GPU (``cuda:LOCAL_RANK``)."""
        if self.distributed and device.type == "cuda":
            # gloo on the CPU where the group found too few GPUs (see comm_kind)
            on_gpu = self.comm_device.type == "cuda"
            return torch.device("cuda", self.local_rank) if on_gpu else torch.device("cpu")
        return device

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around ``model`` (which keeps its own parameters, so the
        optimiser and checkpoints go on using ``model``); ``model`` itself in one process."""
        if not self.distributed:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.local_rank] if self.comm_device.type == "cuda" else None
        with self.guard():  # the constructor broadcasts rank 0's weights
            return DistributedDataParallel(model, device_ids=ids)

    def shard(self, batch_rows: np.ndarray) -> Shard:
        if not self.distributed:
            return Shard(batch_rows, len(batch_rows), 1.0)
        return shard_batch(batch_rows, self.rank, self.world)

    def epoch_noise(self, seed: int, epoch: int, noise: torch.Generator) -> torch.Generator:
        """This rank's noise for ``epoch``; ``noise`` (the single-process stream) alone."""
        return rank_noise(seed, epoch, self.rank, self.world) if self.distributed else noise

    def combine(
        self, values: list[float], shard: Shard, stop: bool
    ) -> tuple[list[float], int, bool]:
        """The batch's mean loss terms over all ranks, its global size, and whether any rank
        was asked to stop: one all-reduce per step, so every rank sees the same numbers (a
        NaN anywhere stops all) and all stop at the same step."""
        if not self.distributed:
            return values, shard.size, stop
        packed = [v * shard.size for v in values] + [float(shard.size), float(stop)]
        total = torch.tensor(packed, dtype=torch.float64, device=self.comm_device)
        dist.all_reduce(total)
        out = total.tolist()
        size = int(out[-2])
        return [v / size for v in out[:-2]], size, out[-1] > 0

    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        found: list[Any] = [None] * self.world
        dist.all_gather_object(found, obj)
        return found

    def from_main(self, obj: T, flag: bool) -> tuple[T, bool]:
        """Rank 0's ``obj`` and whether any rank raised ``flag``; waits for every rank."""
        if not self.distributed:
            return obj, flag
        found = self.gather((obj if self.is_main else None, flag))
        return found[0][0], any(f for _, f in found)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def rng_states(self, noise: torch.Generator, device: torch.device) -> list[dict] | None:
        """Every rank's random streams (for a mid-epoch snapshot); None in one process."""
        if not self.distributed:
            return None
        cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        return self.gather(
            {"noise_rng": noise.get_state(), "torch_rng": torch.get_rng_state(), "cuda_rng": cuda}
        )

    def own_rng(self, state: dict[str, Any]) -> dict[str, Any] | None:
        """This rank's streams in a mid-epoch snapshot, or None when the snapshot was written
        by another number of processes (the run then goes on with fresh streams)."""
        saved = int(state.get("world", 1))
        if saved != self.world:
            if self.is_main:
                log.warning(
                    "the snapshot was written by %d process(es), this run has %d: it continues "
                    "correctly but with other random streams, so not bitwise as it would have",
                    saved, self.world,
                )  # fmt: skip
            return None
        return state if saved == 1 else state["ranks"][self.rank]

    def record_weights(self, model: nn.Module, epoch: int) -> None:
        """Under ``DEEPVIBE_DEBUG_WEIGHT_HASHES=<folder>`` only: append this rank's weight hash
        to ``<folder>/rank<r>.txt`` (a test checks that the ranks agree)."""
        folder = os.environ.get(WEIGHT_HASHES_ENV)
        if not folder:
            return
        digest = hashlib.sha256()
        for name, tensor in sorted(model.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        path = Path(folder) / f"rank{self.rank}.txt"
        before = path.read_text(encoding="utf-8") if path.exists() else ""
        write_text_atomic(path, f"{before}{epoch} {digest.hexdigest()}\n")

    @contextlib.contextmanager
    def guard(self, kept: Callable[[], str] | None = None) -> Iterator[None]:
        """Turn a failed collective into :class:`RankFailed` naming the rank that died.

        ``kept()`` says where the last good state is. Errors that are not about the group
        (bugs) pass unchanged.
        """
        try:
            yield
        except RuntimeError as exc:
            if not self.distributed or isinstance(exc, DeepVibeError):
                raise
            message = self.explain(exc)
            if message is None:
                raise
            where = f"; {kept()}" if kept is not None else ""
            raise RankFailed(f"{message}{where}") from exc

    def explain(self, exc: BaseException) -> str | None:
        """One line on a failed collective, or None when ``exc`` is not about the group."""
        text = " ".join(str(exc).split())
        if not isinstance(exc, dist.DistError) and not any(
            m in text.lower() for m in _COMM_MARKERS
        ):
            return None
        dead = self.health.wait_for_news(6 * BEAT_INTERVAL_S) if self.health else []
        if dead:
            return self.health.describe(dead) if self.health else "; ".join(dead)
        return (
            f"rank {self.rank} of {self.world}: a collective operation failed while every rank "
            f"still answers ({text[:160]}); a rank may be stuck, or train.dist_timeout_s "
            f"({self.timeout_s:g} s) is shorter than rank 0's validation and checkpoint writes"
        )


SINGLE = Ranks()
_active: Ranks | None = None


def current() -> Ranks:
    """The ranks of the running :func:`session`; a group someone else initialised (no
    heartbeats); else ``SINGLE``."""
    if _active is not None:
        return _active
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        _, _, local = env_ranks()
        on_cuda = dist.get_backend() == "nccl"
        device = torch.device("cuda", local) if on_cuda else torch.device("cpu")
        return Ranks(dist.get_rank(), dist.get_world_size(), local, comm_device=device)
    return SINGLE


def comm_kind(kind: str, requested: str, local_rank: int, world: int, gpus: int) -> str:
    """``cuda`` (NCCL, one GPU per process) or ``cpu`` (gloo) for the group.

    NCCL needs a GPU of its own per process on a machine. Where this machine has fewer GPUs
    than processes, ``train.device: auto`` falls back to gloo on the CPU for every rank (each
    rank decides alike: from ``LOCAL_WORLD_SIZE``, which torchrun sets, or for ranks launched
    by hand on the loopback address from the world size); an explicit ``cuda`` is an error.
    """
    if kind != "cuda":
        return kind
    local_world = os.environ.get("LOCAL_WORLD_SIZE")
    if local_world is not None:
        needed = int(local_world)
    elif os.environ.get("MASTER_ADDR", "") in ("127.0.0.1", "localhost", "::1"):
        needed = world
    else:
        needed = local_rank + 1
    if needed <= gpus:
        return "cuda"
    if requested.split(":", 1)[0] == "auto":
        log.warning(
            "train.device auto: %d processes on this machine but %d GPU(s); every rank runs on "
            "the CPU (gloo). Start at most %d per machine to use the GPUs.",
            needed,
            gpus,
            gpus,
        )
        return "cpu"
    raise ConfigError(
        f"train.device is {requested} but this machine has {gpus} GPU(s) for {needed} processes "
        f"(NCCL needs one GPU per process); start at most {gpus} per machine or use "
        "train.device=cpu"
    )


@contextlib.contextmanager
def session(timeout_s: float, device: str = "auto", wait_s: float | None = None) -> Iterator[Ranks]:
    """Join the process group torchrun describes (no-op without it) for the block.

    ``device`` is the config's ``train.device``: CUDA means NCCL and one GPU per process
    (``cuda:LOCAL_RANK``), otherwise gloo. ``timeout_s``: a rank silent that long is dead
    (heartbeats; a killed process is noticed at the next collective, in seconds). ``wait_s``
    (default ``timeout_s``) bounds joining and each collective's wait for ranks that are alive
    but slower, e.g. a barrier after unevenly long work.
    Ranks other than 0 only print errors.
    """
    global _active
    rank, world, local = env_ranks()
    if world == 1:
        yield SINGLE
        return
    kind = resolve_device(device).type
    if kind == "mps":
        raise ConfigError(
            "train.device mps cannot run several processes (gloo and NCCL do not reach Apple "
            "GPUs); use train.device=cpu or one process"
        )
    kind = comm_kind(kind, device, local, world, torch.cuda.device_count() if kind == "cuda" else 0)
    comm = torch.device("cuda", local) if kind == "cuda" else torch.device("cpu")
    if kind == "cuda":
        torch.cuda.set_device(comm)
    where = f"{os.environ.get('MASTER_ADDR')}:{os.environ.get('MASTER_PORT')}"
    try:
        dist.init_process_group(
            "nccl" if kind == "cuda" else "gloo", rank=rank, world_size=world,
            timeout=datetime.timedelta(seconds=wait_s or timeout_s),
        )  # fmt: skip
        health = _Health(rank, world, timeout_s).start()
    except (RuntimeError, ValueError, KeyError) as exc:  # DistStoreError, missing variable
        if dist.is_initialized():
            dist.destroy_process_group()
        raise RankFailed(
            f"rank {rank} of {world}: could not join the other processes at {where} within "
            f"train.dist_timeout_s ({timeout_s:g} s): {' '.join(str(exc).split())[:200]}"
        ) from None
    if rank != 0:
        _quiet_console()
    ranks = Ranks(rank, world, local, timeout_s, comm, health)
    _active, ok = ranks, False
    try:
        yield ranks
        ok = True
    finally:
        _active = None
        health.stop(ok)
        with contextlib.suppress(RuntimeError, ValueError):
            dist.destroy_process_group()


def _quiet_console() -> None:
    """Only rank 0 reports progress: the other ranks' console shows errors only."""
    for handler in logging.getLogger("deepvibe").handlers:
        if getattr(handler, "_deepvibe_console", False):
            handler.setLevel(logging.ERROR)


# ------------------------------------------------------------------------------- launcher


def launch_local(nproc: int, args: list[str]) -> int:
    """``python -m torch.distributed.run --standalone --nproc-per-node N -m deepvibe ARGS``
    on this machine; returns its exit status (130 after Ctrl-C).

    Ctrl-C reaches torchrun (same terminal); it passes the signal to every rank, which stop
    at the same step and leave a resumable snapshot. This process only waits.
    """
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", "-m", "deepvibe", *args,
    ]  # fmt: skip
    log.info("launching: %s", " ".join(cmd))
    interrupted = []
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(1)) if in_main else None
    try:
        code = subprocess.call(cmd)
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
    return 130 if interrupted else code
