"""Item-to-item co-engagement: which items the same users engage with, as a sparse top-M
cosine neighbour table, and the features the ranker reads from it.

The ranker's strongest signal next to the retrieval score is how close a candidate is to
what the user engaged with just now; the table is built from the training positives,
versioned with the model, and queried with the user's live recent-items list (so it
adapts within a session as the query tower does).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from hyperrec.windows import RECENT_N


def recency_weights(half_life: float, n: int = RECENT_N) -> np.ndarray:
    """0.5^(position / half_life): the newest item weighs 1 (the query tower uses the same)."""
    return (0.5 ** (np.arange(n) / half_life)).astype(np.float32)


@dataclass
class CoEngagement:
    item_ids: np.ndarray  # catalog order (the candidate index's order)
    neighbours: sp.csr_matrix  # items × items cosine, top-M per row, no self-similarity
    counts: np.ndarray  # training positives per item
    categories: np.ndarray  # category code per item
    half_life: float = 5.0

    def __post_init__(self):
        # built once: both are read on every request
        self._position = {item: i for i, item in enumerate(self.item_ids)}
        n_cat = int(self.categories.max()) + 1 if len(self.categories) else 1
        self._category_onehot = sp.csr_matrix(
            (np.ones(len(self.categories), np.float32), (np.arange(len(self.categories)), self.categories)),
            shape=(len(self.categories), n_cat))

    @classmethod
    def fit(cls, pairs: pd.DataFrame, items: pd.DataFrame, top_m: int = 100, half_life: float = 5.0):
        """From (user_id, item_id) positives over the catalog `items` (item_id, category)."""
        item_ids = items["item_id"].astype(str).to_numpy()
        index = pd.Index(item_ids)
        cols = index.get_indexer(pairs["item_id"].astype(str))
        keep = cols >= 0
        rows = pd.factorize(pairs["user_id"].to_numpy()[keep])[0]
        X = sp.csr_matrix((np.ones(keep.sum(), np.float32), (rows, cols[keep])),
                          shape=(rows.max() + 1 if len(rows) else 0, len(item_ids)))
        X.data[:] = 1.0
        G = (X.T @ X).tocsr().astype(np.float32)
        counts = np.asarray(G.diagonal()).ravel()
        G.setdiag(0.0)
        G.eliminate_zeros()
        norm = np.sqrt(np.maximum(counts, 1e-9))
        G = sp.diags(1 / norm) @ G @ sp.diags(1 / norm)
        return cls(item_ids, _top_m(G.tocsr(), top_m), counts.astype(np.float32),
                   pd.factorize(items["category"].astype(str))[0].astype(np.int32), half_life)

    def history_matrix(self, recent: list[list[str]]) -> sp.csr_matrix:
        """Users × items, each row the recency weights of the user's known recent items
        (summing to 1)."""
        index = self._position
        w = recency_weights(self.half_life)
        rows, cols, vals = [], [], []
        for r, items in enumerate(recent):
            for pos, item in enumerate(list(items)[:RECENT_N]):
                if item in index:
                    rows.append(r)
                    cols.append(index[item])
                    vals.append(w[pos])
        H = sp.csr_matrix((np.asarray(vals, np.float32), (rows, cols)), shape=(len(recent), len(self.item_ids)))
        total = np.asarray(H.sum(axis=1)).ravel()
        return sp.diags(1 / np.maximum(total, 1e-9)) @ H

    def features(self, recent: list[list[str]], candidates: np.ndarray) -> dict[str, np.ndarray]:
        """Per (user, candidate) [n, C]: co-engagement with the recent items, the share of
        recent items in the candidate's category, the candidate's log count, and how many
        recent items are known (little history: lean on popularity)."""
        H = self.history_matrix(recent)
        known = np.log1p(np.diff(H.indptr)).astype(np.float32)
        # only the candidates' columns: never a dense users x catalog matrix
        rows = np.arange(len(candidates))[:, None]
        affinity = np.asarray((H @ self.neighbours).tocsr()[rows, candidates].todense())
        share = np.asarray((H @ self._category_onehot).todense())
        category_share = np.take_along_axis(share, self.categories[candidates], axis=1)
        return {"coengagement": affinity.astype(np.float32), "category_share": category_share.astype(np.float32),
                "item_log_count": np.log1p(self.counts[candidates]).astype(np.float32),
                "log_history_length": np.repeat(known[:, None], candidates.shape[1], axis=1)}

    def save(self, path: Path) -> None:
        n = self.neighbours
        np.savez(path, item_ids=self.item_ids.astype(str), data=n.data, indices=n.indices, indptr=n.indptr,
                 counts=self.counts, categories=self.categories, half_life=self.half_life)

    @classmethod
    def load(cls, path: Path) -> CoEngagement:
        with np.load(path, allow_pickle=False) as z:
            m = len(z["item_ids"])
            neighbours = sp.csr_matrix((z["data"], z["indices"], z["indptr"]), shape=(m, m))
            return cls(z["item_ids"].astype(str), neighbours, z["counts"], z["categories"], float(z["half_life"]))


def _top_m(S: sp.csr_matrix, m: int) -> sp.csr_matrix:
    """Keep each row's m largest entries."""
    rows, cols, vals = [], [], []
    for r in range(S.shape[0]):
        lo, hi = S.indptr[r], S.indptr[r + 1]
        if hi == lo:
            continue
        data, idx = S.data[lo:hi], S.indices[lo:hi]
        if hi - lo > m:
            top = np.argpartition(-data, m - 1)[:m]
            data, idx = data[top], idx[top]
        rows.append(np.full(len(idx), r))
        cols.append(idx)
        vals.append(data)
    if not rows:
        return sp.csr_matrix(S.shape, dtype=np.float32)
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=S.shape)
