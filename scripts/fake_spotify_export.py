"""Write a made-up Spotify data download, for trying docs/DATA.md without a real one.

    python scripts/fake_spotify_export.py --tracks data/global_tracks.csv --out my_spotify_data.zip

The zip holds ``Spotify Extended Streaming History/Streaming_History_Audio_*.json`` (the exact
schema of the real download) with streams of a few tracks of ``--tracks`` (with ``--like COL``
only tracks above that column's median, so the history has a clear taste), plus podcast
episodes and skipped or short streams that ``prepare`` and ``discover`` must drop.
With ``--account`` it writes the older account-data schema instead (``MyData/
StreamingHistory_music_0.json``: names only, no ids), which needs track names and artists.
"""

from __future__ import annotations

import argparse
import json
import zipfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tracks", required=True, type=Path, help="CSV with track_id (+ names)")
    ap.add_argument("--out", required=True, type=Path, help="zip to write")
    ap.add_argument("--streams", type=int, default=400)
    ap.add_argument("--distinct", type=int, default=40, help="distinct tracks listened to")
    ap.add_argument("--like", default=None, help="feature column to favour (e.g. energy)")
    ap.add_argument("--username", default=None)
    ap.add_argument("--account", action="store_true", help="account-data schema (no ids)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    tracks = pd.read_csv(args.tracks, dtype={"track_id": str})
    if args.like:
        tracks = tracks[tracks[args.like] > tracks[args.like].median()]
    picked = tracks.sample(n=min(args.distinct, len(tracks)), random_state=args.seed)
    weights = rng.pareto(1.5, size=len(picked)) + 1
    weights /= weights.sum()
    start = datetime(2024, 1, 1, tzinfo=timezone.utc)
    entries = []
    for i in range(args.streams):
        row = picked.iloc[int(rng.choice(len(picked), p=weights))]
        when = start + timedelta(minutes=int(rng.integers(0, 60 * 24 * 180)))
        kind = rng.random()
        ms = int(rng.integers(5_000, 25_000)) if kind < 0.1 else int(rng.integers(60_000, 240_000))
        name = str(row.get("track_name", "")) if "track_name" in row else None
        artist = str(row.get("artists", "")).split(",")[0] if "artists" in row else None
        if args.account:
            entries.append({"endTime": when.strftime("%Y-%m-%d %H:%M"), "artistName": artist,
                            "trackName": name, "msPlayed": ms})  # fmt: skip
            continue
        podcast = 0.1 <= kind < 0.15
        entries.append(
            {
                "ts": when.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "username": args.username,
                "platform": "android",
                "ms_played": ms,
                "conn_country": "DE",
                "master_metadata_track_name": None if podcast else name,
                "master_metadata_album_artist_name": None if podcast else artist,
                "master_metadata_album_album_name": None,
                "spotify_track_uri": None if podcast else f"spotify:track:{row['track_id']}",
                "episode_name": f"Episode {i}" if podcast else None,
                "episode_show_name": "A Show" if podcast else None,
                "spotify_episode_uri": f"spotify:episode:ep{i:018d}" if podcast else None,
                "reason_start": "trackdone",
                "reason_end": "fwdbtn" if 0.15 <= kind < 0.2 else "trackdone",
                "shuffle": False,
                "skipped": bool(0.15 <= kind < 0.2),
                "offline": False,
                "offline_timestamp": 0,
                "incognito_mode": False,
            }
        )
    entries.sort(key=lambda e: e.get("ts") or e.get("endTime"))
    member = (
        "MyData/StreamingHistory_music_0.json"
        if args.account
        else "Spotify Extended Streaming History/Streaming_History_Audio_2024_0.json"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(args.out, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(member, json.dumps(entries, indent=1))
    print(f"wrote {args.out}: {len(entries)} streams of {len(picked)} tracks ({member})")


if __name__ == "__main__":
    main()
