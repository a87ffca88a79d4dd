"""Users with hidden tastes playing the live platform over HTTP: the closed loop's traffic.

A synthetic world keeps the tastes that made its history (`hyperrec.data.truth`). The
simulator continues that world past its end: users (drawn by their past activity) ask the
running server for lists at simulated times, examine the top slots (position bias), click
by the same rules that made the history (click, dwell, cart, purchase: `hyperrec.data.generate`),
and every event is POSTed to
`/v1/events` naming the list it came from. Explored slots get bandit feedback. Where the
world planned a taste drift, it happens during the simulation, unseen by the model.

Users also tire of what they have clicked (`Boredom`): without that, a simulated user
clicks the same favourite forever, and a server that keeps showing it looks better than one
that has learned, a second ago, that it was just seen.

Users also find items on their own (`SimConfig.organic_per_list`): search and browsing,
which the history's feed stood for. Each organic visit looks at one item drawn by the
user's current taste, and may click, cart and buy it; its events name no list. Without
them, a user whose taste drifted could show a new taste only through what the platform
chose to show, so neither real-time features nor a retrain could ever learn it.

Nothing here knows the model: it sees only the HTTP API, like an application would.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import requests

from hyperrec.data.generate import after_click
from hyperrec.data.world import World

EXPLORED_PREFIX = "something new for you"  # the reason the server gives its exploration slot


@dataclass(frozen=True)
class SimConfig:
    k: int = 10
    batch: int = 64  # users per HTTP call (one v1 request with that many instances)
    examine_decay: float = 0.3  # P(a user looks at slot p) = 1 / (1 + decay * p)
    satiation: float = 0.5  # each earlier click on an item multiplies P(click) on it by this (1: no satiation)
    satiation_half_life_days: float = 3.0  # how fast that wears off
    organic_per_list: float = 1.0  # items users find on their own per served list (0: none)
    organic_pool: int = 64  # available items an organic visit chooses among
    organic_focus: float = 8.0  # softmax sharpness over taste affinity (0: uniformly at random)
    timeout_s: float = 30.0


class Boredom:
    """How tired each user is of each item: every click adds 1, and the sum halves every
    `half_life_days`. P(click) is multiplied by `factor ** boredom`, so a user who clicked an
    item this morning is half as likely to click it again now (factor 0.5), and a week later
    nearly as likely as before. Seeded from the history's clicks, so the first simulated day
    already knows what each user clicked last week."""

    def __init__(self, factor: float, half_life_days: float):
        self.factor, self.half_life = factor, half_life_days
        self.level: dict[tuple[int, int], tuple[float, float]] = {}  # (user, item) -> (boredom, as of day)

    def seed(self, users: np.ndarray, items: np.ndarray, days: np.ndarray) -> None:
        for u, i, d in zip(users.tolist(), items.tolist(), days.tolist()):
            self.clicked(u, i, d)

    def _at(self, key: tuple[int, int], day: float) -> float:
        level, since = self.level.get(key, (0.0, day))
        return level * 0.5 ** ((day - since) / self.half_life)

    def multiplier(self, user: int, items: np.ndarray, day: float) -> np.ndarray:
        if self.factor >= 1.0:
            return np.ones(len(items))
        return self.factor ** np.array([self._at((int(user), int(i)), day) for i in items])

    def clicked(self, user: int, item: int, day: float) -> None:
        self.level[(user, item)] = (self._at((user, item), day) + 1.0, day)


@dataclass
class Served:
    """One row per served list: what was shown and what the user did with it."""

    frame: pd.DataFrame  # ts, user_id, request_id, arm, policy, model_version, clicks, purchases, examined


class Simulator:
    def __init__(self, world: World, url: str, cfg: SimConfig = SimConfig(), seed: int = 0):
        if world.truth is None:
            raise ValueError("the simulator needs a synthetic world (its hidden tastes)")
        self.world, self.url, self.cfg = world, url.rstrip("/"), cfg
        self.rng = np.random.default_rng(seed)
        self.truth = world.truth
        self.user_ids = world.users["user_id"].to_numpy()
        self.item_index = {item: i for i, item in enumerate(world.items["item_id"])}
        counts = world.events["user_id"].value_counts().reindex(self.user_ids, fill_value=0).to_numpy(float)
        self.activity = (counts + 1) / (counts + 1).sum()
        self.start = pd.Timestamp(world.meta["config"]["start"], tz="UTC")  # the truth's day 0
        self.session = requests.Session()
        self.boredom = Boredom(cfg.satiation, cfg.satiation_half_life_days)
        clicks = world.events[world.events["event_type"] == "click"]
        self.boredom.seed(pd.Index(self.user_ids).get_indexer(clicks["user_id"]),
                          clicks["item_id"].map(self.item_index).to_numpy(),
                          self.day_of(clicks["ts"]).to_numpy())

    @property
    def examined_per_list(self) -> float:
        """Expected slots a user looks at in a list of k."""
        return float(np.sum(1.0 / (1.0 + self.cfg.examine_decay * np.arange(self.cfg.k))))

    def day_of(self, ts: pd.Timestamp) -> float:
        """The world's day number of a time (fractional): what the hidden tastes depend on."""
        return (ts - self.start) / pd.Timedelta(days=1)

    def run(self, lists: int, t0: datetime, t1: datetime) -> Served:
        """Serve `lists` lists at times spread over [t0, t1), play them, post the events;
        organic visits are spread over the same span, in time order with the lists."""
        users = self.rng.choice(len(self.user_ids), size=lists, p=self.activity)
        times = np.sort(self.rng.uniform(t0.timestamp(), t1.timestamp(), lists))
        organic = self.organic(int(round(self.cfg.organic_per_list * lists)), t0, t1)
        rows = []
        for lo in range(0, lists, self.cfg.batch):
            until = times[lo + self.cfg.batch] if lo + self.cfg.batch < lists else np.inf
            due = [e for e in organic if e["_t"] < until]
            organic = organic[len(due):]
            self._post([{k: v for k, v in e.items() if k != "_t"} for e in due])
            rows += self._batch(users[lo:lo + self.cfg.batch], times[lo:lo + self.cfg.batch])
        return Served(pd.DataFrame(rows))

    def organic(self, visits: int, t0: datetime, t1: datetime) -> list[dict]:
        """Events of `visits` organic visits in [t0, t1), in time order (each with `_t`, its
        unix time): a user (by activity) looks at one item drawn among `organic_pool`
        available ones by softmax(organic_focus x taste affinity), and clicks by the same
        rules as in a list (satiation included). Drawn for a whole step before its lists
        are played, so a list early in the step already sees the boredom of a visit later
        in it (not measured; drawing both in lockstep would remove it)."""
        if visits <= 0:
            return []
        out = []
        users = self.rng.choice(len(self.user_ids), size=visits, p=self.activity)
        for u, t in zip(users, np.sort(self.rng.uniform(t0.timestamp(), t1.timestamp(), visits))):
            ts = datetime.fromtimestamp(t, UTC)
            day = self.day_of(pd.Timestamp(ts))
            available = np.flatnonzero(self.truth.item_created_day <= day)
            pool = self.rng.choice(available, size=min(self.cfg.organic_pool, len(available)), replace=False)
            users_ = np.full(len(pool), u)
            logits = self.cfg.organic_focus * self.truth.affinity(users_, pool, day)
            weights = np.exp(logits - logits.max())
            item = int(self.rng.choice(pool, p=weights / weights.sum()))
            p_click = self.truth.click_probability(np.array([u]), np.array([item]), day)[0] \
                * self.boredom.multiplier(u, np.array([item]), day)[0]
            user_id, item_id = str(self.user_ids[u]), str(self.world.items["item_id"].iat[item])
            out.append(_event("view", user_id, item_id, ts, None) | {"_t": t})
            if self.rng.random() >= p_click:
                continue
            self.boredom.clicked(int(u), item, day)
            dwell, carted, bought = after_click(self.rng, self.truth.affinity(np.array([u]), np.array([item]), day))
            at = ts + timedelta(seconds=2)
            out.append(_event("click", user_id, item_id, at, None, dwell_s=float(dwell[0])) | {"_t": t + 2})
            if carted[0]:
                at += timedelta(seconds=float(dwell[0]))
                out.append(_event("add_to_cart", user_id, item_id, at, None) | {"_t": at.timestamp()})
                if bought[0]:
                    at += timedelta(minutes=2)
                    out.append(_event("purchase", user_id, item_id, at, None) | {"_t": at.timestamp()})
        return sorted(out, key=lambda e: e["_t"])

    def _post(self, events: list[dict]) -> None:
        if not events:
            return
        resp = self.session.post(f"{self.url}/v1/events", json=events, timeout=self.cfg.timeout_s)
        resp.raise_for_status()
        if resp.json()["dead_lettered"]:
            raise RuntimeError(f"the simulator sent bad events: {resp.json()['errors'][:3]}")

    def _batch(self, users: np.ndarray, times: np.ndarray) -> list[dict]:
        stamps = [datetime.fromtimestamp(t, UTC) for t in times]
        body = {"instances": [{"user_id": str(self.user_ids[u]), "k": self.cfg.k,
                               "context": {"time": ts.isoformat(), "device": "mobile", "page": "home"}}
                              for u, ts in zip(users, stamps)]}
        resp = self.session.post(f"{self.url}/v1/models/recommender:predict", json=body, timeout=self.cfg.timeout_s)
        resp.raise_for_status()
        events, feedback, rows = [], [], []
        for u, ts, pred in zip(users, stamps, resp.json()["predictions"]):
            items = [self.item_index[i["item_id"]] for i in pred["items"]]
            n = len(items)
            examined = self.rng.random(n) < 1.0 / (1.0 + self.cfg.examine_decay * np.arange(n))
            users, shown, day = np.full(n, u), np.array(items, np.int64), self.day_of(pd.Timestamp(ts))
            p_click = self.truth.click_probability(users, shown, day) * self.boredom.multiplier(u, shown, day)
            clicked = examined & (self.rng.random(n) < p_click)
            for i in shown[clicked]:
                self.boredom.clicked(int(u), int(i), day)
            dwell, carted, bought = after_click(self.rng, self.truth.affinity(users, shown, day))
            carted, bought = carted & clicked, bought & clicked
            rid = pred["request_id"]
            for pos, entry in enumerate(pred["items"]):
                if not examined[pos]:
                    continue
                at = ts + timedelta(seconds=1 + pos)
                events.append(_event("view", pred["user_id"], entry["item_id"], at, rid))
                if clicked[pos]:
                    events.append(_event("click", pred["user_id"], entry["item_id"], at + timedelta(seconds=2), rid,
                                         dwell_s=float(dwell[pos])))
                if carted[pos]:
                    carted_at = at + timedelta(seconds=2 + float(dwell[pos]))
                    events.append(_event("add_to_cart", pred["user_id"], entry["item_id"], carted_at, rid))
                if bought[pos]:
                    bought_at = carted_at + timedelta(minutes=2)
                    events.append(_event("purchase", pred["user_id"], entry["item_id"], bought_at, rid))
                if entry["reason"].startswith(EXPLORED_PREFIX):
                    feedback.append({"request_id": rid, "item_id": entry["item_id"], "reward": float(clicked[pos])})
            rows.append({"ts": ts, "user_id": pred["user_id"], "request_id": rid, "arm": pred["arm"],
                         "policy": pred["policy"], "model_version": pred["model_version"],
                         "clicks": int(clicked.sum()), "purchases": int(bought.sum()), "shown": n,
                         "examined": int(examined.sum())})
        self._post(events)
        for fb in feedback:
            self.session.post(f"{self.url}/v1/models/recommender:feedback", json=fb, timeout=self.cfg.timeout_s)
        return rows


def _event(kind: str, user: str, item: str, at: datetime, request_id: str | None, dwell_s: float | None = None) -> dict:
    event = {"event_id": f"sim-{uuid.uuid4().hex}", "user_id": user, "item_id": item, "event_type": kind,
             "ts": at.isoformat(), "device": "mobile"}
    if request_id:
        event["request_id"] = request_id
    return event | ({"dwell_s": dwell_s} if dwell_s is not None else {})
