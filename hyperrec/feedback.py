"""The feedback query: the user's last days of reactions, applied to the query embedding.

The query tower pools the user's recent engaged items, but it was trained on histories
where tastes hold still and it knows nothing of what the user was shown and passed over.
When a taste moves, the user keeps being shown what they used to like, looks at it and
leaves it: that is the first and most plentiful evidence of the change (in the demo, about
seven passed-over views a day per click). So before retrieval the query moves toward the
items the user engaged with in the last `window_s` and away from those they viewed there
and did not engage with (Rocchio's relevance feedback, on the model's own item
embeddings), keeping its norm (the model's temperature).

Engaged and passed-over items pull with equal weight: for a user whose taste holds, what
they click and what they pass over come from the same lists and largely cancel; for one
whose taste moved, the passed-over items are the old favourites. Measured in `make demo`
(same seed; hidden click probability of the top 5 shown; drifted / other users after the
retrained model was promoted): off 0.048 / 0.205 and 0.048 / 0.191 (two runs); weights
0.5 / 0.5, the default, 0.068 / 0.199 and 0.065 / 0.188 (two runs; others before the
drift 0.178 and 0.182 against 0.183 and 0.185 off); 1 / 1 0.077 / 0.205 but 0.171 before
the drift; 1 / 0.5 0.073 / 0.188 (README, *What helps: the passed-over views*). The lift
of the real-time features it belongs to (the demo's `full` minus `no-realtime` arm, lists
with a click) went from +0.004 and +0.011 (Holm p 0.86, 0.65) to +0.037 and +0.044
(p 0.003, 0.0003). `python -m serving --feedback off` serves without it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hyperrec.features import REQUEST_TS

FEEDBACK_INPUTS = ("recent_items_ts", "recent_views", "recent_views_ts")  # besides recent_items and REQUEST_TS


@dataclass(frozen=True)
class FeedbackConfig:
    window_s: int = 2 * 86_400  # reactions older than this are left to the tower and the next retrain
    engaged_weight: float = 0.5
    skipped_weight: float = 0.5  # equal: see the module docstring


def reacted(rows, cfg: FeedbackConfig) -> tuple[list[list[str]], list[list[str]]]:
    """Per row: (items engaged with inside the window, items viewed there and not engaged
    with there), each deduplicated, newest first."""
    engaged_out, skipped_out = [], []
    for now, items, items_ts, views, views_ts in zip(rows[REQUEST_TS], rows["recent_items"], rows["recent_items_ts"],
                                                     rows["recent_views"], rows["recent_views_ts"]):
        since = now - cfg.window_s
        engaged = list(dict.fromkeys(i for i, t in zip(items, items_ts) if t >= since))
        taken = set(engaged)
        skipped = list(dict.fromkeys(v for v, t in zip(views, views_ts) if t >= since and v not in taken))
        engaged_out.append(engaged)
        skipped_out.append(skipped)
    return engaged_out, skipped_out


def feedback_queries(queries: np.ndarray, rows, item_index: dict[str, int], item_embeddings: np.ndarray,
                     cfg: FeedbackConfig) -> np.ndarray:
    """`queries` moved by each row's recent reactions (rows: the user-tower columns of the
    same requests, with recent_items(_ts), recent_views(_ts) and REQUEST_TS). Rows with no
    reaction in the window keep their query exactly."""
    engaged, skipped = reacted(rows, cfg)
    norms = np.linalg.norm(queries, axis=1, keepdims=True)
    unit = queries / np.maximum(norms, 1e-12)
    shift = np.zeros_like(unit)
    moved = np.zeros(len(queries), bool)
    for row, (plus, minus) in enumerate(zip(engaged, skipped)):
        plus = [item_index[i] for i in plus if i in item_index]
        minus = [item_index[i] for i in minus if i in item_index]
        if plus:
            shift[row] += cfg.engaged_weight * item_embeddings[plus].mean(axis=0)
        if minus:
            shift[row] -= cfg.skipped_weight * item_embeddings[minus].mean(axis=0)
        moved[row] = bool(plus or minus)
    if not moved.any():
        return queries
    adjusted = unit + shift
    adjusted *= norms / np.maximum(np.linalg.norm(adjusted, axis=1, keepdims=True), 1e-12)
    return np.where(moved[:, None], adjusted, queries).astype(queries.dtype)
