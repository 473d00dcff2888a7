"""Small reference recommenders, scored by the same harness as deepvibe.

One vocabulary for all of them (after the ``implicit`` library's): ``fit(user_items)`` on a
users x items CSR matrix of plays, then ``score(foldin)`` -> dense (n_users, n_items) scores
for rows of fold-in plays (what ``metrics.evaluate_scorer`` calls), and ``recommend`` -> item
indices and scores sorted descending. Every model treats any play as a 1.

- :class:`TopPop`: items ranked by how many training users played them.
- :class:`EASE`: Steck (2019), the closed-form linear item-item model with a zero diagonal.
- :class:`MultVAE`: Liang et al. (2018), 600-200-600 tanh with a multinomial likelihood,
  trained by deepvibe's own trainer with the paper's settings (see :func:`mult_vae_config`).
- :class:`ContentCosine`: cosine between each item's standardised features and the mean
  standardised features of the user's fold-in items (no collaborative signal at all).
"""

from __future__ import annotations

import abc
import logging
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from deepvibe.config import Config, config_from_dict
from deepvibe.ranking.metrics import mask_seen, top_k

log = logging.getLogger(__name__)


def binarize(user_items: sp.spmatrix) -> sp.csr_matrix:
    """Any play becomes 1.0 (float64 CSR); explicit zeros are dropped."""
    m = sp.csr_matrix(user_items, dtype=np.float64, copy=True)
    m.eliminate_zeros()
    m.data[:] = 1.0
    return m


class Recommender(abc.ABC):
    """Base class: subclasses implement ``fit`` and ``score``."""

    name = "recommender"

    @abc.abstractmethod
    def fit(self, user_items: sp.csr_matrix) -> Recommender:
        """Learn from a (n_users, n_items) training matrix; returns self."""

    @abc.abstractmethod
    def score(self, foldin: sp.csr_matrix) -> np.ndarray:
        """(n_users, n_items) plays -> (n_users, n_items) dense scores, higher is better."""

    def recommend(
        self, user_items: sp.csr_matrix, n: int = 10, filter_already_liked_items: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``n`` item indices per row and their scores, best first: two (n_users, n) arrays."""
        user_items = sp.csr_matrix(user_items)
        scores = np.asarray(self.score(user_items), dtype=np.float64)
        if filter_already_liked_items:
            mask_seen(scores, user_items)
        ids = top_k(scores, n)
        return ids, np.take_along_axis(scores, ids, axis=1)


class TopPop(Recommender):
    """Every user gets the items played by the most training users."""

    name = "toppop"

    def __init__(self) -> None:
        self.counts: np.ndarray | None = None  # (n_items,) training users per item

    def fit(self, user_items: sp.csr_matrix) -> TopPop:
        self.counts = np.asarray(binarize(user_items).sum(axis=0)).ravel()
        return self

    def score(self, foldin: sp.csr_matrix) -> np.ndarray:
        if self.counts is None:
            raise ValueError("TopPop.score called before fit")
        return np.broadcast_to(self.counts, (foldin.shape[0], len(self.counts))).copy()


class EASE(Recommender):
    """Embarrassingly Shallow Autoencoder (Steck, WWW 2019).

    B minimises ||X - X B||^2 + lam ||B||^2 subject to diag(B) = 0. With P = (X^T X + lam I)^-1
    the solution is B_ij = -P_ij / P_jj for i != j. Memory is two dense n_items^2 float64
    matrices (800 MB at 10,000 items), which is why it is a baseline and not the product.
    """

    name = "ease"

    def __init__(self, lam: float = 100.0) -> None:
        if lam <= 0:
            raise ValueError(f"EASE lam must be positive, got {lam}")
        self.lam = float(lam)
        self.weights: np.ndarray | None = None  # (n_items, n_items) B, float32

    @staticmethod
    def gram(user_items: sp.csr_matrix) -> np.ndarray:
        """X^T X of the binarised matrix as a dense float64 (n_items, n_items) array."""
        x = binarize(user_items)
        return np.asarray((x.T @ x).toarray(), dtype=np.float64)

    def fit(self, user_items: sp.csr_matrix) -> EASE:
        return self.fit_gram(self.gram(user_items))

    def fit_gram(self, gram: np.ndarray) -> EASE:
        """Fit from a precomputed X^T X (lets a lambda sweep reuse one Gram matrix)."""
        g = gram.copy()
        g[np.diag_indices_from(g)] += self.lam
        p = np.linalg.inv(g)
        b = p / (-np.diag(p))[None, :]  # column j divided by -P_jj
        b[np.diag_indices_from(b)] = 0.0
        self.weights = b.astype(np.float32)
        return self

    def score(self, foldin: sp.csr_matrix) -> np.ndarray:
        if self.weights is None:
            raise ValueError("EASE.score called before fit")
        return np.asarray(binarize(foldin).astype(np.float32) @ self.weights)


@dataclass(frozen=True)
class EASETuning:
    lam: float  # the chosen lambda
    validation: dict[float, float]  # lambda -> validation metric


def tune_ease(
    user_items: sp.csr_matrix,
    val_foldin: sp.csr_matrix,
    val_heldout: sp.csr_matrix,
    lambdas: tuple[float, ...],
    metric: str = "ndcg@100",
) -> tuple[EASE, EASETuning]:
    """Fit EASE for each lambda, keep the one with the best validation ``metric``."""
    from deepvibe.ranking.metrics import evaluate_scorer

    if not lambdas:
        raise ValueError("tune_ease needs at least one lambda")
    gram = EASE.gram(user_items)
    results: dict[float, float] = {}
    best: tuple[float, EASE] | None = None
    for lam in lambdas:
        model = EASE(lam).fit_gram(gram)
        value = evaluate_scorer(model.score, val_foldin, val_heldout, (metric,))[metric]
        results[float(lam)] = value
        log.debug("EASE lambda %g: validation %s %.4f", lam, metric, value)
        if best is None or value > best[0]:
            best = (value, model)
    assert best is not None
    return best[1], EASETuning(best[1].lam, results)


class ContentCosine(Recommender):
    """Cosine between each item's standardised features and the user's mean feature vector.

    The profile is the plain mean over the user's fold-in items (each item counts once), in
    the same standardised space deepvibe scans. ``fit`` learns nothing: this is the content-only
    reference that deepvibe's audio path has to beat.
    """

    name = "content"

    def __init__(self, item_features: np.ndarray) -> None:
        feats = np.asarray(item_features, dtype=np.float64)  # (n_items, f) standardised
        if feats.ndim != 2 or feats.shape[1] == 0:
            raise ValueError("ContentCosine needs at least one feature column")
        self.item_features = feats

    def fit(self, user_items: sp.csr_matrix) -> ContentCosine:
        return self

    def profiles(self, foldin: sp.csr_matrix) -> np.ndarray:
        """(n_users, f) mean standardised features of each row's items (zero for empty rows)."""
        x = binarize(foldin)
        counts = np.asarray(x.sum(axis=1))  # (n_users, 1)
        return np.asarray(x @ self.item_features) / np.maximum(counts, 1.0)

    def score(self, foldin: sp.csr_matrix) -> np.ndarray:
        from deepvibe.discovery.dna import similarity_to

        # The same cosine that discover's scan uses (zero-length vectors score 0).
        return similarity_to(self.profiles(foldin), self.item_features, "cosine")


# ----------------------------------------------------------------------------- Mult-VAE

#: Liang et al. (2018): one 600-unit tanh layer each side of a 200-d latent, dropout 0.5 on the
#: L2-normalised input, multinomial likelihood, Adam at 1e-3, batches of 500 users, beta raised
#: linearly from 0 and capped at 0.2, no weight decay. Their ML-20M run reaches the cap at step
#: 40,000 of about 46,800 (200 epochs x 234 batches), i.e. after 85% of training: ``ratio``.
MULT_VAE_SETTINGS: dict[str, dict[str, object]] = {
    "model": {"hidden": [600], "latent": 200, "activation": "tanh", "dropout": 0.0},
    "train": {
        "epochs": 200,
        "batch_size": 500,
        "lr": 1e-3,
        "lr_schedule": "constant",
        "weight_decay": 0.0,
        "likelihood": "multinomial",
        "input_dropout": 0.5,
        "audio_weight": 0.0,
        "kl": {"beta_max": 0.2, "cycles": 1, "ratio": 0.85},
        "max_grad_norm": None,
    },
}


def mult_vae_config(cfg: Config, epochs: int | None = None) -> Config:
    """``cfg`` (data, seed, split) with its model and training sections replaced by Mult-VAE's."""
    raw = cfg.to_dict()
    raw["model"] = dict(MULT_VAE_SETTINGS["model"])
    train = dict(raw["train"])
    train.update(MULT_VAE_SETTINGS["train"])
    if epochs is not None:
        train["epochs"] = int(epochs)
    raw["train"] = train
    return config_from_dict(raw, source="Mult-VAE settings")


class MultVAE(Recommender):
    """Mult-VAE trained by :func:`deepvibe.training.train.train` with zero content features.

    Faithful to the paper in what matters for ranking (architecture, input normalisation and
    dropout, likelihood, KL weight and schedule, optimiser); two details differ: dropped items are
    removed *before* L2 normalisation (the paper drops after normalising and rescales the
    survivors by 1/keep, so its training inputs have norm ~sqrt(2) rather than 1), and biases
    start at zero rather than at small random values. The epoch with the best validation
    NDCG@100 is kept, as for deepvibe.
    """

    name = "multvae"

    def __init__(self, cfg: Config, epochs: int | None = None) -> None:
        self.cfg = mult_vae_config(cfg, epochs)
        self.model = None
        self.result = None

    def fit_dataset(self, dataset, progress: bool | None = False) -> MultVAE:  # noqa: ANN001
        """Train on ``dataset``'s "train" users, select on its "validation" users. Audio
        features, if the dataset has any, are hidden: Mult-VAE is collaborative only."""
        from dataclasses import replace

        from deepvibe.data.tables import FeatureScaler
        from deepvibe.training.train import train

        n_items = len(dataset.track_ids)
        plain = replace(
            dataset,
            scaler=FeatureScaler.fit(np.zeros((n_items, 0)), ()),
            track_features=np.zeros((n_items, 0), dtype=np.float32),
        )
        self.result = train(
            self.cfg, dataset=plain, progress=progress, write_files=False, restore_best=True
        )
        self.model = self.result.model
        return self

    def fit(self, user_items: sp.csr_matrix) -> MultVAE:
        """Train on a bare matrix: a ``train.val_fraction`` share of its rows (split by the
        config's seed) is held back to choose the epoch."""
        from deepvibe.data.dataset import Dataset
        from deepvibe.data.tables import FeatureScaler, Interactions
        from deepvibe.ranking.protocol import split_users

        m = sp.csr_matrix(user_items, dtype=np.float32)
        users = np.array([f"u{i}" for i in range(m.shape[0])], dtype=object)
        items = np.array([str(j) for j in range(m.shape[1])], dtype=object)
        rng = np.random.default_rng(self.cfg.seed)
        train_users, val_users = split_users(users, (self.cfg.train.val_fraction,), rng)
        ds = Dataset(
            Interactions(m, users, None, items),
            None,
            FeatureScaler.fit(np.zeros((m.shape[1], 0)), ()),
            np.zeros((m.shape[1], 0), dtype=np.float32),
            {"train": train_users, "validation": val_users},
        )
        return self.fit_dataset(ds)

    def score(self, foldin: sp.csr_matrix) -> np.ndarray:
        from deepvibe.model.inference import encode_and_score

        if self.model is None:
            raise ValueError("MultVAE.score called before fit")
        n_items = self.model.arch.n_tracks
        return encode_and_score(self.model, foldin, np.zeros((n_items, 0), np.float32))[1]
