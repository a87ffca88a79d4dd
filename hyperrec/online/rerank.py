"""Re-ranking after the ranker: filters, MMR diversity, an exploration slot filled by a
contextual bandit, popular-in-context for users we must not (or cannot) personalize for,
and the "because you engaged with X" explanation.

Candidates are catalog positions (-1 pads a row when the catalog ran out) with ranker
scores (higher is better, -inf for padding). Plain numpy, written for a whole micro-batch
at once ([users, candidates] arrays): per-user numpy calls cost more in call overhead than
in arithmetic at serving batch sizes. The one-user functions (`mmr`, `rerank`, ...) are the
same code on a batch of one.

What the catalog gives once per model version (popularity order per category, category
codes) is a `CatalogIndex` the serving unit builds when it loads, so no request pays O(N).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from hyperrec.online.bandit import LinUCB

EXPLORATION_DIM = 5  # see exploration_features_batch
_EMPTY = np.zeros(0, np.int64)


@dataclass(frozen=True)
class RerankConfig:
    mmr_lambda: float = 0.85  # 1.0: pure relevance; lower trades relevance for diversity
    exploration_slot: int | None = 4  # 0-based position the bandit fills; None: no exploration
    exploration_pool: int = 50  # the bandit picks among ranked candidates below the top k, up to this rank
    realtime: bool = True  # False: the stream processor leaves this arm's users alone (batch features only)
    recency: bool = True  # False: the feedback stages weigh this arm's reactions alike (FeedbackConfig.half_life_s)


@dataclass
class Reranked:
    positions: np.ndarray  # [k'] catalog positions, in display order
    scores: np.ndarray  # [k'] their ranker scores
    explored_at: int = -1  # list index of the bandit's pick, -1 if none
    explored_x: np.ndarray | None = None  # its context vector, to credit the reward later


@dataclass(frozen=True)
class CatalogIndex:
    """Popularity and categories of one model version's catalog, indexed once."""

    popularity: np.ndarray  # [N] engagement counts
    order: np.ndarray  # all positions, most popular first (ties: lower position first)
    by_category: dict[str, np.ndarray]  # the same order, per category
    codes: np.ndarray  # [N] category as an integer, for vectorized same-category tests
    n_categories: int
    log_max_popularity: float  # log1p of the most popular item's count (at least log 2)

    @classmethod
    def build(cls, popularity: np.ndarray, categories: np.ndarray) -> CatalogIndex:
        popularity = np.asarray(popularity, np.float32)
        order = np.argsort(-popularity.astype(np.float64), kind="stable")
        names, codes = np.unique(np.asarray(categories).astype(str), return_inverse=True)
        grouped = order[np.argsort(codes[order], kind="stable")]  # stable: popularity order within a category
        bounds = np.cumsum(np.bincount(codes, minlength=len(names)))[:-1]
        top = float(popularity.max()) if len(popularity) else 0.0
        return cls(popularity, order, dict(zip(names.tolist(), np.split(grouped, bounds))), codes.reshape(-1),
                   len(names), float(np.log1p(max(top, 1.0))))


# --- filters and MMR -------------------------------------------------------------------

def filter_excluded(candidates: np.ndarray, scores: np.ndarray, exclude: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """Scores of excluded positions set to -inf (already bought, business filters), so
    every later step drops them like padding. The input scores are not modified."""
    if not exclude:
        return candidates, scores
    drop = np.fromiter((c in exclude for c in candidates.tolist()), bool, len(candidates))
    return candidates, np.where(drop, -np.inf, scores)


def _ranked(candidates: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(valid [B, C], order [B, C], n_valid [B]): usable candidates (not padding, finite
    score), and each row's indices best score first with the invalid ones last; ties keep
    retrieval order, so the result is deterministic."""
    valid = (candidates >= 0) & np.isfinite(scores)
    order = np.argsort(np.where(valid, -scores, np.inf), axis=1, kind="stable")
    return valid, order, valid.sum(axis=1)


def _relevance(scores: np.ndarray, valid: np.ndarray) -> np.ndarray:
    """Scores min-max scaled to [0, 1] over each row's valid candidates (1 when all equal),
    -inf where invalid."""
    s = scores.astype(np.float64)
    hi = np.where(valid, s, -np.inf).max(axis=1, keepdims=True)
    lo = np.where(valid, s, np.inf).min(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        span = hi - lo
        scaled = np.where(span > 0, (s - lo) / np.where(span > 0, span, 1.0), 1.0)
    return np.where(valid, scaled, -np.inf)


def _mmr_picks(candidates, scores, item_embeddings, k, lam, ranked) -> np.ndarray:
    """[B, k] greedy MMR picks as indices into each row's candidates, -1 past a row's
    valid ones. value = lam·relevance − (1−lam)·max_sim is kept directly: a new pick can
    only lower it (np.minimum), one batched similarity row per pick, never C×C."""
    valid, order, n_valid = ranked
    b, c = candidates.shape
    k = max(min(k, c), 0)
    if lam >= 1.0 or k <= 1:
        picks = order[:, :k].copy()
    else:
        rows = np.arange(b)
        relevance = lam * _relevance(scores, valid)
        emb = item_embeddings[np.where(candidates >= 0, candidates, 0)]  # [B, C, d]
        weight = np.float32(1.0 - lam)

        def similarity(picked):  # [B, C]: each candidate against the row's new pick
            return (emb @ emb[rows, picked][:, :, None])[:, :, 0]

        picks = np.empty((b, k), np.int64)
        picks[:, 0] = order[:, 0]  # the first pick is the most relevant: nothing to be similar to yet
        value = relevance - weight * similarity(picks[:, 0])
        value[rows, picks[:, 0]] = -np.inf  # picked: never again
        for i in range(1, k):
            picks[:, i] = value.argmax(axis=1)
            np.minimum(value, relevance - weight * similarity(picks[:, i]), out=value)
            value[rows, picks[:, i]] = -np.inf
    picks[np.arange(k)[None, :] >= n_valid[:, None]] = -1
    return picks


def mmr_batch(candidates: np.ndarray, scores: np.ndarray, item_embeddings: np.ndarray, k: int,
              lam: float) -> np.ndarray:
    """Greedy Maximal Marginal Relevance per row: each pick maximises
    lam·relevance − (1−lam)·(max cosine to the row's picks so far), relevance being the
    score min-max scaled over the row's valid candidates. Returns [B, k] indices into the
    rows (-1 when a row has fewer than k valid); lam = 1 is exactly the top k by score.
    Greedy MMR is prefix-consistent: the first j picks for k are the picks for j."""
    return _mmr_picks(candidates, scores, item_embeddings, k, lam, _ranked(candidates, scores))


def mmr(candidates: np.ndarray, scores: np.ndarray, item_embeddings: np.ndarray, k: int, lam: float) -> np.ndarray:
    """`mmr_batch` for one user: up to k catalog positions (never padding)."""
    picks = mmr_batch(candidates[None], scores[None], item_embeddings, k, lam)[0]
    return candidates[picks[picks >= 0]]


# --- exploration -----------------------------------------------------------------------

def exploration_features_batch(candidates: np.ndarray, scores: np.ndarray, catalog: CatalogIndex,
                               recent: np.ndarray) -> np.ndarray:
    """The bandit's context per candidate, [B, C, EXPLORATION_DIM], all in [0, 1]:
    0 bias (1): the base rate of the exploration slot;
    1 ranker score min-max scaled over the row's valid candidates (1 = the best);
    2 rank by score as a fraction of the list (0 = the best): robust to score outliers;
    3 log1p(popularity) / log1p(max popularity): head versus long tail;
    4 the candidate's category is one of the recent items' (exploring near or away from
      current taste). `recent` is [B, R] catalog positions, -1 padded.
    Padding rows are zeros apart from the bias; they are never offered to the bandit."""
    valid, order, _ = _ranked(candidates, scores)
    b, c = candidates.shape
    rows = np.arange(b)[:, None]
    x = np.zeros((b, c, EXPLORATION_DIM))
    x[..., 0] = 1.0
    x[..., 1] = np.where(valid, _relevance(scores, valid), 0.0)
    rank = np.empty((b, c), np.int64)
    rank[rows, order] = np.arange(c)[None, :]
    x[..., 2] = np.where(valid, rank / max(c - 1, 1), 0.0)
    safe = np.where(candidates >= 0, candidates, 0)
    x[..., 3] = np.where(valid, np.log1p(catalog.popularity[safe]) / catalog.log_max_popularity, 0.0)
    recent = np.asarray(recent, np.int64).reshape(b, -1)
    seen = np.zeros((b, catalog.n_categories), bool)
    hit = recent >= 0
    seen[np.broadcast_to(rows, recent.shape)[hit], catalog.codes[recent[hit]]] = True
    x[..., 4] = valid & seen[rows, catalog.codes[safe]]
    return x


def exploration_features(candidates: np.ndarray, scores: np.ndarray, catalog: CatalogIndex,
                         recent: np.ndarray) -> np.ndarray:
    """`exploration_features_batch` for one user: [C, EXPLORATION_DIM]."""
    return exploration_features_batch(candidates[None], scores[None], catalog, np.asarray(recent)[None])[0]


def rerank_batch(candidates: np.ndarray, scores: np.ndarray, item_embeddings: np.ndarray, ks, cfg: RerankConfig,
                 bandit: LinUCB | None = None, features: np.ndarray | None = None) -> list[Reranked]:
    """Per row, MMR for the list of k (`ks`: one k per row, or one for all); with a bandit
    and an exploration slot, the last of the k slots goes instead to the bandit's pick among
    the candidates ranked k..exploration_pool by score (never one MMR already placed),
    inserted at the slot (clamped to the list). Without such a candidate, or for k < 2
    (never displace the only item), the list is pure MMR. `features` [B, C, dim] is the
    bandit context per candidate (exploration_features_batch)."""
    b = len(candidates)
    ks = np.broadcast_to(np.asarray(ks, np.int64), (b,))
    explore = cfg.exploration_slot is not None and bandit is not None
    if explore and (features is None or features.shape[:2] != candidates.shape):
        raise ValueError("exploring needs one feature row per candidate (exploration_features_batch)")
    ranked = _ranked(candidates, scores)
    _, order, n_valid = ranked
    picks = _mmr_picks(candidates, scores, item_embeddings, int(ks.max(initial=0)), cfg.mmr_lambda, ranked)
    out = []
    for row in range(b):
        k = int(ks[row])
        mine = picks[row, :k]
        mine = mine[mine >= 0]
        cand, score = candidates[row], scores[row]
        pool = order[row, k:min(cfg.exploration_pool, int(n_valid[row]))] if explore and len(mine) >= 2 else _EMPTY
        head = mine[:-1]  # prefix consistency: these are the k-1 MMR picks
        placed = set(head.tolist())
        pool = np.array([p for p in pool.tolist() if p not in placed], np.int64)
        if len(pool) == 0:
            out.append(Reranked(cand[mine], score[mine]))
            continue
        choice, _ = bandit.choose(features[row, pool])
        chosen = pool[choice]
        at = min(max(cfg.exploration_slot, 0), len(head))
        listed = np.concatenate([head[:at], [chosen], head[at:]])
        out.append(Reranked(cand[listed], score[listed], at, np.array(features[row, chosen], np.float64)))
    return out


def rerank(candidates: np.ndarray, scores: np.ndarray, item_embeddings: np.ndarray, k: int, cfg: RerankConfig,
           bandit: LinUCB | None = None, features: np.ndarray | None = None) -> Reranked:
    """`rerank_batch` for one user (`features` [C, dim])."""
    return rerank_batch(candidates[None], scores[None], item_embeddings, k, cfg, bandit,
                        None if features is None else np.asarray(features)[None])[0]


# --- non-personalized and explanations ---------------------------------------------------

def _head(order: np.ndarray, k: int, skip: set[int]) -> np.ndarray:
    """The first k of `order` not in `skip`: only k + len(skip) entries can be needed."""
    if not skip:
        return order[:k]
    return np.array([p for p in order[:k + len(skip)].tolist() if p not in skip][:k], np.int64)


def popular_in_context(catalog: CatalogIndex, k: int, exclude: set[int], category: str | None = None) -> np.ndarray:
    """The k most popular positions, skipping `exclude`: for users without personalization
    consent and users we know nothing about. With a `category` (the page's), its items
    come first; when it has fewer than k, the rest is filled from overall popularity."""
    if k <= 0:
        return _EMPTY
    inside = _head(catalog.by_category.get(str(category), _EMPTY), k, exclude) if category is not None else _EMPTY
    if len(inside) >= k:
        return inside
    return np.concatenate([inside, _head(catalog.order, k - len(inside), set(exclude) | set(inside.tolist()))])


def explain_batch(recommended: np.ndarray, recent: np.ndarray, item_embeddings: np.ndarray) -> np.ndarray:
    """For each recommended position ([B, k], -1 padded), the row's recent-item position
    ([B, R], -1 padded) most similar to it (cosine), or -1 without history: the server
    shows "because you engaged with <title>"."""
    recommended, recent = np.asarray(recommended, np.int64), np.asarray(recent, np.int64)
    if recent.shape[1] == 0:
        return np.full(recommended.shape, -1, np.int64)
    rec_emb = item_embeddings[np.where(recommended >= 0, recommended, 0)]
    recent_emb = item_embeddings[np.where(recent >= 0, recent, 0)]
    sim = np.where((recent >= 0)[:, None, :], rec_emb @ recent_emb.transpose(0, 2, 1), -np.inf)  # [B, k, R]
    best = np.take_along_axis(recent, sim.argmax(axis=2), axis=1)
    return np.where((recent >= 0).any(axis=1, keepdims=True) & (recommended >= 0), best, -1)


def explain(recommended: np.ndarray, recent: np.ndarray, item_embeddings: np.ndarray) -> np.ndarray:
    """`explain_batch` for one user."""
    recent = np.asarray(recent, np.int64).reshape(1, -1)
    return explain_batch(np.asarray(recommended, np.int64)[None], recent, item_embeddings)[0]
