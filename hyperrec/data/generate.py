"""A synthetic world: CRM users with consent, a catalog with text, and interaction events
drawn from latent tastes that drift over time, with new items appearing.

Everything is vectorized and chunked, so a few thousand events take milliseconds and
several million take seconds. The same seed and flags give the same world, byte for byte.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

from hyperrec.data.schemas import AGE_BANDS, Event, Item, User, validate_frame
from hyperrec.data.truth import Truth, normalize, sigmoid
from hyperrec.data.world import World

CATEGORIES = ["books", "electronics", "fashion", "home", "garden", "sports", "toys",
              "beauty", "grocery", "music", "outdoors", "pets", "kitchen", "games",
              "health", "office"]
REGIONS = ["north", "south", "east", "west", "central"]
FIRST = ["ana", "ben", "chloe", "dev", "eva", "finn", "gia", "hugo", "ines", "jon", "kai",
         "lea", "max", "nia", "omar", "pia", "raj", "sara", "tom", "uma", "vik", "wen", "yui"]
LAST = ["smith", "garcia", "kim", "novak", "rossi", "silva", "tanaka", "weber", "okafor",
        "larsen", "dubois", "khan", "murphy", "ivanova", "costa", "berg"]
WORDS = ["compact", "premium", "classic", "wireless", "organic", "vintage", "smart", "cozy",
         "durable", "lightweight", "handmade", "eco", "portable", "deluxe", "minimal", "bold",
         "soft", "waterproof", "rechargeable", "ergonomic", "retro", "modern", "rustic",
         "sleek", "colorful", "quiet", "fast", "natural", "luxury", "budget", "family",
         "travel", "outdoor", "indoor", "kids", "pro", "studio", "daily", "festive", "sport"]
SYLLABLES = ["ka", "lo", "mi", "ra", "ve", "to", "zu", "ne", "sa", "pi", "do", "qu", "xe", "bo"]
EVENT_TYPE_ORDER = {t: i for i, t in enumerate(["view", "click", "add_to_cart", "purchase", "rating"])}


@dataclass(frozen=True)
class WorldConfig:
    users: int = 2_000
    items: int = 1_000
    days: int = 30
    events: int = 200_000  # approximate total; impressions are sized to reach it
    seed: int = 42
    start: str = "2026-01-01"  # fixed, so a seed gives the same world on any day
    dim: int = 16
    new_item_share: float = 0.3  # items that appear during the simulated days
    drifting_user_share: float = 0.5
    drift_start_day: float | None = None  # default: 60% into the period
    drift_spread_days: float | None = None  # users start drifting within this after the start (default 10% of days)
    drift_max_days: float | None = None  # a drift takes 25-100% of this, at least half a day (default 20% of days)
    # categories the drifting users turn to: None, each user a random one of all (personal
    # shifts); n, one of the same n for all of them (a trend, like a season)
    drift_categories: int | None = None
    chunk: int = 500_000  # impressions per vectorized chunk (bounds memory)

    def __post_init__(self):
        if min(self.users, self.items, self.days, self.events) < 1:
            raise ValueError("users, items, days and events must all be >= 1")


def _names(rng, n: int, parts: list[str], k: int) -> np.ndarray:
    return np.array(["".join(t) for t in rng.choice(parts, size=(n, k))])


def _make_items(cfg: WorldConfig, rng, centroids: np.ndarray, start: pd.Timestamp):
    n_cat = len(centroids)
    cat_pop = 1.0 / np.arange(1, n_cat + 1) ** 0.7
    category = rng.choice(n_cat, size=cfg.items, p=cat_pop / cat_pop.sum())
    category[:n_cat] = np.arange(min(n_cat, cfg.items))  # every category exists from day 0
    vec = normalize(centroids[category] + 0.6 * rng.normal(size=(cfg.items, cfg.dim)))
    is_new = rng.random(cfg.items) < cfg.new_item_share
    is_new[:n_cat] = False
    created_day = np.where(is_new, rng.uniform(0, cfg.days, cfg.items), -rng.uniform(1, 365, cfg.items))
    brands = _names(rng, n_cat * 6, SYLLABLES, 3)
    brand = brands[category * 6 + rng.integers(0, 6, cfg.items)]
    price = np.round(np.exp(rng.normal(3 + 0.15 * category, 0.6)), 2)
    word_vec = normalize(rng.normal(size=(len(WORDS), cfg.dim)))
    top_words = np.argsort(-(vec @ word_vec.T), axis=1)[:, :5]
    words = np.array(WORDS)
    cat_names = np.array(CATEGORIES)[category % len(CATEGORIES)]
    title = [f"{b.title()} {words[t[0]]} {c} #{i}" for i, (b, t, c) in enumerate(zip(brand, top_words, cat_names))]
    description = [f"{' '.join(words[t])} {c} by {b.title()}" for b, t, c in zip(brand, top_words, cat_names)]
    items = pd.DataFrame({
        "item_id": [f"i{i:06d}" for i in range(cfg.items)],
        "title": title, "category": cat_names, "brand": brand, "price": price,
        "description": description,
        "created_ts": start + pd.to_timedelta(np.round(created_day * 86_400), unit="s"),
    })
    return items, category, vec, rng.normal(0, 0.4, cfg.items), created_day


def _make_users(cfg: WorldConfig, rng, centroids: np.ndarray, start: pd.Timestamp):
    n_cat = len(centroids)
    bands = np.array(AGE_BANDS[:-1])
    band = rng.integers(0, len(bands), cfg.users)
    region = rng.integers(0, len(REGIONS), cfg.users)
    band_vec = rng.normal(size=(len(bands), cfg.dim))  # profile carries taste signal (cold users)
    fav = rng.integers(0, n_cat, cfg.users)
    base = normalize(centroids[fav] + 0.5 * band_vec[band] + 0.5 * rng.normal(size=(cfg.users, cfg.dim)))
    drifting = rng.random(cfg.users) < cfg.drifting_user_share
    if cfg.drift_categories is None:
        target_cat = rng.integers(0, n_cat, cfg.users)
    else:
        trend = rng.choice(n_cat, size=min(cfg.drift_categories, n_cat), replace=False)
        target_cat = trend[rng.integers(0, len(trend), cfg.users)]
    target = normalize(centroids[target_cat] + 0.3 * rng.normal(size=base.shape))
    shift = np.where(drifting[:, None], 1.5 * (target - base), 0.0)
    drift_start_day = cfg.drift_start_day if cfg.drift_start_day is not None else 0.6 * cfg.days
    spread = 0.1 * cfg.days if cfg.drift_spread_days is None else cfg.drift_spread_days
    drift_start = drift_start_day + rng.uniform(0, spread, cfg.users)
    if cfg.drift_max_days is None:
        drift_days = np.maximum(rng.uniform(0.05, 0.2, cfg.users) * cfg.days, 0.5)
    else:
        drift_days = np.maximum(rng.uniform(0.25, 1.0, cfg.users) * cfg.drift_max_days, 0.5)
    first, last = rng.choice(FIRST, cfg.users), rng.choice(LAST, cfg.users)
    signup = start - pd.to_timedelta(rng.integers(1, 3 * 365, cfg.users), unit="D")
    users = pd.DataFrame({
        "user_id": [f"u{u:06d}" for u in range(cfg.users)],
        "email": [f"{f}.{s}{u}@example.com" for u, (f, s) in enumerate(zip(first, last))],
        "name": [f"{f.title()} {s.title()}" for f, s in zip(first, last)],
        "age_band": bands[band], "region": np.array(REGIONS)[region],
        "signup_ts": signup,
        "consent_personalization": rng.random(cfg.users) < 0.92,
        "consent_analytics": rng.random(cfg.users) < 0.8,
        "consent_ts": signup + pd.to_timedelta(rng.integers(0, 3600, cfg.users), unit="s"),
    })
    activity = np.exp(rng.normal(0, 0.8, cfg.users))
    return users, base, shift, drift_start, drift_days, activity / activity.sum()


def _impressions(cfg, rng, truth: Truth, item_cat, centroids, activity, n: int):
    """Who was shown what, when: feed slots drawn partly by taste, partly by popularity."""
    n_cat = len(centroids)
    user = rng.choice(cfg.users, size=n, p=activity)
    day = rng.uniform(0, cfg.days, n)
    cat_logits = 4.0 * truth.taste(user, day) @ centroids.T
    cat_p = np.exp(cat_logits - cat_logits.max(axis=1, keepdims=True))
    cat_p /= cat_p.sum(axis=1, keepdims=True)
    by_taste = (cat_p.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    cat = np.where(rng.random(n) < 0.7, by_taste, rng.integers(0, n_cat, n))
    # items sorted by (category, appearance day): those available on `day` form a prefix
    order = np.lexsort((truth.item_created_day, item_cat))
    key = item_cat[order] * (cfg.days + 400.0) + truth.item_created_day[order]
    cat_start = np.searchsorted(key, np.arange(n_cat) * (cfg.days + 400.0) - 366)
    n_avail = np.searchsorted(key, cat * (cfg.days + 400.0) + day, side="right") - cat_start[cat]
    pick = np.floor(n_avail * rng.random(n) ** 1.3).astype(np.int64)  # older items more popular
    return user, order[cat_start[cat] + pick], day


def after_click(rng: np.random.Generator, affinity: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What follows a click, by the user's affinity to the item: dwell seconds, added to
    cart, purchased. Shared with `hyperrec.demo.simulate`, so simulated traffic looks like history."""
    dwell = np.round(np.exp(rng.normal(np.log(8 + 60 * np.clip(affinity, 0, 1)), 0.5)), 1)
    cart = rng.random(len(affinity)) < 0.35 * sigmoid(3 * affinity)
    purchase = cart & (rng.random(len(affinity)) < 0.5)
    return dwell, cart, purchase


def _interactions(cfg, rng, truth: Truth, user, item, day):
    """Turn impressions into the funnel of events with their timestamps (in days)."""
    aff = truth.affinity(user, item, day)
    click = rng.random(len(user)) < truth.click_probability(user, item, day)
    cu, ci, cd, ca = user[click], item[click], day[click], aff[click]
    clicked_at = cd + rng.uniform(1, 30, len(cu)) / 86_400
    dwell, cart, purchase = after_click(rng, ca)
    carted_at = clicked_at + dwell / 86_400
    bought_at = carted_at + rng.uniform(10, 600, len(cu)) / 86_400
    rated = purchase & (rng.random(len(cu)) < 0.4)
    rating = np.clip(np.round((3 + 2.5 * ca + rng.normal(0, 0.5, len(cu))) * 2) / 2, 0.5, 5.0)
    rated_at = bought_at + rng.uniform(0.01, 0.5, len(cu))
    parts = [
        ("view", user, item, day, np.nan, np.nan),
        ("click", cu, ci, clicked_at, dwell, np.nan),
        ("add_to_cart", cu[cart], ci[cart], carted_at[cart], np.nan, np.nan),
        ("purchase", cu[purchase], ci[purchase], bought_at[purchase], np.nan, np.nan),
        ("rating", cu[rated], ci[rated], rated_at[rated], np.nan, rating[rated]),
    ]
    frames = [pd.DataFrame({"event_type": kind, "u": u, "i": i, "day": d,
                            "dwell_s": np.broadcast_to(dw, len(u)) if np.ndim(dw) == 0 else dw,
                            "rating": np.broadcast_to(r, len(u)) if np.ndim(r) == 0 else r})
              for kind, u, i, d, dw, r in parts]
    return pd.concat(frames, ignore_index=True)


def generate_world(cfg: WorldConfig, progress=None) -> World:
    """Build a world from `cfg`; `progress(done, total)` is called per chunk if given."""
    rng = np.random.default_rng(cfg.seed)
    start = pd.Timestamp(cfg.start, tz="UTC")
    centroids = normalize(rng.normal(size=(len(CATEGORIES), cfg.dim)))
    items, item_cat, item_vec, item_bias, created_day = _make_items(cfg, rng, centroids, start)
    users, base, shift, d_start, d_days, activity = _make_users(cfg, rng, centroids, start)
    truth = Truth(base, shift, d_start, d_days, item_vec, item_bias, created_day)
    n_impressions = max(1, int(cfg.events / 1.12))  # ~12% extra events come from the funnel
    chunks, done = [], 0
    while done < n_impressions:
        n = min(cfg.chunk, n_impressions - done)
        user, item, day = _impressions(cfg, rng, truth, item_cat, centroids, activity, n)
        chunks.append(_interactions(cfg, rng, truth, user, item, day))
        done += n
        if progress:
            progress(done, n_impressions)
    raw = pd.concat(chunks, ignore_index=True)
    raw = raw[raw["day"] < cfg.days]  # late ratings past the horizon have not happened yet
    raw["order"] = raw["event_type"].map(EVENT_TYPE_ORDER)
    raw = raw.sort_values(["day", "order"], kind="stable").reset_index(drop=True)
    seconds = np.round(raw["day"].to_numpy() * 86_400 * 1000).astype("int64")
    events = pd.DataFrame({
        "event_id": [f"e{cfg.seed:x}-{k:09d}" for k in range(len(raw))],
        "user_id": users["user_id"].to_numpy()[raw["u"].to_numpy()],
        "item_id": items["item_id"].to_numpy()[raw["i"].to_numpy()],
        "event_type": raw["event_type"].to_numpy(),
        "ts": start + pd.to_timedelta(seconds, unit="ms"),
        "dwell_s": raw["dwell_s"].to_numpy(), "rating": raw["rating"].to_numpy(),
        "session_id": [f"s{u}-{int(d)}" for u, d in zip(raw["u"].to_numpy(), raw["day"].to_numpy())],
        "device": np.array(["mobile", "desktop", "tablet"])[raw["u"].to_numpy() % 3],
    })
    # every impression was a slot of the user's feed that day: its events name that list
    # (what tells a passed-over slot from an item the user found alone, hyperrec.features.windows.listed)
    events["request_id"] = "feed-" + events["session_id"]
    meta = {"source": "synthetic", "config": asdict(cfg), "categories": CATEGORIES,
            "horizon_end": str(start + pd.Timedelta(days=cfg.days))}
    return World(validate_frame(users, User, "users"), validate_frame(items, Item, "items"),
                 validate_frame(events, Event, "events"), truth, meta)
