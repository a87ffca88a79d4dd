"""Feature definitions in one place, and the pure functions that compute their tables.

`feature_repo/definitions.py` builds Feast objects from `FEATURE_VIEWS`; training reads the
same names through `training_feature_refs()`; serving through `online_feature_refs()`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import numpy as np
import pandas as pd

ACTIVITY_WINDOW_DAYS = 7


@dataclass(frozen=True)
class FeatureViewSpec:
    name: str
    entity: str  # join key
    features: dict[str, str]  # feature name -> "string" | "float" | "int"
    ttl: timedelta  # how long a row stays valid (0: forever)
    online: bool = True


USER_PROFILE = FeatureViewSpec(
    "user_profile", "user_id", {"age_band": "string", "region": "string"}, timedelta(0))
USER_ACTIVITY = FeatureViewSpec(
    "user_activity", "user_id",
    {"views_7d": "int", "clicks_7d": "int", "purchases_7d": "int", "mean_dwell_7d": "float"},
    timedelta(days=2))  # daily snapshots: older than two days is stale, not zero
ITEM_METADATA = FeatureViewSpec(
    "item_metadata", "item_id",
    {"category": "string", "brand": "string", "price": "float"}, timedelta(0))
FEATURE_VIEWS = (USER_PROFILE, USER_ACTIVITY, ITEM_METADATA)
USER_VIEWS = (USER_PROFILE, USER_ACTIVITY)

MISSING = {"string": "", "float": 0.0, "int": 0}


def refs(views=FEATURE_VIEWS) -> list[str]:
    """Feast feature references "view:feature" for the given views."""
    return [f"{v.name}:{f}" for v in views for f in v.features]


def fill_missing(df: pd.DataFrame, views=FEATURE_VIEWS) -> pd.DataFrame:
    """Replace missing feature values (absent or expired) with their typed defaults."""
    df = df.copy()
    for v in views:
        for f, kind in v.features.items():
            if f in df:
                col = df[f].astype(object).where(df[f].notna(), MISSING[kind])
                df[f] = col.astype({"string": str, "float": "float32", "int": "int64"}[kind])
    return df


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
        "event_timestamp": items["created_ts"],
    })


def user_activity_table(events: pd.DataFrame) -> pd.DataFrame:
    """Daily snapshots, stamped at the end of each day a user was active: counts over the
    trailing 7 days. A snapshot only ever summarizes events before its own timestamp."""
    ev = events[["user_id", "event_type", "ts", "dwell_s"]].copy()
    ev["day"] = ev["ts"].dt.floor("D")
    for kind, col in (("view", "views"), ("click", "clicks"), ("purchase", "purchases")):
        ev[col] = (ev["event_type"] == kind).astype("int64")
    ev["dwell"] = ev["dwell_s"].where(ev["event_type"] == "click", 0.0).fillna(0.0)
    daily = ev.groupby(["user_id", "day"])[["views", "clicks", "purchases", "dwell"]].sum()
    daily = daily.reset_index().set_index("day")
    window = f"{ACTIVITY_WINDOW_DAYS}D"
    rolled = (daily.groupby("user_id")[["views", "clicks", "purchases", "dwell"]]
              .rolling(window).sum().reset_index())
    return pd.DataFrame({
        "user_id": rolled["user_id"].astype(str),
        "views_7d": rolled["views"].astype("int64"),
        "clicks_7d": rolled["clicks"].astype("int64"),
        "purchases_7d": rolled["purchases"].astype("int64"),
        "mean_dwell_7d": (rolled["dwell"] / np.maximum(rolled["clicks"], 1)).astype("float32"),
        "event_timestamp": rolled["day"] + pd.Timedelta(days=1),
    })


OFFLINE_TABLES = {
    USER_PROFILE.name: lambda w: user_profile_table(w.users),
    USER_ACTIVITY.name: lambda w: user_activity_table(w.events),
    ITEM_METADATA.name: lambda w: item_metadata_table(w.items),
}
