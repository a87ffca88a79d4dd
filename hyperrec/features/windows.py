"""Windowed features from the event stream: counts per event type over 30 min / 1 day /
7 days, dwell and CTR, each user's recent engaged items, recent views (those of served
lists apart from those the user found alone), and the items each user has bought.

Two implementations of one definition: `StreamFolds` folds one event at a time (the
stream processor, pushing online), `replay` computes the same snapshots for a whole
history at once (the offline tables, vectorized: ~50x faster). A test holds them equal,
so training and serving cannot disagree on what a feature means.

A snapshot is stamped 1 ms after the event it includes, so a point-in-time join for a
label event sees the state just *before* that event, never the label itself.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from hyperrec.data.event_types import CANONICAL

WINDOWS_S = {"30m": 1800, "1d": 86_400, "7d": 7 * 86_400}
COUNTED = ("view", "click", "add_to_cart", "purchase")
# what enters a user's recent-items list: positive events and any explicit rating (rating
# a film at all means it was watched: the sequence signal, whatever the score); a workspace
# that declares its own types passes its EventTypes.engaged instead
ENGAGED = CANONICAL.engaged
RECENT_N = 20
RECENT_VIEWS_N = 30  # a few days of a typical user's views (of each kind: listed, browsed)
PURCHASED_N = 200  # distinct items kept per user: what serving must never offer again
STAMP_DELAY = pd.Timedelta(milliseconds=1)


@dataclass
class _Window:
    span_ms: int
    events: deque = field(default_factory=deque)  # (ts_ms, type, dwell)
    counts: dict = field(default_factory=lambda: dict.fromkeys(COUNTED, 0))
    dwell_sum: float = 0.0

    def add(self, ts_ms: int, kind: str, dwell: float) -> None:
        self.events.append((ts_ms, kind, dwell))
        self.counts[kind] += 1
        self.dwell_sum += dwell

    def expire(self, ts_ms: int) -> None:
        """Drop events that left the window by `ts_ms`."""
        while self.events and self.events[0][0] <= ts_ms - self.span_ms:
            _, old_kind, old_dwell = self.events.popleft()
            self.counts[old_kind] -= 1
            self.dwell_sum -= old_dwell


class WindowFolder:
    """Per-entity sliding-window counters (amortized O(1) per event)."""

    def __init__(self, prefix_types: dict[str, str], windows: dict[str, int] = WINDOWS_S, prefix: str = ""):
        self.prefix_types = prefix_types  # event type -> feature name, e.g. "click" -> "clicks"
        self.windows = windows
        self.prefix = prefix  # on every feature name, so user and item features never collide
        self.state: dict[str, dict[str, _Window]] = {}

    def fold(self, key: str, ts_ms: int, kind: str, dwell: float) -> dict:
        """Add one event for `key` and return its feature snapshot."""
        wins = self.state.get(key)
        if wins is None:
            wins = self.state[key] = {w: _Window(s * 1000) for w, s in self.windows.items()}
        for win in wins.values():
            win.expire(ts_ms)
            if kind in COUNTED:
                win.add(ts_ms, kind, dwell)
        p = self.prefix
        row = {f"{p}last_event_ts": ts_ms // 1000}
        for w, win in wins.items():
            for kind_name, name in self.prefix_types.items():
                row[f"{p}{name}_{w}"] = win.counts[kind_name]
            clicks = win.counts["click"]
            row[f"{p}mean_dwell_{w}"] = win.dwell_sum / clicks if clicks else 0.0
            row[f"{p}ctr_{w}"] = clicks / win.counts["view"] if win.counts["view"] else 0.0
        return row


class RecentItems:
    """The last `n` items per user of the events `kinds`, newest first, with their times:
    by default the RECENT_N engaged ones (`recent_items`)."""

    def __init__(self, n: int = RECENT_N, kinds: tuple[str, ...] = ENGAGED, name: str = "recent_items"):
        self.n, self.kinds, self.name = n, kinds, name
        self.state: dict[str, deque] = {}

    def fold(self, user: str, item: str, ts_ms: int) -> dict:
        recent = self.state.setdefault(user, deque(maxlen=self.n))
        recent.appendleft((item, ts_ms // 1000))
        return self.snapshot(user)

    def snapshot(self, user: str) -> dict:
        recent = self.state.get(user, ())
        return {self.name: [i for i, _ in recent], f"{self.name}_ts": [t for _, t in recent]}


def listed(events: pd.DataFrame) -> np.ndarray:
    """Which events name the served list they came from (a request_id): a user's view of a
    list slot is an impression they may pass over; a view without one is a user finding
    the item alone (search, browsing), which says what they want."""
    if "request_id" not in events:
        return np.zeros(len(events), bool)
    return (events["request_id"].fillna("").astype(str) != "").to_numpy()


class RecentViews:
    """Each user's last RECENT_VIEWS_N views of served lists (`recent_views`) and, apart, of
    items found alone (`recent_browsed`), newest first with their times: what the feedback
    query reads (`hyperrec.online.feedback`). One snapshot carries both lists."""

    kinds = ("view",)

    def __init__(self, n: int = RECENT_VIEWS_N):
        self.lists = {True: RecentItems(n, self.kinds, "recent_views"),
                      False: RecentItems(n, self.kinds, "recent_browsed")}

    def fold(self, user: str, item: str, ts_ms: int, from_list: bool) -> dict:
        self.lists[from_list].fold(user, item, ts_ms)
        return self.lists[True].snapshot(user) | self.lists[False].snapshot(user)

    def forget(self, user: str) -> None:
        for folder in self.lists.values():
            folder.state.pop(user, None)

    def __contains__(self, user: str) -> bool:
        return any(user in folder.state for folder in self.lists.values())


class Purchases:
    """The distinct items each user bought, most recently bought first (PURCHASED_N kept)."""

    def __init__(self, n: int = PURCHASED_N):
        self.n = n
        self.state: dict[str, list[str]] = {}

    def fold(self, user: str, item: str) -> dict:
        bought = [item, *(i for i in self.state.get(user, ()) if i != item)][:self.n]
        self.state[user] = bought
        return {"purchased_items": list(bought)}


USER_TYPES = {"view": "views", "click": "clicks", "add_to_cart": "carts", "purchase": "purchases"}
ITEM_TYPES = {"view": "views", "click": "clicks"}
ITEM_WINDOWS_S = {"1d": 86_400, "7d": 7 * 86_400}


@dataclass
class StreamFolds:
    """All the folds the platform keeps, fed by one event at a time."""

    users: WindowFolder = field(default_factory=lambda: WindowFolder(USER_TYPES))
    items: WindowFolder = field(default_factory=lambda: WindowFolder(ITEM_TYPES, ITEM_WINDOWS_S, "item_"))
    recent: RecentItems = field(default_factory=RecentItems)
    purchases: Purchases = field(default_factory=Purchases)
    viewed: RecentViews = field(default_factory=RecentViews)
    # "all"; "users": only the per-user folds; "items": only item popularity. A user's events
    # stay in one Kafka partition, an item's do not: hyperrec.features.kafka_source folds them apart
    scope: str = "all"

    @classmethod
    def for_types(cls, engaged: tuple[str, ...] = ENGAGED, scope: str = "all") -> StreamFolds:
        """Folds whose recent engaged items are events of the types `engaged`."""
        if scope not in ("all", "users", "items"):
            raise ValueError(f"scope: {scope!r} is not all, users or items")
        return cls(recent=RecentItems(kinds=tuple(engaged)), scope=scope)

    def forget(self, user_ids) -> None:
        """Drop erased users' windows, recent, viewed and bought items (item counters are aggregates and stay)."""
        for user in user_ids:
            self.users.state.pop(user, None)
            self.recent.state.pop(user, None)
            self.purchases.state.pop(user, None)
            self.viewed.forget(user)

    def fold_frame(self, events: pd.DataFrame,
                   failed: list[tuple[int, Exception]] | None = None) -> dict[str, pd.DataFrame]:
        """Fold events (in time order) and return snapshots per table: user_activity,
        item_popularity, user_recent_items, user_purchases, user_recent_views; each row stamped 1 ms
        after its event. With `failed`, a row that cannot be folded is skipped and reported
        there as (its index label, the error) instead of stopping the batch."""
        events = events.sort_values("ts", kind="stable")
        if failed is not None and events["ts"].isna().any():
            failed += [(i, ValueError("ts: missing")) for i in events.index[events["ts"].isna()]]
            events = events[events["ts"].notna()]
        ts_ms = events["ts"].dt.as_unit("ms").astype("int64").to_numpy()  # any unit: parquet's are us
        dwell = pd.to_numeric(events["dwell_s"], errors="coerce").fillna(0.0).to_numpy() if "dwell_s" in events \
            else np.zeros(len(events))
        rows = {"user_activity": [], "item_popularity": [], "user_recent_items": [], "user_purchases": [],
                "user_recent_views": []}
        for label, user, item, kind, t, d, from_list in zip(
                events.index, events["user_id"].to_numpy(), events["item_id"].to_numpy(),
                events["event_type"].to_numpy(), ts_ms, dwell, listed(events)):
            if failed is None:
                self.fold_event(rows, user, item, kind, t, d, from_list)
                continue
            try:
                self.fold_event(rows, user, item, kind, t, d, from_list)
            except Exception as exc:  # noqa: BLE001  (one bad row must not stop the stream)
                failed.append((label, exc))
        return {name: _stamp(pd.DataFrame(r)) for name, r in rows.items()}

    def fold_event(self, rows: dict[str, list], user, item, kind, t: int, d: float, from_list) -> None:
        """Fold one event into every window and append its snapshots to `rows`."""
        d = float(d) if kind == "click" else 0.0
        if self.scope != "users":
            rows["item_popularity"].append({"item_id": item, "ts_ms": t, **self.items.fold(item, t, kind, d)})
        if self.scope == "items":
            return
        rows["user_activity"].append({"user_id": user, "ts_ms": t, **self.users.fold(user, t, kind, d)})
        if kind in self.recent.kinds:
            rows["user_recent_items"].append({"user_id": user, "ts_ms": t, **self.recent.fold(user, item, t)})
        if kind == "purchase":
            rows["user_purchases"].append({"user_id": user, "ts_ms": t, **self.purchases.fold(user, item)})
        if kind in self.viewed.kinds:
            rows["user_recent_views"].append({"user_id": user, "ts_ms": t,
                                              **self.viewed.fold(user, item, t, bool(from_list))})


def _stamp(df: pd.DataFrame) -> pd.DataFrame:
    if "ts_ms" not in df:  # no rows and no columns (a stream batch without such events)
        return df
    df["event_timestamp"] = pd.to_datetime(df.pop("ts_ms"), unit="ms", utc=True) + STAMP_DELAY
    return df


def _sliding_counts(keys: np.ndarray, ts_ms: np.ndarray, kinds: np.ndarray, dwell: np.ndarray,
                    folder: WindowFolder) -> dict[str, np.ndarray]:
    """For every event, counts over the same key's events in (ts - window, ts], in the
    input's order, matching WindowFolder.fold exactly (ties kept in input order)."""
    n, p = len(keys), folder.prefix
    prefix_types, windows = folder.prefix_types, folder.windows
    codes = pd.factorize(keys)[0].astype(np.int64)
    order = np.lexsort((np.arange(n), ts_ms, codes))
    t = ts_ms[order]
    span = max(windows.values()) * 1000
    stride = int(t.max() - t.min()) + span + 1 if n else 1
    base = codes[order] * stride + (t - (t.min() if n else 0))
    counted = np.isin(kinds[order], COUNTED)
    indicators = {k: (kinds[order] == k) for k in prefix_types}
    indicators.setdefault("click", kinds[order] == "click")
    indicators.setdefault("view", kinds[order] == "view")
    cum = {k: np.concatenate([[0], np.cumsum(v)]) for k, v in indicators.items()}
    cum_dwell = np.concatenate([[0.0], np.cumsum(np.where(counted, dwell[order], 0.0))])
    end = np.arange(1, n + 1)
    out: dict[str, np.ndarray] = {}
    for w, seconds in windows.items():
        start = np.searchsorted(base, base - seconds * 1000, side="right")
        counts = {k: c[end] - c[start] for k, c in cum.items()}
        for kind, name in prefix_types.items():
            out[f"{p}{name}_{w}"] = counts[kind]
        clicks, views = counts["click"], counts["view"]
        dwell_sum = cum_dwell[end] - cum_dwell[start]
        out[f"{p}mean_dwell_{w}"] = np.where(clicks > 0, dwell_sum / np.maximum(clicks, 1), 0.0)
        out[f"{p}ctr_{w}"] = np.where(views > 0, clicks / np.maximum(views, 1), 0.0)
    # carry the last event time, then undo the sort
    last = {f"{p}last_event_ts": t // 1000}
    result = {}
    for name, values in {**last, **out}.items():
        unsorted = np.empty_like(values)
        unsorted[order] = values
        result[name] = unsorted
    return result


def _window_table(events: pd.DataFrame, key: str, folder: WindowFolder, ts_ms, dwell) -> pd.DataFrame:
    cols = _sliding_counts(events[key].to_numpy(), ts_ms, events["event_type"].to_numpy(), dwell, folder)
    return pd.DataFrame({key: events[key].to_numpy(), "ts_ms": ts_ms, **cols})


def _recent_table(events: pd.DataFrame, ts_ms: np.ndarray, folder: RecentItems) -> pd.DataFrame:
    picked = np.isin(events["event_type"].to_numpy(), folder.kinds)
    pos = pd.DataFrame({"user_id": events["user_id"].to_numpy()[picked],
                        "item_id": events["item_id"].to_numpy()[picked], "ts_ms": ts_ms[picked]})
    rows, n = [], folder.n
    for user, group in pos.groupby("user_id", sort=False):
        items, times = group["item_id"].tolist(), (group["ts_ms"] // 1000).tolist()
        for i, (row, t) in enumerate(zip(group.index, group["ts_ms"].tolist())):
            lo = max(0, i - n + 1)
            rows.append((row, user, t, items[lo:i + 1][::-1], times[lo:i + 1][::-1]))
    table = pd.DataFrame(rows, columns=["row", "user_id", "ts_ms", folder.name, f"{folder.name}_ts"])
    return table.sort_values("row").drop(columns="row").reset_index(drop=True)  # event order


def _views_table(events: pd.DataFrame, ts_ms: np.ndarray, folder: RecentViews) -> pd.DataFrame:
    """RecentViews' snapshots at every view, in event order: per user, the newest n of each
    kind of view so far (a slice per row, as in _recent_table)."""
    viewed = np.isin(events["event_type"].to_numpy(), folder.kinds)
    frame = pd.DataFrame({"user_id": events["user_id"].to_numpy()[viewed],
                          "item_id": events["item_id"].to_numpy()[viewed],
                          "ts_ms": ts_ms[viewed], "from_list": listed(events)[viewed]})
    names = [folder.lists[True].name, folder.lists[False].name]
    columns = ["row", "user_id", "ts_ms", *[c for n in names for c in (n, f"{n}_ts")]]
    n, rows = folder.lists[True].n, []
    for user, group in frame.groupby("user_id", sort=False):
        seen = {True: ([], []), False: ([], [])}
        for row, item, t, from_list in zip(group.index, group["item_id"].tolist(), group["ts_ms"].tolist(),
                                           group["from_list"].tolist()):
            items, times = seen[from_list]
            items.append(item)
            times.append(t // 1000)
            rows.append((row, user, t, *[part[-n:][::-1] for kind in (True, False) for part in seen[kind]]))
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values("row").drop(columns="row").reset_index(drop=True)


def _purchases_table(events: pd.DataFrame, ts_ms: np.ndarray) -> pd.DataFrame:
    bought = events["event_type"].to_numpy() == "purchase"
    folder, rows = Purchases(), []
    for user, item, t in zip(events["user_id"].to_numpy()[bought], events["item_id"].to_numpy()[bought],
                             ts_ms[bought]):
        rows.append({"user_id": user, "ts_ms": t, **folder.fold(user, item)})  # purchases are few: fold them
    return pd.DataFrame(rows, columns=["user_id", "ts_ms", "purchased_items"])


def replay(events: pd.DataFrame, engaged: tuple[str, ...] = ENGAGED) -> dict[str, pd.DataFrame]:
    """The snapshots StreamFolds.for_types(engaged).fold_frame(events) would produce, computed
    at once. `engaged`: the types kept as recent engaged items (hyperrec.data.event_types)."""
    events = events.sort_values("ts", kind="stable").reset_index(drop=True)
    ts_ms = events["ts"].dt.as_unit("ms").astype("int64").to_numpy()
    dwell = np.where(events["event_type"].to_numpy() == "click",
                     events["dwell_s"].fillna(0.0).to_numpy() if "dwell_s" in events else 0.0, 0.0)
    folds = StreamFolds.for_types(engaged)
    tables = {
        "user_activity": _window_table(events, "user_id", folds.users, ts_ms, dwell),
        "item_popularity": _window_table(events, "item_id", folds.items, ts_ms, dwell),
        "user_recent_items": _recent_table(events, ts_ms, folds.recent),
        "user_purchases": _purchases_table(events, ts_ms),
        "user_recent_views": _views_table(events, ts_ms, folds.viewed),
    }
    return {name: _stamp(t) for name, t in tables.items()}
