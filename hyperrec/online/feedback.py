"""The user's last days of reactions, applied three times: to the query embedding before
retrieval (the feedback query) and to the candidates' logits after ranking (re-scoring by
embedding similarity, then by words).

The query tower pools the user's recent engaged items, but it was trained on histories
where tastes hold still and it knows nothing of what the user was shown and passed over.
When a taste moves, the user keeps being shown what they used to like, looks at it and
leaves it: that is the first and most plentiful evidence of the change (in the demo, about
seven passed-over views a day per click). So before retrieval the query moves (Rocchio's
relevance feedback, on the model's own item embeddings, keeping the query's norm, which
is the model's temperature) by three kinds of reaction inside `window_s`:
- toward the items the user engaged with (click, cart, purchase, rating), weight 0.5;
- toward the items the user found alone: viewed outside any served list (no request_id:
  search, browsing), weight 0.5. Choosing to look at an item says what the user wants now;
- away from the list slots the user viewed and passed over, weight 1.0.

Telling the last two apart is what `hyperrec.features.windows.RecentViews` is for: counting
every view without engagement as passed over pushed a drifted user's query back toward the
old taste whenever they searched for the new one. The weights and what they bought are in
docs/experiments.md (chosen in-sample, on demo end states).

After ranking, the same reactions re-score the candidates twice. `rescored`: each
candidate's cosine to the centroid of the n items engaged with or found alone in the
window, in units of its list's spread, is added to the ranker's logit in units of the
logit's spread, with weight `similarity_weight` x n / (n + `similarity_evidence`): a
centroid of one item is mostly noise, of a dozen a taste. The ranker learns from histories
where a taste holds still, so its features lag a change. `content_rescored`: a per-user
logistic model of took (engaged, found) against left (passed over) on the items' bags of
words (`hyperrec.models.content`), its first gradient step on the window's reactions; the
words carry an item's taste from its first day, the embeddings only after enough clicks.

Inside the window, newer reactions pull harder (`half_life_s`, 12 h): the feedback query's
three means and the re-scoring's centroid weigh each reaction by 0.5 ** (age / half-life),
so after a taste moves, the items found and engaged with since set the direction within
hours instead of a 4-day mean of mostly old tastes. The `no-recency` ablation arm weighs
them alike, which measures it.

What each stage and the 4-day window bought, offline and in `make demo`, is in
docs/realtime.md and docs/experiments.md.

`python -m serving --feedback off` serves without any of the three.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hyperrec.features.views import REQUEST_TS
from hyperrec.models.content import ContentTokens

# besides recent_items and REQUEST_TS
FEEDBACK_INPUTS = ("recent_items_ts", "recent_views", "recent_views_ts", "recent_browsed", "recent_browsed_ts")


@dataclass(frozen=True)
class FeedbackConfig:
    window_s: int = 4 * 86_400  # reactions older than this are left to the tower and the next retrain
    # Inside the window, a reaction's pull on the direction of the feedback query and of the
    # re-scoring centroid halves every `half_life_s` of its age (None: all count the same):
    # after a taste moves, the newest reactions say where it went, while a 4-day mean of
    # equals is mostly the old taste for days. The evidence that scales the re-scoring stays
    # the count of reactions. Off for the `no-recency` ablation arm (RerankConfig.recency).
    half_life_s: float | None = 12 * 3_600
    engaged_weight: float = 0.5
    skipped_weight: float = 1.0
    browsed_weight: float = 0.5
    similarity_weight: float = 2.0  # the re-scoring after ranking, at full evidence (0: none)
    similarity_evidence: int = 8  # reactions in the window at which it is half that
    content_weight: float = 1.0  # the words re-scoring after that, at full evidence (0: none)
    content_evidence: int = 16  # reactions (engaged, found and passed over) at which it is half that


@dataclass
class Reactions:
    """Per row, each deduplicated and newest first, inside the window: items engaged with,
    list slots viewed and passed over, items found alone (viewed without a list) and not
    engaged with."""

    engaged: list[list[str]]
    skipped: list[list[str]]
    browsed: list[list[str]]
    # per kind, per row, each item's recency weight (FeedbackConfig.half_life_s); None: all 1
    weights: dict[str, list[list[float]]] | None = None
    _cache: dict = field(default_factory=dict, repr=False, compare=False)

    def _looked_up(self, kind: str, item_index: dict[str, int]) -> tuple[list[list[int]], list[list[float]] | None]:
        key = ("positions", kind)
        if key not in self._cache:
            rows = getattr(self, kind)
            weights = self.weights[kind] if self.weights is not None else [[1.0] * len(items) for items in rows]
            found = [[(at, w) for item, w in zip(items, ws) if (at := item_index.get(item)) is not None]
                     for items, ws in zip(rows, weights)]
            self._cache[key] = ([[at for at, _ in row] for row in found],
                                [[w for _, w in row] for row in found] if self.weights is not None else None)
        return self._cache[key]

    def positions(self, kind: str, item_index: dict[str, int]) -> list[list[int]]:
        """Per row, the catalog positions of the items of one kind ("engaged", "skipped",
        "browsed") that the catalog knows, looked up once for all three stages. One
        Reactions object serves one batch on one model's catalog."""
        return self._looked_up(kind, item_index)[0]

    def sums(self, kind: str, item_index: dict[str, int], item_embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`embedding_sums` of one kind, computed once: the feedback query and the re-scoring
        both read the engaged and found items' sums."""
        key = ("sums", kind)
        if key not in self._cache:
            self._cache[key] = embedding_sums(self.positions(kind, item_index), item_embeddings)
        return self._cache[key]

    def weighted_sums(self, kind: str, item_index: dict[str, int],
                      item_embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per row, the recency-weighted sum of one kind's embeddings and the sum of the
        weights (`sums` when there are no weights)."""
        positions, weights = self._looked_up(kind, item_index)
        if weights is None:
            return self.sums(kind, item_index, item_embeddings)
        key = ("weighted_sums", kind)
        if key not in self._cache:
            self._cache[key] = embedding_sums(positions, item_embeddings, weights)
        return self._cache[key]


def _inside(items, times, since: int, taken: set) -> tuple[list[str], list[float]]:
    """The items at or after `since` and not in `taken`, deduplicated (the first time each
    appears: the newest), with those times."""
    newest: dict[str, float] = {}
    for i, t in zip(items, times):
        if t >= since and i not in taken and i not in newest:
            newest[i] = float(t)
    return list(newest), list(newest.values())


def _decay(now: float, times: list[float], half_life_s: float) -> list[float]:
    return [0.5 ** (max(now - t, 0.0) / half_life_s) for t in times]


def reacted(rows, cfg: FeedbackConfig, half_life_s=None) -> Reactions:
    """The reactions of each row (user-tower columns with FEEDBACK_INPUTS and REQUEST_TS).
    `half_life_s`: per row (np.inf: no decay for that row), default `cfg.half_life_s` for
    every row; with none, the reactions carry no weights."""
    n = len(rows[REQUEST_TS])
    if half_life_s is None:
        half_life_s = np.full(n, cfg.half_life_s if cfg.half_life_s else np.inf)
    half_life_s = np.broadcast_to(np.asarray(half_life_s, float), (n,))
    weighted = bool(np.isfinite(half_life_s).any())
    out = Reactions([], [], [], {"engaged": [], "skipped": [], "browsed": []} if weighted else None)
    for now, items, items_ts, views, views_ts, browsed, browsed_ts, half_life in zip(
            rows[REQUEST_TS], rows["recent_items"], rows["recent_items_ts"], rows["recent_views"],
            rows["recent_views_ts"], rows["recent_browsed"], rows["recent_browsed_ts"], half_life_s):
        since = now - cfg.window_s
        engaged, engaged_ts = _inside(items, items_ts, since, set())
        skipped, skipped_ts = _inside(views, views_ts, since, set(engaged))
        found, found_ts = _inside(browsed, browsed_ts, since, set(engaged))
        out.engaged.append(engaged)
        out.skipped.append(skipped)
        out.browsed.append(found)
        if weighted:
            for kind, times in (("engaged", engaged_ts), ("skipped", skipped_ts), ("browsed", found_ts)):
                out.weights[kind].append(_decay(float(now), times, half_life) if np.isfinite(half_life)
                                         else [1.0] * len(times))
    return out


def feedback_queries(queries: np.ndarray, rows, item_index: dict[str, int], item_embeddings: np.ndarray,
                     cfg: FeedbackConfig, reactions: Reactions | None = None) -> np.ndarray:
    """`queries` moved by each row's recent reactions (rows: the user-tower columns of the
    same requests, with FEEDBACK_INPUTS, recent_items and REQUEST_TS; or `reactions`, already
    read from them). Rows with no reaction in the window keep their query exactly."""
    reactions = reactions if reactions is not None else reacted(rows, cfg)
    pulls = (("engaged", cfg.engaged_weight), ("skipped", -cfg.skipped_weight), ("browsed", cfg.browsed_weight))
    norms = np.linalg.norm(queries, axis=1, keepdims=True)
    unit = queries / np.maximum(norms, 1e-12)
    shift = np.zeros_like(unit)
    moved = np.zeros(len(queries), bool)
    for kind, weight in pulls:
        if weight:
            sums, mass = reactions.weighted_sums(kind, item_index, item_embeddings)
            shift += weight * sums / np.where(mass > 0, mass, 1.0)[:, None]
            moved |= mass > 0
    if not moved.any():
        return queries
    adjusted = unit + shift
    adjusted *= norms / np.maximum(np.linalg.norm(adjusted, axis=1, keepdims=True), 1e-12)
    return np.where(moved[:, None], adjusted, queries).astype(queries.dtype)


def rescored(logits: np.ndarray, candidates: np.ndarray, reactions: Reactions, item_index: dict[str, int],
             item_embeddings: np.ndarray, cfg: FeedbackConfig) -> np.ndarray:
    """Ranker `logits` [B, C] of `candidates` (catalog positions, -1 padded: logit -inf) plus,
    per row with n > 0 items engaged with or found alone in the window, `similarity_weight`
    x n / (n + `similarity_evidence`) x std(row's logits) x the z-score of each candidate's
    cosine to those items' centroid (item embeddings are unit vectors). Other rows, and
    padding, are returned unchanged; the logits keep their scale (MMR and the exploration
    features read it)."""
    out = logits.copy()
    if not cfg.similarity_weight:
        return out
    _, n_engaged = reactions.sums("engaged", item_index, item_embeddings)
    _, n_browsed = reactions.sums("browsed", item_index, item_embeddings)
    evidence = n_engaged + n_browsed  # a count, whatever the recency weights
    engaged, w_engaged = reactions.weighted_sums("engaged", item_index, item_embeddings)
    browsed, w_browsed = reactions.weighted_sums("browsed", item_index, item_embeddings)
    mass = w_engaged + w_browsed
    centroids = (engaged + browsed) / np.where(mass > 0, mass, 1.0)[:, None]
    valid = candidates >= 0
    rows = np.flatnonzero((evidence > 0) & (valid.sum(axis=1) >= 2))
    if not len(rows):
        return out
    valid = valid[rows]
    gathered = item_embeddings[np.maximum(candidates[rows], 0)]  # [R, C, D]
    cosine = np.matmul(gathered, centroids[rows].astype(gathered.dtype)[:, :, None])[:, :, 0]
    cos_mean, cos_std = _moments(cosine, valid)
    _, logit_std = _moments(np.where(valid, logits[rows], 0.0), valid)
    weight = cfg.similarity_weight * evidence[rows] / (evidence[rows] + cfg.similarity_evidence)
    step = (weight * logit_std / np.where(cos_std > 0, cos_std, np.inf))[:, None] * (cosine - cos_mean[:, None])
    out[rows] += np.where(valid, step, 0.0)
    return out


def content_rescored(logits: np.ndarray, candidates: np.ndarray, reactions: Reactions, item_index: dict[str, int],
                     content: ContentTokens, cfg: FeedbackConfig) -> np.ndarray:
    """`logits` [B, C] plus, per row whose window has both kinds of reaction (took: engaged
    with or found alone, y = 1; left: passed over, y = 0), the first gradient step of a
    per-user logistic model of those n reactions on the items' unit bags of words
    (`hyperrec.models.content`), from the base rate p = (took + 1) / (n + 2): word weights
    x = Xᵀ(y - p), so a word of the items taken counts 1 - p, a word of the items left -p,
    and a candidate scores its words' weights. That score's z-score within the row, x
    std(row's logits) x `content_weight` x n / (n + `content_evidence`), is added. A full
    Newton step (ridge 1: (p(1-p) XᵀX + I)⁻¹ Xᵀ(y - p)) ranked the same offline (0.1808 vs
    0.1807) at three times the cost; fifteen steps, as one.

    Unlike `rescored` it learns from the passes too, and in words rather than the model's
    embeddings: a word shared by the items the user took and absent from those they left
    is what moved. One class alone gives no contrast (the similarity stage covers rows with
    positives only). Other rows, and padding, are returned unchanged."""
    out = logits.copy()
    if not cfg.content_weight:
        return out
    valid = candidates >= 0
    fitted, evidence, positions, residuals, owner = [], [], [], [], []
    for row in range(len(logits)):
        took = reactions.positions("engaged", item_index)[row] + reactions.positions("browsed", item_index)[row]
        left = reactions.positions("skipped", item_index)[row]
        if took and left and valid[row].sum() >= 2:
            p = (len(took) + 1) / (len(took) + len(left) + 2)
            owner += [len(fitted)] * (len(took) + len(left))
            fitted.append(row)
            evidence.append(len(took) + len(left))
            positions += took + left
            residuals += [1 - p] * len(took) + [-p] * len(left)
    if not fitted:
        return out
    rows, n = np.asarray(fitted), np.asarray(evidence, np.float64)
    weights = content.sums(np.asarray(owner), np.asarray(positions), np.asarray(residuals), len(rows))
    valid = valid[rows]
    score = content.dot(weights, np.where(valid, candidates[rows], -1))
    s_mean, s_std = _moments(score, valid)
    _, logit_std = _moments(np.where(valid, logits[rows], 0.0), valid)
    weight = cfg.content_weight * n / (n + cfg.content_evidence)
    step = (weight * logit_std / np.where(s_std > 1e-12, s_std, np.inf))[:, None] * (score - s_mean[:, None])
    out[rows] += np.where(valid, step, 0.0)
    return out


def embedding_sums(positions: list[list[int]], item_embeddings: np.ndarray,
                   weights: list[list[float]] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per row of `positions` (catalog positions), the sum of its items' embeddings and their
    count: one gather and one segment sum for the whole batch instead of a mean per row.
    With `weights` (aligned with `positions`): the weighted sum and the sum of the weights."""
    counts = np.array([len(p) for p in positions], np.int64)
    flat = [at for p in positions for at in p]
    sums = np.zeros((len(positions), item_embeddings.shape[1]), np.float64)
    mass = counts.astype(np.float64)
    if flat:  # rows come in order: one reduceat over each row's run of positions
        filled = np.flatnonzero(counts)
        starts = (np.cumsum(counts) - counts)[filled]
        gathered = item_embeddings[flat].astype(np.float64)
        if weights is not None:
            w = np.array([x for row in weights for x in row], np.float64)
            gathered *= w[:, None]
            mass = np.zeros(len(positions))
            mass[filled] = np.add.reduceat(w, starts)
        sums[filled] = np.add.reduceat(gathered, starts, axis=0)
    return sums, mass


def _moments(x: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the mean and standard deviation of its `valid` entries."""
    n = valid.sum(axis=1)
    mean = np.where(valid, x, 0.0).sum(axis=1) / n
    return mean, np.sqrt(np.where(valid, (x - mean[:, None]) ** 2, 0.0).sum(axis=1) / n)
