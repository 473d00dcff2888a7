from __future__ import annotations

import math

import pytest

from deepvibe.model.schedule import cyclical_beta, learning_rate


def test_cyclical_beta_exact_values() -> None:
    # 100 steps, 4 cycles of 25 steps, rising over the first half (12.5 steps) to 0.8.
    b = lambda s: cyclical_beta(s, 100, 4, 0.5, 0.8)  # noqa: E731
    assert b(0) == 0.0
    assert b(5) == pytest.approx(0.8 * 5 / 12.5)
    assert b(10) == pytest.approx(0.8 * 10 / 12.5)
    assert b(12) == pytest.approx(0.8 * 12 / 12.5)
    assert b(13) == 0.8  # held for the rest of the cycle
    assert b(24) == 0.8
    assert b(25) == 0.0  # next cycle restarts
    assert b(30) == pytest.approx(0.8 * 5 / 12.5)
    assert b(99) == 0.8
    assert b(150) == 0.8  # past the end: held


def test_one_cycle_full_ratio_is_linear_warmup() -> None:
    for s in range(0, 10):
        assert cyclical_beta(s, 10, 1, 1.0, 1.0) == pytest.approx(s / 10)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        cyclical_beta(0, 0, 1, 0.5, 1.0)


def test_learning_rate_schedules() -> None:
    assert learning_rate(50, 100, 0.1, "constant") == 0.1
    assert learning_rate(0, 100, 0.1, "cosine") == pytest.approx(0.1)
    assert learning_rate(100, 100, 0.1, "cosine") == pytest.approx(0.001)
    mid = 0.1 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert learning_rate(50, 100, 0.1, "cosine") == pytest.approx(mid)
