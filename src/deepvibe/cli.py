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
            raise fail(" ".join(str(exc).split())) from None  # always one line
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(130) from None
        except MemoryError:
            if _state["debug"]:
                raise
            raise fail("out of memory; lower train.batch_size or data.max_tracks") from None
        except OSError as exc:  # a file system refusal that no loader turned into a message
            if _state["debug"]:
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            reason = exc.strerror or " ".join(str(exc).split())
            raise fail(f"{where}{reason}; check the path, its permissions and free space") from None

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
    from deepvibe.data.synth import make_toy_data, write_toy_data

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
        bool | None,
        typer.Option("--progress/--no-progress", help="Progress bar (default: on a tty)."),
    ] = None,
) -> None:
    """Train the hybrid VAE; keep the best checkpoint by validation NDCG@100."""
    from deepvibe.fileio import ensure_writable_dir
    from deepvibe.logs import file_log
    from deepvibe.training.train import train as run_training

    cfg = load_cfg(config, set_)
    logs_dir = ensure_writable_dir(cfg.paths.logs_dir, "log folder (paths.logs_dir)")
    with file_log(logs_dir / "training_detailed.log"):
        result = run_training(cfg, resume=resume, progress=progress)
    if result.interrupted:
        if result.snapshot is not None:
            typer.echo(
                f"interrupted after {result.step} steps; resume with --resume {result.snapshot}",
                err=True,
            )
        else:
            typer.echo("interrupted before the first snapshot; nothing to resume", err=True)
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


@app.command()
@guarded
def prepare(
    interactions: Annotated[
        list[Path],
        typer.Option(
            "--interactions",
            "-i",
            help="Long table (CSV/Parquet), or a Spotify download: zip, folder or history JSON "
            "(repeatable; each download is one user).",
        ),
    ],
    tracks: Annotated[
        list[Path] | None,
        typer.Option(
            "--tracks", "-t", help="Track table with ids and audio features (repeatable)."
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("data"),
    max_tracks: Annotated[
        int, typer.Option("--max-tracks", min=1, help="Catalogue size: most-played tracks.")
    ] = 10_000,
    min_plays: Annotated[
        int, typer.Option("--min-plays", min=1, help="Keep a user's track from this many plays.")
    ] = 1,
    min_user_tracks: Annotated[
        int, typer.Option("--min-user-tracks", min=1, help="Drop users with fewer tracks.")
    ] = 1,
    min_ms: Annotated[
        int, typer.Option("--min-ms", min=0, help="Spotify: a stream is a play from this many ms.")
    ] = 30_000,
    weekly: Annotated[
        bool, typer.Option("--weekly", help="One row per user and ISO week (needs times).")
    ] = False,
    binary: Annotated[
        bool, typer.Option("--binary", help="Every kept (user, track) counts 1 (playlists).")
    ] = False,
    user: Annotated[
        list[str] | None,
        typer.Option("--user", help="User id of each Spotify download, in order (repeatable)."),
    ] = None,
    user_col: Annotated[str | None, typer.Option("--user-col", help="Long tables: user.")] = None,
    track_col: Annotated[
        str | None, typer.Option("--track-col", help="Long tables: track id.")
    ] = None,
    plays_col: Annotated[
        str | None, typer.Option("--plays-col", help="Long tables: play count.")
    ] = None,
    time_col: Annotated[
        str | None, typer.Option("--time-col", help="Long tables: time, for --weekly.")
    ] = None,
    id_col: Annotated[str | None, typer.Option("--id-col", help="Track tables: id.")] = None,
    feature_cols: Annotated[
        str | None,
        typer.Option("--feature-cols", help="Track tables: comma-separated feature columns."),
    ] = None,
    popularity_col: Annotated[
        str | None, typer.Option("--popularity-col", help="Track tables: popularity 0-100.")
    ] = None,
    name_col: Annotated[
        str | None, typer.Option("--name-col", help="Track tables: track name.")
    ] = None,
    artist_col: Annotated[
        str | None, typer.Option("--artist-col", help="Track tables: artists.")
    ] = None,
    parquet: Annotated[
        bool, typer.Option("--parquet", help="Write Parquet instead of CSV.")
    ] = False,
) -> None:
    """Turn long tables, track dumps and Spotify downloads into the files train reads."""
    from deepvibe.prepare.pipeline import PrepareOptions, TableColumns, TrackColumns
    from deepvibe.prepare.pipeline import prepare as run_prepare

    features = None
    if feature_cols is not None:
        features = tuple(c.strip() for c in feature_cols.split(",") if c.strip())
        if not features:
            raise fail("--feature-cols: give at least one column name", 2)
    options = PrepareOptions(
        max_tracks=max_tracks,
        min_plays=min_plays,
        min_user_tracks=min_user_tracks,
        min_ms=min_ms,
        weekly=weekly,
        binary=binary,
        users=tuple(user or ()),
        parquet=parquet,
    )
    result = run_prepare(
        list(interactions),
        list(tracks or []),
        out,
        options,
        TableColumns(user_col, track_col, plays_col, time_col),
        TrackColumns(id_col, features, popularity_col, name_col, artist_col),
    )
    typer.echo(result.summary)
    typer.echo(f"next: deepvibe train --config {result.paths['config']}")


@app.command()
@guarded
def discover(
    user_ids: Annotated[
        list[str] | None,
        typer.Argument(metavar="[USER_ID]...", help="Users to recommend for (one report each)."),
    ] = None,
    gems: Annotated[
        bool, typer.Option("--gems", help="Hidden gems: similarity - lambda * popularity / 100.")
    ] = False,
    all_users: Annotated[
        bool, typer.Option("--all", help="Every user in the interactions (or --history) file.")
    ] = False,
    history: Annotated[
        Path | None,
        typer.Option(
            "--history",
            help="Long CSV/Parquet of user_id, track_id[, plays], or a Spotify data download "
            "(zip, folder or history JSON), for users outside the training data (folded in "
            "through the encoder, no retraining).",
        ),
    ] = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="Model file (default: the best checkpoint)."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            "-c",
            help="YAML config for data paths and discover settings "
            "(default: the config stored in the checkpoint).",
        ),
    ] = None,
    set_: SetOpt = None,
    source: Annotated[
        str | None,
        typer.Option(
            "--source",
            help="db: scan the track database by Vibe DNA; catalogue: rank the "
            "model's tracks by decoder score (default: discover.source).",
        ),
    ] = None,
    temperature: Annotated[
        float | None, typer.Option("--temperature", help="Vibe DNA softmax temperature (> 0).")
    ] = None,
    top: Annotated[
        int | None, typer.Option("--top", min=1, help="Rows in each report (discover.top_n).")
    ] = None,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="Progress bar (default: tty).")
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write every user's recommendations to this one Parquet table (user, rank, "
            "track_id, score, ...) instead of a folder per user.",
        ),
    ] = None,
) -> None:
    """Recommend tracks by Vibe DNA; write recommendations/{user}/{user}_{epoch}_{mode}.csv."""
    from deepvibe.config import apply_overrides, config_from_dict
    from deepvibe.discovery.discoverer import Discoverer, write_discoveries
    from deepvibe.discovery.report import checkpoint_label, format_dna, format_top
    from deepvibe.discovery.users import align_users, load_history, load_training_users
    from deepvibe.training.checkpoint import load_checkpoint

    if user_ids and all_users:
        raise fail("give USER_IDs or --all, not both", 2)
    if not user_ids and not all_users and history is None:
        raise fail("give one or more USER_IDs, --all, or --history FILE", 2)
    if source is not None and source not in ("db", "catalogue"):
        raise fail(f"--source must be db or catalogue, got {source!r}", 2)
    if temperature is not None and not temperature > 0:
        raise fail(f"--temperature must be > 0, got {temperature}", 2)
    if out is not None and out.suffix.lower() not in (".parquet", ".pq"):
        raise fail(f"--out must name a .parquet file, got {str(out)!r}", 2)
    extra = list(set_ or [])
    if temperature is not None:
        extra.append(f"discover.temperature={temperature!r}")
    if top is not None:
        extra.append(f"discover.top_n={top}")
    # The checkpoint stores the config it was trained with; --config replaces it.
    if config is not None:
        cfg = load_cfg(config, extra)
        ck_path = checkpoint or cfg.best_checkpoint_path
        ck = load_checkpoint(ck_path)
    else:
        ck_path = checkpoint or load_cfg(None, set_).best_checkpoint_path
        ck = load_checkpoint(ck_path)
        label = f"{ck_path} (stored config)" + (" + --set" if extra else "")
        cfg = config_from_dict(apply_overrides(ck.config, extra), source=label)

    found = Discoverer.from_checkpoint(ck, cfg, source=source, progress=progress)
    if history is not None:  # account-data plays are matched by name: catalogue and database
        inter, origin = load_history(history, cfg.data, found.history_names()), str(history)
    else:
        inter, origin = load_training_users(cfg.data), str(cfg.data.interactions)
    batch = align_users(inter, ck.track_ids, None if all_users else user_ids or None, origin)
    if history is not None and batch.unknown.sum():
        log.warning(
            "%s: %d played tracks are not in the model's catalogue (%d tracks); they cannot "
            "inform the model but are never recommended back",
            history, int(batch.unknown.sum()), len(ck.track_ids),
        )  # fmt: skip

    mode = "gems" if gems else "standard"
    tag = checkpoint_label(Path(ck_path), cfg.paths.best_checkpoint, ck.epoch)
    s, db = found.settings, found.database
    if db is not None:
        where = f"{db.n_tracks:,}-track database"
        scanned = f"database {db.source} ({db.n_tracks:,} tracks, {s.similarity})"
    else:
        where = "model's catalogue"
        scanned = f"catalogue ({len(ck.track_ids):,} tracks, decoder scores)"
    gem_note = f", lambda {s.gems_lambda}" if gems else ""
    if gems and db is not None and db.unknown_popularity:
        gem_note += f"; {db.unknown_popularity:,} tracks of unknown popularity not ranked"
    typer.echo(
        f"model {ck_path} (epoch {ck.epoch}); {scanned}; {mode}{gem_note}; T {s.temperature}"
    )
    verbose_out = len(batch.users) <= 10
    n_rows = 0
    written = write_discoveries(found, batch, mode, tag, cfg.paths.recommendations_dir, out)
    for block, paths in written:
        n_rows += len(block.row_track)
        for u in range(len(block)):
            if verbose_out:
                res = block.discovery(u)
                typer.echo("")
                typer.echo(format_dna(res, ck.scaler.columns, where))
                typer.echo(f"Top 10 of {len(res.table)} for {res.user}:")
                typer.echo(format_top(res, 10))
            if paths:
                report, dna = paths[u]
                typer.echo(f"report: {report}  (DNA: {dna.name})")
    if out is not None:
        typer.echo(f"recommendations: {out} ({len(batch.users):,} users, {n_rows:,} rows)")


@app.command()
@guarded
def evaluate(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option(
            "--checkpoint",
            help="Score this trained model on its own validation users instead of training "
            "one per seed (optimistic: those users chose its epoch).",
        ),
    ] = None,
    baselines: Annotated[
        str,
        typer.Option(
            "--baselines", help="Comma-separated: toppop, ease, multvae, content; all; none."
        ),
    ] = "all",
    seeds: Annotated[
        int,
        typer.Option("--seeds", min=1, help="Repeat split + training with seeds seed..seed+N-1."),
    ] = 1,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write every number, config and version here.")
    ] = None,
    with_deepvibe: Annotated[
        bool, typer.Option("--deepvibe/--no-deepvibe", help="Train and score deepvibe itself.")
    ] = True,
    test_fraction: Annotated[
        float, typer.Option("--test-fraction", help="Share of users held out for testing.")
    ] = 0.1,
    cold_fraction: Annotated[
        float,
        typer.Option("--cold-fraction", help="Share of catalogue tracks removed for cold start."),
    ] = 0.1,
    ease_lambdas: Annotated[
        str | None, typer.Option("--ease-lambdas", help="EASE lambda grid, comma-separated.")
    ] = None,
    multvae_epochs: Annotated[
        int | None, typer.Option("--multvae-epochs", min=1, help="Mult-VAE epochs (default 200).")
    ] = None,
    progress: Annotated[
        bool | None, typer.Option("--progress/--no-progress", help="Progress bars.")
    ] = False,
) -> None:
    """Strong-generalization offline evaluation of deepvibe and baselines (mean ±std over seeds)."""
    from deepvibe.errors import ConfigError
    from deepvibe.evaluation.evaluate import (
        DEFAULT_EASE_LAMBDAS,
        EvalSettings,
        format_report,
        parse_baselines,
        write_evaluation_json,
    )
    from deepvibe.evaluation.evaluate import evaluate as run_evaluation

    cfg = load_cfg(config, set_)
    lambdas = DEFAULT_EASE_LAMBDAS
    if ease_lambdas is not None:
        try:
            lambdas = tuple(float(x) for x in ease_lambdas.split(",") if x.strip())
        except ValueError:
            raise ConfigError(
                f"--ease-lambdas: expected numbers like 100,500, got {ease_lambdas!r}"
            ) from None
        if not lambdas or min(lambdas) <= 0:
            raise ConfigError(f"--ease-lambdas: expected positive numbers, got {ease_lambdas!r}")
    settings = EvalSettings(
        seeds=seeds,
        baselines=parse_baselines(baselines),
        deepvibe=with_deepvibe,
        test_fraction=test_fraction,
        cold_fraction=cold_fraction,
        ease_lambdas=lambdas,
        multvae_epochs=multvae_epochs,
        progress=progress,
    )
    report = run_evaluation(cfg, settings, checkpoint=checkpoint)
    typer.echo(format_report(report))
    if json_out is not None:
        typer.echo(f"\nreport: {write_evaluation_json(report, json_out)}")


if __name__ == "__main__":  # pragma: no cover
    app()
