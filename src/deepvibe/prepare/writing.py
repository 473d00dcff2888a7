"""What ``deepvibe prepare`` writes into its output folder:

- ``interactions.csv``: long rows ``user_id[, week], track_id, plays``, only catalogue tracks;
- ``top_10k_features.csv``: the catalogue, the ``max_tracks`` most-played tracks with complete
  features, most played first;
- ``global_tracks.csv``: every track with complete features (the database ``discover`` scans);
- ``unmatched_plays.csv``: account-data plays no track matched (only when there are any sources
  of that kind);
- ``deepvibe.yaml``: a config whose ``data`` section points at these files;
- ``prepare_summary.txt``: what was kept and dropped, and why.

Every file is written atomically (a temporary file renamed into place).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import yaml

from deepvibe.config import config_from_dict
from deepvibe.data.history import ExportPlays
from deepvibe.data.tables import PLAYS, TRACK, USER, TrackTable
from deepvibe.fileio import atomic_path, neutralise_formula, write_text_atomic

if TYPE_CHECKING:  # the pipeline imports this module; these are its types
    from deepvibe.prepare.pipeline import PrepareOptions, PrepareResult, TrackDump

# Output column names: the defaults of configs/default.yaml, so the generated config is short.
OUT_USER, OUT_TRACK, OUT_PLAYS, OUT_WEEK = USER, TRACK, PLAYS, "week"
OUT_POPULARITY, OUT_NAME, OUT_ARTISTS = "popularity", "track_name", "artists"


def sorted_pairs(pairs: pd.DataFrame, weekly: bool) -> pd.DataFrame:
    """Entries by user (and week), most played first; whole plays written as integers."""
    order = [OUT_USER, OUT_WEEK] if weekly else [OUT_USER]
    pairs = pairs.sort_values(
        [*order, OUT_PLAYS, OUT_TRACK], ascending=[True] * len(order) + [False, True]
    )
    plays = pairs[OUT_PLAYS].to_numpy()
    if np.all(plays == np.round(plays)):
        pairs = pairs.assign(**{OUT_PLAYS: plays.astype(np.int64)})
    return pairs[[*order, OUT_TRACK, OUT_PLAYS]].reset_index(drop=True)


def _track_frame(table: TrackTable, index: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame({OUT_TRACK: table.track_ids[index]})
    for j, c in enumerate(table.feature_columns):
        frame[c] = table.features[index, j]
    if table.popularity is not None:
        frame[OUT_POPULARITY] = table.popularity[index]
    if table.names is not None:
        frame[OUT_NAME] = table.names[index]
    if table.artists is not None:
        frame[OUT_ARTISTS] = table.artists[index]
    return frame


def _write_table(frame: pd.DataFrame, path: Path, parquet: bool) -> None:
    """Atomic CSV or Parquet; CSV through pyarrow, whose number formatting is ~10x faster than
    pandas' on a million-row track database (shortest round-trip floats, UTF-8)."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    table = pa.Table.from_pandas(frame, preserve_index=False)
    with atomic_path(path) as tmp:
        if parquet:
            import pyarrow.parquet as pq

            pq.write_table(table, tmp)
        else:
            pacsv.write_csv(table, tmp, pacsv.WriteOptions(quoting_style="needed"))


def write_outputs(
    out: Path,
    pairs: pd.DataFrame,
    catalogue_ids: np.ndarray,
    dump: TrackDump | None,
    exp: ExportPlays,
    options: PrepareOptions,
) -> dict[str, Path]:
    """Write every file but the summary; returns their paths by name."""
    ext = ".parquet" if options.parquet else ".csv"
    paths = {
        "interactions": out / f"interactions{ext}",
        "summary": out / "prepare_summary.txt",
        "config": out / "deepvibe.yaml",
    }
    if dump is not None:
        paths["features"] = out / f"top_10k_features{ext}"
        paths["database"] = out / f"global_tracks{ext}"
    if exp.n_account:
        paths["unmatched"] = out / "unmatched_plays.csv"
    config = config_dict(paths, dump, options.weekly, len(catalogue_ids))
    config_from_dict(config, source="generated config")  # never write a config train rejects

    _write_table(sorted_pairs(pairs, options.weekly), paths["interactions"], options.parquet)
    if dump is not None:
        cat_index = pd.Index(dump.table.track_ids).get_indexer(catalogue_ids)
        _write_table(_track_frame(dump.table, cat_index), paths["features"], options.parquet)
        _write_table(
            _track_frame(dump.table, np.flatnonzero(dump.complete)),
            paths["database"],
            options.parquet,
        )
    if exp.n_account:
        listing = exp.unmatched.copy()
        for c in (OUT_USER, "artist", "track"):  # people open this file in spreadsheets
            listing[c] = listing[c].map(neutralise_formula)
        _write_table(listing, paths["unmatched"], parquet=False)
    header = (
        "# Written by `deepvibe prepare`; train with: deepvibe train --config THIS_FILE\n"
        "# Paths are absolute. Add model/train/discover/paths sections as in "
        "configs/default.yaml.\n"
    )
    write_text_atomic(paths["config"], header + yaml.safe_dump(config, sort_keys=False))
    return paths


def config_dict(
    paths: dict[str, Path], dump: TrackDump | None, weekly: bool, n_catalogue: int
) -> dict:
    """The generated config: a ``data`` section pointing at the written files."""
    data: dict = {
        "interactions": str(paths["interactions"].resolve()),
        "format": "long",
        "user_column": OUT_USER,
        "time_column": OUT_WEEK if weekly else None,
        "track_column": OUT_TRACK,
        "plays_column": OUT_PLAYS,
    }
    if dump is None:
        data.update({"features": None, "database": None})
    else:
        t = dump.table
        data.update(
            {
                "features": str(paths["features"].resolve()),
                "feature_track_column": OUT_TRACK,
                "feature_columns": list(t.feature_columns),
                "popularity_column": OUT_POPULARITY if t.popularity is not None else None,
                "name_column": OUT_NAME if t.names is not None else None,
                "artist_column": OUT_ARTISTS if t.artists is not None else None,
                "database": str(paths["database"].resolve()),
            }
        )
    data["max_tracks"] = max(1, n_catalogue)
    return {"data": data}


def summary_text(
    r: PrepareResult,
    read_lines: list[str],
    dump: TrackDump | None,
    exp: ExportPlays,
    options: PrepareOptions,
    n_entries_read: int,
) -> str:
    """What was read, dropped (by reason), kept and written."""
    unit = "(user, week, track)" if options.weekly else "(user, track)"
    lines = ["read:", *read_lines]
    if dump is not None:
        lines.append(
            f"  track tables: {dump.n_rows:,} rows, {len(dump.table.track_ids):,} distinct tracks, "
            f"{int(dump.complete.sum()):,} with complete features"
        )
    if exp.n_account:
        rate = exp.n_matched / exp.n_account
        lines.append(
            f"account-data matching: {exp.n_matched:,} of {exp.n_account:,} plays matched a track "
            f"by artist and title ({rate:.1%}); {len(exp.unmatched):,} unmatched (artist, track) "
            f"pairs listed in {r.paths['unmatched']}"
        )
    lines.append("dropped (each under the first reason that applies):\n" + r.ledger.lines(unit))
    if options.binary:
        lines.append("plays: --binary, every kept entry counts 1 (after --min-plays)")
    density = r.nnz / max(1, r.n_rows * r.n_catalogue)
    lines += [
        f"kept: {r.n_users:,} users in {r.n_rows:,} rows, {r.n_catalogue:,} catalogue tracks, "
        f"{r.nnz:,} of {n_entries_read:,} {unit} entries, {r.plays_kept:,.0f} plays "
        f"(density {density:.4%})",
        f"catalogue coverage: {r.coverage:.1%} of the {r.plays_read:,.0f} plays read are on "
        f"catalogue tracks; {r.plays_kept / r.plays_read:.1%} are kept",
    ]
    if dump is not None:
        lines.append(f"database: {r.n_global:,} tracks with complete features")
    lines.append("wrote:")
    lines += [f"  {k:>12}: {p}" for k, p in r.paths.items()]
    return "\n".join(lines)


def write_summary(path: Path, text: str) -> None:
    write_text_atomic(path, text + "\n")
