"""Baselines against independent computations."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from deepvibe.config import load_config
from deepvibe.evaluation.baselines import (
    EASE,
    MULT_VAE_SETTINGS,
    ContentCosine,
    MultVAE,
    TopPop,
    binarize,
    mult_vae_config,
    tune_ease,
)
from deepvibe.model.schedule import cyclical_beta
from deepvibe.ranking.metrics import evaluate_scorer, recall_at_k, top_k
from deepvibe.ranking.protocol import foldin_split


def random_matrix(n_users: int, n_items: int, density: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    dense = (rng.random((n_users, n_items)) < density) * rng.integers(1, 9, (n_users, n_items))
    return sp.csr_matrix(dense.astype(np.float32))


def blocks(n_users: int = 300, n_items: int = 60, groups: int = 3, seed: int = 0) -> sp.csr_matrix:
    """Users of group g play mostly items of block g, plus a little noise everywhere."""
    rng = np.random.default_rng(seed)
    size = n_items // groups
    dense = np.zeros((n_users, n_items), dtype=np.float32)
    for u in range(n_users):
        g = u % groups
        dense[u, g * size + rng.choice(size, 10, replace=False)] = 1
        dense[u, rng.choice(n_items, 2, replace=False)] = 1
    return sp.csr_matrix(dense)


def test_ease_equals_per_item_ridge_regression() -> None:
    """B's column j is the ridge regression of item j on all other items (Steck 2019)."""
    x = random_matrix(40, 12, 0.3, seed=1)
    lam = 7.5
    b = EASE(lam).fit(x).weights
    xb = binarize(x).toarray()
    for j in range(xb.shape[1]):
        others = np.delete(np.arange(xb.shape[1]), j)
        a = xb[:, others]
        direct = np.linalg.solve(a.T @ a + lam * np.eye(len(others)), a.T @ xb[:, j])
        assert b[j, j] == 0.0
        assert np.allclose(b[others, j], direct, atol=1e-5)


def test_ease_scores_are_foldin_times_weights() -> None:
    x = random_matrix(30, 8, 0.4, seed=2)
    model = EASE(3.0).fit(x)
    foldin = random_matrix(4, 8, 0.5, seed=3)
    expected = binarize(foldin).toarray() @ model.weights.astype(np.float64)
    assert np.allclose(model.score(foldin), expected, atol=1e-5)
    with pytest.raises(ValueError, match="positive"):
        EASE(0.0)


def test_tune_ease_picks_the_best_validation_lambda() -> None:
    x = blocks(seed=1)
    val = foldin_split(np.arange(60), blocks(60, seed=2), 0.2, np.random.default_rng(0))
    lambdas = (0.5, 5.0, 50.0, 5000.0)
    model, tuning = tune_ease(x, val.foldin, val.heldout, lambdas)
    direct = {
        lam: evaluate_scorer(EASE(lam).fit(x).score, val.foldin, val.heldout, ("ndcg@100",))[
            "ndcg@100"
        ]
        for lam in lambdas
    }
    assert tuning.validation == pytest.approx(direct)
    assert tuning.lam == max(direct, key=direct.get) == model.lam


def test_toppop_and_recommend_filter_seen() -> None:
    x = sp.csr_matrix(np.array([[1, 5, 0, 0], [1, 0, 2, 0], [1, 0, 3, 0]], dtype=np.float32))
    model = TopPop().fit(x)
    assert model.counts.tolist() == [3, 1, 2, 0]  # users per item, not plays
    user = sp.csr_matrix(np.array([[1, 0, 0, 0]], dtype=np.float32))
    ids, scores = model.recommend(user, n=2)
    assert ids.tolist() == [[2, 1]] and scores.tolist() == [[2, 1]]
    ids, _ = model.recommend(user, n=2, filter_already_liked_items=False)
    assert ids.tolist() == [[0, 2]]


def test_content_cosine_hand_values() -> None:
    feats = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
    model = ContentCosine(feats).fit(sp.csr_matrix((1, 4)))
    user = sp.csr_matrix(np.array([[3.0, 0, 1.0, 0]]))  # mean of items 0 and 2 = (1, 0.5)
    s = 1 / np.sqrt(1.25)
    expected = [1.0 * s, 0.5 * s, 1.5 * s / np.sqrt(2), -1.0 * s]
    assert model.score(user)[0] == pytest.approx(expected)
    assert model.profiles(user)[0].tolist() == [1.0, 0.5]
    with pytest.raises(ValueError, match="feature"):
        ContentCosine(np.zeros((4, 0)))


def test_mult_vae_settings_follow_the_paper() -> None:
    cfg = mult_vae_config(load_config(None, ["seed=3"]))
    assert cfg.seed == 3
    assert tuple(cfg.model.hidden) == (600,) and cfg.model.latent == 200
    assert cfg.model.activation == "tanh"
    t = cfg.train
    assert (t.likelihood, t.input_dropout, t.batch_size, t.lr) == ("multinomial", 0.5, 500, 1e-3)
    assert (t.kl.beta_max, t.kl.cycles, t.weight_decay, t.audio_weight) == (0.2, 1, 0.0, 0.0)
    # One linear warm-up to 0.2 reached after 85% of training, then held (never restarts).
    total = 1000
    assert cyclical_beta(0, total, t.kl.cycles, t.kl.ratio, t.kl.beta_max) == 0.0
    assert cyclical_beta(425, total, 1, t.kl.ratio, 0.2) == pytest.approx(0.1)
    assert cyclical_beta(850, total, 1, t.kl.ratio, 0.2) == pytest.approx(0.2)
    assert cyclical_beta(999, total, 1, t.kl.ratio, 0.2) == pytest.approx(0.2)
    assert MULT_VAE_SETTINGS["train"]["epochs"] == 200


def test_mult_vae_learns_blocks_better_than_popularity() -> None:
    cfg = load_config(None, ["seed=0", "train.val_fraction=0.2", "train.batch_size=100"])
    x = blocks(300, seed=4)
    model = MultVAE(cfg, epochs=40).fit(x)
    assert model.model.arch.hidden == (600,) and model.model.arch.n_features == 0
    test = foldin_split(np.arange(90), blocks(90, seed=5), 0.2, np.random.default_rng(1))
    k = 10
    r_vae = recall_at_k(top_k(_masked(model.score(test.foldin), test.foldin), k), test.heldout, k)
    pop = TopPop().fit(x)
    r_pop = recall_at_k(top_k(_masked(pop.score(test.foldin), test.foldin), k), test.heldout, k)
    assert r_vae.mean() > 0.6 and r_vae.mean() > 2 * r_pop.mean()


def _masked(scores: np.ndarray, seen: sp.csr_matrix) -> np.ndarray:
    out = np.asarray(scores, dtype=np.float64).copy()
    out[seen.nonzero()] = -np.inf
    return out
