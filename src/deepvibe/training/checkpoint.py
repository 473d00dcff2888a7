"""Checkpoints: plain dicts of tensors, numbers, strings and lists.

They load with ``torch.load(weights_only=True)``, which cannot run code, and hold everything
needed to use the model later without the training data: the architecture, the config, the
catalogue track ids and the feature statistics.
"""

from __future__ import annotations

import pickle
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deepvibe.data.tables import FeatureScaler
from deepvibe.errors import CheckpointError
from deepvibe.fileio import atomic_path
from deepvibe.model.vae import HybridVAE, VAEArch

FORMAT = "deepvibe-checkpoint"
VERSION = 1
_UNSAFE_GLOBAL = re.compile(r"GLOBAL ([\w.]+)")
_REQUIRED = ("format", "version", "arch", "model_state", "epoch", "step", "config", "track_ids")


@dataclass
class Checkpoint:
    model: HybridVAE
    arch: VAEArch
    config: dict[str, Any]
    epoch: int
    step: int
    track_ids: np.ndarray  # (n_tracks,) str, the catalogue in model column order
    scaler: FeatureScaler
    track_features: np.ndarray  # (n_tracks, f) standardised catalogue features
    optimizer_state: dict[str, Any] | None
    metrics: dict[str, float]
    best_metric: float
    path: Path
    # optional catalogue metadata (for reports that rank the catalogue itself)
    popularity: np.ndarray | None = None
    names: np.ndarray | None = None
    artists: np.ndarray | None = None
    # set only in a snapshot taken inside an epoch (Ctrl-C): where to pick the epoch up again
    resume_state: dict[str, Any] | None = None
    # the validator that chose this epoch, and what it asked to keep (best checkpoint only)
    validation: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(
    path: str | Path,
    model: HybridVAE,
    *,
    config: dict[str, Any],
    epoch: int,
    step: int,
    track_ids: np.ndarray,
    scaler: FeatureScaler,
    track_features: np.ndarray,
    optimizer: torch.optim.Optimizer | None = None,
    metrics: dict[str, float] | None = None,
    best_metric: float = float("-inf"),
    popularity: np.ndarray | None = None,
    names: np.ndarray | None = None,
    artists: np.ndarray | None = None,
    resume_state: dict[str, Any] | None = None,
    validation: str | None = None,
    extras: dict[str, Any] | None = None,
) -> None:
    """Write atomically: a kill at any moment leaves the previous file intact.

    ``resume_state`` (tensors, numbers and strings only) marks a snapshot taken inside an
    epoch; :func:`deepvibe.training.train.train` uses it to continue from the same batch.
    Without ``optimizer`` the file serves for inference only (it cannot be resumed).
    ``validation`` names the validator that chose this epoch; ``extras`` is what it asked to
    keep (weights_only-safe values only). Tensors are written as they are, from any device;
    :func:`load_checkpoint` reads them onto the CPU.
    """
    payload: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "arch": model.arch.to_dict(),
        "model_state": model.state_dict(),
        "optimizer_state": None if optimizer is None else optimizer_state(optimizer, model),
        "epoch": int(epoch),
        "step": int(step),
        "config": config,
        "track_ids": [str(t) for t in track_ids],
        "feature_columns": list(scaler.columns),
        "feature_mean": torch.as_tensor(scaler.mean, dtype=torch.float64),
        "feature_std": torch.as_tensor(scaler.std, dtype=torch.float64),
        "track_features": torch.as_tensor(track_features, dtype=torch.float32),
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
        "best_metric": float(best_metric),
        "popularity": None
        if popularity is None
        else torch.as_tensor(popularity, dtype=torch.float32),
        "names": None if names is None else [str(n) for n in names],
        "artists": None if artists is None else [str(a) for a in artists],
        "resume_state": resume_state,
        "validation": validation,
        "extras": dict(extras or {}),
    }
    try:
        with atomic_path(path) as tmp:
            torch.save(payload, tmp)
    except (OSError, RuntimeError) as exc:  # disk full, quota, I/O error inside torch.save
        raise CheckpointError(
            f"{path}: cannot write checkpoint ({' '.join(str(exc).split())[:200]}); the previous "
            "file, if any, is unchanged; free disk space or choose another paths.models_dir"
        ) from exc


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read a checkpoint that deepvibe wrote; anything else is refused with a CheckpointError.

    ``torch.load(weights_only=True)`` only rebuilds tensors and plain containers, so a file
    crafted to run code when unpickled is rejected before any of it runs.
    """
    p = Path(path)
    if not p.exists():
        raise CheckpointError(
            f"{p}: checkpoint not found; train a model first (deepvibe train) or pass --checkpoint"
        )
    if p.is_dir():
        raise CheckpointError(f"{p}: checkpoint path is a directory, expected a .pth file")
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: checkpoint file is empty; use an earlier snapshot or retrain")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols of foreign files
            raw = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = _UNSAFE_GLOBAL.search(str(exc))
        reason = (
            f"it refers to {found.group(1)}, which could run code"
            if found
            else "it holds data the safe loader does not accept, or is corrupt"
        )
        raise CheckpointError(
            f"{p}: refused to load: {reason}; only use checkpoints deepvibe wrote"
        ) from None
    except PermissionError as exc:
        raise CheckpointError(f"{p}: checkpoint is not readable ({exc.strerror})") from None
    except Exception as exc:  # zip, EOF, key and index errors from truncated or foreign files
        raise CheckpointError(
            f"{p}: not a readable checkpoint (truncated or not a checkpoint: "
            f"{_short(exc)}); use an earlier snapshot or retrain"
        ) from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{p}: not a deepvibe checkpoint (no deepvibe format marker)")
    if raw.get("version") != VERSION:
        raise CheckpointError(
            f"{p}: checkpoint format version {raw.get('version')!r}, this deepvibe reads "
            f"{VERSION}; retrain with this version"
        )
    missing = [k for k in _REQUIRED if k not in raw]
    if missing:
        raise CheckpointError(f"{p}: checkpoint lacks {', '.join(missing)}; it is incomplete")
    try:
        return _from_payload(raw, p)
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError, IndexError) as exc:
        raise CheckpointError(
            f"{p}: checkpoint contents are malformed ({_short(exc)}); use an earlier snapshot "
            "or retrain"
        ) from None


def _short(exc: BaseException) -> str:
    """``Type: message`` on one line, cut to a readable length."""
    text = " ".join(str(exc).split())
    text = (text[:160] + "...") if len(text) > 160 else text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _from_payload(raw: dict[str, Any], p: Path) -> Checkpoint:
    try:
        arch = VAEArch.from_dict(raw["arch"])
        model = HybridVAE(arch)
        model.load_state_dict(raw["model_state"])
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise CheckpointError(
            f"{p}: checkpoint weights do not match its architecture ({_short(exc)})"
        ) from None
    if not all(bool(torch.isfinite(t).all()) for t in model.state_dict().values()):
        raise CheckpointError(
            f"{p}: checkpoint holds NaN or infinite weights (saved from a diverged run); use "
            "an earlier snapshot or retrain"
        )
    model.eval()
    track_ids = np.array(raw["track_ids"], dtype=object)
    if len(track_ids) != arch.n_tracks:
        raise CheckpointError(
            f"{p}: checkpoint has {len(track_ids)} track ids for {arch.n_tracks} outputs"
        )
    columns = tuple(str(c) for c in raw.get("feature_columns", ()))
    scaler = FeatureScaler(columns, raw["feature_mean"].numpy(), raw["feature_std"].numpy())
    track_features = raw["track_features"].numpy()
    if track_features.shape != (arch.n_tracks, arch.n_features) or len(columns) != arch.n_features:
        raise CheckpointError(
            f"{p}: checkpoint catalogue features have shape {track_features.shape} and "
            f"{len(columns)} column names for a model of {arch.n_tracks} tracks x "
            f"{arch.n_features} features; it is inconsistent"
        )
    if not isinstance(raw["config"], dict):
        raise CheckpointError(f"{p}: checkpoint config is not a mapping")

    def opt_array(key: str) -> np.ndarray | None:
        v = raw.get(key)
        if v is None:
            return None
        return v.numpy() if isinstance(v, torch.Tensor) else np.array(v, dtype=object)

    return Checkpoint(
        model=model,
        arch=arch,
        config=raw["config"],
        epoch=int(raw["epoch"]),
        step=int(raw["step"]),
        track_ids=track_ids,
        scaler=scaler,
        track_features=track_features,
        optimizer_state=raw.get("optimizer_state"),
        metrics=dict(raw.get("metrics") or {}),
        best_metric=float(raw.get("best_metric", float("-inf"))),
        path=p,
        popularity=opt_array("popularity"),
        names=opt_array("names"),
        artists=opt_array("artists"),
        resume_state=raw.get("resume_state"),
        validation=raw.get("validation"),
        extras=dict(raw.get("extras") or {}),
    )


def optimizer_state(optimizer: torch.optim.Optimizer, model: HybridVAE) -> dict[str, Any]:
    """``optimizer.state_dict()`` in the checkpoint's layout: the state of a parameter the
    model holds transposed (the sparse first layer) is stored as ``state_dict`` shows it
    (a transposed view: no copy is made to save it)."""
    return _relayout(optimizer.state_dict(), optimizer, model, contiguous=False)


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, state: dict[str, Any], model: HybridVAE
) -> None:
    """Inverse of :func:`optimizer_state`; raises ValueError when a state tensor does not fit
    its parameter (another network)."""
    state = _relayout(state, optimizer, model, contiguous=True)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    ids = [i for group in state["param_groups"] for i in group["params"]]
    if len(ids) != len(params):
        raise ValueError(f"{len(ids)} parameters in the saved state, {len(params)} in the model")
    for p, i in zip(params, ids, strict=True):
        for key, value in state["state"].get(i, {}).items():
            if isinstance(value, torch.Tensor) and value.dim() and value.shape != p.shape:
                raise ValueError(f"state {key} of parameter {i} has shape {tuple(value.shape)}")
    optimizer.load_state_dict(state)


def _relayout(
    state: dict[str, Any], optimizer: torch.optim.Optimizer, model: HybridVAE, contiguous: bool
) -> dict[str, Any]:
    """Transpose the 2-d state tensors of the model's transposed parameters (an involution)."""
    transposed = {id(p) for p in model.transposed_parameters()}
    params = [p for group in optimizer.param_groups for p in group["params"]]
    ids = [i for group in state.get("param_groups", []) for i in group["params"]]
    per_param = dict(state.get("state", {}))
    for p, i in zip(params, ids, strict=False):
        if id(p) in transposed and i in per_param:
            per_param[i] = {
                k: _transposed(v, contiguous) if isinstance(v, torch.Tensor) and v.dim() == 2 else v
                for k, v in per_param[i].items()
            }
    return {**state, "state": per_param}


def _transposed(t: torch.Tensor, contiguous: bool) -> torch.Tensor:
    return t.t().contiguous() if contiguous else t.t()
