"""The ``deepvibe`` command line: parse, call one library function, print.

Exit codes: 0 success, 1 failure (bad input, missing file, diverged training), 2 usage error
(Typer's own), 130 interrupted.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext
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
_state = {"debug": False, "verbose": False}

F = TypeVar("F", bound=Callable[..., Any])

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="YAML config (default: built-in defaults)."),
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config key: section.key=value (repeatable)."),
]
DeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--device",
        help="auto, cpu, cuda or mps (default: train.device; auto = cuda, else mps, else cpu).",
    ),
]


def device_override(device: str | None) -> list[str]:
    """``--device X`` as a ``--set train.device=X`` override (checked here: a usage error)."""
    from deepvibe.model.device import DEVICES

    if device is None:
        return []
    if device not in DEVICES:
        raise fail(f"--device must be one of {', '.join(DEVICES)}, got {device!r}", 2)
    return [f"train.device={device}"]


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

    _state["debug"], _state["verbose"] = debug, verbose
    configure_console(verbose)


@contextlib.contextmanager
def _scalar_writer(folder: Path | None) -> Iterator[Any]:
    """A TensorBoard writer for ``folder`` (None: no writer)."""
    if folder is None:
        yield None
        return
    from deepvibe.plots import ScalarWriter

    with ScalarWriter(folder) as writer:
        yield writer


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
    device: DeviceOpt = None,
    tensorboard: Annotated[
        Path | None,
        typer.Option("--tensorboard", help="Also write TensorBoard scalars to this folder."),
    ] = None,
    plots: Annotated[
        bool, typer.Option("--plots/--no-plots", help="Draw logs/training_curves.png at the end.")
    ] = True,
    nproc: Annotated[
        int | None,
        typer.Option(
            "--nproc",
            min=1,
            help="Train with N data-parallel processes on this machine (runs torchrun).",
        ),
    ] = None,
) -> None:
    """Train the hybrid VAE; keep the best checkpoint by validation NDCG@100."""
    from deepvibe.discovery.validation import MODE_KEYS, validator_for
    from deepvibe.fileio import ensure_writable_dir
    from deepvibe.logs import file_log
    from deepvibe.training import distributed
    from deepvibe.training.train import train as run_training

    if nproc is not None:  # the same command without --nproc, once per process
        args = [f"--{k}" for k in ("debug", "verbose") if _state[k]] + ["train"]
        args += [
            *(["--config", str(config)] if config else []),
            *(["--resume", str(resume)] if resume else []),
        ]
        args += [f"--set={s}" for s in set_ or []] + (["--device", device] if device else [])
        args += [] if progress is None else ["--progress" if progress else "--no-progress"]
        args += (["--tensorboard", str(tensorboard)] if tensorboard else []) + (
            [] if plots else ["--no-plots"]
        )
        raise typer.Exit(distributed.launch_local(nproc, args))
    cfg = load_cfg(config, [*(set_ or []), *device_override(device)])
    with distributed.session(cfg.train.dist_timeout_s, cfg.train.device) as ranks:
        logs_dir = None  # under torchrun rank 0 alone logs, plots and reports
        if ranks.is_main:
            logs_dir = ensure_writable_dir(cfg.paths.logs_dir, "log folder (paths.logs_dir)")
        tb_dir = tensorboard or (
            logs_dir / "tensorboard" if logs_dir and cfg.train.tensorboard else None
        )
        with (
            file_log(logs_dir / "training_detailed.log") if logs_dir else nullcontext(),
            _scalar_writer(tb_dir) as tb,
        ):
            result = run_training(
                cfg, resume=resume, progress=progress, validator=validator_for(cfg),
                on_epoch=None if tb is None else lambda row: tb.write(int(row["epoch"]), row),
            )  # fmt: skip
    if not ranks.is_main:
        raise typer.Exit(130 if result.interrupted else 0)
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
    validation = last.get("validation", "none") if last else "none"
    if math.isnan(result.best_metric) or not math.isfinite(result.best_metric):
        typer.echo(
            f"trained {result.epochs_done} epochs ({result.step} steps); too few users to "
            f"validate: kept the last epoch ({result.best_epoch})"
        )
    else:
        typer.echo(
            f"trained {result.epochs_done} epochs ({result.step} steps); best validation "
            f"NDCG@100 {result.best_metric:.4f} at epoch {result.best_epoch} "
            f"(validation: {validation} ranking)"
        )
    for mode, (w_key, fit_key, anchor_key) in MODE_KEYS.items():
        weights = result.best_extras.get(w_key)
        if not weights:
            continue
        fit = result.best_extras.get(fit_key, {})
        anchor = result.best_extras.get(anchor_key)
        typer.echo(
            f"discovery weights ({mode}): "
            + ", ".join(f"{k} {v:g}" for k, v in weights.items())
            + ("" if anchor is None else f"; DNA anchor {anchor:g}")
            + (f" ({fit.get('used')}: {fit.get('reason')})" if fit.get("used") else "")
        )
    if last:
        typer.echo(
            "last epoch: "
            + ", ".join(f"{k} {last[k]:.4g}" for k in ("loss", "val_recall@20") if k in last)
        )
    if plots and result.history:
        from deepvibe.plots import plot_training_curves

        log_csv = logs_dir / "hybrid_training.log"
        curves = plot_training_curves(log_csv, log_csv.parent / "training_curves.png")
        typer.echo(f"training curves: {curves}")
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
        bool, typer.Option("--gems", help="Hidden gems: score - lambda * popularity / 100.")
    ] = False,
    new_artists: Annotated[
        bool,
        typer.Option(
            "--new-artists", help="Only tracks by artists the user has never played (hybrid)."
        ),
    ] = False,
    html: Annotated[
        bool,
        typer.Option("--html", help="Also write a self-contained HTML report (and DNA chart)."),
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
            help="db: rank the track database by the hybrid score (decoder, artists, Vibe "
            "DNA); dna: by the Vibe DNA alone (the original design); catalogue: rank the "
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
    device: Annotated[
        str | None,
        typer.Option(
            "--device",
            help="auto, cpu, cuda or mps for the model (default: train.device of --config, "
            "else auto).",
        ),
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
    from deepvibe.data.history import load_history
    from deepvibe.discovery.discoverer import Discoverer, write_discoveries
    from deepvibe.discovery.report import checkpoint_label, format_dna, format_top
    from deepvibe.discovery.signals import TILE
    from deepvibe.discovery.users import align_users, load_training_users
    from deepvibe.model.device import resolve_device
    from deepvibe.training import distributed
    from deepvibe.training.checkpoint import load_checkpoint

    if user_ids and all_users:
        raise fail("give USER_IDs or --all, not both", 2)
    if not user_ids and not all_users and history is None:
        raise fail("give one or more USER_IDs, --all, or --history FILE", 2)
    if source is not None and source not in ("db", "dna", "catalogue"):
        raise fail(f"--source must be db, dna or catalogue, got {source!r}", 2)
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
    device_override(device)  # a usage error for an unknown name
    # The stored config says where the model was trained, not where it should run now.
    ck.model.to(resolve_device(device or (cfg.train.device if config is not None else "auto")))

    found = Discoverer.from_checkpoint(ck, cfg, source=source, progress=progress)
    if history is not None:  # account-data plays are matched by name: catalogue and database
        inter, origin = load_history(history, cfg.data, found.history_names()), str(history)
    else:
        inter, origin = load_training_users(cfg.data), str(cfg.data.interactions)
    space_ids = None if found.hybrid is None else found.hybrid.space.track_ids
    wanted = None if all_users else user_ids or None
    batch = align_users(inter, ck.track_ids, wanted, origin, space_ids)
    if history is not None and batch.unknown.sum():
        log.warning(
            "%s: %d played tracks are not in the model's catalogue (%d tracks); where the "
            "database holds them they count through their artists and sound, and none is "
            "recommended back",
            history, int(batch.unknown.sum()), len(ck.track_ids),
        )  # fmt: skip

    mode = "-".join(m for m, on in (("gems", gems), ("new-artists", new_artists)) if on)
    mode = mode or "standard"
    tag = checkpoint_label(Path(ck_path), cfg.paths.best_checkpoint, ck.epoch)
    s, db = found.settings, found.database
    if db is not None:
        where = f"{db.n_tracks:,}-track database"
        how = "Vibe DNA" if found.hybrid is None else f"hybrid: {found.hybrid.weights}"
        scanned = f"database {db.source} ({db.n_tracks:,} tracks, {how})"
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
    n_users, n_rows = len(batch.users), 0
    # Under torchrun each rank discovers its contiguous block of users (same report files as
    # one process); a combined --out table is written by rank 0 from the ranks' parts.
    with distributed.session(cfg.train.dist_timeout_s, "cpu", wait_s=7 * 24 * 3600) as ranks:
        # whole 64-user tiles per rank: a user sits at the same place in the same-shaped model
        # and scoring tiles as in one process, so their scores match to the last bit
        tiles = distributed.shard_users(range(-(-n_users // TILE)), ranks.rank, ranks.world)
        batch = batch.select(slice(tiles.start * TILE, min(tiles.stop * TILE, n_users)))
        part = None if out is None else (out if ranks.world == 1 else _part(out, ranks.rank))
        written = write_discoveries(found, batch, mode, tag, cfg.paths.recommendations_dir, part)
        for block, paths in written:
            n_rows += len(block.row_track)
            for u in range(len(block)):
                if verbose_out and ranks.is_main:
                    res = block.discovery(u)
                    typer.echo("")
                    typer.echo(format_dna(res, ck.scaler.columns, where))
                    shown = min(10, len(res.table))
                    typer.echo(f"Top {shown} of {len(res.table)} for {res.user}:")
                    typer.echo(format_top(res, shown))
                if paths:
                    report, dna = paths[u]
                    if ranks.is_main:
                        typer.echo(f"report: {report}  (DNA: {dna.name})")
                    if html:
                        page = _html_report(block.discovery(u), report, ck, where, scanned)
                        if ranks.is_main:
                            typer.echo(f"html: {page}")
        n_rows = sum(ranks.gather(n_rows))
        if out is not None and ranks.world > 1:
            ranks.barrier()
            if ranks.is_main:
                _combine_parts(out, [_part(out, r) for r in range(ranks.world)])
    if out is not None and ranks.is_main:
        typer.echo(f"recommendations: {out} ({n_users:,} users, {n_rows:,} rows)")


def _part(out: Path, rank: int) -> Path:
    return out.with_name(f".{out.stem}.part{rank}{out.suffix}")


def _combine_parts(out: Path, parts: list[Path]) -> None:
    """The ranks' Parquet parts, in rank order, as one table written atomically."""
    import pandas as pd

    from deepvibe.fileio import atomic_path

    frame = pd.concat([pd.read_parquet(p) for p in parts], ignore_index=True)
    with atomic_path(out) as tmp:
        frame.to_parquet(tmp, index=False)
    for p in parts:
        p.unlink(missing_ok=True)


def _html_report(res: Any, report: Path, ck: Any, where: str, scanned: str) -> Path:
    """``..._{mode}.html`` beside the CSV: the DNA chart inline and the recommendations."""
    from deepvibe.plots import plot_dna, write_html_report

    chart = plot_dna(
        ck.scaler.columns, res.dna_raw, res.dna_percentile, report.with_suffix(".png"),
        title=f"Vibe DNA of {res.user}", where=where,
    )  # fmt: skip
    return write_html_report(
        report.with_suffix(".html"), user=res.user, mode=res.mode, table=res.table,
        dna_png=chart.read_bytes(), notes=[f"model epoch {ck.epoch}", scanned],
    )  # fmt: skip


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
    device: DeviceOpt = None,
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol",
            help="catalogue (strong generalization), discovery (rank the track database: "
            "database-ranking and new-artist protocols) or auto (discovery when data.database "
            "has audio features).",
        ),
    ] = "auto",
    split_seed: Annotated[
        int | None,
        typer.Option("--split-seed", help="Discovery protocol: run this one split seed."),
    ] = None,
    plots: Annotated[
        bool, typer.Option("--plots/--no-plots", help="Chart the --json report as a PNG beside it.")
    ] = True,
) -> None:
    """Offline evaluation of deepvibe and baselines (mean ±std over seeds): the catalogue
    protocol (strong generalization) or the discovery protocols (the track database)."""
    from deepvibe.errors import ConfigError
    from deepvibe.evaluation.evaluate import (
        DEFAULT_EASE_LAMBDAS,
        EvalSettings,
        format_report,
        parse_baselines,
        write_evaluation_json,
    )
    from deepvibe.evaluation.evaluate import evaluate as run_evaluation

    cfg = load_cfg(config, [*(set_ or []), *device_override(device)])
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
    if _evaluation_protocol(cfg, protocol, checkpoint, split_seed) == "discovery":
        from deepvibe.evaluation.discovery import (
            DiscoverySettings,
            evaluate_discovery,
            format_discovery_report,
        )

        split_seeds = (split_seed,) if split_seed is not None else tuple(range(seeds))
        disc = DiscoverySettings(split_seeds=split_seeds, deepvibe=with_deepvibe, progress=progress)
        report = evaluate_discovery(cfg, disc)
        typer.echo(format_discovery_report(report))
    else:
        report = run_evaluation(cfg, settings, checkpoint=checkpoint, device=device)
        typer.echo(format_report(report))
    if json_out is not None:
        typer.echo(f"\nreport: {write_evaluation_json(report, json_out)}")
        if plots:
            from deepvibe.plots import plot_evaluation

            typer.echo(f"chart: {plot_evaluation(report, json_out.with_suffix('.png'))}")


def _evaluation_protocol(
    cfg: Any, protocol: str, checkpoint: Path | None, split_seed: int | None
) -> str:
    """catalogue | discovery from --protocol (auto: discovery when the config has a database
    with features and no --checkpoint is given); conflicting options are errors."""
    from deepvibe.data.dataset import uses_database_validation
    from deepvibe.errors import ConfigError
    from deepvibe.evaluation.discovery import require_database

    if protocol not in ("auto", "catalogue", "discovery"):
        raise ConfigError(f"--protocol must be catalogue, discovery or auto, got {protocol!r}")
    if protocol == "auto":
        auto = checkpoint is None and uses_database_validation(cfg)
        protocol = "discovery" if auto else "catalogue"
    if protocol == "discovery":
        if checkpoint is not None:
            raise ConfigError(
                "--checkpoint evaluates the catalogue protocol: use --protocol "
                "catalogue (the discovery protocol trains one model per split)"
            )
        require_database(cfg)
    elif split_seed is not None:
        raise ConfigError(
            "--split-seed is for the discovery protocol; for the catalogue "
            "protocol set the seed with --set seed=S"
        )
    return protocol


@app.command()
@guarded
def plot(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    log_file: Annotated[
        Path | None,
        typer.Option("--log", help="Training log (default: paths.logs_dir/hybrid_training.log)."),
    ] = None,
    evaluation: Annotated[
        Path | None,
        typer.Option("--evaluation", help="An `evaluate --json` report to chart as well."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Folder for the PNGs (default: beside each input)."),
    ] = None,
) -> None:
    """Draw the training curves (and an evaluation chart) as PNG files."""
    from deepvibe.plots import plot_evaluation, plot_training_curves

    cfg = load_cfg(config, set_)
    log_path = log_file or Path(cfg.paths.logs_dir) / "hybrid_training.log"
    folder = out or log_path.parent
    typer.echo(f"training curves: {plot_training_curves(log_path, folder / 'training_curves.png')}")
    if evaluation is not None:
        target = (out / evaluation.name if out else evaluation).with_suffix(".png")
        typer.echo(f"evaluation chart: {plot_evaluation(evaluation, target)}")


if __name__ == "__main__":  # pragma: no cover
    app()
