"""The online recommendation path, framework-free: one loaded model version (a ServingUnit)
turns a batch of requests plus their user features into ranked, re-ranked, explained lists.

The model server wraps this in KServe, a micro-batcher and hot swap; tests and benchmarks
call it directly. Everything a request touches comes from one unit, so a query embedding
never meets an index, ranker or co-engagement table from another training run.

Policy per request:
- personalized: a user the model knows (id in its vocabulary) or any user or anonymous
  session with recent items -> retrieval -> ranking -> re-ranking (MMR, exploration slot);
  never an item the user recently engaged with or ever bought (`purchased_items`, when the
  features carry it), nor one the request excludes;
- popular-in-context: nothing to personalize from (a brand-new visitor), or no consent
  to personalization -> the most popular items, in the page's category when there is one.
  Measured on ml-latest-small, the model with no history is no better than popularity.

TensorFlow is imported only where a model is touched: the protocol layer imports the
request types without it.
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import numpy as np

from hyperrec.features.online_reader import Columns, object_column
from hyperrec.features.views import REQUEST_TS, request_context
from hyperrec.features.windows import RECENT_N
from hyperrec.online.feedback import FeedbackConfig, content_rescored, feedback_queries, reacted, rescored
from hyperrec.online.rerank import (
    CatalogIndex,
    RerankConfig,
    Reranked,
    explain_batch,
    exploration_features_batch,
    popular_in_context,
    rerank_batch,
)

PERSONALIZED, POPULAR = "personalized", "popular"


@dataclass(frozen=True)
class Request:
    """One recommendation request, already validated (see serving.protocol)."""

    user_id: str | None = None  # None: an anonymous session
    recent_items: tuple[str, ...] | None = None  # the session's items, newest first (anonymous or fresher)
    k: int = 10
    device: str = "unknown"
    page: str = "home"  # "home", "item:<id>", "category:<name>", "search"
    time: datetime | None = None  # the request's local time (hour and weekday features); default now
    exclude: tuple[str, ...] = ()  # items the application filters out (e.g. out of stock)
    personalization: bool = True  # False: the user has not consented (popular-in-context only)

    @property
    def key(self) -> str:
        """What experiment assignment hashes: the user, or the session's items."""
        return self.user_id or "anon:" + ",".join(self.recent_items or ())

    @property
    def page_category(self) -> str | None:
        return self.page.removeprefix("category:") if self.page.startswith("category:") else None


@dataclass
class Recommended:
    item_ids: list[str]
    titles: list[str]
    categories: list[str]
    scores: list[float]
    reasons: list[str]
    policy: str
    arm: str
    model_version: int
    explored_item: str | None = None
    explored_x: np.ndarray | None = None  # the bandit context of the explored item (for feedback)
    query: np.ndarray | None = None  # the query embedding (personalized lists; monitoring samples it)
    monitored: dict | None = None  # serving-time feature values the impression log keeps
    teams: list[int] | None = None  # an interleaved list (hyperrec.experiments.interleave): each item's model version
    degraded: tuple[str, ...] = ()  # what the list was made without: "online-features", "recs-cache"


def stable_fraction(salt: str, key: str) -> float:
    """A uniform number in [0, 1) fixed by (salt, key): the same user lands in the same arm
    or canary group on every request, worker and restart; another salt is independent."""
    return int.from_bytes(hashlib.sha256(f"{salt}:{key}".encode()).digest()[:8], "big") / 2**64


@dataclass(frozen=True)
class Experiment:
    """Arms of the re-ranking experiment and their traffic shares; assignment is a stable
    hash of the request key, so a user stays in one arm across requests and restarts."""

    arms: dict[str, RerankConfig] = field(default_factory=lambda: {
        "control": RerankConfig(mmr_lambda=1.0, exploration_slot=None),
        "diverse-explore": RerankConfig()})
    shares: dict[str, float] | None = None  # default: equal
    salt: str = "hyperrec-rerank-1"

    @functools.cached_property
    def _bounds(self) -> tuple[list[str], list[float]]:
        names = list(self.arms)
        shares = np.array([(self.shares or {}).get(n, 1.0) for n in names], float)
        return names, np.cumsum(shares / shares.sum()).tolist()

    def assign(self, key: str) -> str:
        names, bounds = self._bounds
        u = stable_fraction(self.salt, key)
        return names[min(bisect.bisect_right(bounds, u), len(names) - 1)]

    def batch_only(self, key: str) -> bool:
        """Whether this user's arm runs without real-time features (see RerankConfig.realtime)."""
        return not self.arms[self.assign(key)].realtime


# Named experiments, chosen by `python -m serving --experiment` and `hyperrec stream
# --experiment` (both must agree: the stream processor skips the batch-only arm's users).
EXPERIMENTS = {
    # the re-ranking A/B test: plain relevance vs MMR diversity plus the bandit's exploration slot
    "rerank": Experiment(),
    # the closed loop's ablations: each arm switches one mechanism off, "full" keeps them all
    "ablation": Experiment(arms={"full": RerankConfig(), "no-mmr": RerankConfig(mmr_lambda=1.0),
                                 "no-bandit": RerankConfig(exploration_slot=None),
                                 "no-realtime": RerankConfig(realtime=False),
                                 "no-recency": RerankConfig(recency=False)},
                           salt="hyperrec-ablation-1"),
}


class StageTimer:
    """Seconds per named stage of one batch (the server exports them as histograms)."""

    def __init__(self, sink: Callable[[str, float], None] | None = None):
        self.sink = sink

    @contextmanager
    def __call__(self, stage: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            if self.sink is not None:
                self.sink(stage, time.perf_counter() - started)


class ServingUnit:
    """One registered model version, loaded and ready: the Recommender (query tower, index,
    co-engagement, ranker) plus what re-ranking and explanations read."""

    def __init__(self, model_dir: Path, version: int, backend: str = "numpy"):
        from hyperrec.models.recommender import Recommender

        self.version = int(version)
        self.rec = Recommender(model_dir, backend=backend)
        ids = self.rec.item_ids
        self.titles = self.rec.catalog["title"].reindex(ids).fillna("").to_numpy()
        self.categories = self.rec.catalog["category"].reindex(ids).fillna("").to_numpy()
        self.catalog = CatalogIndex.build(self.rec.coengagement.counts, self.categories)
        self.known_users = self.rec.known_users

    def describe(self, positions: np.ndarray) -> tuple[list[str], list[str], list[str]]:
        """(item ids, titles, categories) of catalog positions."""
        return (self.rec.item_ids[positions].tolist(), self.titles[positions].tolist(),
                self.categories[positions].tolist())

    def positions(self, items) -> np.ndarray:
        return np.array([self.rec.item_index[i] for i in items if i in self.rec.item_index], np.int64)

    def recent_positions(self, lists) -> np.ndarray:
        """[n, RECENT_N] catalog positions of each list's known items, -1 padded."""
        out = np.full((len(lists), RECENT_N), -1, np.int64)
        index = self.rec.item_index
        for row, items in enumerate(lists):
            known = [index[i] for i in items if i in index][:RECENT_N]
            out[row, :len(known)] = known
        return out


def take(columns: Columns, rows: np.ndarray) -> Columns:
    return {name: col[rows] for name, col in columns.items()}


def apply_request(features: Columns, requests: list[Request]) -> Columns:
    """User-tower inputs per request: the fetched online features (OnlineUserReader), with
    the request's own session items (anonymous visitors, or items fresher than the online
    store) and time."""
    from hyperrec.models.two_tower import NEW_USER, NEW_USER_ZEROED

    cols = dict(features)
    cols["recent_items"] = object_column([list(dict.fromkeys([*r.recent_items, *stored]))[:RECENT_N]
                                          if r.recent_items else list(stored)
                                          for r, stored in zip(requests, features["recent_items"])])
    if "recent_items_ts" in features:  # kept aligned: a session's own items count as engaged now
        cols["recent_items_ts"] = object_column([
            _merged_times(merged, stored, stored_ts, int(now)) if r.recent_items else list(stored_ts)
            for r, stored, stored_ts, merged, now in zip(requests, features["recent_items"],
                                                         features["recent_items_ts"], cols["recent_items"],
                                                         features[REQUEST_TS])])
    anonymous = np.array([r.user_id is None for r in requests])
    if anonymous.any():  # as_new_users, column by column
        cols["user_id"] = np.where(anonymous, NEW_USER, cols["user_id"]).astype(object)
        for col in NEW_USER_ZEROED:
            cols[col] = np.where(anonymous, 0, cols[col]).astype(cols[col].dtype)
    timed = [r.time is not None for r in requests]
    if any(timed):
        ts = cols[REQUEST_TS].copy()
        ts[timed] = [int(r.time.timestamp()) for r in requests if r.time is not None]
        cols[REQUEST_TS] = ts
        cols |= request_context(ts, cols["last_event_ts"])
    return cols


def _merged_times(merged, stored, stored_ts, now: int) -> list[int]:
    """Times of `merged` (a session's items, then the stored ones): stored items keep theirs."""
    when = dict(zip(stored, stored_ts))
    return [when.get(i, now) for i in merged]


def recommend_batch(unit: ServingUnit, features: Columns, requests: list[Request], experiment: Experiment,
                    bandit=None, timer: StageTimer | None = None,
                    feedback: FeedbackConfig | None = None) -> list[Recommended]:
    """Ranked lists for a batch: `features` holds one row of user-tower inputs per request
    (see apply_request). Retrieval, ranking and re-ranking each run once for the whole
    personalized part of the batch. With `feedback`, the users' recent reactions move the
    queries before retrieval and re-score the candidates after ranking (`hyperrec.online.feedback`;
    the features then carry its FEEDBACK_INPUTS too)."""
    from hyperrec.models.two_tower import NEW_USER

    timer = timer or StageTimer()
    rec = unit.rec
    personal = np.array([r.personalization and (r.user_id in unit.known_users or len(recent) > 0)
                         for r, recent in zip(requests, features["recent_items"])], bool)
    out: list[Recommended | None] = [None] * len(requests)
    chosen = np.flatnonzero(personal)
    if len(chosen):
        rows = take(features, chosen)
        rows["user_id"] = np.array([u if u in unit.known_users else NEW_USER for u in rows["user_id"]], object)
        batch = [requests[i] for i in chosen]
        bought = rows.get("purchased_items", [()] * len(batch))
        seen = [set(items) | set(r.exclude) | set(b) for items, r, b in zip(rows["recent_items"], batch, bought)]
        with timer("retrieval"):
            reactions = None
            if feedback is not None:
                half_life = feedback.half_life_s or np.inf
                reactions = reacted(rows, feedback, [half_life if experiment.arms[experiment.assign(r.key)].recency
                                                     else np.inf for r in batch])
            queries = rec.user_embeddings(rows)
            if feedback is not None:
                queries = feedback_queries(queries, rows, rec.item_index, rec.item_embeddings, feedback, reactions)
            candidates, scores = rec.search(queries, rec.n_candidates, seen)
        with timer("ranking"):
            logits = np.where(candidates >= 0, rec.rank(rows, candidates, scores), -np.inf)
            if feedback is not None:
                logits = rescored(logits, candidates, reactions, rec.item_index, rec.item_embeddings, feedback)
                logits = content_rescored(logits, candidates, reactions, rec.item_index, rec.content, feedback)
        with timer("rerank"):
            for i, query, result in zip(chosen, queries, _rerank(unit, batch, candidates, logits,
                                                                 rows["recent_items"], experiment, bandit)):
                out[i] = replace(result, query=query)
    with timer("rerank"):
        for i in np.flatnonzero(~personal):
            out[i] = _popular(unit, requests[i], experiment)
    return out


def _rerank(unit: ServingUnit, batch: list[Request], candidates: np.ndarray, scores: np.ndarray, recent_items,
            experiment: Experiment, bandit) -> list[Recommended]:
    """MMR, the exploration slot and reasons for the personalized rows, one batch per arm."""
    recent = unit.recent_positions(recent_items)
    arms = [experiment.assign(r.key) for r in batch]
    out: list[Recommended | None] = [None] * len(batch)
    for arm in dict.fromkeys(arms):
        rows = np.array([i for i, a in enumerate(arms) if a == arm])
        cfg = experiment.arms[arm]
        x = exploration_features_batch(candidates[rows], scores[rows], unit.catalog, recent[rows]) \
            if bandit is not None and cfg.exploration_slot is not None else None
        picked = rerank_batch(candidates[rows], scores[rows], unit.rec.item_embeddings,
                              [batch[i].k for i in rows], cfg, bandit, x)
        listed = np.full((len(rows), max(len(p.positions) for p in picked)), -1, np.int64)
        for j, p in enumerate(picked):
            listed[j, :len(p.positions)] = p.positions
        because = explain_batch(listed, recent[rows], unit.rec.item_embeddings)
        for j, i in enumerate(rows):
            out[i] = _personalized(unit, picked[j], because[j], arm)
    return out


def _personalized(unit: ServingUnit, picked: Reranked, because: np.ndarray, arm: str) -> Recommended:
    reasons = [f"because you engaged with {unit.titles[b]}" if b >= 0 else "matches your profile"
               for b in because[:len(picked.positions)].tolist()]
    explored = None
    if picked.explored_at >= 0:
        position = picked.positions[picked.explored_at]
        reasons[picked.explored_at] = f"something new for you in {unit.categories[position]}"
        explored = str(unit.rec.item_ids[position])
    return Recommended(*unit.describe(picked.positions), picked.scores.tolist(), reasons,
                       PERSONALIZED, arm, unit.version, explored, picked.explored_x)


def _popular(unit: ServingUnit, request: Request, experiment: Experiment) -> Recommended:
    exclude = set(unit.positions([*(request.recent_items or ()), *request.exclude]).tolist())
    category = request.page_category
    top = popular_in_context(unit.catalog, request.k, exclude, category=category)
    reasons = [f"popular in {category}" if unit.categories[p] == category else "popular right now" for p in top]
    return Recommended(*unit.describe(top), unit.catalog.popularity[top].tolist(), reasons,
                       POPULAR, experiment.assign(request.key), unit.version)
