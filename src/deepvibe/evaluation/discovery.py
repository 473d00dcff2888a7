"""The discovery harness behind ``deepvibe evaluate --protocol discovery``.

Definitions: /work/shared/design/discovery-protocols.md (``ranking/discovery_protocol.py``).
For each split seed:

1. (user, track) pairs over every row of a user, deduplicated, over the database tracks with
   the audio features (the columns are the database's order, the rows sorted user ids).
2. :func:`~deepvibe.ranking.discovery_protocol.database_split`: users with >= 5 tracks hold
   out ``int(0.2 n)`` of them; the rest is the fold-in.
3. deepvibe is trained on the fold-in rows of all users (``build_dataset`` + ``train`` with the
   :class:`~deepvibe.discovery.validation.DatabaseValidator`). Training takes its validation
   users from these fold-in rows, so those users' fold-in rows choose the epoch and fit the
   discovery weights but are not trained on; the artist model (ArtistCF) is fitted on the
   training users' rows. No held-out track is seen by anything.
4. Every database track is scored for each user with held-out tracks, the fold-in masked:
   deepvibe's hybrid (weights: ``discover.weights`` where the config sets them, else those
   fitted on validation users at the best epoch, else the defaults), each part alone
   (``dna``, ``decoder``, ``artist`` = artist share + collab) and the doc's baselines.
   Protocols: ``database`` and the new-artist protocol in two views, ``new-artist-credit``
   (the whole credit is one artist: the doc's reference figures) and ``new-artist-artist``
   (each credited artist: what ``discover --new-artists`` excludes).
5. Beyond accuracy of deepvibe's top 100 per mode (standard, gems, new-artists) on the
   database protocol's users: new-artist share, average popularity, coverage.

Memory: users are scored in blocks of ``user_block`` against the whole database at once, a
(block x n_db) float64 array (256 x 100,000 = 200 MB), fine for databases up to ~100k tracks.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from deepvibe.config import Config, config_from_dict
from deepvibe.data.artists import artist_matrix
from deepvibe.data.catalogue import load_catalogue_features, load_database_table
from deepvibe.data.dataset import build_dataset, uses_database_validation
from deepvibe.data.tables import Interactions, TrackTable, load_interactions
from deepvibe.discovery.hybrid import HybridWeights
from deepvibe.discovery.signals import HybridScorer, TrackSpace, UserInputs
from deepvibe.discovery.validation import (
    MODE_KEYS,
    DatabaseValidator,
    configured_weights,
    mode_anchor,
    mode_weights,
)
from deepvibe.errors import ConfigError
from deepvibe.evaluation.discovery_baselines import (
    ArtistCooccurrence,
    artist_share_scores,
    content_mean_scores,
    cooccurrence_blend_scores,
    popularity_scores,
    standardise,
)
from deepvibe.model.artist_cf import ArtistCF
from deepvibe.ranking.discovery_protocol import (
    binary_pairs,
    credit_matrix,
    database_split,
    evaluate_database,
    new_artist_view,
)
from deepvibe.ranking.metrics import mask_seen
from deepvibe.ranking.topk import top_k

log = logging.getLogger(__name__)

PROTOCOLS = ("database", "new-artist-credit", "new-artist-artist")
METRICS = ("ndcg@100", "recall@20", "recall@50")
MODES = ("standard", "gems", "new-artists")
BEYOND_K = 100


@dataclass(frozen=True)
class DiscoverySettings:
    """What the discovery protocols run. ``split_seeds``: one split (and one trained model)
    each; the training seed of split i is ``cfg.seed + i``."""

    split_seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    holdout_fraction: float = 0.2
    min_tracks: int = 5
    deepvibe: bool = True
    user_block: int = 256
    progress: bool | None = False

    def __post_init__(self) -> None:
        if not self.split_seeds:
            raise ConfigError("no split seeds: use --seeds N (N >= 1) or --split-seed S")
        if self.user_block < 1:
            raise ConfigError(f"user_block must be at least 1, got {self.user_block}")


@dataclass(frozen=True)
class DiscoveryData:
    """Everything a split needs, loaded once."""

    user_ids: np.ndarray  # (U,) sorted user ids
    pairs: sp.csr_matrix  # (U, n_db) binary: who played which database track
    database: TrackTable  # the database tracks with features (columns of ``pairs``)
    tracks: TrackTable | None  # the features table (``data.features``), for build_dataset
    z_features: np.ndarray  # (n_db, f) standardised over the database (the baselines' space)
    artists: sp.csr_matrix  # (n_db, A) binary, each credited artist
    credits: sp.csr_matrix  # (n_db, C) binary, the whole credit as one artist

    @property
    def popularity(self) -> np.ndarray:
        if self.database.popularity is None:
            return np.full(len(self.database.track_ids), np.nan)
        return np.asarray(self.database.popularity, dtype=np.float64)


def require_database(cfg: Config) -> None:
    """The discovery protocols rank a track database with features: say what is missing."""
    if not uses_database_validation(cfg):
        d = cfg.data
        what = (
            "data.database is not set"
            if not d.database
            else f"data.database {d.database} is not a file"
            if d.features and d.feature_columns
            else "data.features / data.feature_columns are not set"
        )
        raise ConfigError(
            f"the discovery protocol ranks a track database with audio features, and {what}; "
            "set data.database (and data.features) or use --protocol catalogue"
        )


def load_discovery_data(cfg: Config) -> DiscoveryData:
    """Read the interactions, the features table and the database; build the pairs (step 1)."""
    require_database(cfg)
    d = cfg.data
    database = load_database_table(d)
    complete = np.isfinite(np.asarray(database.features, np.float64)).all(axis=1)
    if database.complete is not None:
        complete &= np.asarray(database.complete, bool)
    if not complete.all():
        database = database.take(np.flatnonzero(complete))
    inter = load_interactions(d)
    user_ids, pairs = user_pairs(inter, database.track_ids)
    lists = database.artist_lists or [()] * len(database.track_ids)
    _, artists = artist_matrix(lists)
    artists = binary_pairs(artists)
    return DiscoveryData(
        user_ids=user_ids,
        pairs=pairs,
        database=database,
        tracks=load_catalogue_features(d),
        z_features=standardise(database.features),
        artists=artists,
        credits=credit_matrix(artists),
    )


def user_pairs(inter: Interactions, database_ids: np.ndarray) -> tuple[np.ndarray, sp.csr_matrix]:
    """Every row of a user merged -> (sorted user ids, (U, n_db) binary pairs); tracks outside
    the database drop."""
    codes, uniques = pd.factorize(pd.Series(inter.row_users, dtype=object), sort=True)
    by_user = sp.csr_matrix(
        (np.ones(len(codes), np.float32), (codes, np.arange(len(codes)))),
        shape=(len(uniques), len(codes)),
    )
    columns = pd.Index(np.asarray(database_ids, dtype=object)).get_indexer(inter.track_ids)
    known = np.flatnonzero(columns >= 0)
    pick = sp.csr_matrix(
        (np.ones(len(known), np.float32), (known, columns[known])),
        shape=(len(inter.track_ids), len(database_ids)),
    )
    plays = sp.csr_matrix(inter.matrix, dtype=np.float32)
    plays.data[:] = 1.0
    pairs = binary_pairs(by_user @ plays @ pick)
    return np.asarray(uniques, dtype=object), pairs


# --------------------------------------------------------------------------- deepvibe's side


class DeepvibeScores:
    """A trained model's hybrid scores over the database for blocks of users' fold-in."""

    def __init__(self, scorer: HybridScorer, foldin: sp.csr_matrix, n_catalogue: int) -> None:
        self.scorer = scorer
        self.foldin = sp.csr_matrix(foldin)
        index = scorer.space.catalogue_index
        inside = np.flatnonzero(index >= 0)
        to_catalogue = sp.csr_matrix(
            (np.ones(len(inside), np.float32), (inside, index[inside])),
            shape=(len(index), n_catalogue),
        )
        self.catalogue_plays = sp.csr_matrix(self.foldin @ to_catalogue)  # (U, n_catalogue)
        self._cached: tuple[bytes, UserInputs] | None = None

    def inputs(self, rows: np.ndarray) -> UserInputs:
        key = np.asarray(rows, np.int64).tobytes()
        if self._cached is None or self._cached[0] != key:
            inputs = self.scorer.user_inputs(self.foldin[rows], self.catalogue_plays[rows])
            self._cached = (key, inputs)
        return self._cached[1]

    def scores(self, rows: np.ndarray, weights: HybridWeights | None = None) -> np.ndarray:
        """(len(rows), n_db) float64; NaN rows for users with nothing to score by."""
        inputs = self.inputs(rows)
        out = self.scorer.score(inputs, slice(0, len(self.scorer.space)), weights)
        out = np.asarray(out, dtype=np.float64)
        out[~inputs.usable] = np.nan
        return out

    def fn(self, weights: HybridWeights | None = None) -> Callable[[np.ndarray], np.ndarray]:
        return lambda rows: self.scores(rows, weights)

    def with_anchor(self, anchor: float) -> DeepvibeScores:
        """The same model and parts with another Vibe DNA anchor (self when it is the same)."""
        if anchor == self.scorer.dna_anchor:
            return self
        s = self.scorer
        scorer = HybridScorer(
            s.model, s.features.numpy(), s.space, s.weights, s.temperature, s.top_k,
            s.artist_cf, anchor,
        )  # fmt: skip
        return DeepvibeScores(scorer, self.foldin, self.catalogue_plays.shape[1])


def part_weights(w: HybridWeights) -> dict[str, HybridWeights]:
    """The hybrid and each part alone; ``artist`` keeps the hybrid's artist : collab ratio."""
    artist, collab = (w.artist, w.collab) if w.artist + w.collab > 0 else (1.0, 1.0)
    return {
        "deepvibe": w,
        "deepvibe-dna": HybridWeights(dna=1.0, artist=0.0, collab=0.0, decoder=0.0),
        "deepvibe-decoder": HybridWeights(dna=0.0, artist=0.0, collab=0.0, decoder=1.0),
        "deepvibe-artist": HybridWeights(dna=0.0, artist=artist, collab=collab, decoder=0.0),
    }


def train_deepvibe(
    cfg: Config, data: DiscoveryData, foldin: sp.csr_matrix, settings: DiscoverySettings
) -> tuple[DeepvibeScores, HybridWeights, dict[str, Any]]:
    """Train on the fold-in rows of all users (step 3) -> scores, weights used, info. The
    scores use the standard mode's anchor; ``info["anchor_new_artists"]`` is the other's."""
    from deepvibe.training.train import train

    has_rows = np.diff(foldin.indptr) > 0
    inter = Interactions(
        foldin[has_rows], data.user_ids[has_rows], None, np.asarray(data.database.track_ids)
    )
    ds = build_dataset(cfg, interactions=inter, tracks=data.tracks)
    started = time.perf_counter()
    result = train(
        cfg, dataset=ds, progress=settings.progress, write_files=False, restore_best=True,
        validator=DatabaseValidator,
    )  # fmt: skip
    fitted = result.best_extras.get("discovery_weights")
    if cfg.discover.weights.given():
        weights, source = configured_weights(cfg), "discover.weights"
    elif fitted:
        weights, source = HybridWeights.from_dict(fitted), "fitted on validation users"
    else:
        weights, source = configured_weights(cfg), "defaults (no fit)"
    state = result.best_extras.get("artist_cf")
    artist_cf = ArtistCF.from_state(state) if state is not None else None
    space = TrackSpace.from_table(data.database, ds.scaler, ds.track_ids)
    extras = result.best_extras
    anchors = {mode: mode_anchor(cfg, extras, mode) for mode in MODE_KEYS}  # as discover
    settings_std = cfg.discover.model_copy(update={"dna_anchor": anchors["standard"]})
    scorer = HybridScorer.from_settings(
        result.model.cpu(), ds.track_features, space, weights, settings_std, artist_cf
    )
    info = {
        "fit_seconds": time.perf_counter() - started,
        "epochs": result.epochs_done,
        "best_epoch": result.best_epoch,
        "best_validation_ndcg@100": result.best_metric,
        "weights": weights.to_dict(),
        "weights_from": source,
        "weights_new_artists": mode_weights(cfg, extras, "new-artists").to_dict(),
        "anchor": anchors["standard"],
        "anchor_new_artists": anchors["new-artists"],
        "validation_fit": {
            mode: extras.get(keys[1]) for mode, keys in MODE_KEYS.items() if extras.get(keys[1])
        },
        "train_users": int(len(ds.user_groups["train"])),
        "validation_users": int(len(ds.user_groups["validation"])),
        "catalogue_tracks": int(len(ds.track_ids)),
        "artist_model": artist_cf is not None,
    }
    log.info(
        "split seed: deepvibe trained %d epochs (best %d), weights %s (%s)",
        result.epochs_done, result.best_epoch, weights, source,
    )  # fmt: skip
    return DeepvibeScores(scorer, foldin, len(ds.track_ids)), weights, info


# --------------------------------------------------------------------------- one split


def _baselines(
    data: DiscoveryData,
    foldin: sp.csr_matrix,
    protocol: str,
    exclusion: sp.csr_matrix | None,
) -> dict[str, Callable[[np.ndarray], np.ndarray]]:
    """The doc's baselines for one protocol; the artist unit follows the protocol's view."""
    z, pop = data.z_features, data.popularity
    unit = data.artists if protocol == "new-artist-artist" else data.credits
    fns: dict[str, Callable[[np.ndarray], np.ndarray]] = {
        "content": lambda rows: content_mean_scores(foldin[rows], z),
        "artist-share": lambda rows: artist_share_scores(foldin[rows], z, unit),
    }
    if protocol == "database":
        fns["artist-share-split"] = lambda rows: artist_share_scores(foldin[rows], z, data.artists)
    else:
        cooc = ArtistCooccurrence.fit(foldin, unit)
        fns["cooccurrence-blend"] = lambda rows: cooccurrence_blend_scores(
            foldin[rows], z, unit, cooc, None if exclusion is None else exclusion[rows]
        )
    fns["popularity"] = lambda rows: popularity_scores(foldin[rows], pop)
    return fns


def _as_result(res: Any) -> dict[str, Any]:
    return {**res.metrics, "users": res.n_users, "unscorable": res.n_unscored}


def beyond_accuracy(
    deepvibe: DeepvibeScores,
    data: DiscoveryData,
    users: np.ndarray,
    gems_lambda: float,
    block: int,
    k: int = BEYOND_K,
) -> dict[str, dict[str, float]]:
    """Per mode: new-artist share and average popularity of each user's top k (mean over
    users), and coverage (distinct tracks recommended / database tracks)."""
    pop = data.popularity
    foldin = deepvibe.foldin
    space = deepvibe.scorer.space
    shown: dict[str, list[np.ndarray]] = {m: [] for m in MODES}
    new_share: dict[str, list[float]] = {m: [] for m in MODES}
    avg_pop: dict[str, list[float]] = {m: [] for m in MODES}
    for start in range(0, len(users), block):
        rows = users[start : start + block]
        base = deepvibe.scores(rows)
        scorable = np.isfinite(base).any(axis=1)
        base[~np.isfinite(base)] = -np.inf
        mask_seen(base, foldin[rows])
        known_artist = space.same_artist_tracks(foldin[rows]).toarray() > 0  # (b, n_db)
        for mode in MODES:
            scores = base.copy()
            if mode == "gems":
                scores -= gems_lambda * np.nan_to_num(pop, nan=0.0) / 100.0
                scores[:, np.isnan(pop)] = -np.inf
            elif mode == "new-artists":
                scores[known_artist] = -np.inf
            ranked = top_k(scores, k)
            for i in np.flatnonzero(scorable):
                recs = ranked[i][np.isfinite(scores[i, ranked[i]])]
                if not len(recs):
                    continue
                shown[mode].append(recs)
                new_share[mode].append(float((~known_artist[i, recs]).mean()))
                if np.isfinite(pop[recs]).any():
                    avg_pop[mode].append(float(np.nanmean(pop[recs])))
    n_db = len(data.database.track_ids)
    return {
        mode: {
            f"new_artist_share@{k}": _mean(new_share[mode]),
            f"avg_popularity@{k}": _mean(avg_pop[mode]),
            f"coverage@{k}": len(np.unique(np.concatenate(shown[mode]))) / n_db
            if shown[mode]
            else float("nan"),
        }
        for mode in MODES
    }


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else float("nan")


def run_split(
    cfg: Config, data: DiscoveryData, split_seed: int, settings: DiscoverySettings
) -> dict[str, Any]:
    """One split seed: train (if deepvibe), score every method on every protocol."""
    split = database_split(
        data.pairs, data.user_ids, split_seed, settings.holdout_fraction, settings.min_tracks
    )
    foldin = split.foldin
    block: dict[str, Any] = {
        "split_seed": split_seed,
        "train_seed": cfg.seed,
        "users": int(len(data.user_ids)),
        "users_with_heldout": int((np.diff(split.heldout.indptr) > 0).sum()),
        "heldout_tracks": int(split.heldout.nnz),
        "foldin_tracks": int(foldin.nnz),
        "database_tracks": int(len(data.database.track_ids)),
        "protocols": {},
    }
    deepvibe = None
    fns_deepvibe: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    fns_new: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
    if settings.deepvibe:
        deepvibe, weights, block["deepvibe"] = train_deepvibe(cfg, data, foldin, settings)
        fns_deepvibe = {name: deepvibe.fn(w) for name, w in part_weights(weights).items()}
        new_w = HybridWeights(**block["deepvibe"]["weights_new_artists"])
        # new-artist protocols rank with that mode's anchor and weights (as discover does)
        deepvibe_new = deepvibe.with_anchor(block["deepvibe"]["anchor_new_artists"])
        fns_new = {n: deepvibe_new.fn(w) for n, w in part_weights(new_w).items()}
    views: dict[str, tuple[sp.csr_matrix, sp.csr_matrix | None]] = {
        "database": (split.heldout, None)
    }
    for unit in ("credit", "artist"):
        units = data.credits if unit == "credit" else data.artists
        views[f"new-artist-{unit}"] = new_artist_view(foldin, split.heldout, units, unit=unit)
    for protocol, (heldout, exclusion) in views.items():
        mine = fns_deepvibe if protocol == "database" else fns_new
        fns = {**mine, **_baselines(data, foldin, protocol, exclusion)}
        results = {}
        for name, fn in fns.items():
            res = evaluate_database(
                fn, foldin, heldout, exclusion, METRICS, chunk_size=settings.user_block
            )
            results[name] = _as_result(res)
        block["protocols"][protocol] = results
        log.info(
            "split seed %d, %s: %s", split_seed, protocol,
            ", ".join(f"{n} {r['ndcg@100']:.4f}" for n, r in results.items()),
        )  # fmt: skip
    if deepvibe is not None:
        users = np.flatnonzero(np.diff(split.heldout.indptr) > 0)
        block["beyond"] = beyond_accuracy(
            deepvibe, data, users, cfg.discover.gems_lambda, settings.user_block
        )
    return block


# --------------------------------------------------------------------------- all splits


def evaluate_discovery(cfg: Config, settings: DiscoverySettings) -> dict[str, Any]:
    """Every split seed; the report (JSON-ready) with ``summary`` = mean and std over seeds."""
    from deepvibe.evaluation.evaluate import peak_rss_mb, versions

    started = time.perf_counter()
    data = load_discovery_data(cfg)
    log.info(
        "discovery: %d users, %d database tracks with features, %d pairs",
        len(data.user_ids), len(data.database.track_ids), data.pairs.nnz,
    )  # fmt: skip
    runs = []
    for i, split_seed in enumerate(settings.split_seeds):
        seed_cfg = config_from_dict({**cfg.to_dict(), "seed": cfg.seed + i}, source="evaluate")
        runs.append(run_split(seed_cfg, data, split_seed, settings))
    return {
        "format": "deepvibe-evaluation",
        "version": 1,
        "protocol": {
            "name": "discovery (database ranking and new artist; discovery-protocols.md)",
            "split_seeds": list(settings.split_seeds),
            "train_seeds": [cfg.seed + i for i in range(len(settings.split_seeds))],
            "holdout_fraction": settings.holdout_fraction,
            "min_tracks": settings.min_tracks,
            "metrics": list(METRICS),
            "recall": "truncated: hits in the top k / min(k, held-out)",
            "unscorable": "users a method cannot score count as 0",
            "new-artist-credit": "a track's whole credit is one artist (the doc's figures)",
            "new-artist-artist": "each credited artist counts (discover --new-artists)",
            "gems_lambda": cfg.discover.gems_lambda,
            "beyond_k": BEYOND_K,
        },
        "config": cfg.to_dict(),
        "versions": versions(),
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
        "runs": runs,
        "summary": summarise_discovery(runs),
    }


def summarise_discovery(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """protocol -> method -> metric -> {mean, std, n}; "beyond" -> mode -> metric -> ..."""
    from deepvibe.evaluation.evaluate import _mean_std

    collected: dict[str, dict[str, dict[str, list[float]]]] = {}
    for run in runs:
        sections = dict(run["protocols"])
        if "beyond" in run:
            sections["beyond"] = run["beyond"]
        for section, methods in sections.items():
            for name, numbers in methods.items():
                slot = collected.setdefault(section, {}).setdefault(name, {})
                for key, value in numbers.items():
                    slot.setdefault(key, []).append(float(value))
    return {
        section: {name: {k: _mean_std(v) for k, v in m.items()} for name, m in methods.items()}
        for section, methods in collected.items()
    }


def format_discovery_report(report: dict[str, Any]) -> str:
    """Terminal tables: NDCG@100 (R@20, R@50) per method x protocol; beyond accuracy."""
    from deepvibe.evaluation.evaluate import _cell, _table

    s, runs = report["summary"], report["runs"]
    first = runs[0]
    out = [
        f"discovery protocols, split seed(s) {report['protocol']['split_seeds']}: "
        f"{first['users']} users, {first['database_tracks']} database tracks ranked; "
        "mean ±std over seeds; unscorable users count as 0"
    ]
    users = {p: s[p][next(iter(s[p]))]["users"]["mean"] for p in PROTOCOLS if p in s and s[p]}
    out.append(
        "users with held-out tracks (mean over seeds): "
        + ", ".join(f"{p} {n:.0f}" for p, n in users.items())
    )
    methods = list(dict.fromkeys(m for p in PROTOCOLS for m in s.get(p, {})))
    rows = {}
    for m in methods:
        row: dict[str, Any] = {}
        for p in PROTOCOLS:
            for metric in METRICS:
                row[f"{p}:{metric}"] = s.get(p, {}).get(m, {}).get(metric)
            unscorable = s.get(p, {}).get(m, {}).get("unscorable")
            row[f"{p}:unscorable"] = unscorable
        rows[m] = row
    for metric, label in zip(METRICS, ("NDCG@100", "Recall@20", "Recall@50"), strict=True):
        columns = [(f"{p}:{metric}", p) for p in PROTOCOLS]
        out.append(_table(f"\n{label}", rows, columns))
    unscored = {
        m: ", ".join(f"{p} {_cell(r[f'{p}:unscorable'], 1)}" for p in PROTOCOLS)
        for m, r in rows.items()
        if any((r[f"{p}:unscorable"] or {}).get("mean") for p in PROTOCOLS)
    }
    if unscored:
        out.append("\nunscorable users (counted as 0): " + "; ".join(
            f"{m}: {v}" for m, v in unscored.items()
        ))  # fmt: skip
    if "beyond" in s:
        k = report["protocol"]["beyond_k"]
        cols = [
            (f"new_artist_share@{k}", f"new-artist share@{k}"),
            (f"avg_popularity@{k}", f"avg popularity@{k}"),
            (f"coverage@{k}", f"coverage@{k}"),
        ]
        out.append(_table("\nBeyond accuracy (deepvibe's hybrid, per mode)", s["beyond"], cols))
    return "\n".join(out)
