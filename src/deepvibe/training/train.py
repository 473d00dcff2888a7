"""The training loop: read it top to bottom.

``train`` sets up (data, device, validator, model, optimiser, resume), then runs epochs:
``_run_epoch`` steps through the batches, ``_validate`` scores the model and keeps the best
epoch, ``_write_epoch_files`` writes the log and the snapshot that ``--resume`` uses.

Randomness is a pure function of (seed, epoch): the batch order and the input-dropout noise of
epoch e come from generators seeded with (seed, e), so resuming from a snapshot taken after
epoch e replays epochs e+1.. exactly as an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from deepvibe.config import Config, TrainConfig
from deepvibe.data.dataset import Dataset, build_dataset
from deepvibe.errors import CheckpointError, TrainingDiverged
from deepvibe.model.device import autocast, resolve_device, resolve_precision
from deepvibe.model.loss import vae_loss
from deepvibe.model.schedule import cyclical_beta, learning_rate
from deepvibe.model.vae import HybridVAE, VAEArch
from deepvibe.training import distributed
from deepvibe.training.artists import fit_artist_cf
from deepvibe.training.batches import TrainingRows
from deepvibe.training.checkpoint import (
    Checkpoint,
    load_checkpoint,
    load_optimizer_state,
    save_checkpoint,
)
from deepvibe.training.run_files import LOG_COLUMNS, Row, RunFiles
from deepvibe.training.validation import (
    SELECTION_METRIC,
    Validator,
    ValidatorFactory,
    checkpoint_extras,
    make_validator,
    score_model,
    validation_foldin,
)

__all__ = ["LOG_COLUMNS", "TrainResult", "make_arch", "train", "validation_foldin"]

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model: HybridVAE
    dataset: Dataset
    epochs_done: int
    step: int
    best_metric: float
    best_epoch: int
    history: list[Row] = field(default_factory=list)
    interrupted: bool = False
    # after an interruption: the file to pass to --resume (None when this run saved nothing)
    snapshot: Path | None = None
    # what the validator asked to keep at the best epoch found by this call (see validation)
    best_extras: dict[str, Any] = field(default_factory=dict)


def make_arch(cfg: Config, n_tracks: int, n_features: int) -> VAEArch:
    m = cfg.model
    return VAEArch(n_tracks, n_features, tuple(m.hidden), m.latent, m.activation, m.dropout)


def make_optimizer(model: HybridVAE, t: TrainConfig) -> torch.optim.Adam:
    """Adam; the fused kernel (one pass over each parameter, no temporaries) where torch has
    it for the model's device, which made the optimiser step 5x faster on the CPU here."""
    settings = {"lr": t.lr, "weight_decay": t.weight_decay}
    try:
        return torch.optim.Adam(model.parameters(), **settings, fused=True)
    except (RuntimeError, TypeError, ValueError):  # older torch, or a device without it
        return torch.optim.Adam(model.parameters(), **settings)


def _epoch_generators(seed: int, epoch: int) -> tuple[np.random.Generator, torch.Generator]:
    np_rng = np.random.default_rng([seed, 1000, epoch])
    torch_gen = torch.Generator().manual_seed(int(np_rng.integers(2**62)))
    torch.manual_seed(int(np_rng.integers(2**62)))  # reparameterisation noise, AlphaDropout
    return np_rng, torch_gen


class _StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM asks the loop to stop at the next step boundary.

    Stopping there, never inside ``optimizer.step()``, leaves the model and the optimiser
    consistent, so the loop can save a snapshot that resumes exactly. A second Ctrl-C raises
    KeyboardInterrupt at once (nothing new is saved; the last epoch's snapshot stays).
    Handlers are only installed from the main thread; elsewhere Ctrl-C is a plain interrupt.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                with contextlib.suppress(ValueError, OSError):  # platform without the signal
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        log.warning(
            "%s received: finishing the current step, then saving a resumable snapshot "
            "(press Ctrl-C again to stop without saving)",
            signal.Signals(signum).name,
        )

    def __exit__(self, *exc: object) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)  # type: ignore[arg-type]
        self._previous.clear()


@dataclass
class _Run:
    """What one training run holds and changes; the loop's functions share it."""

    cfg: Config
    ds: Dataset
    files: RunFiles
    write_files: bool
    device: torch.device
    precision: str  # fp32 | bf16: train.precision resolved for the device once
    rows: TrainingRows
    validator: Validator
    model: HybridVAE
    optimizer: torch.optim.Optimizer
    n_batches: int
    restore_best: bool = False
    epoch: int = 0  # last finished epoch
    step: int = 0
    best: float = float("-inf")
    best_epoch: int = 0
    history: list[Row] = field(default_factory=list)
    snapshot: Path | None = None  # the newest resumable file of this run
    resume_state: dict[str, Any] | None = None  # position inside an epoch (Ctrl-C snapshot)
    best_state: dict[str, torch.Tensor] | None = None  # only with restore_best
    best_extras: dict[str, Any] = field(default_factory=dict)
    base_extras: dict[str, Any] = field(default_factory=dict)  # saved with every best epoch
    ranks: distributed.Ranks = distributed.SINGLE  # this process's share of a torchrun job
    net: torch.nn.Module | None = None  # what the loop calls: the model, or DDP around it

    def schedules(self, at: int) -> tuple[float, float]:
        """(beta, learning rate) at optimisation step ``at``."""
        t = self.cfg.train
        total = t.epochs * self.n_batches
        beta = cyclical_beta(at, total, t.kl.cycles, t.kl.ratio, t.kl.beta_max)
        return beta, learning_rate(at, total, t.lr, t.lr_schedule)

    def kept(self) -> str:
        if self.snapshot is None:
            return "no checkpoint of this run was written yet"
        return f"the last good state is kept in {self.snapshot}"

    def save(
        self, path: Path, epoch: int, metrics: dict[str, float], *, best: bool = False,
        state: dict[str, Any] | None = None,
    ) -> None:  # fmt: skip
        """A checkpoint of the model now. The best one is for use, not for resuming: it has no
        optimiser state (two thirds of a snapshot's bytes) but the validator's extras."""
        cat = self.ds.catalogue
        save_checkpoint(
            path, self.model, config=self.cfg.to_dict(), epoch=epoch, step=self.step,
            track_ids=self.ds.track_ids, scaler=self.ds.scaler,
            track_features=self.ds.track_features,
            optimizer=None if best else self.optimizer, metrics=metrics, best_metric=self.best,
            popularity=None if cat is None else cat.popularity,
            names=None if cat is None else cat.names,
            artists=None if cat is None else cat.artists,
            resume_state=state, validation=self.validator.name,
            extras=self.best_extras if best else None,
        )  # fmt: skip


def train(
    cfg: Config,
    resume: str | Path | None = None,
    dataset: Dataset | None = None,
    progress: bool | None = None,
    stop_after_epoch: int | None = None,
    write_files: bool = True,
    restore_best: bool = False,
    validator: Validator | ValidatorFactory | None = None,
    on_epoch: Callable[[Row], None] | None = None,
) -> TrainResult:
    """Train the hybrid VAE described by ``cfg``.

    ``progress=None`` shows a bar only on a terminal. ``stop_after_epoch`` ends the run early
    (as if interrupted) after that epoch; ``write_files=False`` keeps checkpoints and logs off
    disk (used by the evaluation harness); ``restore_best=True`` keeps a copy of the weights of
    the best validation epoch in memory and loads it into the returned model (without it the
    returned model holds the last epoch's weights). ``validator`` chooses the best epoch
    (default: :class:`~deepvibe.training.validation.CatalogueValidator`); see
    :mod:`deepvibe.training.validation`. ``on_epoch`` receives each epoch's log row (for
    example a TensorBoard writer).

    Ctrl-C or SIGTERM stops after the current step and writes ``snapshots/last.pth`` with the
    position inside the epoch, so ``resume=`` that file continues exactly where it stopped.
    A NaN or infinite loss raises TrainingDiverged naming the step; nothing is written for
    that epoch, so the files on disk are the last good state.
    """
    t = cfg.train
    ranks = distributed.current()  # one process unless launched by torchrun (deepvibe train)
    device = ranks.place(resolve_device(t.device))
    progress = progress if ranks.is_main else False
    files = RunFiles(cfg)
    if write_files and ranks.is_main:  # fail now, not after the first hour-long epoch
        files.prepare()
    # A bad --resume file fails now, before a possibly long data load.
    ck = load_checkpoint(resume) if resume is not None else None
    ds = dataset if dataset is not None else build_dataset(cfg)
    train_rows = np.flatnonzero(ds.rows_of("train"))
    rows = TrainingRows(ds.interactions.matrix[train_rows], ds.track_features, device)
    chosen = make_validator(validator, ds, cfg, device)

    torch.manual_seed(cfg.seed)
    model = HybridVAE(make_arch(cfg, len(ds.track_ids), ds.track_features.shape[1])).to(device)
    precision = resolve_precision(t.precision, device)
    run = _Run(
        cfg, ds, files, write_files, device, precision, rows, chosen, model,
        make_optimizer(model, t),
        n_batches=math.ceil(rows.n_rows / t.batch_size), restore_best=restore_best, ranks=ranks,
    )  # fmt: skip
    artist_cf = getattr(chosen, "artist_cf", None) or fit_artist_cf(ds)
    if artist_cf is not None:  # discovery's collaborative artist part, kept with the best model
        run.base_extras["artist_cf"] = artist_cf.to_state()
    if ck is not None:
        _resume(run, ck, Path(resume))  # type: ignore[arg-type]
    run.net = ranks.wrap(model)  # after the resume: DDP starts from rank 0's weights
    log.info("training on %s (%s), validation by %s", device, precision, chosen.name)

    start_epoch, interrupted = run.epoch, False
    epoch = start_epoch
    with _StopRequest() as stop, ranks.guard(run.kept):  # a dead rank: one line naming it
        try:
            for epoch in range(start_epoch + 1, t.epochs + 1):
                row, started = _run_epoch(run, epoch, stop, progress)
                _check_weights(run, epoch)
                if ranks.is_main and (epoch % t.eval_every == 0 or epoch == t.epochs):
                    _validate(run, epoch, row)
                row["seconds"] = time.perf_counter() - started
                run.history.append(row)
                if on_epoch is not None:
                    on_epoch(row)
                run.epoch = epoch
                log.debug("epoch %d: %s", epoch, row)
                _write_epoch_files(run, epoch)
                if _agree_after_epoch(run, epoch, stop.requested):
                    raise KeyboardInterrupt
                if stop_after_epoch is not None and epoch >= stop_after_epoch:
                    break
        except KeyboardInterrupt:
            interrupted = True
            done = int(run.history[-1]["epoch"]) if run.history else start_epoch
            if run.snapshot is not None:
                log.warning("interrupted in epoch %d; resume with --resume %s", epoch, run.snapshot)
            else:
                log.warning("interrupted in epoch %d before any snapshot was written", epoch)
            epoch = done
    if run.best_state is not None:
        model.load_state_dict(run.best_state)
    return TrainResult(
        model, ds, int(epoch), run.step, run.best, run.best_epoch, run.history, interrupted,
        run.snapshot, run.best_extras,
    )  # fmt: skip


def _resume(run: _Run, ck: Checkpoint, path: Path) -> None:
    """Load the snapshot's weights, optimiser, counters and log; refuse a foreign one."""
    _check_resumable(ck, path, run.model.arch, run.ds, run.cfg)
    try:
        run.model.load_state_dict(ck.model.state_dict())
        load_optimizer_state(run.optimizer, ck.optimizer_state, run.model)  # type: ignore[arg-type]
    except (ValueError, RuntimeError, KeyError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: optimiser state does not fit this model ({exc}); resume with the "
            "config it was trained with"
        ) from None
    run.epoch, run.step, run.best = ck.epoch, ck.step, ck.best_metric
    run.history = run.files.read_history(ck.epoch) if run.write_files else []
    run.best_epoch = _best_epoch(run.history, run.best, ck.epoch)
    run.resume_state = ck.resume_state
    if ck.resume_state is not None and int(ck.resume_state["epoch"]) != ck.epoch + 1:
        raise CheckpointError(f"{path}: inconsistent mid-epoch state; use another snapshot")
    run.snapshot = path
    where = f", batch {ck.resume_state['batch']}" if ck.resume_state else ""
    log.info("resumed from %s after epoch %d%s (step %d)", path, ck.epoch, where, ck.step)
    if ck.epoch >= run.cfg.train.epochs:
        log.warning(
            "%s is already at epoch %d of train.epochs %d; raise train.epochs to go on",
            path, ck.epoch, run.cfg.train.epochs,
        )  # fmt: skip


def _run_epoch(
    run: _Run, epoch: int, stop: _StopRequest, progress: bool | None
) -> tuple[Row, float]:
    """One pass over the training rows in the epoch's order. Returns the epoch's log row (mean
    losses per row, the last beta and lr) and when the epoch started (perf_counter)."""
    t, model = run.cfg.train, run.model
    started = time.perf_counter()
    np_rng, noise = _epoch_generators(run.cfg.seed, epoch)
    model.train()
    order = np_rng.permutation(run.rows.n_rows)
    noise = run.ranks.epoch_noise(run.cfg.seed, epoch, noise)  # each rank its own, by seed
    sums = {"loss": 0.0, "reconstruction": 0.0, "audio": 0.0, "kl": 0.0}
    first_batch = 0
    if run.resume_state is not None:  # pick the epoch up where the Ctrl-C left it
        state, run.resume_state = run.resume_state, None
        first_batch = int(state["batch"])
        sums = {k: float(v) for k, v in state["sums"].items()}
        rng = run.ranks.own_rng(state)  # None: written by another number of processes
        if rng is not None:
            noise.set_state(rng["noise_rng"])
            torch.set_rng_state(rng["torch_rng"])
            if rng.get("cuda_rng") is not None and run.device.type == "cuda":
                torch.cuda.set_rng_state(rng["cuda_rng"], run.device)
        started -= float(state["seconds"])
    beta, lr = run.schedules(run.step)  # defined even if a resumed epoch has no batch left
    bar = tqdm(
        range(first_batch, run.n_batches), desc=f"epoch {epoch}/{t.epochs}", leave=False,
        disable=None if progress is None else not progress, unit="batch", initial=first_batch,
        total=run.n_batches,
    )  # fmt: skip
    for b in bar:
        shard = run.ranks.shard(order[b * t.batch_size : (b + 1) * t.batch_size])
        batch = run.rows.batch(shard.rows, noise, t.input_dropout)
        beta, lr = run.schedules(run.step)
        for group in run.optimizer.param_groups:
            group["lr"] = lr

        with autocast(run.device, run.precision):
            scores, recon, mu, logvar = run.net(batch.x, batch.profile)
        parts = vae_loss(
            scores.float(), batch.target, recon.float(), batch.profile_target, mu.float(),
            logvar.float(), beta, t.likelihood, t.positive_weight, t.audio_weight,
        )  # fmt: skip
        values = torch.stack([parts.total, parts.reconstruction, parts.audio, parts.kl]).tolist()
        values, size, agreed_stop = run.ranks.combine(values, shard, stop.requested)
        if not math.isfinite(values[0]):
            raise TrainingDiverged(
                f"loss became {values[0]} at step {run.step + 1} (epoch {epoch}, batch {b + 1} "
                f"of {run.n_batches}); {run.kept()}; lower train.lr or set train.max_grad_norm"
            )
        run.optimizer.zero_grad(set_to_none=True)
        (parts.total if shard.weight == 1.0 else parts.total * shard.weight).backward()
        if t.max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
        run.optimizer.step()
        run.step += 1
        for key, value in zip(sums, values, strict=True):
            sums[key] += value * size
        bar.set_postfix(loss=f"{values[0]:.3g}", beta=f"{beta:.3f}")
        # several processes stop at the step they agreed on; one reads its flag as it is now
        if (agreed_stop if run.ranks.distributed else stop.requested) and b + 1 < run.n_batches:
            _stop_inside_epoch(run, epoch, b + 1, sums, noise, started)
    bar.close()
    row: Row = {"epoch": epoch, "step": run.step}
    row.update({k: v / run.rows.n_rows for k, v in sums.items()})
    row.update({"beta": beta, "lr": lr})
    return row, started


def _stop_inside_epoch(
    run: _Run, epoch: int, next_batch: int, sums: dict[str, float], noise: torch.Generator,
    started: float,
) -> None:  # fmt: skip
    """Ctrl-C at a step boundary: model and optimiser agree, so this state resumes exactly
    (the epoch's batch order is recomputed from the seed). Rank 0 writes every rank's streams."""
    streams = run.ranks.rng_states(noise, run.device)  # a collective: None in one process
    if run.write_files and run.ranks.is_main:
        state = {
            "epoch": epoch, "batch": next_batch, "sums": dict(sums),
            "noise_rng": noise.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(run.device) if run.device.type == "cuda" else None,
            "seconds": time.perf_counter() - started,
        }  # fmt: skip
        if streams is not None:
            state.update(world=run.ranks.world, ranks=streams)
        run.save(run.files.last, epoch - 1, {}, state=state)
    if run.write_files:
        run.snapshot = run.files.last
    run.ranks.barrier()  # the other ranks wait until rank 0 has written the snapshot
    raise KeyboardInterrupt


def _check_weights(run: _Run, epoch: int) -> None:
    if not all(bool(torch.isfinite(w).all()) for w in run.model.parameters()):
        raise TrainingDiverged(
            f"the weights became NaN or infinite during epoch {epoch} (by step {run.step}); "
            f"{run.kept()}; lower train.lr or set train.max_grad_norm"
        )


def _validate(run: _Run, epoch: int, row: Row) -> None:
    """Score the model; on a new best keep its checkpoint (and, with restore_best, weights)."""
    metrics = score_model(run.validator, run.model)
    row.update({f"val_{k}": v for k, v in metrics.items()})
    row["validation"] = run.validator.name if metrics else "none"
    if not metrics:  # too few users to validate: every epoch replaces the last (warned once)
        run.best, run.best_epoch = math.nan, epoch
        run.best_extras = {**run.base_extras, **checkpoint_extras(run.validator)}
        if run.write_files:
            run.save(run.files.best, epoch, metrics, best=True)
        if run.restore_best:
            run.best_state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        return
    if math.isnan(run.best) or metrics[SELECTION_METRIC] > run.best:
        run.best, run.best_epoch = metrics[SELECTION_METRIC], epoch
        run.best_extras = {**run.base_extras, **checkpoint_extras(run.validator)}
        if run.write_files:
            run.save(run.files.best, epoch, metrics, best=True)
        if run.restore_best:
            run.best_state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        log.info("epoch %d: new best validation NDCG@100 %.4f", epoch, run.best)


def _write_epoch_files(run: _Run, epoch: int) -> None:
    """The log first, then last.pth: a kill between them leaves a log row ahead of the
    snapshot, which resume ignores (it reads rows <= the snapshot)."""
    if not run.write_files:
        return
    if run.ranks.is_main:  # the other ranks only note where rank 0 keeps the snapshot
        run.files.write_history(run.history)
        run.save(run.files.last, epoch, {})
    run.snapshot = run.files.last
    if run.ranks.is_main and epoch % run.cfg.train.snapshot_every == 0:
        log.info("epoch %d: snapshot %s", epoch, run.files.keep_snapshot(epoch))


def _agree_after_epoch(run: _Run, epoch: int, stop_requested: bool) -> bool:
    """Whether to stop now. Under torchrun the ranks wait here for rank 0 (the only one that
    validates and writes), take its log row and best epoch, and stop together if any rank was
    asked to; in one process this is ``stop_requested``."""
    run.ranks.record_weights(run.model, epoch)  # a debugging aid for tests; off by default
    if not run.ranks.distributed:
        return stop_requested
    shared = (run.history[-1], run.best, run.best_epoch)
    (run.history[-1], run.best, run.best_epoch), stop = run.ranks.from_main(shared, stop_requested)
    return stop


def _check_resumable(ck: Checkpoint, path: Path, arch: VAEArch, ds: Dataset, cfg: Config) -> None:
    """Refuse a snapshot that was trained on other data, another split or another network."""
    seed = ck.config.get("seed")
    if seed is not None and seed != cfg.seed:
        raise CheckpointError(
            f"{path}: checkpoint was trained with seed {seed} but the config has seed "
            f"{cfg.seed}; the user split would change: resume with seed {seed}"
        )
    if ck.arch != arch:
        raise CheckpointError(
            f"{path}: checkpoint network ({ck.arch.n_tracks} tracks x {ck.arch.n_features} "
            f"features, hidden {list(ck.arch.hidden)}, latent {ck.arch.latent}) differs from "
            f"the config's ({arch.n_tracks} x {arch.n_features}, hidden {list(arch.hidden)}, "
            f"latent {arch.latent}); resume with the config and data it was trained on"
        )
    if list(ck.track_ids) != list(ds.track_ids):
        raise CheckpointError(
            f"{path}: checkpoint was built for another catalogue (its track ids differ from "
            "those chosen from the current data); resume with the data it was trained on"
        )
    same_features = ck.scaler.columns == ds.scaler.columns and np.allclose(
        ck.track_features, ds.track_features, atol=1e-4
    )
    if not same_features:
        raise CheckpointError(
            f"{path}: the catalogue's audio features differ from the checkpoint's (columns or "
            "values changed); resume with the features file it was trained on"
        )
    if ck.optimizer_state is None:
        raise CheckpointError(
            f"{path}: checkpoint has no optimiser state; cannot resume (the best checkpoint "
            "is for use only: resume from models/snapshots/last.pth or an epoch snapshot)"
        )


def _best_epoch(history: list[Row], best: float, default: int) -> int:
    """The epoch whose validation NDCG@100 is the best so far (from the training log)."""
    for row in history:
        if math.isclose(float(row.get("val_ndcg@100", math.nan)), best, rel_tol=1e-5):
            return int(row["epoch"])
    return default
