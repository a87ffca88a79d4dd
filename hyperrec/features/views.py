"""Feature definitions in one place, and the pure functions that compute their tables.

`feature_repo/definitions.py` builds Feast objects from these specs; training reads the
same names through `refs()`; serving through `USER_VIEWS`; the stream processor pushes
rows shaped by `hyperrec.features.windows` into the `push` views.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd

from hyperrec.data.event_types import EventTypes
from hyperrec.features.windows import ITEM_TYPES, ITEM_WINDOWS_S, USER_TYPES, WINDOWS_S, replay


@dataclass(frozen=True)
class FeatureViewSpec:
    name: str
    entity: str  # join key
    features: dict[str, str]  # name -> "string" | "float" | "int" | "string_list" | "int_list"
    ttl: timedelta  # how long a value stays valid (0: forever), offline and online
    push: bool = False  # fed by the stream processor through a Feast PushSource


def _window_features(types: dict[str, str], windows: dict[str, int], prefix: str = "") -> dict[str, str]:
    out = {f"{prefix}last_event_ts": "int"}
    for w in windows:
        out |= {f"{prefix}{name}_{w}": "int" for name in types.values()}
        out |= {f"{prefix}mean_dwell_{w}": "float", f"{prefix}ctr_{w}": "float"}
    return out


USER_PROFILE = FeatureViewSpec(
    "user_profile", "user_id", {"age_band": "string", "region": "string"}, timedelta(0))
USER_ACTIVITY = FeatureViewSpec(
    "user_activity", "user_id", _window_features(USER_TYPES, WINDOWS_S), timedelta(days=7), push=True)
USER_RECENT_ITEMS = FeatureViewSpec(
    "user_recent_items", "user_id", {"recent_items": "string_list", "recent_items_ts": "int_list"},
    timedelta(days=30), push=True)
# no TTL: a purchase stays a purchase, however long the user has been away
USER_PURCHASES = FeatureViewSpec("user_purchases", "user_id", {"purchased_items": "string_list"}, timedelta(0),
                                 push=True)
# what the user looked at lately, in served lists and found alone (hyperrec.features.windows.RecentViews):
# serving's feedback query (hyperrec.online.feedback) reads the views not followed by engagement
USER_RECENT_VIEWS = FeatureViewSpec(
    "user_recent_views", "user_id", {"recent_views": "string_list", "recent_views_ts": "int_list",
                                     "recent_browsed": "string_list", "recent_browsed_ts": "int_list"},
    timedelta(days=7), push=True)
ITEM_METADATA = FeatureViewSpec(
    "item_metadata", "item_id",
    {"category": "string", "brand": "string", "price": "float", "price_bucket": "int", "description": "string"},
    timedelta(0))
ITEM_POPULARITY = FeatureViewSpec(
    "item_popularity", "item_id", _window_features(ITEM_TYPES, ITEM_WINDOWS_S, "item_"), timedelta(days=7),
    push=True)
FEATURE_VIEWS = (USER_PROFILE, USER_ACTIVITY, USER_RECENT_ITEMS, ITEM_METADATA, ITEM_POPULARITY, USER_PURCHASES,
                 USER_RECENT_VIEWS)
USER_VIEWS = (USER_PROFILE, USER_ACTIVITY, USER_RECENT_ITEMS)  # what the models learn from
# plus what re-ranking filters by and the feedback query reads
SERVING_USER_VIEWS = (*USER_VIEWS, USER_PURCHASES, USER_RECENT_VIEWS)
ITEM_VIEWS = (ITEM_METADATA, ITEM_POPULARITY)

# request-time features computed by a Feast on-demand view from the request and user_activity
REQUEST_CONTEXT = {"hour_of_day": "int", "day_of_week": "int", "recency_s": "int"}
REQUEST_TS = "request_ts"  # unix seconds, supplied with each request (or label row)

_CONTEXT_SPEC = FeatureViewSpec("request_context", "", REQUEST_CONTEXT, timedelta(0))  # for fill_missing

MISSING = {"string": "", "float": 0.0, "int": 0, "string_list": [], "int_list": []}
PANDAS_TYPES = {"string": str, "float": "float32", "int": "int64"}


def refs(views=FEATURE_VIEWS, context: bool = False) -> list[str]:
    """Feast feature references "view:feature" for the given views (+ request context)."""
    names = [f"{v.name}:{f}" for v in views for f in v.features]
    return names + [f"request_context:{f}" for f in REQUEST_CONTEXT] if context else names


def fill_missing(df: pd.DataFrame, views=FEATURE_VIEWS) -> pd.DataFrame:
    """Replace missing feature values (absent or expired) with their typed defaults."""
    df = df.copy()
    for v in (*views, _CONTEXT_SPEC):
        for f, kind in v.features.items():
            if f not in df:
                continue
            if kind.endswith("_list"):
                df[f] = [list(x) if isinstance(x, (list, tuple, np.ndarray)) else [] for x in df[f]]
            else:
                col = df[f].astype(object).where(df[f].notna(), MISSING[kind])
                df[f] = col.astype(PANDAS_TYPES[kind])
    return df


def request_context(request_ts: np.ndarray, last_event_ts) -> dict[str, np.ndarray]:
    """Body of the `request_context` on-demand view: hour (UTC), weekday (Monday = 0),
    seconds since the user's last event (-1 when unknown). Pure numpy: it also runs on
    every serving request."""
    ts = np.asarray(request_ts, dtype="int64")
    last = pd.to_numeric(np.asarray(last_event_ts), errors="coerce").astype("float64")
    known = np.isfinite(last) & (last > 0)
    recency = np.where(known, np.maximum(ts - np.nan_to_num(last), 0), -1).astype("int64")
    return {"hour_of_day": (ts // 3600) % 24, "day_of_week": (ts // 86_400 + 3) % 7,  # 1970-01-01: Thu
            "recency_s": recency}


def request_context_features(df: pd.DataFrame) -> pd.DataFrame:
    """`request_context` over a frame with request_ts and last_event_ts columns."""
    return pd.DataFrame(request_context(df[REQUEST_TS], df["last_event_ts"]), index=df.index)


def price_bucket(price: pd.Series) -> pd.Series:
    """log2 price buckets (0 for missing): robust to currency scale and outliers."""
    return np.floor(np.log2(price.fillna(0.0).clip(lower=0) + 1)).astype("int64")


def user_profile_table(users: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "user_id": users["user_id"].astype(str),
        "age_band": users["age_band"].astype(str),
        "region": users["region"].astype(str),
        "event_timestamp": users["signup_ts"],
    })


def item_metadata_table(items: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "item_id": items["item_id"].astype(str),
        "category": items["category"].astype(str),
        "brand": items["brand"].fillna("").astype(str),
        "price": items["price"].fillna(0.0).astype("float32"),
        "price_bucket": price_bucket(items["price"]),
        "description": items["description"].fillna("").astype(str),
        "event_timestamp": items["created_ts"],
    })


def offline_tables(world) -> dict[str, pd.DataFrame]:
    """Every feature view's offline table, from a world's users, items and events."""
    windowed = replay(world.events, EventTypes.of_world(world.meta).engaged)
    return {
        USER_PROFILE.name: user_profile_table(world.users),
        USER_ACTIVITY.name: windowed["user_activity"],
        USER_RECENT_ITEMS.name: windowed["user_recent_items"],
        ITEM_METADATA.name: item_metadata_table(world.items),
        ITEM_POPULARITY.name: windowed["item_popularity"],
        USER_PURCHASES.name: windowed["user_purchases"],
        USER_RECENT_VIEWS.name: windowed["user_recent_views"],
    }
