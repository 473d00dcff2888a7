"""The evaluation harness behind ``deepvibe evaluate``: deepvibe and its baselines, trained and
scored on the same users by the same code.

Protocol (strong generalization, Liang et al. 2018; ``../shared/data/README.md``):

1. Users are shuffled by the seed and cut into train / validation / test
   (``dataset.build_dataset(cfg, test_fraction=...)``); the catalogue (item vocabulary) comes
   from training users only.
2. Each validation and test user with >= 5 catalogue items is split 80/20: the model sees the
   fold-in part and ranks every catalogue item with the fold-in items masked; the other part
   is what it should find (``train.validation_foldin``).
3. Models are chosen on validation users (deepvibe's and Mult-VAE's best epoch by validation
   NDCG@100, EASE's lambda from a grid) and reported on test users.
4. ``seeds`` repeats 1-3 with seeds cfg.seed, cfg.seed + 1, ...; tables give mean +/- std.

When the data has audio features, a second, **cold-start** protocol runs on the same split: a
random ``cold_fraction`` of the catalogue is removed from training entirely (a second
deepvibe is trained without those tracks); each test user's full history over the track
database is split 80/20; every method ranks the whole database with the fold-in masked. Two
numbers come from it: *all held-out* (every held-out track relevant) and *cold held-out* (only
held-out tracks that the model never saw in training count; held-out tracks it did see are
masked, so they neither help nor hurt). deepvibe ranks by discover's database scan (Vibe DNA
+ similarity, standard and hidden-gems modes).
"""

from __future__ import annotations

import json
import logging
import math
import platform
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from deepvibe.config import Config, config_from_dict
from deepvibe.data.dataset import Dataset, build_dataset, filter_min_counts, rows_of_users
from deepvibe.data.tables import FeatureScaler, Interactions, TrackTable
from deepvibe.errors import CheckpointError, ConfigError
from deepvibe.evaluation.baselines import ContentCosine, MultVAE, TopPop, binarize, tune_ease
from deepvibe.ranking.metrics import beyond_accuracy, evaluate_ranking, rank_users
from deepvibe.ranking.protocol import FoldIn, foldin_split

log = logging.getLogger(__name__)

ACCURACY = ("ndcg@100", "recall@20", "recall@50", "recall_std@20", "recall_std@50")
KNOWN_BASELINES = ("toppop", "ease", "multvae", "content")
DEFAULT_EASE_LAMBDAS = (50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)
RANK_DEPTH = 100  # items kept per user: the deepest cut-off any metric uses


@dataclass(frozen=True)
class EvalSettings:
    """What ``evaluate`` runs. Defaults follow the README protocol."""

    seeds: int = 1
    baselines: tuple[str, ...] = KNOWN_BASELINES
    deepvibe: bool = True
    test_fraction: float = 0.1
    cold_fraction: float = 0.1
    ease_lambdas: tuple[float, ...] = DEFAULT_EASE_LAMBDAS
    multvae_epochs: int | None = None  # None: Mult-VAE's own 200
    beyond_k: tuple[int, ...] = (20, 100)
    chunk_size: int = 1024
    progress: bool | None = False

    def __post_init__(self) -> None:
        unknown = [b for b in self.baselines if b not in KNOWN_BASELINES]
        if unknown:
            raise ConfigError(
                f"unknown baseline {unknown[0]!r}; choose from {', '.join(KNOWN_BASELINES)}"
            )
        if self.seeds < 1:
            raise ConfigError(f"--seeds must be at least 1, got {self.seeds}")
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")
        if not 0.0 <= self.cold_fraction < 1.0:
            raise ConfigError(f"--cold-fraction must be in [0, 1), got {self.cold_fraction}")
        if not self.deepvibe and not self.baselines:
            raise ConfigError("nothing to evaluate: no baselines and deepvibe switched off")


# ----------------------------------------------------------------------------- small helpers


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB (monotone over the run)."""
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / 2**20


def user_counts(inter: Interactions, users: np.ndarray) -> tuple[np.ndarray, int]:
    """How many of ``users`` played each column (any of their rows counts once), and how many
    of them there are: the popularity a recommender trained on them could know."""
    mask = rows_of_users(inter.row_users, users)
    codes, uniq = pd.factorize(inter.row_users[mask])
    x = binarize(inter.matrix[mask])
    by_user = sp.csr_matrix(
        (np.ones(len(codes)), (codes, np.arange(len(codes)))), shape=(len(uniq), x.shape[0])
    )
    per_user = (by_user @ x).tocsr()
    per_user.data[:] = 1.0
    return np.asarray(per_user.sum(axis=0)).ravel(), len(uniq)


def ids_to_columns(ranked_ids: np.ndarray, index: dict[str, int]) -> np.ndarray:
    """(n, k) track ids -> (n, k) column indices."""
    return np.vectorize(index.__getitem__, otypes=[np.int64])(ranked_ids)


def drop_and_cut(ranked: np.ndarray, drop: sp.csr_matrix, k: int) -> np.ndarray:
    """Remove each row's ``drop`` items from its ranking and keep the first k (or fewer when a
    row runs short; all rows are cut to the shortest). Equivalent to masking them before
    ranking, given ``ranked`` was deep enough."""
    drop = drop.tocsr()
    rows = []
    for u in range(ranked.shape[0]):
        gone = drop.indices[drop.indptr[u] : drop.indptr[u + 1]]
        rows.append(ranked[u][~np.isin(ranked[u], gone)][:k])
    width = min((len(r) for r in rows), default=0)
    return np.array([r[:width] for r in rows], dtype=np.int64).reshape(len(rows), width)


def map_columns(matrix: sp.csr_matrix, from_ids: np.ndarray, to_ids: np.ndarray) -> sp.csr_matrix:
    """Re-index the columns of ``matrix`` (labelled ``from_ids``) onto ``to_ids``; columns
    with no counterpart are dropped."""
    pos = {t: i for i, t in enumerate(to_ids)}
    mapping = np.array([pos.get(t, -1) for t in from_ids], dtype=np.int64)
    coo = matrix.tocoo()
    keep = mapping[coo.col] >= 0
    return sp.csr_matrix(
        (coo.data[keep], (coo.row[keep], mapping[coo.col[keep]])),
        shape=(matrix.shape[0], len(to_ids)),
        dtype=np.float32,
    )


def ranking_report(
    ranked: np.ndarray,
    heldout: sp.csr_matrix,
    counts: np.ndarray,
    n_train_users: int,
    ks: tuple[int, ...],
    popularity: np.ndarray | None = None,
) -> dict[str, float]:
    """Accuracy and beyond-accuracy numbers for one ranking of one user group."""
    out = evaluate_ranking(ranked, heldout, ACCURACY)
    out.update(beyond_accuracy(ranked, counts, n_train_users, ks, popularity))
    return out


# ----------------------------------------------------------------------------- one seed


@dataclass
class ModelResult:
    """Numbers for one model on one seed (everything lands in the JSON)."""

    validation: dict[str, float] = field(default_factory=dict)
    test: dict[str, float] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)


def _train_deepvibe(cfg: Config, ds: Dataset, progress: bool | None) -> tuple[Any, dict[str, Any]]:
    from deepvibe.training.train import train

    started = time.perf_counter()
    result = train(cfg, dataset=ds, progress=progress, write_files=False, restore_best=True)
    seconds = time.perf_counter() - started
    epochs = [h["seconds"] for h in result.history]
    return result.model, {
        "fit_seconds": seconds,
        "seconds_per_epoch": float(np.mean(epochs)) if epochs else float("nan"),
        "epochs": result.epochs_done,
        "best_epoch": result.best_epoch,
        "peak_rss_mb": peak_rss_mb(),
    }


def _gems_ranking(
    model: Any, cfg: Config, ds: Dataset, foldin: sp.csr_matrix, depth: int
) -> np.ndarray | None:
    """Catalogue ranking of discover's hidden-gems mode, or None without popularity."""
    from deepvibe.discovery.discoverer import Discoverer

    if ds.catalogue is None or ds.catalogue.popularity is None:
        return None
    disc = Discoverer(
        model, ds.track_ids, ds.scaler, ds.track_features,
        cfg.discover.model_copy(update={"source": "catalogue"}), None,
        {"popularity": ds.catalogue.popularity, "names": None, "artists": None},
    )  # fmt: skip
    index = {t: i for i, t in enumerate(ds.track_ids)}
    parts = []
    for start in range(0, foldin.shape[0], 256):
        ids, _ = disc.recommend(foldin[start : start + 256], depth, mode="gems")
        parts.append(ids_to_columns(ids, index))
    width = min(p.shape[1] for p in parts)
    return np.concatenate([p[:, :width] for p in parts])


def run_seed(
    cfg: Config,
    inter: Interactions,
    tracks: TrackTable | None,
    settings: EvalSettings,
    checkpoint: Any = None,
) -> dict[str, Any]:
    """Split, train and score everything for ``cfg.seed``. Returns the seed's JSON block."""
    from deepvibe.model.inference import scorer
    from deepvibe.ranking.metrics import evaluate_scorer
    from deepvibe.training.train import validation_foldin

    test_fraction = 0.0 if checkpoint is not None else settings.test_fraction
    ds = build_dataset(cfg, inter, tracks, test_fraction=test_fraction)
    report_group = "test" if checkpoint is None else "validation"
    if checkpoint is not None and list(checkpoint.track_ids) != list(ds.track_ids):
        raise CheckpointError(
            f"{checkpoint.path}: the checkpoint's catalogue ({len(checkpoint.track_ids)} tracks) "
            f"differs from the one this config builds ({len(ds.track_ids)}); evaluate with the "
            "config and data it was trained on"
        )
    val = validation_foldin(ds, cfg, "validation")
    test = validation_foldin(ds, cfg, report_group)
    train_rows = np.flatnonzero(ds.rows_of("train"))
    train_x = ds.interactions.matrix[train_rows]
    counts, n_train = user_counts(ds.interactions, ds.user_groups["train"])
    pop = None if ds.catalogue is None else ds.catalogue.popularity
    ks = settings.beyond_k
    depth = max(RANK_DEPTH, *ks)
    split = {
        "train_users": int(len(ds.user_groups["train"])),
        "validation_users": int(len(ds.user_groups["validation"])),
        "test_users": int(len(ds.user_groups.get("test", []))),
        "catalogue_items": int(len(ds.track_ids)),
        "validation_scored": int(val.foldin.shape[0]),
        "test_scored": int(test.foldin.shape[0]),
        "reported_on": report_group,
        # the process's peak before any model is fitted: data, split, imported libraries
        "peak_rss_mb_before_models": peak_rss_mb(),
    }
    log.info("seed %d: %s", cfg.seed, ", ".join(f"{k} {v}" for k, v in split.items()))
    models: dict[str, ModelResult] = {}

    def score_model(name: str, fn: Callable[[sp.csr_matrix], np.ndarray], info: dict) -> None:
        res = ModelResult(info=info)
        res.validation = evaluate_scorer(fn, val.foldin, val.heldout, ACCURACY, settings.chunk_size)
        ranked = rank_users(fn, test.foldin, depth, settings.chunk_size)
        res.test = ranking_report(ranked, test.heldout, counts, n_train, ks, pop)
        models[name] = res
        log.info(
            "seed %d %s: validation NDCG@100 %.4f, %s NDCG@100 %.4f",
            cfg.seed, name, res.validation["ndcg@100"], report_group, res.test["ndcg@100"],
        )  # fmt: skip

    if settings.deepvibe:
        if checkpoint is not None:
            model, info = checkpoint.model, {"checkpoint": str(checkpoint.path)}
        else:
            model, info = _train_deepvibe(cfg, ds, settings.progress)
        score_model("deepvibe", scorer(model, ds.track_features), info)
        gems = _gems_ranking(model, cfg, ds, test.foldin, depth)
        if gems is not None:
            res = ModelResult(info={"mode": "gems", "gems_lambda": cfg.discover.gems_lambda})
            res.test = ranking_report(gems, test.heldout, counts, n_train, ks, pop)
            models["deepvibe-gems"] = res
    for name in settings.baselines:
        started = time.perf_counter()
        if name == "toppop":
            tp = TopPop().fit(train_x)
            score_model(name, tp.score, {"fit_seconds": time.perf_counter() - started})
        elif name == "ease":
            ease, tuning = tune_ease(train_x, val.foldin, val.heldout, settings.ease_lambdas)
            info = {
                "lambda": tuning.lam,
                "validation_ndcg@100_by_lambda": {str(k): v for k, v in tuning.validation.items()},
                "fit_seconds": time.perf_counter() - started,
                "peak_rss_mb": peak_rss_mb(),
            }
            score_model(name, ease.score, info)
        elif name == "multvae":
            mv = MultVAE(cfg, settings.multvae_epochs).fit_dataset(ds, settings.progress)
            assert mv.result is not None
            epochs = [h["seconds"] for h in mv.result.history]
            info = {
                "fit_seconds": time.perf_counter() - started,
                "seconds_per_epoch": float(np.mean(epochs)),
                "epochs": mv.result.epochs_done,
                "best_epoch": mv.result.best_epoch,
                "peak_rss_mb": peak_rss_mb(),
            }
            score_model(name, mv.score, info)
        elif name == "content":
            if ds.track_features.shape[1] == 0:
                log.info("content baseline skipped: the data has no audio features")
                continue
            score_model(name, ContentCosine(ds.track_features).score, {})
    block: dict[str, Any] = {
        "seed": cfg.seed,
        "split": split,
        "models": {k: _as_json(v) for k, v in models.items()},
    }
    if checkpoint is None and ds.track_features.shape[1] > 0 and settings.cold_fraction > 0:
        block["cold_start"] = cold_start(cfg, inter, ds, settings)
    return block


def _as_json(r: ModelResult) -> dict[str, Any]:
    return {"validation": r.validation, "test": r.test, "info": r.info}


# ----------------------------------------------------------------------------- cold start


def _database_table(cfg: Config):  # noqa: ANN202 - returns discover.TrackDatabase
    """The track database the scan ranks: data.database, else the features table."""
    from deepvibe.discovery.database import TrackDatabase

    d = cfg.data
    source = d.database if d.database and Path(d.database).exists() else d.features
    if d.database and source != d.database:
        log.warning(
            "database %s not found; the cold-start scan ranks the features table", d.database
        )
    return TrackDatabase.open(
        source, tuple(d.feature_columns), d.feature_track_column, d.popularity_column,
        d.name_column, d.artist_column,
    )  # fmt: skip


def _cold_dataset(ds: Dataset, warm_ids: np.ndarray) -> Dataset:
    """``ds`` with every track outside ``warm_ids`` removed from the catalogue and the plays;
    features re-standardised on what remains (what training would have fitted)."""
    assert ds.catalogue is not None
    pos = {t: i for i, t in enumerate(ds.track_ids)}
    keep = np.array([pos[t] for t in warm_ids], dtype=np.int64)
    catalogue = ds.catalogue.take(keep)
    scaler = FeatureScaler.fit(catalogue.features, catalogue.feature_columns)
    feats = scaler.transform(catalogue.features).astype(np.float32)
    return Dataset(
        ds.interactions.select_columns(warm_ids), catalogue, scaler, feats, ds.user_groups
    )


def cold_start(
    cfg: Config, inter: Interactions, ds: Dataset, settings: EvalSettings
) -> dict[str, Any]:
    """The cold-start protocol (module docstring) for one seed."""
    from deepvibe.discovery.discoverer import Discoverer

    rng = np.random.default_rng([cfg.seed, 3])
    n_cat = len(ds.track_ids)
    n_cold = int(round(settings.cold_fraction * n_cat))
    cold_idx = np.sort(rng.choice(n_cat, size=n_cold, replace=False))
    warm_ids = np.delete(ds.track_ids, cold_idx)
    cold_ds = _cold_dataset(ds, warm_ids)

    db = _database_table(cfg)
    db_ids = db.take(np.arange(db.n_tracks), ["track_id"])["track_id"].to_numpy(dtype=object)
    raw = np.concatenate([c[1] for c in db.chunks(262_144)]).astype(np.float64)
    db_feats = cold_ds.scaler.transform(raw)  # (m, f) in the cold model's standardised space
    db_pop = None
    if db.has_popularity:
        db_pop = np.concatenate([c[2] for c in db.chunks(262_144)]).astype(np.float64)
    db_index = {t: i for i, t in enumerate(db_ids)}

    # Test users' whole histories (every track, not just the catalogue) over the database.
    full = filter_min_counts(inter, cfg.data.min_track_users, cfg.data.min_user_tracks)
    users, rows = full.user_matrix(ds.user_groups["test"])
    hist = map_columns(rows, full.track_ids, db_ids)
    fold: FoldIn = foldin_split(
        users, hist, cfg.train.holdout_fraction, np.random.default_rng([cfg.seed, 4])
    )
    is_warm = pd.Index(warm_ids).get_indexer(db_ids) >= 0  # (m,) tracks the cold model knows
    held = fold.heldout.tocsr()
    warm_held = held.multiply(is_warm[None, :].astype(np.float32)).tocsr()
    warm_held.eliminate_zeros()
    cold_held = (held - warm_held).tocsr()
    cold_held.eliminate_zeros()
    max_drop = int(np.diff(warm_held.indptr).max(initial=0))
    depth = min(db.n_tracks, max(RANK_DEPTH, *settings.beyond_k) + max_drop)
    counts_cat, n_train = user_counts(cold_ds.interactions, ds.user_groups["train"])
    counts = np.zeros(len(db_ids))
    counts[[db_index[t] for t in warm_ids if t in db_index]] = [
        c for t, c in zip(warm_ids, counts_cat, strict=True) if t in db_index
    ]
    ks = settings.beyond_k
    out: dict[str, Any] = {
        "cold_tracks": n_cold,
        "training_catalogue": int(len(warm_ids)),
        "database_tracks": int(db.n_tracks),
        "users": int(fold.foldin.shape[0]),
        "users_with_cold_heldout": int((np.diff(cold_held.indptr) > 0).sum()),
        "heldout_tracks": int(held.nnz),
        "cold_heldout_tracks": int(cold_held.nnz),
        "models": {},
    }

    def record(name: str, ranked: np.ndarray, info: dict[str, Any]) -> None:
        top = ranked[:, : max(RANK_DEPTH, *ks)]
        all_part = ranking_report(top, held, counts, n_train, ks, db_pop)
        cold_part = evaluate_ranking(
            drop_and_cut(ranked, warm_held, RANK_DEPTH), cold_held, ACCURACY
        )
        out["models"][name] = {"all_heldout": all_part, "cold_heldout": cold_part, "info": info}
        log.info(
            "seed %d cold-start %s: NDCG@100 all %.4f, cold %.4f",
            cfg.seed, name, all_part["ndcg@100"], cold_part["ndcg@100"],
        )  # fmt: skip

    if settings.deepvibe:
        model, info = _train_deepvibe(cfg, cold_ds, settings.progress)
        disc = Discoverer(
            model, cold_ds.track_ids, cold_ds.scaler, cold_ds.track_features,
            cfg.discover.model_copy(update={"source": "db"}), db,
            {"popularity": None, "names": None, "artists": None},
        )  # fmt: skip
        foldin_cat = map_columns(fold.foldin, db_ids, cold_ds.track_ids)
        # The encoder sees only catalogue tracks: users with none get a generic DNA.
        out["users_with_catalogue_foldin"] = int((np.diff(foldin_cat.indptr) > 0).sum())
        exclude = [
            set(db_ids[fold.foldin.indices[fold.foldin.indptr[u] : fold.foldin.indptr[u + 1]]])
            for u in range(fold.foldin.shape[0])
        ]
        modes = ["standard"] + (["gems"] if db.has_popularity else [])
        for mode in modes:
            parts = []
            for start in range(0, foldin_cat.shape[0], 256):
                ids, _ = disc.recommend(
                    foldin_cat[start : start + 256], depth, mode=mode,  # type: ignore[arg-type]
                    exclude=exclude[start : start + 256],
                )  # fmt: skip
                parts.append(ids_to_columns(ids, db_index))
            width = min(p.shape[1] for p in parts)
            ranked = np.concatenate([p[:, :width] for p in parts])
            name = "deepvibe-scan" if mode == "standard" else "deepvibe-scan-gems"
            record(name, ranked, {**info, "mode": mode} if mode == "standard" else {"mode": mode})
    baselines: dict[str, Callable[[sp.csr_matrix], np.ndarray]] = {}
    if "content" in settings.baselines:
        baselines["content"] = ContentCosine(db_feats).score
    if "toppop" in settings.baselines:
        baselines["toppop"] = lambda rows: np.broadcast_to(
            counts, (rows.shape[0], len(counts))
        ).copy()
        if db_pop is not None:
            popularity = db_pop
            baselines["popularity"] = lambda rows: np.broadcast_to(
                popularity, (rows.shape[0], len(popularity))
            ).copy()
    chunk = max(1, min(settings.chunk_size, (1 << 24) // max(1, db.n_tracks)))
    for name, fn in baselines.items():
        record(name, rank_users(fn, fold.foldin, depth, chunk), {})
    return out


# ----------------------------------------------------------------------------- all seeds


def versions() -> dict[str, str]:
    import numpy
    import scipy
    import torch

    import deepvibe

    return {
        "deepvibe": deepvibe.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "pandas": pd.__version__,
        "platform": platform.platform(),
        "torch_threads": str(torch.get_num_threads()),
    }


def evaluate(
    cfg: Config,
    settings: EvalSettings,
    checkpoint: str | Path | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Run every seed and return the full report (see :func:`summarise` for its summary).

    ``device`` (auto|cpu|cuda|mps) runs a ``checkpoint``'s model there (default auto: its
    stored config says where it was trained, not where to run); models trained here run on
    ``cfg.train.device``."""
    from deepvibe.data.catalogue import load_catalogue_features
    from deepvibe.data.tables import load_interactions

    ck = None
    if checkpoint is not None:
        from deepvibe.training.checkpoint import load_checkpoint

        if settings.seeds != 1:
            raise ConfigError("--checkpoint evaluates one trained model: use --seeds 1")
        ck = load_checkpoint(checkpoint)
        cfg = config_from_dict(ck.config, source=f"{ck.path} (stored config)")
        from deepvibe.model.device import resolve_device

        where = resolve_device(device or "auto")
        ck.model.to(where)
        cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"device": where.type})})
        log.warning(
            "evaluating %s on its own validation users (its training run had no test split, "
            "and chose its epoch on them): numbers are optimistic; for honest figures run "
            "evaluate without --checkpoint",
            ck.path,
        )
    started = time.perf_counter()
    inter = load_interactions(cfg.data)
    tracks = load_catalogue_features(cfg.data)
    runs = []
    for i in range(settings.seeds):
        seed_cfg = config_from_dict({**cfg.to_dict(), "seed": cfg.seed + i}, source="evaluate")
        runs.append(run_seed(seed_cfg, inter, tracks, settings, ck))
    report: dict[str, Any] = {
        "format": "deepvibe-evaluation",
        "version": 1,
        "protocol": {
            "name": "strong generalization (Liang et al. 2018)",
            "seeds": [cfg.seed + i for i in range(settings.seeds)],
            "val_fraction": cfg.train.val_fraction,
            "test_fraction": 0.0 if ck is not None else settings.test_fraction,
            "holdout_fraction": cfg.train.holdout_fraction,
            "cold_fraction": settings.cold_fraction,
            "beyond_k": list(settings.beyond_k),
            "ease_lambdas": list(settings.ease_lambdas),
            "multvae_epochs": settings.multvae_epochs,
            "checkpoint": None if ck is None else str(ck.path),
            "long_tail": "items outside the 20% most played by training users",
            "avg_pop": "share of training users who played the item",
            "novelty": "mean -log2((count + 1) / (training users + 1)), bits",
        },
        "config": cfg.to_dict(),
        "versions": versions(),
        "seconds": time.perf_counter() - started,
        "peak_rss_mb": peak_rss_mb(),
        "runs": runs,
    }
    report["summary"] = summarise(runs)
    return report


def _mean_std(values: list[float]) -> dict[str, Any]:
    arr = np.array([v for v in values if v is not None and math.isfinite(v)], dtype=np.float64)
    if len(arr) == 0:
        return {"mean": None, "std": None, "n": 0}
    std = float(arr.std(ddof=1)) if len(arr) > 1 else None
    return {"mean": float(arr.mean()), "std": std, "n": int(len(arr))}


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Mean and sample std over seeds: section -> model -> metric -> {mean, std, n}."""
    collected: dict[str, dict[str, dict[str, list[float]]]] = {}

    def add(section: str, model: str, numbers: dict[str, Any]) -> None:
        slot = collected.setdefault(section, {}).setdefault(model, {})
        for k, v in numbers.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                slot.setdefault(k, []).append(float(v))

    for run in runs:
        for name, m in run["models"].items():
            add("validation", name, m["validation"])
            add("test", name, m["test"])
            add("info", name, m["info"])
        cold = run.get("cold_start")
        if cold:
            for name, m in cold["models"].items():
                add("cold_start_all", name, m["all_heldout"])
                add("cold_start_cold", name, m["cold_heldout"])
                add("cold_start_info", name, m["info"])
    return {
        section: {
            model: {k: _mean_std(v) for k, v in metrics.items()}
            for model, metrics in by_model.items()
        }
        for section, by_model in collected.items()
    }


# ----------------------------------------------------------------------------- output


def _cell(stat: dict[str, Any] | None, digits: int = 3) -> str:
    if not stat or stat.get("mean") is None:
        return "-"
    text = f"{stat['mean']:.{digits}f}"
    if stat.get("std") is not None:
        text += f" ±{stat['std']:.{digits}f}"
    return text


def _table(title: str, rows: dict[str, dict[str, Any]], columns: list[tuple[str, str]]) -> str:
    head = ["model"] + [label for _, label in columns]
    body = [[name] + [_cell(m.get(key)) for key, _ in columns] for name, m in rows.items()]
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]
    lines = [title, "  " + "  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(lines)


def format_report(report: dict[str, Any]) -> str:
    """The terminal tables: accuracy, beyond-accuracy, cold start."""
    s = report["summary"]
    runs = report["runs"]
    group = runs[0]["split"]["reported_on"]
    n_seeds = len(runs)
    k = report["protocol"]["beyond_k"][0]
    first = runs[0]["split"]
    out = [
        f"{n_seeds} seed(s) {report['protocol']['seeds']}; {first['train_users']} train / "
        f"{first['validation_users']} validation / {first['test_users']} test users, "
        f"{first['catalogue_items']} catalogue items; {first[group + '_scored']} {group} users "
        f"with >= 5 catalogue items scored (seed {runs[0]['seed']}); mean ±std over seeds"
    ]
    merged = {
        name: {**{f"val_{k_}": v for k_, v in s.get("validation", {}).get(name, {}).items()}, **m}
        for name, m in s.get("test", {}).items()
    }
    out.append(
        _table(
            f"\nAccuracy ({group} users; recall truncated: hits / min(k, held-out))",
            merged,
            [
                ("val_ndcg@100", "val NDCG@100"),
                ("ndcg@100", "NDCG@100"),
                ("recall@20", "Recall@20"),
                ("recall@50", "Recall@50"),
                ("recall_std@20", "std-Recall@20"),
                ("recall_std@50", "std-Recall@50"),
            ],
        )
    )
    beyond = [
        (f"coverage@{k}", f"coverage@{k}"),
        (f"avg_pop@{k}", f"avg pop@{k}"),
        (f"long_tail@{k}", f"long tail@{k}"),
        (f"novelty@{k}", f"novelty@{k}"),
    ]
    if any(f"popularity@{k}" in m for m in s.get("test", {}).values()):
        beyond.append((f"popularity@{k}", f"popularity@{k}"))
    out.append(_table(f"\nBeyond accuracy ({group} users)", s.get("test", {}), beyond))
    if "cold_start_all" in s:
        c = runs[0]["cold_start"]
        out.append(
            f"\nCold start: {c['cold_tracks']} catalogue tracks removed from training; "
            f"{c['users']} test users ranked over {c['database_tracks']} database tracks; "
            f"{c['cold_heldout_tracks']} of {c['heldout_tracks']} held-out tracks are cold"
        )
        rows = {
            name: {
                **m,
                **{f"cold_{k_}": v for k_, v in s["cold_start_cold"].get(name, {}).items()},
            }
            for name, m in s["cold_start_all"].items()
        }
        cols = [
            ("ndcg@100", "NDCG@100 all"),
            ("recall@50", "Recall@50 all"),
            ("cold_ndcg@100", "NDCG@100 cold"),
            ("cold_recall@50", "Recall@50 cold"),
            (f"avg_pop@{k}", f"avg pop@{k}"),
        ]
        if any(f"popularity@{k}" in m for m in rows.values()):
            cols.append((f"popularity@{k}", f"popularity@{k}"))
        out.append(_table("", rows, cols))
    return "\n".join(out)


def write_evaluation_json(report: dict[str, Any], path: str | Path) -> Path:
    """The whole report as JSON, atomically (NaN written as null)."""
    from deepvibe.fileio import write_text_atomic

    def clean(obj: Any) -> Any:
        if isinstance(obj, dict):
            return {str(k): clean(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return [clean(v) for v in obj]
        if isinstance(obj, (np.floating, float)):
            return float(obj) if math.isfinite(obj) else None
        if isinstance(obj, np.integer):
            return int(obj)
        return obj

    p = Path(path)
    write_text_atomic(p, json.dumps(clean(report), indent=2, allow_nan=False) + "\n")
    return p


def parse_baselines(text: str | None) -> tuple[str, ...]:
    """``toppop,ease`` -> ('toppop', 'ease'); ``all`` -> every baseline; ``none`` or '' -> ()."""
    if text is None:
        return KNOWN_BASELINES
    items = [t.strip().lower() for t in text.split(",") if t.strip()]
    if items in ([], ["none"]):
        return ()
    if items == ["all"]:
        return KNOWN_BASELINES
    unknown = [t for t in items if t not in KNOWN_BASELINES]
    if unknown:
        raise ConfigError(
            f"--baselines: unknown baseline {unknown[0]!r}; choose from "
            f"{', '.join(KNOWN_BASELINES)} (comma-separated), all, or none"
        )
    return tuple(dict.fromkeys(items))
