"""The ``deepvibe`` command line: parse, call one library function, print.

Exit codes: 0 success, 1 failure (bad input, missing file, diverged training), 2 usage error
(Typer's own), 130 interrupted.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from deepvibe.errors import DeepVibeError

app = typer.Typer(
    name="deepvibe",
    help="Hybrid VAE music discovery: train on listening data, discover by Vibe DNA.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
log = logging.getLogger("deepvibe.cli")
_state = {"debug": False}

F = TypeVar("F", bound=Callable[..., Any])

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config (default: built-in defaults)."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key: section.key=value (repeatable)."),
]


def fail(message: str, code: int = 1) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(code)


def guarded(fn: F) -> F:
    """Turn DeepVibeError into one line on stderr and exit 1 (a traceback only with --debug)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except DeepVibeError as exc:
            if _state["debug"]:
                raise
            raise fail(str(exc)) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except MemoryError:
            if _state["debug"]:
                raise
            raise fail("out of memory; lower train.batch_size or data.max_tracks") from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def main(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log debug events.")] = False,
) -> None:
    from deepvibe.logs import configure_console

    _state["debug"] = debug
    configure_console(verbose)


def load_cfg(config: Path | None, overrides: list[str] | None):  # noqa: ANN201
    from deepvibe.config import load_config

    return load_config(config, overrides or [])


@app.command()
@guarded
def synth(
    out: Annotated[Path, typer.Option("--out", help="Folder for the toy data files.")] = Path(
        "data"
    ),
    users: Annotated[int, typer.Option(min=2, help="Number of users.")] = 600,
    tracks: Annotated[int, typer.Option(min=2, help="Tracks in the interaction matrix.")] = 500,
    db_tracks: Annotated[
        int, typer.Option("--db-tracks", min=2, help="Tracks in the global database (>= tracks).")
    ] = 20_000,
    groups: Annotated[int, typer.Option(min=1, help="Latent taste groups.")] = 4,
    weeks: Annotated[int, typer.Option(min=1, help="Weekly rows per user.")] = 2,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Write toy data in the original layout: matrix, catalogue features, global database."""
    from deepvibe.synth import make_toy_data, write_toy_data

    if db_tracks < tracks:
        raise fail(f"--db-tracks ({db_tracks}) must be at least --tracks ({tracks})", 2)
    if users < groups or tracks < groups:
        raise fail("--users and --tracks must each be at least --groups", 2)
    toy = make_toy_data(users, tracks, db_tracks, groups, weeks, seed=seed)
    paths = write_toy_data(out, toy)
    for name, p in paths.items():
        typer.echo(f"{name:>13}: {p}")


@app.command()
@guarded
def train(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    resume: Annotated[
        Path | None,
        typer.Option("--resume", help="Continue from a snapshot (e.g. models/snapshots/last.pth)."),
    ] = None,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="Progress bar (default: on a tty).")
    ] = None,
) -> None:
    """Train the hybrid VAE; keep the best checkpoint by validation NDCG@100."""
    from deepvibe.logs import file_log
    from deepvibe.train import train as run_training

    cfg = load_cfg(config, set_)
    with file_log(Path(cfg.paths.logs_dir) / "training_detailed.log"):
        result = run_training(cfg, resume=resume, progress=progress)
    if result.interrupted:
        typer.echo(
            f"interrupted after epoch {result.epochs_done}; resume with "
            f"--resume {cfg.snapshots_dir / 'last.pth'}",
            err=True,
        )
        raise typer.Exit(130)
    last = result.history[-1] if result.history else {}
    typer.echo(
        f"trained {result.epochs_done} epochs ({result.step} steps); best validation "
        f"NDCG@100 {result.best_metric:.4f} at epoch {result.best_epoch}"
    )
    if last:
        typer.echo(
            "last epoch: "
            + ", ".join(f"{k} {last[k]:.4g}" for k in ("loss", "val_recall@20") if k in last)
        )
    typer.echo(f"best checkpoint: {cfg.best_checkpoint_path}")


if __name__ == "__main__":  # pragma: no cover
    app()
