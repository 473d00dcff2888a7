"""Read an ``evaluate --json`` report into per-method statistics for plotting.

The report's ``summary`` (see ``evaluate.summarise``) is section -> method -> metric ->
``{"mean", "std", "n"}``; sections are ``validation``, ``test`` (the reported user group),
``info`` and, with a cold-start run, ``cold_start_all`` / ``cold_start_cold`` /
``cold_start_info``. Any section may be absent, a method may lack a metric, ``std`` is null
with one seed, and method names are open-ended: a method's discovery mode comes from its
``info.mode`` in ``runs`` when recorded there, else from its name.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from deepvibe.errors import DataError
from deepvibe.fileio import check_input_file, first_line

log = logging.getLogger(__name__)

WHAT = "evaluation report"
FORMAT = "deepvibe-evaluation"


@dataclass(frozen=True)
class Stat:
    mean: float
    std: float  # 0.0 with a single seed (the report's std is null then)
    n: int  # seeds with a finite value


@dataclass(frozen=True)
class MethodStats:
    """One method's numbers in one summary section."""

    name: str
    mode: str  # "standard", "gems", "new-artists" (or another mode name), or "baseline"
    metrics: dict[str, Stat] = field(default_factory=dict)

    def get(self, metric: str) -> Stat | None:
        return self.metrics.get(metric)


def load_report(report: Mapping[str, Any] | str | os.PathLike[str]) -> dict[str, Any]:
    """The report as a dict (read from JSON when given a path), checked to have a summary."""
    source = "report"
    if isinstance(report, Mapping):
        data: Any = dict(report)
    else:
        p = check_input_file(report, WHAT)
        source = str(p)
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise DataError(f"{p}: the {WHAT} is not UTF-8 text ({first_line(exc)})") from exc
        except json.JSONDecodeError as exc:
            raise DataError(f"{p}: the {WHAT} is not valid JSON ({first_line(exc)})") from exc
        except OSError as exc:
            raise DataError(f"{p}: cannot read the {WHAT} ({exc.strerror})") from exc
    if not isinstance(data, dict):
        raise DataError(f"{source}: the {WHAT} is not a JSON object; give evaluate --json output")
    fmt = data.get("format")
    if fmt is not None and fmt != FORMAT:
        raise DataError(f"{source}: format is {fmt!r}, not {FORMAT!r}; give evaluate --json output")
    summary = data.get("summary")
    if not isinstance(summary, dict):
        raise DataError(
            f"{source}: the {WHAT} has no 'summary' section; write it with deepvibe evaluate --json"
        )
    if not any(isinstance(summary.get(s), dict) and summary[s] for s in SECTIONS):
        raise DataError(
            f"{source}: the {WHAT} summary has no 'test', 'validation' or 'database' numbers "
            "to plot"
        )
    return data


def method_stats(report: Mapping[str, Any], section: str) -> list[MethodStats]:
    """Every method of ``summary[section]`` in report order; [] when the section is absent."""
    block = report.get("summary", {}).get(section)
    if not isinstance(block, dict):
        return []
    modes = recorded_modes(report)
    out = []
    for name, metrics in block.items():
        if not isinstance(metrics, dict):
            continue
        stats = {k: s for k, s in ((k, _stat(v)) for k, v in metrics.items()) if s is not None}
        out.append(MethodStats(str(name), modes.get(str(name)) or mode_of(str(name)), stats))
    return out


def recorded_modes(report: Mapping[str, Any]) -> dict[str, str]:
    """method -> ``info.mode`` as the runs record it (deepvibe-gems, deepvibe-scan...)."""
    found: dict[str, str] = {}
    for run in report.get("runs") or []:
        if not isinstance(run, dict):
            continue
        blocks = [run.get("models"), (run.get("cold_start") or {}).get("models")]
        for models in blocks:
            for name, m in (models or {}).items():
                mode = (m.get("info") or {}).get("mode") if isinstance(m, dict) else None
                if isinstance(mode, str) and mode:
                    found.setdefault(str(name), mode)
    return found


def mode_of(name: str) -> str:
    """A mode guessed from a method name: deepvibe-gems -> gems, toppop -> baseline."""
    lowered = name.lower().replace("_", "-")
    if "new-artist" in lowered:
        return "new-artists"
    if "gems" in lowered:
        return "gems"
    return "standard" if lowered.startswith("deepvibe") else "baseline"


SECTIONS = ("test", "validation", "database")  # catalogue protocol, --checkpoint, discovery


def reported_group(report: Mapping[str, Any]) -> str:
    """``test``, ``validation`` for an ``evaluate --checkpoint`` report, or ``database`` for
    the discovery protocols."""
    summary = report.get("summary") or {}
    if "test" not in summary and isinstance(summary.get("database"), dict):
        return "database"
    try:
        return str(report["runs"][0]["split"]["reported_on"])
    except (KeyError, IndexError, TypeError):
        return "test"


def n_seeds(report: Mapping[str, Any]) -> int | None:
    seeds = (report.get("protocol") or {}).get("seeds")
    if isinstance(seeds, list):
        return len(seeds)
    runs = report.get("runs")
    return len(runs) if isinstance(runs, list) else None


def beyond_k(report: Mapping[str, Any]) -> int | None:
    ks = (report.get("protocol") or {}).get("beyond_k")
    return int(ks[0]) if isinstance(ks, list) and ks else None


def _stat(value: Any) -> Stat | None:
    if not isinstance(value, dict):
        return None
    mean, std = value.get("mean"), value.get("std")
    if not _finite(mean):
        return None
    return Stat(float(mean), float(std) if _finite(std) else 0.0, int(value.get("n") or 0))


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
