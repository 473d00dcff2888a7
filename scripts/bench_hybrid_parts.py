"""Cost of the hybrid discovery parts for one (users x tracks) chunk, against the DNA part alone.

Synthetic inputs sized like a real scan: ``--users`` users (default 256) against one chunk of
``--chunk`` database tracks (default 262,144) with 12 features, ``--artists`` artists (default
100,000; 1.3 artists per track on average), a catalogue of ``--catalogue`` tracks (10,000) and
50 history artists per user. Times (best of ``--repeat``) in one process:

- baseline: a DNA-only scan step, ``dna_part`` + ``score_chunk`` + the best ``--top`` (1,000)
  per user by ``argpartition``, what the current scan does per chunk;
- each part on its own, ``score_chunk`` over given parts, all four parts + ``score_chunk``,
  and the hybrid scan step (all parts + ``score_chunk`` + the same top 1,000); the same with
  ``score_direct`` (no materialised parts: what the scan should call);
- ArtistCF: ``fit`` on ``--cf-users`` users x 50 artists each, and ``user_scores`` for the
  block of users (once per block, not per chunk).

    python scripts/bench_hybrid_parts.py
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import scipy.sparse as sp

from deepvibe.discovery import hybrid as H
from deepvibe.model.artist_cf import ArtistCF


def best_time(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def random_track_artists(rng, n_tracks: int, n_artists: int) -> sp.csr_matrix:
    """(n_tracks, n_artists) binary: one artist each, 30% of tracks get a second one."""
    rows = np.arange(n_tracks)
    extra = np.flatnonzero(rng.random(n_tracks) < 0.3)
    cols = np.concatenate(
        [rng.integers(0, n_artists, n_tracks), rng.integers(0, n_artists, len(extra))]
    )
    m = sp.csr_matrix(
        (np.ones(len(cols), np.float32), (np.concatenate([rows, extra]), cols)),
        shape=(n_tracks, n_artists),
    )
    m.data[:] = 1.0
    return m


def user_artists(rng, n_users: int, n_artists: int, per_user: int = 50) -> sp.csr_matrix:
    cols = rng.integers(0, n_artists, (n_users, per_user)).ravel()
    rows = np.repeat(np.arange(n_users), per_user)
    m = sp.csr_matrix((np.ones(len(cols), np.float32), (rows, cols)), shape=(n_users, n_artists))
    m.data[:] = 1.0
    return m


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=262_144)
    ap.add_argument("--artists", type=int, default=100_000)
    ap.add_argument("--catalogue", type=int, default=10_000)
    ap.add_argument("--cf-users", type=int, default=50_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--top", type=int, default=1000)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    U, C, A = args.users, args.chunk, args.artists
    track_units = H.unit_rows(rng.normal(size=(C, 12)))
    has_features = rng.random(C) > 0.01
    user_dna = H.unit_rows(rng.normal(size=(U, 12)))
    chunk_artists = random_track_artists(rng, C, A)
    history = user_artists(rng, U, A)
    shares = sp.csr_matrix(history / 50.0, dtype=np.float32)
    catalogue_index = np.full(C, -1)
    catalogue_index[rng.choice(C, args.catalogue, replace=False)] = np.arange(args.catalogue)
    decoder_z = H.zscore_rows(rng.normal(size=(U, args.catalogue)))

    t_fit, cf = best_time(
        lambda: ArtistCF.fit(user_artists(rng, args.cf_users, A), np.arange(A).astype(str)), 1
    )
    t_user, collab = best_time(lambda: cf.user_scores(history), args.repeat)
    w = H.DEFAULT_WEIGHTS
    dna_only = H.HybridWeights(1.0, 0.0, 0.0, 0.0)

    inputs = dict(
        user_dna=user_dna, track_units=track_units, has_features=has_features,
        user_shares=shares, user_collab=collab, chunk_artists=chunk_artists,
        catalogue_index=catalogue_index, user_decoder_z=decoder_z,
    )  # fmt: skip

    def all_parts() -> dict[str, np.ndarray]:
        return H.chunk_parts(**inputs)

    def top(scores: np.ndarray) -> np.ndarray:  # what a scan keeps per chunk: the best --top
        return np.argpartition(-scores, args.top - 1, axis=1)[:, : args.top]

    def dna_scan() -> np.ndarray:
        return top(
            H.score_chunk({"dna": H.dna_part(user_dna, track_units, has_features)}, dna_only)
        )

    parts = all_parts()
    timings = {
        "DNA-only scan step (baseline)": dna_scan,
        "dna part": lambda: H.dna_part(user_dna, track_units, has_features),
        "artist part": lambda: H.artist_part(shares, chunk_artists),
        "collab part (max)": lambda: H.collab_part(collab, chunk_artists),
        "decoder part": lambda: H.decoder_part(decoder_z, catalogue_index),
        "score_chunk (4 parts given)": lambda: H.score_chunk(parts, w),
        "all parts + score_chunk": lambda: H.score_chunk(all_parts(), w),
        "hybrid scan step": lambda: top(H.score_chunk(all_parts(), w)),
        "score_direct (no parts)": lambda: H.score_direct(w, **inputs),
        "hybrid scan step, direct": lambda: top(H.score_direct(w, **inputs)),
    }
    print(f"{U} users x {C:,} tracks, {A:,} artists ({chunk_artists.nnz:,} track-artist pairs)")
    print(f"ArtistCF.fit {args.cf_users:,} users x 50 artists: {t_fit:.1f}s, ", end="")
    print(f"{cf.similarity.nnz:,} neighbours; user_scores for {U} users: {t_user:.2f}s")
    base = None
    for name, fn in timings.items():
        t, _ = best_time(fn, args.repeat)
        base = base or t
        print(f"{name:30s} {t:7.3f}s  {t / base:5.2f}x baseline")


if __name__ == "__main__":
    main()
