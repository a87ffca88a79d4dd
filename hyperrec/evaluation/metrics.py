"""Ranking metrics over full-catalog top-k lists (binary relevance)."""

from __future__ import annotations

import numpy as np
import pandas as pd


def recall_at_k(ranked: list[list[str]], relevant: list[set[str]], k: int) -> float:
    """Mean over users of |top-k ∩ relevant| / min(k, |relevant|) (users with no relevant skipped)."""
    scores = [len(set(r[:k]) & rel) / min(k, len(rel)) for r, rel in zip(ranked, relevant) if rel]
    return float(np.mean(scores)) if scores else 0.0


def ndcg_at_k(ranked: list[list[str]], relevant: list[set[str]], k: int) -> float:
    """Mean NDCG@k with binary gains; the ideal puts all relevant items first."""
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    scores = []
    for r, rel in zip(ranked, relevant):
        if not rel:
            continue
        gains = np.array([item in rel for item in r[:k]], dtype=float)
        ideal = discounts[: min(k, len(rel))].sum()
        scores.append(float(gains @ discounts[: len(gains)]) / ideal)
    return float(np.mean(scores)) if scores else 0.0


def top_k_indices(scores: np.ndarray, exclude: list[set[int]], k: int) -> np.ndarray:
    """[users, k] column positions of each row's k best scores, best first, skipping each
    row's excluded positions (the user's training items)."""
    scores = scores.astype(np.float32, copy=True)
    for row, ex in enumerate(exclude):
        if ex:
            scores[row, list(ex)] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    return np.take_along_axis(part, np.argsort(-np.take_along_axis(scores, part, 1), axis=1), 1)


def top_k_excluding(scores: np.ndarray, item_ids: np.ndarray, exclude: list[set[int]], k: int) -> list[list[str]]:
    """Top-k item ids per row of `scores` (users × items), excluded positions skipped."""
    return [list(item_ids[row]) for row in top_k_indices(scores, exclude, k)]


def list_metrics(ranked: list[list[str]], relevant: list[set[str]], k: int, prefix: str = "") -> dict[str, float]:
    """{prefix}recall_at_{k} and {prefix}ndcg_at_10: the pair every evaluation reports."""
    return {f"{prefix}recall_at_{k}": recall_at_k(ranked, relevant, k),
            f"{prefix}ndcg_at_10": ndcg_at_k(ranked, relevant, 10)}


def popular_excluding(pairs: pd.DataFrame, item_ids: np.ndarray, exclude: list[set[int]], k: int) -> list[list[str]]:
    """The items most engaged with in `pairs` for every user, each user's excluded positions
    skipped: the popularity baseline next to any model."""
    counts = pairs["item_id"].value_counts().reindex(item_ids).fillna(0).to_numpy(np.float32)
    return top_k_excluding(np.broadcast_to(counts, (len(exclude), len(counts))), item_ids, exclude, k)


def coverage(ranked: list[list[str]], catalog_size: int) -> float:
    """Share of the catalog that appears in at least one user's list."""
    return len({i for r in ranked for i in r}) / max(catalog_size, 1)


def intra_list_diversity(ranked: list[list[str]], category: pd.Series) -> float:
    """Mean over lists of the share of item pairs from different categories (0: every list
    one category; 1: all different). `category` is indexed by item id."""
    scores = []
    for r in ranked:
        cats = category.reindex(r).to_numpy()
        n = len(cats)
        if n < 2:
            continue
        same = sum(int((cats[i] == cats[i + 1:]).sum()) for i in range(n - 1))
        scores.append(1.0 - same / (n * (n - 1) / 2))
    return float(np.mean(scores)) if scores else 0.0
