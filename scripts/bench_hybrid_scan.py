"""The hybrid's database ranking against a DNA-only scan of the same tracks, on a catalogue
shaped like real ones (issue 10's cost budget: the hybrid at most 1.25x the DNA scan).
``--equal-artists``: artists of equal sizes instead (the toy database's shape).

Builds in memory a space of ``--tracks`` tracks (12 continuous features) by ``--artists``
artists of Zipf sizes (track counts ~ 1 / rank; 15% of tracks credit two artists), an
ArtistCF fitted on 2,000 synthetic listeners of Zipf-popular artists (50 neighbours per
artist: most artists carry a small collab part for most users), a 1,000-track catalogue, and
``--users`` users with ``--history`` tracks each (DNA: the mean of their tracks' features).
Then times, interleaved, ``--repeat`` times each, in this process, BLAS single-threaded and the
scan's own worker threads (as ``discover`` runs them):

- ``dna``: :func:`scan.scan` with a :class:`scan.DnaScorer` over the same standardised features
  (in-memory chunks, prepared chunks cached as ``discover --source dna`` keeps them between
  blocks), k + the longest history as discover asks for;
- ``rank_space``: :func:`signals.rank_space`, every (user, track) pair scored;
- ``pruned``: :func:`hybrid_scan.rank_database` with its size gate off (``_MIN_SPACE``),
  the history excluded.

Prints medians, the ratios over ``dna``, the load average beside each repeat, the exact pairs
per user of the pruned ranking and of the DNA scan, and whether rank_space and the pruned
ranking agree bit for bit (rows and float32 scores).

    python scripts/bench_hybrid_scan.py --tracks 200000 --artists 20000 --users 512 --k 1000
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp

from deepvibe.data.tables import FeatureScaler
from deepvibe.discovery import hybrid_scan, scan
from deepvibe.discovery.hybrid import HybridWeights, artist_share_matrix, unit_rows, zscore_rows
from deepvibe.discovery.signals import (
    HybridScorer,
    TrackSpace,
    UserInputs,
    rank_space,
    space_units,
)
from deepvibe.model.artist_cf import ArtistCF

N_FEATURES, N_CATALOGUE, N_LISTENERS = 12, 1000, 2000


def zipf_artists(
    rng: np.random.Generator, n_tracks: int, n_artists: int, equal: bool = False
) -> sp.csr_matrix:
    """(n, A) binary credits: artist of each credit drawn with p ~ 1 / rank (``equal``: all
    alike, the toy database's shape); 15% of tracks credit two (distinct) artists."""
    p = np.ones(n_artists) if equal else 1.0 / np.arange(1, n_artists + 1)
    p /= p.sum()
    first = rng.choice(n_artists, n_tracks, p=p)
    two = np.flatnonzero(rng.random(n_tracks) < 0.15)
    second = rng.choice(n_artists, len(two), p=p)
    keep = second != first[two]
    rows = np.concatenate([np.arange(n_tracks), two[keep]])
    cols = np.concatenate([first, second[keep]])
    out = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_tracks, n_artists))
    out.sort_indices()
    return out


def build(
    n_tracks: int, n_artists: int, n_users: int, history: int, seed: int,
    weights: HybridWeights, equal: bool = False,
) -> tuple[HybridScorer, UserInputs, np.ndarray]:  # fmt: skip
    """The scorer, the users' inputs and their standardised DNA (U, f)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n_tracks, N_FEATURES)).astype(np.float32)
    artists = zipf_artists(rng, n_tracks, n_artists, equal)
    catalogue_index = np.full(n_tracks, -1, np.int64)
    inside = rng.choice(n_tracks, N_CATALOGUE, replace=False)
    catalogue_index[inside] = np.arange(N_CATALOGUE)
    keys = np.array([f"a{i}" for i in range(n_artists)], dtype=object)
    space = TrackSpace(
        track_ids=np.array([f"t{i}" for i in range(n_tracks)], dtype=object),
        units=space_units(z), standardised=z, has_features=np.ones(n_tracks, bool),
        artists=artists, artist_keys=keys, catalogue_index=catalogue_index,
        popularity=rng.integers(0, 101, n_tracks).astype(np.float32),
    )  # fmt: skip
    p = 1.0 / np.arange(1, n_artists + 1)
    p /= p.sum()
    per = rng.integers(20, 100, N_LISTENERS)
    listeners = sp.csr_matrix(
        (np.ones(per.sum(), np.float32),
         (np.repeat(np.arange(N_LISTENERS), per), rng.choice(n_artists, per.sum(), p=p))),
        shape=(N_LISTENERS, n_artists),
    )  # fmt: skip
    artist_cf = ArtistCF.fit(listeners, keys, max_neighbours=50)
    scorer = HybridScorer(
        None, np.zeros((N_CATALOGUE, N_FEATURES), np.float32), space,  # type: ignore[arg-type]
        weights, 1.0, None, artist_cf,
    )  # fmt: skip
    picked = np.stack([rng.choice(n_tracks, history, replace=False) for _ in range(n_users)])
    owner = np.repeat(np.arange(n_users), history)
    plays = sp.csr_matrix(
        (np.ones(picked.size, np.float32), (owner, picked.ravel())), shape=(n_users, n_tracks)
    )
    dna_raw = z[picked].mean(axis=1) + 0.1 * rng.normal(size=(n_users, N_FEATURES))
    dna_raw = dna_raw.astype(np.float32)
    assert scorer.cf_artists is not None
    cf_users = sp.csr_matrix(plays @ scorer.cf_artists)
    cf_users.data[:] = 1.0
    inputs = UserInputs(
        dna=unit_rows(dna_raw), dna_raw=dna_raw, shares=artist_share_matrix(plays, artists),
        collab=artist_cf.user_scores(cf_users),
        decoder_z=zscore_rows(np.round(rng.normal(size=(n_users, N_CATALOGUE)) * 4) / 4),
        history=plays, usable=np.ones(n_users, bool),
    )  # fmt: skip
    return scorer, inputs, dna_raw


class InMemoryDatabase:
    """The space's standardised features read like a TrackDatabase by :func:`scan.scan`."""

    def __init__(self, features: np.ndarray, popularity: np.ndarray) -> None:
        self.features, self.popularity = features, popularity  # (n, f), (n,)
        self.n_tracks = len(features)

    def chunks(self, size: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        for start in range(0, self.n_tracks, size):
            stop = min(start + size, self.n_tracks)
            yield start, self.features[start:stop], self.popularity[start:stop]

    def sample(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        step = max(1, self.n_tracks // max(1, size))
        return self.features[::step][:size].T.copy(), self.popularity[::step][:size]


class CountingPairs:
    """Counts the exact pairs a chunk scorer's ``exact`` is asked for."""

    def __init__(self) -> None:
        self.pairs = 0

    def wrap(self, cls: type) -> None:
        original = cls.exact
        counter = self

        def exact(self, prepared, users, cols):  # noqa: ANN001, ANN202
            counter.pairs += len(users)
            return original(self, prepared, users, cols)

        cls.exact = exact  # type: ignore[method-assign]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracks", type=int, default=200_000)
    parser.add_argument("--artists", type=int, default=20_000)
    parser.add_argument("--users", type=int, default=512)
    parser.add_argument("--history", type=int, default=200)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--weights", type=float, nargs=4, default=(1.0, 3.0, 1.0, 0.25),
        metavar=("DNA", "ARTIST", "COLLAB", "DECODER"),
    )  # fmt: skip
    parser.add_argument("--chunk", type=int, default=262_144)
    parser.add_argument(
        "--equal-artists", action="store_true",
        help="artists of equal sizes (the toy database's shape) instead of Zipf sizes",
    )  # fmt: skip
    args = parser.parse_args()
    weights = HybridWeights(*args.weights)
    t = time.perf_counter()
    scorer, inputs, dna_raw = build(
        args.tracks,
        args.artists,
        args.users,
        args.history,
        args.seed,
        weights,
        args.equal_artists,
    )
    order = hybrid_scan._artist_order(scorer)  # built once per space, as discover keeps it
    print(
        f"space {args.tracks:,} tracks, {args.artists:,} artists (mean single-artist run "
        f"{order.mean_run:.1f}), {args.users} users x {args.history} history, k {args.k}, "
        f"weights {tuple(args.weights)}; built in {time.perf_counter() - t:.1f} s"
    )
    hybrid_scan._MIN_SPACE = 0  # the size gate off: time the pruned steps themselves
    db = InMemoryDatabase(scorer.space.standardised, scorer.space.popularity)
    scaler = FeatureScaler(
        tuple(f"f{j}" for j in range(N_FEATURES)), np.zeros(N_FEATURES), np.ones(N_FEATURES)
    )
    cache = scan.PreparedChunks()
    extra = int(np.diff(inputs.history.indptr).max())
    dna_pairs, hybrid_pairs = CountingPairs(), CountingPairs()
    dna_pairs.wrap(scan.DnaScorer)
    hybrid_pairs.wrap(hybrid_scan.HybridChunkScorer)

    def dna() -> object:
        return scan.scan(db, scan.DnaScorer(dna_raw, scaler), args.k + extra, args.chunk,
                         progress=False, cache=cache)  # fmt: skip

    def every_pair() -> tuple[np.ndarray, np.ndarray]:
        return rank_space(scorer, inputs, args.k, inputs.history, None, args.chunk)

    def pruned() -> tuple[np.ndarray, np.ndarray]:
        return hybrid_scan.rank_database(scorer, inputs, args.k, inputs.history, None, args.chunk)

    dna()  # warm: the prepared chunks, as a second block of discover finds them
    times: dict[str, list[float]] = {"dna": [], "rank_space": [], "pruned": []}
    same = True
    for rep in range(args.repeat):
        dna_pairs.pairs = hybrid_pairs.pairs = 0
        results = {}
        for name, fn in (("dna", dna), ("rank_space", every_pair), ("pruned", pruned)):
            t = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t)
        want, got = results["rank_space"], results["pruned"]
        equal = np.array_equal(want[0], got[0]) and want[1].tobytes() == got[1].tobytes()
        same &= equal
        print(
            f"repeat {rep + 1}: dna {times['dna'][-1]:.3f} s, rank_space "
            f"{times['rank_space'][-1]:.3f} s, pruned {times['pruned'][-1]:.3f} s; exact pairs "
            f"per user: pruned {hybrid_pairs.pairs / args.users:,.0f}, dna "
            f"{dna_pairs.pairs / args.users:,.0f}; equal {equal}; "
            f"load {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
        )
    med = {name: float(np.median(v)) for name, v in times.items()}
    print(
        f"median of {args.repeat}: dna {med['dna']:.3f} s, rank_space {med['rank_space']:.3f} s "
        f"({med['rank_space'] / med['dna']:.2f}x), pruned {med['pruned']:.3f} s "
        f"({med['pruned'] / med['dna']:.2f}x); pruned == rank_space bit for bit: {same}"
    )


if __name__ == "__main__":
    main()
