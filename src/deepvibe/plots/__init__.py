"""Figures and reports: training curves, the Vibe DNA, evaluation results, HTML, TensorBoard.

Every figure is drawn on matplotlib's Agg canvas (no display needed; see ``_render``) and
written as PNG atomically. The modules are independent; import the one you need:

* :func:`deepvibe.plots.curves.plot_training_curves`
* :func:`deepvibe.plots.dna.plot_dna`
* :func:`deepvibe.plots.evaluation.plot_evaluation`
* :func:`deepvibe.plots.html.write_html_report`
* :class:`deepvibe.plots.tensorboard.ScalarWriter` (needs ``deepvibe[tensorboard]``)
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> module; imported on first use so that e.g. ScalarWriter does not load matplotlib
_EXPORTS = {
    "plot_training_curves": "curves",
    "plot_dna": "dna",
    "plot_evaluation": "evaluation",
    "write_html_report": "html",
    "ScalarWriter": "tensorboard",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
