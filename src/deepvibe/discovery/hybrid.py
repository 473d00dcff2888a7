"""The one discovery score: a weighted sum of scale-free parts, computed chunk by chunk.

For a block of U users and a chunk of C database tracks every part is a (U, C) float32 array
that needs no statistic over the whole database, so a single chunked pass scores everything:

- ``dna``: cosine between the user's Vibe DNA and the track, both in the standardised feature
  space, in [-1, 1]; NaN for a track without features (or a user without a DNA), which
  contributes 0.
- ``artist``: artist share, the user's history tracks by the candidate's artists (summed over
  the candidate's artists) / |history|.
- ``collab``: :class:`deepvibe.model.artist_cf.ArtistCF` user score (mean cosine to the user's
  artists, in [0, 1]), the max over the candidate's artists: the part that finds new artists.
- ``decoder``: the model's decoder score for the user, z-scored over the catalogue, kept only
  where positive (above the user's catalogue mean); 0 elsewhere and outside the catalogue. The
  negative side is dropped on purpose: with it, "in the catalogue at all" becomes a feature
  (most catalogue tracks sit a little below the mean, every other track at 0), and on playlist
  data, where a held-out track is usually in no other playlist, fit_weights learns to demote
  the whole catalogue (spotify-2024 validation: a bare -1 x in-catalogue part scores 0.415
  against 0.354 without, the full z-score 0.408, its positive part 0.361) - a protocol
  artefact, not taste.

All artist ids share one vocabulary (the caller maps names to it). The weights are fitted on
validation users by :func:`fit_weights` (coordinate ascent over a fixed grid) on a candidate
pool per user (:class:`CandidatePool`), falling back to :data:`DEFAULT_WEIGHTS`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import ClassVar

import numpy as np
import scipy.sparse as sp

PARTS = ("dna", "artist", "collab", "decoder")
GRID = (0.0, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)


@dataclass(frozen=True)
class HybridWeights:
    """Non-negative weight per part; only ratios matter for the ranking."""

    dna: float
    artist: float
    collab: float
    decoder: float

    DEFAULT: ClassVar[HybridWeights]

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not np.isfinite(value) or value < 0:
                raise ValueError(f"hybrid weight {f.name} must be finite and >= 0, got {value}")

    def to_dict(self) -> dict[str, float]:
        return {k: float(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(
        cls, values: Mapping[str, float], base: HybridWeights | None = None
    ) -> HybridWeights:
        """Weights from a mapping; missing parts come from ``base`` (default DEFAULT)."""
        unknown = set(values) - set(PARTS)
        if unknown:
            raise ValueError(f"unknown hybrid weight(s) {sorted(unknown)}; expected {PARTS}")
        merged = (base or cls.DEFAULT).to_dict() | {k: float(v) for k, v in values.items()}
        return cls(**merged)


# Chosen on spotify-2024 validation users only (seeds 0-4, pooled fit); docs/BENCHMARKS.md.
# The decoder weight was 0.3 (fitted with an EASE stand-in for the decoder); with the trained
# model it sinks the validation users' NDCG@100 (pooled, anchor 0.5: 0.095 with 0.3, 0.267
# with 0), so the fallback leaves it out.
DEFAULT_WEIGHTS = HybridWeights(dna=1.0, artist=3.0, collab=3.0, decoder=0.0)
HybridWeights.DEFAULT = DEFAULT_WEIGHTS
# The prior of ``--new-artists`` (the tracks of the user's artists excluded, so the artist part
# only matters where a credit mixes known and new artists): one fit over the new-artist
# validation users of spotify-2024 split seeds 0-4 (104 users, anchor 1.0: 0.112, leave one
# seed out 0.112 +- 0.017, against 0.023 for DEFAULT_WEIGHTS); docs/BENCHMARKS.md.
DEFAULT_NEW_ARTIST_WEIGHTS = HybridWeights(dna=0.3, artist=3.0, collab=1.0, decoder=0.0)


# ------------------------------------------------------------------------------------- inputs
def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay 0): (n, f) -> (n, f) float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def artist_share_matrix(history: sp.spmatrix, track_artists: sp.spmatrix) -> sp.csr_matrix:
    """(U, T) history tracks, (T, A) their artists -> (U, A) float32: history tracks by each
    artist / |history| (|history| counts tracks with or without a known artist). Each row's
    artists in ascending order: the order a track's shares are summed in, by the sparse
    product of score_direct and by discovery.hybrid_scan.pair_scores alike."""
    history = sp.csr_matrix(history, dtype=np.float32)
    history.data[:] = 1.0
    counts = np.asarray(history.sum(axis=1)).ravel()
    share = sp.csr_matrix(history @ sp.csr_matrix(track_artists, dtype=np.float32))
    out = sp.csr_matrix(sp.diags(1.0 / np.maximum(counts, 1.0)) @ share, dtype=np.float32)
    out.sort_indices()
    return out


def zscore_rows(scores: np.ndarray) -> np.ndarray:
    """(U, n_catalogue) decoder scores -> z-scores per user (a constant row becomes 0)."""
    scores = np.asarray(scores, dtype=np.float64)
    std = scores.std(axis=1, keepdims=True)
    z = (scores - scores.mean(axis=1, keepdims=True)) / np.where(std > 0, std, 1.0)
    return z.astype(np.float32)


# -------------------------------------------------------------------------------------- parts
def dna_part(user_dna: np.ndarray, track_units: np.ndarray, has_features: np.ndarray) -> np.ndarray:
    """(U, f) unit DNA, (C, f) unit features, (C,) bool -> (U, C) cosine, NaN where unknown."""
    cos = np.asarray(user_dna, np.float32) @ np.asarray(track_units, np.float32).T
    cos[:, ~np.asarray(has_features, bool)] = np.nan
    return cos


def artist_part(user_shares: sp.spmatrix, chunk_artists: sp.spmatrix) -> np.ndarray:
    """(U, A) shares, (C, A) binary track artists -> (U, C) share summed over artists."""
    chunk = sp.csr_matrix(chunk_artists, dtype=np.float32)
    return np.asarray((sp.csr_matrix(user_shares) @ chunk.T).toarray(), dtype=np.float32)


def collab_part(user_collab: np.ndarray, chunk_artists: sp.spmatrix) -> np.ndarray:
    """(U, A) ArtistCF scores (>= 0), (C, A) binary track artists -> (U, C): the max over the
    track's artists (0 without a known artist). Max, not sum: on spotify-2024 validation the
    sum favours multi-artist credits (pooled fit NDCG@100 0.354 sum vs 0.364 max)."""
    chunk = sp.csr_matrix(chunk_artists)
    chunk.sort_indices()
    return _max_over_artists(_pad_zero_column(user_collab), chunk)


def _pad_zero_column(user_collab: np.ndarray) -> np.ndarray:
    """(U, A) -> (U, A + 1) float32; column A stands for "no artist" and scores 0."""
    collab = np.asarray(user_collab, np.float32)
    return np.concatenate([collab, np.zeros((len(collab), 1), np.float32)], axis=1)


def _max_over_artists(padded: np.ndarray, chunk: sp.csr_matrix) -> np.ndarray:
    """(U, A + 1) padded scores, (C, A) CSR with sorted indices -> (U, C) max per track."""
    n_artists = np.diff(chunk.indptr)  # (C,)
    no_artist = padded.shape[1] - 1
    out = None
    for j in range(max(1, int(n_artists.max(initial=0)))):  # the j-th artist of each track
        has = n_artists > j
        if j == 0 or has.mean() > 0.1:  # one contiguous take over the chunk, no scatter
            pos = np.minimum(chunk.indptr[:-1] + j, max(chunk.nnz - 1, 0))
            column = np.where(has, chunk.indices[pos] if chunk.nnz else 0, no_artist)
            values = np.take(padded, column, axis=1)
            out = values if out is None else np.maximum(out, values, out=out)
        else:  # the few tracks with many artists
            tracks = np.flatnonzero(has)
            current = np.take(out, tracks, axis=1)
            artists = chunk.indices[chunk.indptr[tracks] + j]
            out[:, tracks] = np.maximum(current, np.take(padded, artists, axis=1), out=current)
    return out


def decoder_part(user_decoder_z: np.ndarray, catalogue_index: np.ndarray) -> np.ndarray:
    """(U, n_cat) z-scores, (C,) catalogue column or -1 -> (U, C): max(z, 0) inside the
    catalogue, 0 outside (see the module docstring for why the negative side is dropped)."""
    z = np.maximum(np.asarray(user_decoder_z, np.float32), 0.0)
    padded = np.concatenate([z, np.zeros((len(z), 1), np.float32)], axis=1)
    index = np.asarray(catalogue_index)
    return np.take(padded, np.where(index >= 0, index, z.shape[1]), axis=1)


def chunk_parts(
    *,
    user_dna: np.ndarray | None = None,
    track_units: np.ndarray | None = None,
    has_features: np.ndarray | None = None,
    user_shares: sp.spmatrix | None = None,
    user_collab: np.ndarray | None = None,
    chunk_artists: sp.spmatrix | None = None,
    catalogue_index: np.ndarray | None = None,
    user_decoder_z: np.ndarray | None = None,
    only: Sequence[str] = PARTS,
) -> dict[str, np.ndarray]:
    """Every part in ``only`` whose inputs are given, each (U, C) float32."""
    parts: dict[str, np.ndarray] = {}
    if "dna" in only and user_dna is not None and track_units is not None:
        has = np.ones(len(track_units), bool) if has_features is None else has_features
        parts["dna"] = dna_part(user_dna, track_units, has)
    if "artist" in only and user_shares is not None and chunk_artists is not None:
        parts["artist"] = artist_part(user_shares, chunk_artists)
    if "collab" in only and user_collab is not None and chunk_artists is not None:
        parts["collab"] = collab_part(user_collab, chunk_artists)
    if "decoder" in only and user_decoder_z is not None and catalogue_index is not None:
        parts["decoder"] = decoder_part(user_decoder_z, catalogue_index)
    return parts


def score_chunk(parts: Mapping[str, np.ndarray], weights: HybridWeights) -> np.ndarray:
    """Weighted sum of the parts -> (U, C) float32. A NaN (missing) value adds 0; only
    ``dna`` may hold NaN (the other parts are finite by construction). Parts with weight 0
    are skipped; with no part at all the result is 0 (the caller decides whether such a user
    is scorable)."""
    w = weights.to_dict()
    shape = next(iter(parts.values())).shape if parts else (0, 0)
    total = np.zeros(shape, dtype=np.float32)
    scratch = None
    for name in PARTS:  # in place: one scratch array, no temporaries per part
        if name not in parts or w[name] <= 0:
            continue
        if scratch is None:
            scratch = np.empty(shape, dtype=np.float32)
        np.multiply(parts[name], np.float32(w[name]), out=scratch)
        if name == "dna":
            np.copyto(scratch, 0.0, where=np.isnan(scratch))
        total += scratch
    return total


def score_direct(
    weights: HybridWeights,
    *,
    user_dna: np.ndarray | None = None,
    track_units: np.ndarray | None = None,
    has_features: np.ndarray | None = None,
    user_shares: sp.spmatrix | None = None,
    user_collab: np.ndarray | None = None,
    chunk_artists: sp.spmatrix | None = None,
    catalogue_index: np.ndarray | None = None,
    user_decoder_z: np.ndarray | None = None,
) -> np.ndarray:
    """``score_chunk(chunk_parts(...), weights)`` without materialising the parts: the scan's
    hot path. The weights are folded into the user-side inputs, the artist and decoder parts
    are added only where nonzero; only the collab part costs a pass over the chunk."""
    w = weights
    users = next(x for x in (user_dna, user_shares, user_collab, user_decoder_z) if x is not None)
    cols = next(x for x in (track_units, chunk_artists, catalogue_index) if x is not None)
    shape = (users.shape[0], cols.shape[0])
    if w.dna > 0 and user_dna is not None and track_units is not None:
        dna = np.asarray(user_dna, np.float32)
        total = (np.float32(w.dna) * dna) @ np.asarray(track_units, np.float32).T
        if has_features is not None:
            total[:, ~np.asarray(has_features, bool)] = 0.0
        total[~np.isfinite(dna).all(axis=1)] = 0.0
    else:
        total = np.zeros(shape, dtype=np.float32)
    if w.artist > 0 and user_shares is not None and chunk_artists is not None:
        shares = sp.csr_matrix(user_shares, dtype=np.float32) * np.float32(w.artist)
        added = (shares @ sp.csr_matrix(chunk_artists, dtype=np.float32).T).tocoo()
        total[added.row, added.col] += added.data  # coo from a product: unique (row, col)
    if w.collab > 0 and user_collab is not None and chunk_artists is not None:
        total += collab_part(np.float32(w.collab) * np.asarray(user_collab), chunk_artists)
    if w.decoder > 0 and user_decoder_z is not None and catalogue_index is not None:
        index = np.asarray(catalogue_index)
        inside = np.flatnonzero(index >= 0)
        z = np.maximum(np.asarray(user_decoder_z, np.float32)[:, index[inside]], 0.0)
        total[:, inside] += np.float32(w.decoder) * z
    return total


# ---------------------------------------------------------------------------------------- why
def why(
    parts_at_top: Mapping[str, np.ndarray],
    weights: HybridWeights,
    n_history: int,
    track_units: np.ndarray,
    history_units: np.ndarray,
    history_names: Sequence[str],
) -> list[str]:
    """One user's k recommended tracks -> k short reasons: the part with the largest weighted
    contribution. ``parts_at_top``: part -> (k,); ``track_units``: (k, f) unit features of the
    recommended tracks; ``history_units``: (h, f) unit features of the user's history tracks
    that have features, named by ``history_names`` (h,)."""
    names = [p for p in PARTS if p in parts_at_top]
    if not names:
        return [""] * len(track_units)
    w = weights.to_dict()
    contrib = np.stack([w[p] * np.asarray(parts_at_top[p], np.float64) for p in names])  # (P, k)
    no_history = np.full(contrib.shape[1], len(history_units) == 0)
    best, said = strongest_part(contrib, names, no_history)
    nearest = _nearest(track_units, history_units)
    out = []
    for row, part_index in enumerate(best):
        part = names[part_index]
        if not said[row]:
            out.append("")
        elif part == "artist":
            out.append(f"artist: {round(parts_at_top['artist'][row] * n_history)} of your tracks")
        elif part == "dna":
            out.append(f"sounds like: {history_names[nearest[row]]}")
        else:
            out.append("listeners like you")
    return out


def strongest_part(
    contrib: np.ndarray, names: Sequence[str], no_history: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The rule behind every ``why``: (P, H) weighted contributions of the parts ``names``
    -> (H,) index into ``names`` of the part that added most, and (H,) whether it is said
    (finite, and above 0 unless it is the DNA part). ``no_history`` (H,): pairs whose user has
    no history track with features, where the DNA part cannot be the reason."""
    dna = names.index("dna") if "dna" in names else -1
    best = np.zeros(contrib.shape[1], np.intp)
    top = value = np.zeros(0)
    # part by part (an argmax over axis 0 of (P, H) strides through memory: 4x the time);
    # a NaN counts as -inf, and a later part wins only when strictly larger, as in argmax
    for p in range(contrib.shape[0]):
        row = np.where(no_history, np.nan, contrib[p]) if p == dna else contrib[p]
        key = np.nan_to_num(row, nan=-np.inf)
        if p == 0:
            top, value = key, row
            continue
        better = key > top
        best[better] = p
        top = np.where(better, key, top)
        value = np.where(better, row, value)
    return best, np.isfinite(value) & ((value > 0) | (best == dna))


def _nearest(track_units: np.ndarray, history_units: np.ndarray) -> np.ndarray:
    """(k, f), (h, f) -> (k,) index of the most similar history track (0 when h == 0)."""
    if len(history_units) == 0:
        return np.zeros(len(track_units), dtype=int)
    return np.argmax(np.asarray(track_units) @ np.asarray(history_units).T, axis=1)


# ----------------------------------------------------------------------------- candidate pool
class CandidatePool:
    """Per user, the union of the top ``size`` candidates of each part, accumulated chunk by
    chunk: the union of the whole-database top ``size`` lists (exact up to ties at the
    boundary), so a weighted sum's top 100 is (all but surely, for size >> 100) inside the
    pool, and fitting weights costs U x pool instead of U x n_db. Excluded tracks (fold-in,
    new-artist exclusions) never enter. Memory: U x (#parts x size) values per part."""

    def __init__(self, n_users: int, size: int = 2000) -> None:
        self.size = size
        self.columns = [np.zeros(0, np.int64) for _ in range(n_users)]
        self.values: list[dict[str, np.ndarray]] = [{} for _ in range(n_users)]

    def add(self, parts: Mapping[str, np.ndarray], start: int, excluded=None) -> None:
        """Parts (U, C) of database columns start..start+C; ``excluded`` (U, C) bool/CSR."""
        n_cols = next(iter(parts.values())).shape[1]
        valid = np.ones((len(self.columns), n_cols), bool)
        if excluded is not None:
            valid &= ~_dense_bool(excluded)
        tops = [self._chunk_top(v, valid) for v in parts.values()]  # each (U, <= size)
        for u in range(len(self.columns)):
            new = np.unique(np.concatenate([t[u] for t in tops]))
            new = new[valid[u, new]]
            merged = {
                p: np.concatenate([self.values[u].get(p, np.zeros(0, np.float32)), v[u, new]])
                for p, v in parts.items()
            }
            cols = np.concatenate([self.columns[u], new + start])
            final = self._union_top(merged, cols)
            self.columns[u] = cols[final]
            self.values[u] = {p: v[final].astype(np.float32) for p, v in merged.items()}

    def _chunk_top(self, values: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """(U, C) -> (U, min(size, C)) positions of each row's largest valid values."""
        if values.shape[1] <= self.size:
            return np.broadcast_to(np.arange(values.shape[1]), values.shape)
        v = np.where(valid, np.nan_to_num(values, nan=-np.inf), -np.inf)
        return np.argpartition(-v, self.size - 1, axis=1)[:, : self.size]

    def _union_top(self, rows: Mapping[str, np.ndarray], columns: np.ndarray) -> np.ndarray:
        """Sorted positions in the top ``size`` of some part (ties to the lower column)."""
        if len(columns) <= self.size:
            return np.argsort(columns, kind="stable")
        picked = [
            np.lexsort((columns, -np.nan_to_num(v, nan=-np.inf)))[: self.size]
            for v in rows.values()
        ]
        chosen = np.unique(np.concatenate(picked))
        return chosen[np.argsort(columns[chosen], kind="stable")]

    def labelled(self, heldout: sp.spmatrix) -> tuple[list, list, np.ndarray]:
        """(parts_per_user, heldout_per_user, n_heldout) for :func:`fit_weights`, with
        ``heldout`` (U, n_db) the users' held-out tracks."""
        heldout = sp.csr_matrix(heldout)
        n_heldout = np.diff(heldout.indptr)
        marks = []
        for u, cols in enumerate(self.columns):
            held = heldout.indices[heldout.indptr[u] : heldout.indptr[u + 1]]
            marks.append(np.isin(cols, held))
        return self.values, marks, n_heldout


def _dense_bool(x) -> np.ndarray:
    return (x.toarray() if sp.issparse(x) else np.asarray(x)) != 0


# -------------------------------------------------------------------------------- fit weights
class _PoolRanker:
    """NDCG@k of any weight vector over padded per-user candidate pools."""

    def __init__(self, parts_per_user, heldout_per_user, n_heldout, k: int) -> None:
        n_max = max(len(h) for h in heldout_per_user)
        n = len(heldout_per_user)
        self.parts = {p: np.zeros((n, n_max)) for p in PARTS}
        self.offset = np.full((n, n_max), -np.inf)  # padding never ranks
        self.hits = np.zeros((n, n_max), bool)
        for u, (parts, held) in enumerate(zip(parts_per_user, heldout_per_user, strict=True)):
            for p, v in parts.items():
                self.parts[p][u, : len(v)] = np.nan_to_num(v, nan=0.0)
            self.offset[u, : len(held)] = 0.0
            self.hits[u, : len(held)] = held
        self.k = min(k, n_max)
        self.discount = 1.0 / np.log2(np.arange(2, self.k + 2))
        rel = np.minimum(np.asarray(n_heldout), self.k)
        self.idcg = np.array([self.discount[:r].sum() for r in rel])

    def ndcg(self, w: Mapping[str, float]) -> float:
        return float(np.mean(self.per_user(w)))

    def per_user(self, w: Mapping[str, float]) -> np.ndarray:
        """(n_users,) NDCG@k of each user's pool ranked by ``w``."""
        scores = self.offset + sum(w[p] * self.parts[p] for p in PARTS if w[p] > 0)
        top = np.argpartition(-scores, self.k - 1, axis=1)[:, : self.k]
        order = np.argsort(-np.take_along_axis(scores, top, 1), axis=1, kind="stable")
        ranked = np.take_along_axis(top, order, 1)
        gains = np.take_along_axis(self.hits, ranked, 1) @ self.discount
        return np.divide(gains, self.idcg, out=np.zeros_like(gains), where=self.idcg > 0)


def paired_gain(new: np.ndarray, old: np.ndarray) -> tuple[float, float]:
    """Per-user scores of two rankings of the same users -> (mean gain, its standard error)."""
    diff = np.asarray(new, np.float64) - np.asarray(old, np.float64)
    se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("inf")
    return float(diff.mean()) if len(diff) else 0.0, se


def gain_is_real(gain: float, se: float, min_gain: float, z: float) -> bool:
    """Replace the prior only for a gain of at least ``min_gain`` and ``z`` standard errors:
    with few validation users an in-sample fit gains by chance (the shrinkage to the prior)."""
    return gain >= min_gain and gain >= z * se


def _ascend(ranker: _PoolRanker, start: dict[str, float], grid, passes: int):
    """Coordinate ascent: parts in PARTS order, grid in order, accept gains > 1e-6."""
    w, best, n_passes = dict(start), ranker.ndcg(start), 0
    for _ in range(passes):
        n_passes += 1
        moved = False
        for p in PARTS:
            for g in grid:
                if g != w[p] and (v := ranker.ndcg(w | {p: g})) > best + 1e-6:
                    w, best, moved = w | {p: g}, v, True
        if not moved:
            break
    return w, best, n_passes


def _ranker(parts_per_user, heldout_per_user, n_heldout, k: int) -> _PoolRanker | None:
    """The ranker over the users with held-out tracks and a non-empty pool (None: no user)."""
    marks = [np.asarray(h, bool) for h in heldout_per_user]
    counts = np.array([m.sum() for m in marks] if n_heldout is None else n_heldout)
    keep = [u for u in range(len(marks)) if counts[u] > 0 and len(marks[u]) > 0]
    if not keep:
        return None
    return _PoolRanker([parts_per_user[u] for u in keep], [marks[u] for u in keep], counts[keep], k)


def pool_ndcg(
    parts_per_user: Sequence[Mapping[str, np.ndarray]],
    heldout_per_user: Sequence[np.ndarray],
    n_heldout: Sequence[int] | None,
    weights: HybridWeights,
    k: int = 100,
) -> np.ndarray:
    """Per-user NDCG@k of ``weights`` over the pools of :func:`fit_weights` (the users it
    keeps, in order): (n_kept,) float64, empty without such a user."""
    ranker = _ranker(parts_per_user, heldout_per_user, n_heldout, k)
    return np.zeros(0) if ranker is None else ranker.per_user(weights.to_dict())


def fit_weights(
    parts_per_user: Sequence[Mapping[str, np.ndarray]],
    heldout_per_user: Sequence[np.ndarray],
    n_heldout: Sequence[int] | None = None,
    *,
    default: HybridWeights = DEFAULT_WEIGHTS,
    grid: Sequence[float] = GRID,
    passes: int = 3,
    min_users: int = 20,
    min_gain: float = 0.005,
    z: float = 0.0,
    k: int = 100,
) -> tuple[HybridWeights, dict]:
    """Weights maximising mean NDCG@k over validation users' candidate pools.

    Per user: part -> (n_u,) values over the pool, (n_u,) bool held-out marks, and the number
    of held-out tracks (default: the marks' sum; pass the true count when some fall outside
    the pool, so that they count as misses). Users without held-out tracks are dropped.
    Deterministic coordinate ascent from ``default`` over ``grid``; returns ``default`` when
    fewer than ``min_users`` users, or when the fit's mean per-user gain over it is below
    ``min_gain`` or below ``z`` standard errors of that gain (:func:`gain_is_real`)."""
    ranker = _ranker(parts_per_user, heldout_per_user, n_heldout, k)
    n_users = 0 if ranker is None else len(ranker.idcg)
    report: dict = {"n_users": n_users, "grid": list(grid), "default": default.to_dict()}
    if ranker is None or n_users < min_users:
        report |= {"used": "default", "reason": f"{n_users} validation users < {min_users}"}
        return default, report
    start = default.to_dict()
    fitted, best, n_passes = _ascend(ranker, start, grid, passes)
    base = ranker.ndcg(start)
    gain, se = paired_gain(ranker.per_user(fitted), ranker.per_user(start))
    report |= {"default_ndcg": base, "fitted_ndcg": best, "fitted": fitted, "passes": n_passes,
               "gain_se": se}  # fmt: skip
    how = f"fit gains {gain:.4f} (se {se:.4f}; needs >= {min_gain} and >= {z:g} se)"
    if not gain_is_real(gain, se, min_gain, z):
        report |= {"used": "default", "reason": how}
        return default, report
    report |= {"used": "fitted", "reason": how}
    return HybridWeights(**fitted), report
