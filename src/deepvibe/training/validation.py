"""How training chooses its best epoch: a validator scores the model after an epoch.

A validator has a ``name`` (written to the training log and the best checkpoint) and
``score(model) -> {metric: value}``, which must include ``"ndcg@100"``: the epoch with the
highest value is kept as the best checkpoint. It may also have ``checkpoint_extras() -> dict``,
called right after a ``score`` that set a new best: those entries are saved in the best
checkpoint (``Checkpoint.extras``). They must be weights_only-safe: tensors, numbers, strings,
None, and lists / dicts of them (NumPy arrays are turned into tensors).

:class:`CatalogueValidator`, the default, ranks the model's catalogue for held-out users
(strong generalization: 80% of each validation user's tracks folded in, 20% ranked).
Another validator is passed as ``train(..., validator=...)``, either built already or as a
factory ``(dataset, config, device) -> Validator`` that ``train`` calls once its data is loaded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from deepvibe.config import Config
from deepvibe.data.dataset import Dataset
from deepvibe.model.inference import model_inputs, score_rows
from deepvibe.model.vae import HybridVAE
from deepvibe.ranking.metrics import DEFAULT_METRICS, evaluate_ranking
from deepvibe.ranking.protocol import FoldIn, foldin_split

log = logging.getLogger(__name__)

SELECTION_METRIC = "ndcg@100"


@runtime_checkable
class Validator(Protocol):
    """Scores a model after an epoch; the epoch with the best ``"ndcg@100"`` is kept."""

    name: str

    def score(self, model: HybridVAE) -> dict[str, float]: ...


ValidatorFactory = Callable[[Dataset, Config, torch.device], Validator]


def validation_foldin(ds: Dataset, cfg: Config, group: str = "validation") -> FoldIn:
    """The group's current rows split 80/20 once, by the seed (fixed for the whole run)."""
    users, rows = ds.interactions.user_matrix(ds.user_groups[group])
    rng = np.random.default_rng([cfg.seed, 1 if group == "validation" else 2])
    return foldin_split(users, rows, cfg.train.holdout_fraction, rng)


class CatalogueValidator:
    """Validation NDCG@100 and Recall@20/50 over the catalogue for the validation users.

    The fold-in rows are turned into model inputs once, on ``device``; every ``score`` then
    only runs the model and ranks on the device (``torch.topk``, no float64 copy of the
    scores). The numbers equal ``metrics.evaluate_scorer(inference.scorer(model, features),
    foldin, heldout)`` (same chunks; the order can differ only between exactly equal scores).
    """

    name = "catalogue"

    def __init__(
        self,
        ds: Dataset,
        cfg: Config,
        device: torch.device | str = "cpu",
        metrics: tuple[str, ...] = DEFAULT_METRICS,
        chunk_size: int = 1024,
    ) -> None:
        self.split = validation_foldin(ds, cfg)
        self.enough = enough_users(
            self.split.foldin.shape[0], len(ds.user_groups["validation"]), "played catalogue"
        )
        log.info("validation: %d users scored (80/20 fold-in)", self.split.foldin.shape[0])
        self.metrics = metrics
        self.depth = max(int(m.split("@")[1]) for m in metrics)
        feats = torch.from_numpy(np.asarray(ds.track_features, dtype=np.float32)).to(device)
        foldin = self.split.foldin
        parts = [foldin[i : i + chunk_size] for i in range(0, foldin.shape[0], chunk_size)]
        self.chunks = [model_inputs(rows, feats) for rows in parts]

    def score(self, model: HybridVAE) -> dict[str, float]:
        if not self.enough:
            return {}  # too few scorable validation users: see __init__
        ranked = []
        for x, profile in self.chunks:
            scores = score_rows(model, x, profile)[1]  # (chunk, n_tracks) on the device
            scores[x.row_ids(), x.indices] = -torch.inf  # the fold-in tracks
            depth = min(self.depth, scores.shape[1])
            ranked.append(torch.topk(scores, depth, dim=1, sorted=True).indices.cpu().numpy())
        return evaluate_ranking(np.concatenate(ranked), self.split.heldout, self.metrics)


MIN_SCORED_USERS = 5  # fewer: an epoch "chosen" on them is chosen on noise


def enough_users(n_scored: int, n_validation: int, what: str) -> bool:
    """Whether validation can choose an epoch; warns (once, at set-up) why not."""
    if n_scored >= MIN_SCORED_USERS:
        return True
    log.warning(
        "only %d of %d validation users have 5 or more %s tracks (%d needed): the best epoch "
        "cannot be chosen, so training runs train.epochs and keeps the last epoch; add users "
        "or raise train.val_fraction to validate",
        n_scored, n_validation, what, MIN_SCORED_USERS,
    )  # fmt: skip
    return False


def make_validator(
    validator: Validator | ValidatorFactory | None,
    ds: Dataset,
    cfg: Config,
    device: torch.device,
) -> Validator:
    """The validator to use: the default, the one given, or the one a factory builds."""
    if validator is None:
        return CatalogueValidator(ds, cfg, device)
    if isinstance(validator, type) or not isinstance(validator, Validator):  # a factory
        validator = validator(ds, cfg, device)
    if not isinstance(getattr(validator, "name", None), str) or not validator.name:
        raise TypeError(f"validator {validator!r} needs a non-empty str attribute 'name'")
    return validator


def score_model(validator: Validator, model: HybridVAE) -> dict[str, float]:
    """``validator.score(model)``, checked: float values, the selection metric present; {}
    when the validator has no user to score (then the last epoch is kept)."""
    metrics = {str(k): float(v) for k, v in validator.score(model).items()}
    if metrics and SELECTION_METRIC not in metrics:
        raise ValueError(
            f"validator {validator.name!r} returned {sorted(metrics)}; it must include "
            f"{SELECTION_METRIC!r}, the metric that chooses the best epoch"
        )
    return metrics


def checkpoint_extras(validator: Validator) -> dict[str, Any]:
    """``validator.checkpoint_extras()`` made weights_only-safe, or {} without that method."""
    method = getattr(validator, "checkpoint_extras", None)
    if method is None:
        return {}
    extras = method()
    if not isinstance(extras, dict):
        raise TypeError(f"validator {validator.name!r}: checkpoint_extras() must return a dict")
    return {str(k): _plain(v, f"{validator.name}.{k}") for k, v in extras.items()}


def _plain(value: Any, where: str) -> Any:
    """Tensors, numbers, strings, None, lists and str-keyed dicts pass (NumPy -> torch)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, np.ndarray) and value.dtype.kind in "biuf":
        return torch.from_numpy(np.array(value))
    if isinstance(value, np.generic) and value.dtype.kind in "biuf":
        return value.item()
    if isinstance(value, (list, tuple)):
        return [_plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v, f"{where}.{k}") for k, v in value.items()}
    raise TypeError(
        f"checkpoint extra {where} is a {type(value).__name__}; a checkpoint holds only "
        "tensors, numbers, strings, None, lists and str-keyed dicts (weights_only loading)"
    )
