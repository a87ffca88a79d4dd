import numpy as np
import pandas as pd
import pytest

from hyperrec.features import fill_missing, user_activity_table
from hyperrec.interactions import positives, temporal_split
from hyperrec.metrics import ndcg_at_k, recall_at_k, top_k_excluding


def ev(rows):
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "ts", "dwell_s", "rating"])
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    return df


def test_user_activity_snapshots_count_the_trailing_week_and_never_the_future():
    events = ev([
        ("u", "a", "view", "2026-01-01 10:00", None, None),
        ("u", "a", "click", "2026-01-01 10:01", 30.0, None),
        ("u", "b", "click", "2026-01-03 09:00", 10.0, None),
        ("u", "b", "purchase", "2026-01-03 09:05", None, None),
        ("u", "c", "click", "2026-01-09 12:00", 50.0, None),  # 8 days after the first
    ])
    snap = user_activity_table(events).set_index("event_timestamp")
    jan2 = snap.loc[pd.Timestamp("2026-01-02", tz="UTC")]
    assert (jan2.views_7d, jan2.clicks_7d, jan2.purchases_7d, jan2.mean_dwell_7d) == (1, 1, 0, 30.0)
    jan4 = snap.loc[pd.Timestamp("2026-01-04", tz="UTC")]
    assert (jan4.clicks_7d, jan4.purchases_7d, jan4.mean_dwell_7d) == (2, 1, 20.0)
    jan10 = snap.loc[pd.Timestamp("2026-01-10", tz="UTC")]  # the Jan 1 events left the window
    assert (jan10.views_7d, jan10.clicks_7d, jan10.mean_dwell_7d) == (0, 2, 30.0)


def test_fill_missing_gives_typed_defaults():
    df = pd.DataFrame({"age_band": [None, "25-34"], "clicks_7d": [None, 3], "mean_dwell_7d": [np.nan, 1.5]})
    out = fill_missing(df)
    assert list(out["age_band"]) == ["", "25-34"] and list(out["clicks_7d"]) == [0, 3]
    assert out["clicks_7d"].dtype == "int64" and out["mean_dwell_7d"].dtype == "float32"


def test_positives_and_per_user_temporal_split():
    events = ev([
        ("u1", "a", "click", "2026-01-01", 1.0, None),
        ("u1", "a", "purchase", "2026-01-02", None, None),  # same pair again: kept once
        ("u1", "b", "view", "2026-01-02", None, None),  # a view is not positive
        ("u1", "c", "rating", "2026-01-03", None, 2.0),  # a low rating is not positive
        ("u1", "d", "rating", "2026-01-04", None, 4.5),
        ("u1", "e", "click", "2026-01-05", 1.0, None),
        ("u1", "f", "click", "2026-01-06", 1.0, None),
        ("u1", "g", "click", "2026-01-07", 1.0, None),
        ("u2", "a", "click", "2026-01-01", 1.0, None),  # one interaction: train only
        ("u3", "g", "click", "2026-01-01", 1.0, None),
        ("u3", "z", "click", "2026-01-02", 1.0, None),  # z never in train: dropped from test
    ])
    pos = positives(events)
    assert list(pos[pos.user_id == "u1"]["item_id"]) == ["a", "d", "e", "f", "g"]
    train, test = temporal_split(pos)
    assert list(test[test.user_id == "u1"]["item_id"]) == ["g"]  # floor(5 * 0.2) = 1, the latest
    assert "u2" not in set(test.user_id) and "z" not in set(test.item_id)
    assert len(train) + len(test) == len(pos) - 1  # only the cold test item left


def test_recall_and_ndcg_match_hand_computed_values():
    ranked = [["a", "b", "c"], ["x", "y", "z"]]
    relevant = [{"b", "q"}, {"z"}]
    assert recall_at_k(ranked, relevant, 2) == pytest.approx((1 / 2 + 0) / 2)
    assert recall_at_k(ranked, relevant, 3) == pytest.approx((1 / 2 + 1) / 2)
    ideal_u1 = 1 + 1 / np.log2(3)
    expected = ((1 / np.log2(3)) / ideal_u1 + (1 / np.log2(4)) / 1) / 2
    assert ndcg_at_k(ranked, relevant, 3) == pytest.approx(expected)


def test_top_k_excluding_skips_seen_items_and_orders_by_score():
    scores = np.array([[0.9, 0.1, 0.5, 0.7], [0.1, 0.2, 0.3, 0.4]])
    ids = np.array(["a", "b", "c", "d"])
    assert top_k_excluding(scores, ids, [{0}, set()], 2) == [["d", "c"], ["d", "c"]]
