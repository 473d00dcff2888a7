"""The one top-k of the package: the k best entries of each row, highest score first and, among
equal scores, lowest id first (the id is the column unless given), so that a result never
depends on chunk sizes, block sizes or the sort algorithm.

:func:`top_k` ranks a dense (rows, n) block (the ranking metrics use it with the column as id);
:class:`StreamingTopK` keeps the k best of a stream of (row, id, score) candidates in memory set
by k and the largest push, whatever the length of the stream (discovery's database scan uses it
with database rows as ids).
"""

from __future__ import annotations

import numpy as np

_NO_ID = np.iinfo(np.int64).max  # id of an empty slot: sorts after every real id


def top_k(scores: np.ndarray, k: int, ids: np.ndarray | None = None) -> np.ndarray:
    """Column indices of the k best entries per row, best first: (rows, n) -> (rows, min(k, n)).

    Order: score descending, then ``ids`` ascending (``ids``: (rows, n) int, unique within a
    row; default the column index). -inf scores rank last; NaN is refused.
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be 2-d (rows, n), got shape {scores.shape}")
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    n_rows, n = scores.shape
    k = min(int(k), n)
    if k == 0 or n_rows == 0:
        return np.empty((n_rows, k), dtype=np.int64)
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN; cannot rank them (check the model's outputs)")
    key = np.broadcast_to(np.arange(n), scores.shape) if ids is None else np.asarray(ids)
    cols = _unordered(scores, k, key)
    best = np.take_along_axis(scores, cols, axis=1)
    best_ids = np.take_along_axis(key, cols, axis=1)
    order = np.lexsort((best_ids, -best), axis=-1)
    return np.take_along_axis(cols, order, axis=1)


def _unordered(scores: np.ndarray, k: int, key: np.ndarray) -> np.ndarray:
    """(rows, k) columns of each row's k best entries in no particular order: all above the
    k-th largest score, then the lowest-``key`` entries equal to it (k <= n)."""
    n_rows, n = scores.shape
    if k == n:
        return np.broadcast_to(np.arange(n), scores.shape)
    cols = np.argpartition(scores, n - k, axis=1)[:, n - k :]  # its first: the k-th largest
    kth = np.take_along_axis(scores, cols[:, :1], axis=1)  # (rows, 1)
    # a tie across the cut is settled by key; argpartition settles it arbitrarily
    kept = np.take_along_axis(scores, cols, axis=1)
    left = (scores == kth).sum(axis=1) > (kept == kth).sum(axis=1)  # a tied entry left out
    for r in np.flatnonzero(left):
        above = np.flatnonzero(scores[r] > kth[r])
        tied = np.flatnonzero(scores[r] == kth[r])
        tied = tied[np.argsort(key[r, tied], kind="stable")[: k - len(above)]]
        cols[r] = np.concatenate([above, tied])
    return cols


class StreamingTopK:
    """The k best (id, score) pairs of each of ``n_rows`` rows over a stream of candidates.

    Memory: two (n_rows, width) buffers (float64 scores, int64 ids; width = 2k + 1024 unless
    given), whatever the length of the stream. Push ids in increasing order over the stream
    (the scan pushes database rows in file order). Then ``threshold`` (n_rows,), the k-th best
    score kept so far (-inf until a row has k), is a bar a candidate must beat: the k kept are
    at least as good and, on a tie, have lower ids. With ``ordered=False`` ids may come in any
    order, and a candidate equal to the bar is kept too (its id may be the lower).

    ``floor`` (n_rows,) drops candidates below it: either a known lower bound of a row's final
    k-th best score, or a guess that the caller checks afterwards (a row that ends with fewer
    than k entries may have lost some to a floor set too high).
    """

    def __init__(self, n_rows: int, k: int, width: int | None = None, ordered: bool = True) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = int(k)
        width = 2 * self.k + 1024 if width is None else int(width)
        if width <= self.k:
            raise ValueError(f"width must be more than k ({self.k}), got {width}")
        self.scores = np.full((n_rows, width), -np.inf)
        self.ids = np.full((n_rows, width), _NO_ID, dtype=np.int64)
        self.fill = np.zeros(n_rows, dtype=np.int64)
        self.threshold = np.full(n_rows, -np.inf)
        self.floor = np.full(n_rows, -np.inf)
        self.ordered = ordered

    def raise_floor(self, floor: np.ndarray) -> None:
        """Drop candidates scoring below ``floor`` (n_rows,) from now on (see the class doc)."""
        self.floor = np.maximum(self.floor, np.asarray(floor, dtype=np.float64))

    def push(self, rows: np.ndarray, ids: np.ndarray, scores: np.ndarray) -> None:
        """Add candidates: row (sorted ascending), id and score, each (K,)."""
        rows = np.asarray(rows, dtype=np.int64)
        scores = np.asarray(scores, dtype=np.float64)
        bar = self.threshold[rows]
        keep = (scores > bar) if self.ordered else (scores >= bar) & (scores > -np.inf)
        keep &= scores >= self.floor[rows]
        rows, ids, scores = rows[keep], np.asarray(ids, dtype=np.int64)[keep], scores[keep]
        if len(rows) == 0:
            return
        counts = np.bincount(rows, minlength=len(self.fill))
        width = self.scores.shape[1]
        if (self.fill + counts > width).any():
            # with the full rows, those past half their room: rows of one stream fill at
            # about the same pace, and one compaction of many rows costs about one of few
            self._compact(np.flatnonzero(self.fill + counts > width - (width - self.k) // 2))
            if (self.fill + counts > self.scores.shape[1]).any():  # more than the room: halves
                half = len(rows) // 2
                self.push(rows[:half], ids[:half], scores[:half])
                self.push(rows[half:], ids[half:], scores[half:])
                return
        first = np.cumsum(counts) - counts  # position of each row's first candidate in `rows`
        # flat buffer index of each candidate: its row's next free slot plus its place among
        # the row's candidates (one gather; a 2-d scatter takes twice as long)
        base = np.arange(len(self.fill), dtype=np.int64) * width + self.fill - first
        at = base[rows] + np.arange(len(rows))
        np.put(self.scores, at, scores)
        np.put(self.ids, at, ids)
        self.fill += counts

    def settle(self, rows: np.ndarray) -> None:
        """Keep only the k best of each of ``rows`` now, so that ``threshold`` is their k-th
        best (it is otherwise raised only when a row's buffer fills)."""
        self._compact(np.asarray(rows, dtype=np.int64))

    def _compact(self, rows: np.ndarray) -> None:
        """Keep only the k best of each of ``rows`` (in no order: a sort of them would take
        4x the time) and raise their thresholds. A row with fewer than k has nothing to drop
        and keeps the bar -inf."""
        rows = rows[self.fill[rows] >= self.k]
        if len(rows) == 0:
            return
        width = int(self.fill[rows].max())
        scores, ids = self.scores[rows, :width], self.ids[rows, :width]
        cols = _unordered(scores, self.k, ids)  # every kept entry is a real one: >= k filled
        kept_scores = np.take_along_axis(scores, cols, axis=1)
        kept_ids = np.take_along_axis(ids, cols, axis=1)
        self.scores[rows, :width] = -np.inf
        self.ids[rows, :width] = _NO_ID
        self.scores[rows, : self.k] = kept_scores
        self.ids[rows, : self.k] = kept_ids
        self.fill[rows] = self.k
        self.threshold[rows] = kept_scores.min(axis=1)  # the k-th best

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids, scores), each (n_rows, k), best first; a row with fewer than k candidates is
        padded with id -1 and score -inf."""
        kept_scores, kept_ids = self._best(slice(None))  # the buffers left as they are
        out_scores = np.full((len(self.fill), self.k), -np.inf)
        out_ids = np.full((len(self.fill), self.k), -1, dtype=np.int64)
        out_scores[:, : kept_scores.shape[1]] = kept_scores
        out_ids[:, : kept_ids.shape[1]] = kept_ids
        out_ids[~np.isfinite(out_scores)] = -1
        return out_ids, out_scores

    def _best(self, rows: np.ndarray | slice) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the up to k best kept entries of ``rows``, best first."""
        width = max(int(self.fill[rows].max(initial=0)), 1)
        scores, ids = self.scores[rows, :width], self.ids[rows, :width]  # a slice: views
        cols = top_k(scores, self.k, ids)  # empty slots are -inf: they come last
        return np.take_along_axis(scores, cols, axis=1), np.take_along_axis(ids, cols, axis=1)
