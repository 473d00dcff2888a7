"""Ranking metrics, computed in user chunks with only the top-k kept per chunk.

All metrics use binary relevance (a held-out track is relevant). Recall@k is *truncated*,
hits / min(k, n_heldout), as in Liang et al. (2018), so a user with 3 held-out tracks can reach
1.0 at k=20; ``recall_std`` is the textbook hits / n_heldout.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

from deepvibe.ranking.topk import top_k  # the one top-k; metrics.top_k is kept as a name

# Scores a chunk of fold-in rows: (chunk, n_tracks) csr -> (chunk, n_tracks) dense scores.
ScoreFn = Callable[[sp.csr_matrix], np.ndarray]


def mask_seen(scores: np.ndarray, seen: sp.csr_matrix) -> np.ndarray:
    """Set the scores of tracks in ``seen`` (the fold-in items) to -inf, in place."""
    seen = seen.tocoo()
    scores[seen.row, seen.col] = -np.inf
    return scores


def ndcg_at_k(ranked: np.ndarray, heldout: sp.csr_matrix, k: int) -> np.ndarray:
    """ranked: (n, >=k) track indices best first; heldout: (n, n_tracks). Returns (n,)."""
    ranked = ranked[:, :k]
    hits = np.asarray(heldout[np.arange(ranked.shape[0])[:, None], ranked].todense()) > 0
    discounts = 1.0 / np.log2(np.arange(2, ranked.shape[1] + 2))
    dcg = (hits * discounts).sum(axis=1)
    n_rel = np.minimum(np.diff(heldout.indptr), k)
    idcg = np.array([discounts[:n].sum() for n in n_rel])
    return np.divide(dcg, idcg, out=np.zeros_like(dcg), where=idcg > 0)


def _hits(ranked: np.ndarray, heldout: sp.csr_matrix, k: int) -> np.ndarray:
    ranked = ranked[:, :k]
    return (np.asarray(heldout[np.arange(ranked.shape[0])[:, None], ranked].todense()) > 0).sum(1)


def recall_at_k(ranked: np.ndarray, heldout: sp.csr_matrix, k: int) -> np.ndarray:
    """Truncated recall: hits / min(k, n_heldout). Returns (n,)."""
    n_rel = np.diff(heldout.indptr)
    denom = np.minimum(k, n_rel)
    return np.divide(_hits(ranked, heldout, k), denom, out=np.zeros(len(n_rel)), where=denom > 0)


def recall_std_at_k(ranked: np.ndarray, heldout: sp.csr_matrix, k: int) -> np.ndarray:
    """Standard recall: hits / n_heldout. Returns (n,)."""
    n_rel = np.diff(heldout.indptr)
    return np.divide(_hits(ranked, heldout, k), n_rel, out=np.zeros(len(n_rel)), where=n_rel > 0)


DEFAULT_METRICS = ("ndcg@100", "recall@20", "recall@50")


def rank_users(
    score_fn: ScoreFn,
    foldin: sp.csr_matrix,
    k: int,
    chunk_size: int = 1024,
    exclude: sp.csr_matrix | None = None,
) -> np.ndarray:
    """Top-k track indices per fold-in row, fold-in tracks masked; bounded memory.

    ``exclude`` (same shape as ``foldin``) masks other tracks as well, e.g. held-out tracks
    that a protocol does not count; the fold-in tracks are always masked.
    """
    out = np.empty((foldin.shape[0], min(k, foldin.shape[1])), dtype=np.int64)
    for start in range(0, foldin.shape[0], chunk_size):
        rows = foldin[start : start + chunk_size]
        scores = np.asarray(score_fn(rows), dtype=np.float64)
        mask_seen(scores, rows)
        if exclude is not None:
            mask_seen(scores, exclude[start : start + chunk_size])
        out[start : start + rows.shape[0]] = top_k(scores, k)
    return out


def evaluate_ranking(
    ranked: np.ndarray, heldout: sp.csr_matrix, names: tuple[str, ...] = DEFAULT_METRICS
) -> dict[str, float]:
    """Mean of each named metric over users with at least one held-out track."""
    heldout = heldout.tocsr()
    scored = np.diff(heldout.indptr) > 0
    ranked, heldout = ranked[scored], heldout[scored]
    out: dict[str, float] = {}
    for name in names:
        metric, k_text = name.split("@")
        k = int(k_text)
        fn = {"ndcg": ndcg_at_k, "recall": recall_at_k, "recall_std": recall_std_at_k}[metric]
        values = fn(ranked, heldout, k)
        out[name] = float(values.mean()) if len(values) else float("nan")
    return out


def evaluate_scorer(
    score_fn: ScoreFn,
    foldin: sp.csr_matrix,
    heldout: sp.csr_matrix,
    names: tuple[str, ...] = DEFAULT_METRICS,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Rank every track for each fold-in user (fold-in items masked) and score the held-out."""
    k_max = max(int(n.split("@")[1]) for n in names)
    ranked = rank_users(score_fn, foldin, k_max, chunk_size)
    return evaluate_ranking(ranked, heldout, names)


# ----------------------------------------------------------------------------- beyond accuracy
# All take ``ranked`` (n_users, >= k) item indices, best first, and look at the first k.
# ``counts`` (n_items,) is how many *training* users played each item: the popularity that the
# recommender could have learned, so held-out users never inform it.


def coverage_at_k(ranked: np.ndarray, n_items: int, k: int) -> float:
    """Share of the n_items that appear in at least one user's top k (aggregate diversity)."""
    if n_items <= 0:
        raise ValueError(f"n_items must be positive, got {n_items}")
    return float(len(np.unique(ranked[:, :k])) / n_items)


def short_head(counts: np.ndarray, share: float = 0.2) -> np.ndarray:
    """Boolean (n_items,) mask of the ceil(share * n_items) most-played items; ties at the
    boundary go to the lower item index, so the head has exactly that many items."""
    counts = np.asarray(counts)
    n_head = int(np.ceil(share * len(counts)))
    order = np.lexsort((np.arange(len(counts)), -counts))
    head = np.zeros(len(counts), dtype=bool)
    head[order[:n_head]] = True
    return head


def average_popularity_at_k(ranked: np.ndarray, popularity: np.ndarray, k: int) -> np.ndarray:
    """Mean ``popularity`` of each user's top k items: (n_users,)."""
    return np.asarray(popularity, dtype=np.float64)[ranked[:, :k]].mean(axis=1)


def long_tail_share_at_k(ranked: np.ndarray, head: np.ndarray, k: int) -> np.ndarray:
    """Share of each user's top k that lies outside the short head: (n_users,)."""
    return (~np.asarray(head, dtype=bool)[ranked[:, :k]]).mean(axis=1)


def self_information(counts: np.ndarray, n_users: int) -> np.ndarray:
    """-log2 p(item) with p = (count + 1) / (n_users + 1): the novelty of recommending each
    item (Zhou et al. 2010, add-one smoothed so never-played items have a finite value)."""
    if n_users < 0:
        raise ValueError(f"n_users must be >= 0, got {n_users}")
    return -np.log2((np.asarray(counts, dtype=np.float64) + 1.0) / (n_users + 1.0))


def novelty_at_k(ranked: np.ndarray, counts: np.ndarray, n_users: int, k: int) -> np.ndarray:
    """Mean self-information (bits) of each user's top k items: (n_users,)."""
    return self_information(counts, n_users)[ranked[:, :k]].mean(axis=1)


def beyond_accuracy(
    ranked: np.ndarray,
    counts: np.ndarray,
    n_train_users: int,
    ks: tuple[int, ...] = (20, 100),
    popularity: np.ndarray | None = None,
    head_share: float = 0.2,
) -> dict[str, float]:
    """Coverage, average popularity (share of training users who played the item), long-tail
    share, novelty and, when ``popularity`` (e.g. Spotify's 0..100) is given, its mean; each at
    every k in ``ks``, averaged over users."""
    counts = np.asarray(counts, dtype=np.float64)
    head = short_head(counts, head_share)
    share = counts / max(1, n_train_users)
    out: dict[str, float] = {}
    for k in ks:
        out[f"coverage@{k}"] = coverage_at_k(ranked, len(counts), k)
        out[f"avg_pop@{k}"] = float(average_popularity_at_k(ranked, share, k).mean())
        out[f"long_tail@{k}"] = float(long_tail_share_at_k(ranked, head, k).mean())
        out[f"novelty@{k}"] = float(novelty_at_k(ranked, counts, n_train_users, k).mean())
        if popularity is not None:
            out[f"popularity@{k}"] = float(average_popularity_at_k(ranked, popularity, k).mean())
    return out
