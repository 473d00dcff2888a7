"""The training loop: read it top to bottom.

Randomness is a pure function of (seed, epoch): the batch order and the input-dropout noise of
epoch e come from generators seeded with (seed, e), so resuming from a snapshot taken after
epoch e replays epochs e+1.. exactly as an uninterrupted run would.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import math
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from deepvibe.config import Config
from deepvibe.data.dataset import Dataset, build_dataset
from deepvibe.errors import CheckpointError, DataError, TrainingDiverged
from deepvibe.fileio import ensure_writable_dir, write_text_atomic
from deepvibe.model.inference import scorer
from deepvibe.model.loss import vae_loss
from deepvibe.model.schedule import cyclical_beta, learning_rate
from deepvibe.model.vae import HybridVAE, VAEArch, audio_profile
from deepvibe.ranking.metrics import DEFAULT_METRICS, evaluate_scorer
from deepvibe.ranking.protocol import FoldIn, foldin_split
from deepvibe.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

LOG_COLUMNS = (
    "epoch", "step", "loss", "reconstruction", "audio", "kl", "beta", "lr",
    "val_ndcg@100", "val_recall@20", "val_recall@50", "seconds",
)  # fmt: skip


@dataclass
class TrainResult:
    model: HybridVAE
    dataset: Dataset
    epochs_done: int
    step: int
    best_metric: float
    best_epoch: int
    history: list[dict[str, float]] = field(default_factory=list)
    interrupted: bool = False
    # after an interruption: the file to pass to --resume (None when this run saved nothing)
    snapshot: Path | None = None


def make_arch(cfg: Config, n_tracks: int, n_features: int) -> VAEArch:
    m = cfg.model
    return VAEArch(n_tracks, n_features, tuple(m.hidden), m.latent, m.activation, m.dropout)


def validation_foldin(ds: Dataset, cfg: Config, group: str = "validation") -> FoldIn:
    """The group's current rows split 80/20 once, by the seed (fixed for the whole run)."""
    users, rows = ds.interactions.user_matrix(ds.user_groups[group])
    rng = np.random.default_rng([cfg.seed, 1 if group == "validation" else 2])
    return foldin_split(users, rows, cfg.train.holdout_fraction, rng)


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


def train(
    cfg: Config,
    resume: str | Path | None = None,
    dataset: Dataset | None = None,
    progress: bool | None = None,
    stop_after_epoch: int | None = None,
    write_files: bool = True,
    restore_best: bool = False,
) -> TrainResult:
    """Train the hybrid VAE described by ``cfg``.

    ``progress=None`` shows a bar only on a terminal. ``stop_after_epoch`` ends the run early
    (as if interrupted) after that epoch; ``write_files=False`` keeps checkpoints and logs off
    disk (used by the evaluation harness); ``restore_best=True`` keeps a copy of the weights of
    the best validation epoch in memory and loads it into the returned model (without it the
    returned model holds the last epoch's weights).

    Ctrl-C or SIGTERM stops after the current step and writes ``snapshots/last.pth`` with the
    position inside the epoch, so ``resume=`` that file continues exactly where it stopped.
    A NaN or infinite loss raises TrainingDiverged naming the step; nothing is written for
    that epoch, so the files on disk are the last good state.
    """
    t = cfg.train
    paths = _Paths(cfg)
    if write_files:  # fail now, not after the first hour-long epoch
        ensure_writable_dir(paths.snapshots, "checkpoint folder (paths.models_dir)")
        ensure_writable_dir(paths.csv.parent, "log folder (paths.logs_dir)")
        paths.remove_stale_temp_files()
    # A bad --resume file fails now, before a possibly long data load.
    ck = load_checkpoint(resume) if resume is not None else None
    ds = dataset if dataset is not None else build_dataset(cfg)
    train_rows = np.flatnonzero(ds.rows_of("train"))
    user_items = ds.interactions.matrix[train_rows]  # (n_train_rows, n_tracks) csr, plays
    val = validation_foldin(ds, cfg)
    if val.foldin.shape[0] == 0:
        raise DataError(
            f"no validation user has 5 or more played catalogue tracks "
            f"({len(ds.user_groups['validation'])} validation users); the best epoch cannot be "
            "chosen: add users or raise train.val_fraction"
        )
    feats = torch.from_numpy(ds.track_features)  # (n_tracks, f)
    log.info("validation: %d users scored (80/20 fold-in)", val.foldin.shape[0])

    torch.manual_seed(cfg.seed)
    model = HybridVAE(make_arch(cfg, len(ds.track_ids), ds.track_features.shape[1]))
    optimizer = torch.optim.Adam(model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
    n_batches = math.ceil(user_items.shape[0] / t.batch_size)
    total_steps = t.epochs * n_batches
    start_epoch, step, best, best_epoch = 0, 0, float("-inf"), 0
    history: list[dict[str, float]] = []
    best_state: dict[str, torch.Tensor] | None = None  # only with restore_best
    resume_state: dict[str, object] | None = None  # position inside an epoch (Ctrl-C snapshot)
    snapshot: Path | None = None  # the newest resumable file of this run

    if resume is not None and ck is not None:
        _check_resumable(ck, Path(resume), model.arch, ds, cfg)
        try:
            model.load_state_dict(ck.model.state_dict())
            optimizer.load_state_dict(ck.optimizer_state)
        except (ValueError, RuntimeError, KeyError, TypeError) as exc:
            raise CheckpointError(
                f"{resume}: optimiser state does not fit this model ({exc}); resume with the "
                "config it was trained with"
            ) from None
        start_epoch, step, best = ck.epoch, ck.step, ck.best_metric
        history = paths.read_history(start_epoch) if write_files else []
        best_epoch = _best_epoch(history, best, start_epoch)
        resume_state = ck.resume_state
        if resume_state is not None and int(resume_state["epoch"]) != start_epoch + 1:  # type: ignore[call-overload]
            raise CheckpointError(f"{resume}: inconsistent mid-epoch state; use another snapshot")
        snapshot = Path(resume)
        where = f", batch {resume_state['batch']}" if resume_state else ""
        log.info("resumed from %s after epoch %d%s (step %d)", resume, start_epoch, where, step)
        if start_epoch >= t.epochs:
            log.warning(
                "%s is already at epoch %d of train.epochs %d; raise train.epochs to go on",
                resume, start_epoch, t.epochs,
            )  # fmt: skip

    def save(path: Path, epoch: int, metrics: dict[str, float], state: dict | None = None) -> None:
        save_checkpoint(
            path, model, config=cfg.to_dict(), epoch=epoch, step=step, track_ids=ds.track_ids,
            scaler=ds.scaler, track_features=ds.track_features, optimizer=optimizer,
            metrics=metrics, best_metric=best,
            popularity=None if ds.catalogue is None else ds.catalogue.popularity,
            names=None if ds.catalogue is None else ds.catalogue.names,
            artists=None if ds.catalogue is None else ds.catalogue.artists,
            resume_state=state,
        )  # fmt: skip

    def kept() -> str:
        if snapshot is None:
            return "no checkpoint of this run was written yet"
        return f"the last good state is kept in {snapshot}"

    def schedules(at: int) -> tuple[float, float]:
        """(beta, learning rate) at optimisation step ``at``."""
        beta = cyclical_beta(at, total_steps, t.kl.cycles, t.kl.ratio, t.kl.beta_max)
        return beta, learning_rate(at, total_steps, t.lr, t.lr_schedule)

    bar_disable = None if progress is None else not progress  # tqdm: None = off when not a tty
    epoch = start_epoch
    interrupted = False
    stop = _StopRequest()
    with stop:
        try:
            for epoch in range(start_epoch + 1, t.epochs + 1):
                started = time.perf_counter()
                np_rng, noise = _epoch_generators(cfg.seed, epoch)
                model.train()
                order = np_rng.permutation(user_items.shape[0])
                sums = {"loss": 0.0, "reconstruction": 0.0, "audio": 0.0, "kl": 0.0}
                first_batch = 0
                if resume_state is not None:  # pick the epoch up where the Ctrl-C left it
                    first_batch = int(resume_state["batch"])  # type: ignore[call-overload]
                    sums = {k: float(v) for k, v in resume_state["sums"].items()}  # type: ignore[attr-defined]
                    noise.set_state(resume_state["noise_rng"])  # type: ignore[arg-type]
                    torch.set_rng_state(resume_state["torch_rng"])  # type: ignore[arg-type]
                    started -= float(resume_state["seconds"])  # type: ignore[arg-type]
                    resume_state = None
                beta, lr = schedules(step)  # defined even if a resumed epoch has no batch left
                bar = tqdm(
                    range(first_batch, n_batches), desc=f"epoch {epoch}/{t.epochs}",
                    leave=False, disable=bar_disable, unit="batch", initial=first_batch,
                    total=n_batches,
                )  # fmt: skip
                for b in bar:
                    idx = order[b * t.batch_size : (b + 1) * t.batch_size]
                    plays = torch.from_numpy(user_items[idx].toarray())  # (B, n_tracks)
                    target = (plays > 0).float()
                    # Denoising: drop whole tracks from the input; the profile is built from
                    # what survives, so a dropped track cannot leak back in through the audio.
                    keep = torch.rand(plays.shape, generator=noise) >= t.input_dropout
                    noised = plays * keep
                    profile_in = audio_profile(noised, feats)
                    profile_target = audio_profile(plays, feats)
                    beta, lr = schedules(step)
                    for group in optimizer.param_groups:
                        group["lr"] = lr

                    scores, recon, mu, logvar = model((noised > 0).float(), profile_in)
                    parts = vae_loss(
                        scores, target, recon, profile_target, mu, logvar, beta,
                        t.likelihood, t.positive_weight, t.audio_weight,
                    )  # fmt: skip
                    if not torch.isfinite(parts.total):
                        raise TrainingDiverged(
                            f"loss became {parts.total.item()} at step {step + 1} (epoch {epoch}, "
                            f"batch {b + 1} of {n_batches}); {kept()}; lower train.lr or set "
                            "train.max_grad_norm"
                        )
                    optimizer.zero_grad(set_to_none=True)
                    parts.total.backward()
                    if t.max_grad_norm is not None:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), t.max_grad_norm)
                    optimizer.step()
                    step += 1
                    n = len(idx)
                    sums["loss"] += parts.total.item() * n
                    sums["reconstruction"] += parts.reconstruction.item() * n
                    sums["audio"] += parts.audio.item() * n
                    sums["kl"] += parts.kl.item() * n
                    bar.set_postfix(loss=f"{parts.total.item():.3g}", beta=f"{beta:.3f}")
                    if stop.requested and b + 1 < n_batches:
                        # Step boundary: model and optimiser agree, so this state resumes
                        # exactly (the epoch's batch order is recomputed from the seed).
                        if write_files:
                            state = {
                                "epoch": epoch, "batch": b + 1, "sums": dict(sums),
                                "noise_rng": noise.get_state(), "torch_rng": torch.get_rng_state(),
                                "seconds": time.perf_counter() - started,
                            }  # fmt: skip
                            save(paths.last, epoch - 1, {}, state)
                            snapshot = paths.last
                        raise KeyboardInterrupt
                bar.close()
                if not all(bool(torch.isfinite(w).all()) for w in model.parameters()):
                    raise TrainingDiverged(
                        f"the weights became NaN or infinite during epoch {epoch} (by step "
                        f"{step}); {kept()}; lower train.lr or set train.max_grad_norm"
                    )

                row: dict[str, float] = {"epoch": epoch, "step": step}
                row.update({k: v / user_items.shape[0] for k, v in sums.items()})
                row.update({"beta": beta, "lr": lr})
                if epoch % t.eval_every == 0 or epoch == t.epochs:
                    metrics = evaluate_scorer(
                        scorer(model, ds.track_features), val.foldin, val.heldout, DEFAULT_METRICS
                    )
                    row.update({f"val_{k}": v for k, v in metrics.items()})
                    if metrics["ndcg@100"] > best:
                        best, best_epoch = metrics["ndcg@100"], epoch
                        if write_files:
                            save(paths.best, epoch, metrics)
                        if restore_best:
                            best_state = {
                                k: v.detach().clone() for k, v in model.state_dict().items()
                            }
                        log.info("epoch %d: new best validation NDCG@100 %.4f", epoch, best)
                row["seconds"] = time.perf_counter() - started
                history.append(row)
                log.debug("epoch %d: %s", epoch, row)
                if write_files:
                    # The log first, then last.pth: a kill between them leaves a log row ahead
                    # of the snapshot, which resume ignores (it reads rows <= the snapshot).
                    paths.write_history(history)
                    save(paths.last, epoch, {})
                    snapshot = paths.last
                    if epoch % t.snapshot_every == 0:
                        save(paths.snapshot(epoch), epoch, {})
                        log.info("epoch %d: snapshot %s", epoch, paths.snapshot(epoch))
                if stop.requested:
                    raise KeyboardInterrupt
                if stop_after_epoch is not None and epoch >= stop_after_epoch:
                    break
        except KeyboardInterrupt:
            interrupted = True
            done = int(history[-1]["epoch"]) if history else start_epoch
            if snapshot is not None:
                log.warning("interrupted in epoch %d; resume with --resume %s", epoch, snapshot)
            else:
                log.warning("interrupted in epoch %d before any snapshot was written", epoch)
            epoch = done
    if best_state is not None:
        model.load_state_dict(best_state)
    return TrainResult(
        model, ds, int(epoch), step, best, best_epoch, history, interrupted, snapshot
    )


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
        raise CheckpointError(f"{path}: checkpoint has no optimiser state; cannot resume")


def _best_epoch(history: list[dict[str, float]], best: float, default: int) -> int:
    """The epoch whose validation NDCG@100 is the best so far (from the training log)."""
    for row in history:
        if math.isclose(row.get("val_ndcg@100", math.nan), best, rel_tol=1e-5):
            return int(row["epoch"])
    return default


class _Paths:
    def __init__(self, cfg: Config) -> None:
        self.best = cfg.best_checkpoint_path
        self.snapshots = cfg.snapshots_dir
        self.last = self.snapshots / "last.pth"
        self.csv = Path(cfg.paths.logs_dir) / "hybrid_training.log"

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

    def write_history(self, history: list[dict[str, float]]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in history:
            writer.writerow({k: _fmt(row.get(k, "")) for k in LOG_COLUMNS})
        write_text_atomic(self.csv, buf.getvalue())

    def read_history(self, up_to_epoch: int) -> list[dict[str, float]]:
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
                parsed = {k: float(v) for k, v in r.items() if k in LOG_COLUMNS and v}
            except (ValueError, TypeError):
                continue
            if parsed.get("epoch", math.inf) <= up_to_epoch:
                out.append(parsed)
        return out


def _fmt(v: object) -> object:
    if isinstance(v, float):
        return f"{v:.6g}"
    return v
