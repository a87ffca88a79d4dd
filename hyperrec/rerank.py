"""Re-ranking after the ranker, per user: filters, MMR diversity, an exploration slot
filled by a contextual bandit, popular-in-context for users we must not (or cannot)
personalize for, and the "because you engaged with X" explanation.

Candidates are catalog positions (-1 pads a row when the catalog ran out) with ranker
scores (higher is better, -inf for padding). Plain numpy: this runs for every request.

Per-catalog precomputations (popularity order per category, the popularity maximum) are
memoised on the identity of the popularity and category arrays, which are treated as
immutable: a serving unit builds them once per model version and never writes to them.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from hyperrec.bandit import LinUCB

EXPLORATION_DIM = 5  # see exploration_features
_EMPTY = np.zeros(0, np.int64)


@dataclass(frozen=True)
class RerankConfig:
    mmr_lambda: float = 0.85  # 1.0: pure relevance; lower trades relevance for diversity
    exploration_slot: int | None = 4  # 0-based position the bandit fills; None: no exploration
    exploration_pool: int = 50  # the bandit picks among ranked candidates below the top k, up to this rank


@dataclass
class Reranked:
    positions: np.ndarray  # [k'] catalog positions, in display order
    scores: np.ndarray  # [k'] their ranker scores
    explored_at: int = -1  # list index of the bandit's pick, -1 if none
    explored_x: np.ndarray | None = None  # its context vector, to credit the reward later


# --- per-catalog index -----------------------------------------------------------------

@dataclass(frozen=True)
class _CatalogIndex:
    """What popularity and categories give once per model version, so no request pays O(N)."""

    order: np.ndarray  # all positions, most popular first (ties: lower position first)
    by_category: dict[str, np.ndarray]  # the same order, per category
    codes: np.ndarray  # [N] category as an integer, for vectorized same-category tests
    n_categories: int
    log_max_popularity: float  # log1p of the most popular item's count (at least log 2)


def _build_index(popularity: np.ndarray, categories: np.ndarray) -> _CatalogIndex:
    order = np.argsort(-np.asarray(popularity, np.float64), kind="stable")
    names, codes = np.unique(np.asarray(categories).astype(str), return_inverse=True)
    grouped = order[np.argsort(codes[order], kind="stable")]  # stable: popularity order within a category
    bounds = np.cumsum(np.bincount(codes, minlength=len(names)))[:-1]
    top = float(popularity.max()) if len(popularity) else 0.0
    return _CatalogIndex(order, dict(zip(names.tolist(), np.split(grouped, bounds))), codes.reshape(-1),
                         len(names), float(np.log1p(max(top, 1.0))))


_INDEXES: dict[tuple[int, int], tuple[weakref.ref, weakref.ref, _CatalogIndex]] = {}
_INDEXES_LOCK = threading.Lock()
_INDEXES_MAX = 16


def _catalog(popularity: np.ndarray, categories: np.ndarray) -> _CatalogIndex:
    """The index of these (immutable) arrays, built on first use. Keyed by identity with
    weak references, so an unloaded model version's entry goes with its arrays."""
    key = (id(popularity), id(categories))
    hit = _INDEXES.get(key)
    if hit is not None and hit[0]() is popularity and hit[1]() is categories:
        return hit[2]
    index = _build_index(popularity, categories)
    with _INDEXES_LOCK:
        for dead in [k for k, (p, c, _) in _INDEXES.items() if p() is None or c() is None]:
            del _INDEXES[dead]
        while len(_INDEXES) >= _INDEXES_MAX:
            del _INDEXES[next(iter(_INDEXES))]
        _INDEXES[key] = (weakref.ref(popularity), weakref.ref(categories), index)
    return index


# --- filters and MMR -------------------------------------------------------------------

def filter_excluded(candidates: np.ndarray, scores: np.ndarray, exclude: set[int]) -> tuple[np.ndarray, np.ndarray]:
    """Scores of excluded positions set to -inf (already bought, business filters), so
    every later step drops them like padding. The input scores are not modified."""
    if not exclude:
        return candidates, scores
    drop = np.fromiter((c in exclude for c in candidates.tolist()), bool, len(candidates))
    return candidates, np.where(drop, -np.inf, scores)


def _valid_order(candidates: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Indices of usable candidates (not padding, finite score), best score first; ties
    keep retrieval order, so the result is deterministic."""
    ok = np.flatnonzero((candidates >= 0) & np.isfinite(scores))
    return ok[np.argsort(-scores[ok], kind="stable")]


def _mmr_indices(order: np.ndarray, candidates: np.ndarray, scores: np.ndarray, item_embeddings: np.ndarray,
                 k: int, lam: float) -> np.ndarray:
    """Greedy MMR over `order` (valid indices, best first); returns k indices into candidates.
    value = lam·relevance − (1−lam)·max_sim is kept directly: a new pick can only lower it
    (np.minimum), one similarity row (mat-vec) per pick instead of the full C×C matrix."""
    k = min(k, len(order))
    if k <= 0:
        return order[:0]
    if lam >= 1.0 or k == 1:
        return order[:k]
    s = scores[order].astype(np.float64)
    span = s[0] - s[-1]
    relevance = lam * ((s - s[-1]) / span if span > 0 else np.ones_like(s))
    emb = item_embeddings[candidates[order]]
    weighted = emb * np.float32(1.0 - lam)
    picked = np.zeros(k, np.int64)  # the first pick is the most relevant: nothing to be similar to yet
    value = relevance - weighted @ emb[0]
    value[0] = -np.inf  # picked: never again
    row = np.empty_like(value)
    for i in range(1, k):
        nxt = value.argmax()
        picked[i] = nxt
        np.minimum(value, np.subtract(relevance, weighted @ emb[nxt], out=row), out=value)
        value[nxt] = -np.inf
    return order[picked]


def mmr(candidates: np.ndarray, scores: np.ndarray, item_embeddings: np.ndarray, k: int, lam: float) -> np.ndarray:
    """Greedy Maximal Marginal Relevance for one user: each pick maximises
    lam·relevance − (1−lam)·(max cosine to the picks so far), relevance being the score
    min-max scaled to [0, 1] over the valid candidates. Returns up to k catalog positions
    (never padding); lam = 1 is exactly the top k by score."""
    return candidates[_mmr_indices(_valid_order(candidates, scores), candidates, scores, item_embeddings, k, lam)]


# --- exploration -----------------------------------------------------------------------

def exploration_features(candidates: np.ndarray, scores: np.ndarray, popularity: np.ndarray,
                         categories: np.ndarray, recent: np.ndarray) -> np.ndarray:
    """The bandit's context per candidate, [C, EXPLORATION_DIM], all in [0, 1]:
    0 bias (1): the base rate of the exploration slot;
    1 ranker score min-max scaled over the valid candidates (1 = the best);
    2 rank by score as a fraction of the list (0 = the best): robust to score outliers;
    3 log1p(popularity) / log1p(max popularity): head versus long tail;
    4 the candidate's category is one of the recent items' (exploring near or away from
      current taste).
    Padding rows are zeros apart from the bias; they are never offered to the bandit."""
    c = len(candidates)
    x = np.zeros((c, EXPLORATION_DIM))
    x[:, 0] = 1.0
    order = _valid_order(candidates, scores)
    if len(order) == 0:
        return x
    s = scores[order].astype(np.float64)
    span = s[0] - s[-1]
    x[order, 1] = (s - s[-1]) / span if span > 0 else 1.0
    x[order, 2] = np.arange(len(order)) / max(c - 1, 1)
    positions = candidates[order]
    index = _catalog(popularity, categories)
    x[order, 3] = np.log1p(popularity[positions]) / index.log_max_popularity
    recent = np.asarray(recent, np.int64)
    seen = np.zeros(index.n_categories, bool)
    seen[index.codes[recent[recent >= 0]]] = True
    x[order, 4] = seen[index.codes[positions]]
    return x


def rerank(candidates: np.ndarray, scores: np.ndarray, item_embeddings: np.ndarray, k: int, cfg: RerankConfig,
           bandit: LinUCB | None = None, features: np.ndarray | None = None) -> Reranked:
    """MMR for the list; with a bandit and an exploration slot, the last of k slots goes
    instead to the bandit's pick among the candidates ranked k..exploration_pool by score
    (never one MMR already placed), inserted at the slot (clamped to the list). Without
    such a candidate, or for k < 2 (never displace the only item), the list is pure MMR.
    `features` [C, dim] is the bandit context per candidate (exploration_features)."""
    order = _valid_order(candidates, scores)
    picks = _mmr_indices(order, candidates, scores, item_embeddings, k, cfg.mmr_lambda)
    if cfg.exploration_slot is None or bandit is None or len(picks) < 2:
        return Reranked(candidates[picks], scores[picks])
    if features is None or len(features) != len(candidates):
        raise ValueError("exploring needs one feature row per candidate (exploration_features)")
    head = picks[:-1]  # greedy MMR is prefix-consistent: these are the k-1 MMR picks
    placed = np.zeros(len(candidates), bool)
    placed[head] = True
    pool = order[k:cfg.exploration_pool]
    pool = pool[~placed[pool]]
    if len(pool) == 0:
        return Reranked(candidates[picks], scores[picks])
    choice, _ = bandit.choose(features[pool])
    chosen = pool[choice]
    at = min(max(cfg.exploration_slot, 0), len(head))
    listed = np.concatenate([head[:at], [chosen], head[at:]])
    return Reranked(candidates[listed], scores[listed], at, np.array(features[chosen], np.float64))


# --- non-personalized and explanations ---------------------------------------------------

def _head(order: np.ndarray, k: int, skip: set[int]) -> np.ndarray:
    """The first k of `order` not in `skip`: only k + len(skip) entries can be needed."""
    if not skip:
        return order[:k]
    return np.array([p for p in order[:k + len(skip)].tolist() if p not in skip][:k], np.int64)


def popular_in_context(popularity: np.ndarray, categories: np.ndarray, k: int, exclude: set[int],
                       category: str | None = None) -> np.ndarray:
    """The k most popular positions, skipping `exclude`: for users without personalization
    consent and users we know nothing about. With a `category` (the page's), its items
    come first; when it has fewer than k, the rest is filled from overall popularity."""
    if k <= 0:
        return _EMPTY
    index = _catalog(popularity, categories)
    inside = _head(index.by_category.get(str(category), _EMPTY), k, exclude) if category is not None else _EMPTY
    if len(inside) >= k:
        return inside
    return np.concatenate([inside, _head(index.order, k - len(inside), set(exclude) | set(inside.tolist()))])


def explain(recommended: np.ndarray, recent: np.ndarray, item_embeddings: np.ndarray) -> np.ndarray:
    """For each recommended position, the recent-item position most similar to it (cosine),
    or -1 without history: the server shows "because you viewed <title>"."""
    recent = np.asarray(recent, np.int64)
    recent = recent[recent >= 0]
    recommended = np.asarray(recommended, np.int64)
    if len(recent) == 0:
        return np.full(len(recommended), -1, np.int64)
    sim = item_embeddings[recommended] @ item_embeddings[recent].T
    return recent[np.argmax(sim, axis=1)]
