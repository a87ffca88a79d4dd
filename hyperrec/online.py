"""The online recommendation path, framework-free: one loaded model version (a ServingUnit)
turns a batch of requests plus their user features into ranked, re-ranked, explained lists.

The model server wraps this in KServe, a micro-batcher and hot swap; tests and benchmarks
call it directly. Everything a request touches comes from one unit, so a query embedding
never meets an index, ranker or co-engagement table from another training run.

Policy per request:
- personalized: a user the model knows (id in its vocabulary) or any user or anonymous
  session with recent items -> retrieval -> ranking -> re-ranking (MMR, exploration slot);
- popular-in-context: nothing to personalize from (a brand-new visitor), or no consent
  to personalization -> the most popular items, in the page's category when there is one.
  Measured on ml-latest-small, the model with no history is no better than popularity.

TensorFlow is imported only where a model is touched: the protocol layer imports the
request types without it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from hyperrec.features import REQUEST_TS, request_context_features
from hyperrec.rerank import RerankConfig, explain, exploration_features, popular_in_context, rerank
from hyperrec.windows import RECENT_N

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


@dataclass(frozen=True)
class Experiment:
    """Arms of the re-ranking experiment and their traffic shares; assignment is a stable
    hash of the request key, so a user stays in one arm across requests and restarts."""

    arms: dict[str, RerankConfig] = field(default_factory=lambda: {
        "control": RerankConfig(mmr_lambda=1.0, exploration_slot=None),
        "diverse-explore": RerankConfig()})
    shares: dict[str, float] | None = None  # default: equal
    salt: str = "hyperrec-rerank-1"

    def assign(self, key: str) -> str:
        names = list(self.arms)
        shares = np.array([(self.shares or {}).get(n, 1.0) for n in names], float)
        u = int.from_bytes(hashlib.sha256(f"{self.salt}:{key}".encode()).digest()[:8], "big") / 2**64
        return names[int(np.searchsorted(np.cumsum(shares / shares.sum()), u, side="right").clip(0, len(names) - 1))]


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

    def __init__(self, model_dir: Path, version: int):
        from hyperrec.recommend import Recommender

        self.version = int(version)
        self.rec = Recommender(model_dir)
        ids = self.rec.item_ids
        self.titles = self.rec.catalog["title"].reindex(ids).fillna("").to_numpy()
        self.categories = self.rec.catalog["category"].reindex(ids).fillna("").to_numpy()
        self.popularity = self.rec.coengagement.counts.astype(np.float32)
        self.known_users = self.rec.known_users

    def describe(self, positions: np.ndarray) -> tuple[list[str], list[str], list[str]]:
        """(item ids, titles, categories) of catalog positions."""
        return ([str(i) for i in self.rec.item_ids[positions]], [str(t) for t in self.titles[positions]],
                [str(c) for c in self.categories[positions]])

    def positions(self, items) -> np.ndarray:
        return np.array([self.rec.item_index[i] for i in items if i in self.rec.item_index], np.int64)


def apply_request(features: pd.DataFrame, requests: list[Request]) -> pd.DataFrame:
    """User-tower inputs per request: the fetched online features, with the request's own
    session items (anonymous visitors, or items fresher than the online store) and time."""
    from hyperrec.models.two_tower import NEW_USER, NEW_USER_ZEROED

    rows = features.reset_index(drop=True).copy()
    rows["recent_items"] = [list(dict.fromkeys([*r.recent_items, *stored]))[:RECENT_N] if r.recent_items
                            else list(stored) for r, stored in zip(requests, rows["recent_items"])]
    anonymous = np.array([r.user_id is None for r in requests])
    if anonymous.any():  # as_new_users, column by column: this runs on every request
        rows["user_id"] = np.where(anonymous, NEW_USER, rows["user_id"].to_numpy(object))
        for col in NEW_USER_ZEROED:
            rows[col] = np.where(anonymous, 0, rows[col].to_numpy())
    times = [r.time for r in requests]
    if any(t is not None for t in times):
        ts = rows[REQUEST_TS].to_numpy().copy()
        ts[[t is not None for t in times]] = [int(t.timestamp()) for t in times if t is not None]
        rows[REQUEST_TS] = ts
        rows[["hour_of_day", "day_of_week"]] = request_context_features(rows)[["hour_of_day", "day_of_week"]]
    return rows


def recommend_batch(unit: ServingUnit, features: pd.DataFrame, requests: list[Request], experiment: Experiment,
                    bandit=None, timer: StageTimer | None = None) -> list[Recommended]:
    """Ranked lists for a batch: `features` holds one row of user-tower inputs per request
    (see apply_request). Retrieval and ranking run once for the whole personalized part."""
    from hyperrec.models.two_tower import NEW_USER

    timer = timer or StageTimer()
    rec = unit.rec
    personal = np.array([r.personalization and (r.user_id in unit.known_users or len(recent) > 0)
                         for r, recent in zip(requests, features["recent_items"])])
    out: list[Recommended | None] = [None] * len(requests)
    if personal.any():
        rows = features[personal].reset_index(drop=True)
        rows["user_id"] = [u if u in unit.known_users else NEW_USER for u in rows["user_id"]]
        batch = [r for r, p in zip(requests, personal) if p]
        seen = [set(items) | set(r.exclude) for items, r in zip(rows["recent_items"], batch)]
        with timer("retrieval"):
            candidates, scores = rec.retrieve(rows, rec.n_candidates, seen)
        with timer("ranking"):
            logits = np.where(candidates >= 0, rec.rank(rows, candidates, scores), -np.inf)
        with timer("rerank"):
            lists = iter(_rerank_one(unit, r, c, s, recent, experiment, bandit)
                         for r, c, s, recent in zip(batch, candidates, logits, rows["recent_items"]))
            for i in np.flatnonzero(personal):
                out[i] = next(lists)
    with timer("rerank"):
        for i in np.flatnonzero(~personal):
            out[i] = _popular(unit, requests[i], experiment)
    return out


def _rerank_one(unit: ServingUnit, request: Request, candidates: np.ndarray, scores: np.ndarray,
                recent: list[str], experiment: Experiment, bandit) -> Recommended:
    arm = experiment.assign(request.key)
    cfg = experiment.arms[arm]
    recent_pos = unit.positions(recent)
    x = exploration_features(candidates, scores, unit.popularity, unit.categories, recent_pos) \
        if bandit is not None and cfg.exploration_slot is not None else None
    picked = rerank(candidates, scores, unit.rec.item_embeddings, request.k, cfg, bandit=bandit, features=x)
    because = explain(picked.positions, recent_pos, unit.rec.item_embeddings)
    reasons = [f"because you engaged with {unit.titles[b]}" if b >= 0 else "matches your profile" for b in because]
    explored = None
    if picked.explored_at >= 0:
        position = picked.positions[picked.explored_at]
        reasons[picked.explored_at] = f"something new for you in {unit.categories[position]}"
        explored = str(unit.rec.item_ids[position])
    return Recommended(*unit.describe(picked.positions), [float(s) for s in picked.scores], reasons,
                       PERSONALIZED, arm, unit.version, explored, picked.explored_x)


def _popular(unit: ServingUnit, request: Request, experiment: Experiment) -> Recommended:
    exclude = set(unit.positions([*(request.recent_items or ()), *request.exclude]).tolist())
    category = request.page_category
    top = popular_in_context(unit.popularity, unit.categories, request.k, exclude, category=category)
    reasons = [f"popular in {category}" if unit.categories[p] == category else "popular right now" for p in top]
    return Recommended(*unit.describe(top), [float(unit.popularity[p]) for p in top], reasons,
                       POPULAR, experiment.assign(request.key), unit.version)
