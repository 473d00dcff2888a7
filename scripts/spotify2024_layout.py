"""Convert ../shared/data/spotify-2024 into the long + features + database layout `deepvibe`
reads, with playlists standing in for users.

    python scripts/spotify2024_layout.py --out /tmp/sp/data/spotify2024
    cd /tmp/sp && deepvibe evaluate --config /work/main/configs/spotify2024.yaml ...

Writes (never inside the repository: the data is not ours to redistribute):
- ``interactions.csv``: user_id (= playlist_id), track_id; one row per (playlist, track).
- ``tracks.csv``: track_id, the 12 audio features, popularity (= track_popularity),
  track_name, artists (= track_artist); one row per track, rows with a missing feature dropped.
  It is both the catalogue's features table and the database the scan ranks.

A stop-gap until ``deepvibe prepare`` covers this data set.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from deepvibe.config import DEFAULT_FEATURES
from deepvibe.fileio import write_csv_atomic

REPO = Path(__file__).resolve().parents[1]
FILES = ("high_popularity_spotify_data.csv", "low_popularity_spotify_data.csv")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=REPO / ".." / "shared/data/spotify-2024")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    out = args.out.resolve()
    if out == REPO or REPO in out.parents:
        parser.error(f"--out {out} is inside the repository; choose a folder outside it")
    frames = [
        pd.read_csv(args.source / name, dtype={"playlist_id": str, "track_id": str})
        for name in FILES
    ]
    rows = pd.concat(frames, ignore_index=True)
    features = list(DEFAULT_FEATURES)
    complete = rows[features + ["track_popularity"]].notna().all(axis=1)
    rows = rows[complete & rows["playlist_id"].notna() & rows["track_id"].notna()]
    pairs = rows[["playlist_id", "track_id"]].drop_duplicates()
    pairs = pairs.rename(columns={"playlist_id": "user_id"})
    tracks = rows.drop_duplicates("track_id")[
        ["track_id", *features, "track_popularity", "track_name", "track_artist"]
    ].rename(columns={"track_popularity": "popularity", "track_artist": "artists"})
    write_csv_atomic(pairs, out / "interactions.csv")
    write_csv_atomic(tracks, out / "tracks.csv")
    print(
        f"{out}: {pairs['user_id'].nunique()} playlists, {len(tracks)} tracks, "
        f"{len(pairs)} (playlist, track) pairs; {int((~complete).sum())} incomplete rows dropped"
    )


if __name__ == "__main__":
    main()
