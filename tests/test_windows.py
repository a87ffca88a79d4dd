"""The windowed-feature fold: exact on hand-made events, and the streaming and offline
implementations agree on a generated world."""

import numpy as np
import pandas as pd
import pytest

from hyperrec.data.generate import WorldConfig, generate_world
from hyperrec.features.windows import StreamFolds, replay


def events(rows):
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "ts", "dwell_s", "rating"])
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    return df


HAND = events([
    ("u", "a", "view", "2026-01-01 10:00:00", None, None),
    ("u", "a", "click", "2026-01-01 10:00:10", 30.0, None),
    ("u", "b", "view", "2026-01-01 10:40:00", None, None),  # the first two left the 30 min window
    ("v", "b", "view", "2026-01-01 10:41:00", None, None),
    ("u", "b", "click", "2026-01-02 10:00:10", 10.0, None),  # exactly one day after the first click
    ("u", "c", "rating", "2026-01-02 11:00:00", None, 5.0),
])


@pytest.mark.parametrize("fold", [lambda e: StreamFolds().fold_frame(e), replay], ids=["stream", "replay"])
def test_hand_computed_windows(fold):
    out = fold(HAND)
    ua = out["user_activity"].set_index(["user_id", "event_timestamp"])
    stamp = pd.Timestamp("2026-01-01 10:40:00.001", tz="UTC")  # 1 ms after the event
    row = ua.loc[("u", stamp)]
    assert (row.views_30m, row.clicks_30m, row.views_1d, row.clicks_1d) == (1, 0, 2, 1)
    assert row.ctr_1d == pytest.approx(0.5) and row.mean_dwell_1d == pytest.approx(30.0)
    row = ua.loc[("u", pd.Timestamp("2026-01-02 10:00:10.001", tz="UTC"))]
    # the first click is exactly 1 day old: outside (t - 1d, t]
    assert (row.clicks_1d, row.views_1d, row.clicks_7d, row.views_7d) == (1, 1, 2, 2)
    assert row.mean_dwell_7d == pytest.approx(20.0)
    row = ua.loc[("u", pd.Timestamp("2026-01-02 11:00:00.001", tz="UTC"))]  # a rating expires too
    assert (row.views_30m, row.clicks_30m, row.clicks_1d) == (0, 0, 1)
    ip = out["item_popularity"].set_index(["item_id", "event_timestamp"])
    assert ip.loc[("b", pd.Timestamp("2026-01-01 10:41:00.001", tz="UTC"))].item_views_1d == 2
    recent = out["user_recent_items"].set_index("user_id").loc["u"].iloc[-1]
    assert list(recent.recent_items) == ["c", "b", "a"]  # newest first; views are not engagement
    viewed = out["user_recent_views"].set_index("user_id").loc["u"].iloc[-1]
    # views only, newest first, with their times; no request_id: found alone, not a list slot
    assert list(viewed.recent_browsed) == ["b", "a"] and list(viewed.recent_views) == []
    assert list(viewed.recent_browsed_ts) == [pd.Timestamp(f"2026-01-01 10:{m}:00", tz="UTC").timestamp()
                                              for m in ("40", "00")]


@pytest.mark.parametrize("fold", [lambda e: StreamFolds().fold_frame(e), replay], ids=["stream", "replay"])
def test_views_of_served_lists_are_kept_apart_from_items_found_alone(fold):
    history = events([("u", item, "view", f"2026-01-01 10:0{i}:00", None, None)
                      for i, item in enumerate(["a", "b", "c", "d"])])
    history["request_id"] = ["r1", None, "r2", ""]  # an empty request_id names no list either
    snapshots = fold(history)["user_recent_views"]
    assert [list(x) for x in snapshots["recent_views"]] == [["a"], ["a"], ["c", "a"], ["c", "a"]]
    assert [list(x) for x in snapshots["recent_browsed"]] == [[], ["b"], ["b"], ["d", "b"]]
    assert list(snapshots["recent_views_ts"].iloc[-1]) == [pd.Timestamp(f"2026-01-01 10:0{m}:00", tz="UTC").timestamp()
                                                           for m in (2, 0)]


def test_stream_and_replay_agree_on_a_generated_world():
    world = generate_world(WorldConfig(users=40, items=25, days=9, events=5_000, seed=2))
    served = np.random.default_rng(0).random(len(world.events)) < 0.7  # most views came from served lists
    world.events["request_id"] = np.where(served, "r", None)
    streamed, replayed = StreamFolds().fold_frame(world.events), replay(world.events)
    for name, s in streamed.items():
        r = replayed[name][s.columns]
        pd.testing.assert_frame_equal(s.reset_index(drop=True), r.reset_index(drop=True), check_dtype=False)


@pytest.mark.parametrize("fold", [lambda e: StreamFolds().fold_frame(e), replay], ids=["stream", "replay"])
def test_purchases_are_distinct_newest_first_and_only_purchases(fold):
    history = events([("u", item, kind, f"2026-01-01 10:0{i}:00", None, None)
                      for i, (item, kind) in enumerate([("a", "purchase"), ("b", "click"), ("b", "purchase"),
                                                        ("a", "purchase"), ("c", "add_to_cart")])])
    bought = fold(history)["user_purchases"]
    assert [list(x) for x in bought["purchased_items"]] == [["a"], ["b", "a"], ["a", "b"]]
    assert bought["event_timestamp"].iloc[-1] == pd.Timestamp("2026-01-01 10:03:00.001", tz="UTC")
