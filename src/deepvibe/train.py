"""The training loop: read it top to bottom.

Randomness is a pure function of (seed, epoch): the batch order and the input-dropout noise of
epoch e come from generators seeded with (seed, e), so resuming from a snapshot taken after
epoch e replays epochs e+1.. exactly as an uninterrupted run would.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from deepvibe.checkpoint import load_checkpoint, save_checkpoint
from deepvibe.config import Config
from deepvibe.dataset import Dataset, build_dataset
from deepvibe.errors import CheckpointError, TrainingDiverged
from deepvibe.fileio import write_text_atomic
from deepvibe.inference import scorer
from deepvibe.loss import vae_loss
from deepvibe.metrics import DEFAULT_METRICS, evaluate_scorer
from deepvibe.model import HybridVAE, VAEArch, audio_profile
from deepvibe.protocol import FoldIn, foldin_split
from deepvibe.schedule import cyclical_beta, learning_rate

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
    """
    t = cfg.train
    ds = dataset if dataset is not None else build_dataset(cfg)
    train_rows = np.flatnonzero(ds.rows_of("train"))
    user_items = ds.interactions.matrix[train_rows]  # (n_train_rows, n_tracks) csr, plays
    val = validation_foldin(ds, cfg)
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
    paths = _Paths(cfg)

    if resume is not None:
        ck = load_checkpoint(resume)
        if ck.arch != model.arch or list(ck.track_ids) != list(ds.track_ids):
            raise CheckpointError(
                f"{resume}: checkpoint was built for another catalogue or architecture "
                f"({ck.arch.n_tracks} tracks, hidden {list(ck.arch.hidden)}); "
                "resume with the config and data it was trained on"
            )
        if ck.optimizer_state is None:
            raise CheckpointError(f"{resume}: checkpoint has no optimiser state; cannot resume")
        model.load_state_dict(ck.model.state_dict())
        optimizer.load_state_dict(ck.optimizer_state)
        start_epoch, step, best = ck.epoch, ck.step, ck.best_metric
        best_epoch = start_epoch
        history = paths.read_history(start_epoch) if write_files else []
        log.info("resumed from %s at epoch %d, step %d", resume, start_epoch, step)

    def save(path: Path, epoch: int, metrics: dict[str, float]) -> None:
        save_checkpoint(
            path, model, config=cfg.to_dict(), epoch=epoch, step=step, track_ids=ds.track_ids,
            scaler=ds.scaler, track_features=ds.track_features, optimizer=optimizer,
            metrics=metrics, best_metric=best,
            popularity=None if ds.catalogue is None else ds.catalogue.popularity,
            names=None if ds.catalogue is None else ds.catalogue.names,
            artists=None if ds.catalogue is None else ds.catalogue.artists,
        )  # fmt: skip

    bar_disable = None if progress is None else not progress  # tqdm: None = off when not a tty
    epoch = start_epoch
    interrupted = False
    try:
        for epoch in range(start_epoch + 1, t.epochs + 1):
            started = time.perf_counter()
            np_rng, noise = _epoch_generators(cfg.seed, epoch)
            model.train()
            order = np_rng.permutation(user_items.shape[0])
            sums = {"loss": 0.0, "reconstruction": 0.0, "audio": 0.0, "kl": 0.0}
            bar = tqdm(
                range(n_batches), desc=f"epoch {epoch}/{t.epochs}", leave=False,
                disable=bar_disable, unit="batch",
            )  # fmt: skip
            for b in bar:
                idx = order[b * t.batch_size : (b + 1) * t.batch_size]
                plays = torch.from_numpy(user_items[idx].toarray())  # (B, n_tracks)
                target = (plays > 0).float()
                # Denoising: drop whole tracks from the input; the profile is built from what
                # survives, so a dropped track cannot leak back in through the audio features.
                keep = torch.rand(plays.shape, generator=noise) >= t.input_dropout
                noised = plays * keep
                profile_in = audio_profile(noised, feats)
                profile_target = audio_profile(plays, feats)
                beta = cyclical_beta(step, total_steps, t.kl.cycles, t.kl.ratio, t.kl.beta_max)
                lr = learning_rate(step, total_steps, t.lr, t.lr_schedule)
                for group in optimizer.param_groups:
                    group["lr"] = lr

                scores, recon, mu, logvar = model((noised > 0).float(), profile_in)
                parts = vae_loss(
                    scores, target, recon, profile_target, mu, logvar, beta,
                    t.likelihood, t.positive_weight, t.audio_weight,
                )  # fmt: skip
                if not torch.isfinite(parts.total):
                    raise TrainingDiverged(
                        f"loss became {parts.total.item()} at epoch {epoch}, step {step}; "
                        f"the last good checkpoint is kept ({paths.best}); lower train.lr or "
                        "set train.max_grad_norm"
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
            bar.close()

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
                        best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                    log.info("epoch %d: new best validation NDCG@100 %.4f", epoch, best)
            row["seconds"] = time.perf_counter() - started
            history.append(row)
            log.debug("epoch %d: %s", epoch, row)
            if write_files:
                paths.write_history(history)
                save(paths.last, epoch, {})
                if epoch % t.snapshot_every == 0:
                    save(paths.snapshot(epoch), epoch, {})
                    log.info("epoch %d: snapshot %s", epoch, paths.snapshot(epoch))
            if stop_after_epoch is not None and epoch >= stop_after_epoch:
                break
    except KeyboardInterrupt:
        interrupted = True
        done = history[-1]["epoch"] if history else start_epoch
        log.warning(
            "interrupted during epoch %d; resume with --resume %s (state after epoch %d)",
            epoch, paths.last, done,
        )  # fmt: skip
        epoch = int(done)
    if best_state is not None:
        model.load_state_dict(best_state)
    return TrainResult(model, ds, int(epoch), step, best, best_epoch, history, interrupted)


class _Paths:
    def __init__(self, cfg: Config) -> None:
        self.best = cfg.best_checkpoint_path
        self.snapshots = cfg.snapshots_dir
        self.last = self.snapshots / "last.pth"
        self.csv = Path(cfg.paths.logs_dir) / "hybrid_training.log"

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
        if not self.csv.exists():
            return []
        with open(self.csv, encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
        out = []
        for r in rows:
            try:
                parsed = {k: float(v) for k, v in r.items() if v not in ("", None)}
            except ValueError:
                continue
            if parsed.get("epoch", math.inf) <= up_to_epoch:
                out.append(parsed)
        return out


def _fmt(v: object) -> object:
    if isinstance(v, float):
        return f"{v:.6g}"
    return v
