"""Training schedules as pure functions of the optimisation step."""

from __future__ import annotations

import math


def cyclical_beta(step: int, total_steps: int, cycles: int, ratio: float, beta_max: float) -> float:
    """Cyclical KL annealing (Fu et al., NAACL 2019).

    Training is cut into ``cycles`` equal periods; in each, beta rises linearly from 0 to
    ``beta_max`` over the first ``ratio`` of the period and is held at ``beta_max`` for the rest.
    ``step`` counts from 0; steps past ``total_steps`` stay at ``beta_max``.
    """
    if total_steps <= 0 or cycles <= 0:
        raise ValueError("total_steps and cycles must be positive")
    if step >= total_steps:
        return beta_max
    period = total_steps / cycles
    tau = (step % period) / period  # position in the current cycle, in [0, 1)
    return beta_max * min(1.0, tau / ratio)


def learning_rate(step: int, total_steps: int, base_lr: float, schedule: str) -> float:
    """``constant``, or ``cosine`` decay from ``base_lr`` to 1% of it over training."""
    if schedule == "constant":
        return base_lr
    if schedule == "cosine":
        progress = min(1.0, step / max(1, total_steps))
        return base_lr * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * progress)))
    raise ValueError(f"unknown learning-rate schedule {schedule!r}")
