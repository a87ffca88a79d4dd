"""Ranking metrics over full-catalog top-k lists (binary relevance)."""

from __future__ import annotations

import numpy as np


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


def top_k_excluding(scores: np.ndarray, item_ids: np.ndarray, exclude: list[set[int]], k: int) -> list[list[str]]:
    """Top-k item ids per row of `scores` (users × items), skipping each row's excluded
    item indices (the user's training items)."""
    scores = scores.astype(np.float32, copy=True)
    for row, ex in enumerate(exclude):
        if ex:
            scores[row, list(ex)] = -np.inf
    k = min(k, scores.shape[1])
    part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    order = np.take_along_axis(part, np.argsort(-np.take_along_axis(scores, part, 1), axis=1), 1)
    return [list(item_ids[row]) for row in order]
