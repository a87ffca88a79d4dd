import numpy as np
import pandas as pd
import pytest

from hyperrec.data.interactions import positives, temporal_split
from hyperrec.evaluation.metrics import ndcg_at_k, recall_at_k, top_k_excluding
from hyperrec.features.views import fill_missing, price_bucket, request_context_features


def ev(rows):
    df = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "ts", "dwell_s", "rating"])
    df["ts"] = pd.to_datetime(df["ts"], utc=True)
    return df


def test_fill_missing_gives_typed_defaults():
    df = pd.DataFrame({"age_band": [None, "25-34"], "clicks_7d": [None, 3], "mean_dwell_7d": [np.nan, 1.5],
                       "recent_items": [None, ["a", "b"]], "hour_of_day": [None, 5]})
    out = fill_missing(df)
    assert list(out["age_band"]) == ["", "25-34"] and list(out["clicks_7d"]) == [0, 3]
    assert out["clicks_7d"].dtype == "int64" and out["mean_dwell_7d"].dtype == "float32"
    assert list(out["recent_items"]) == [[], ["a", "b"]] and list(out["hour_of_day"]) == [0, 5]


def test_request_context_features():
    monday_0930 = int(pd.Timestamp("2026-01-05 09:30", tz="UTC").timestamp())
    df = pd.DataFrame({"request_ts": [monday_0930] * 3, "last_event_ts": [monday_0930 - 90, None, 0]})
    out = request_context_features(df)
    assert out["hour_of_day"].tolist() == [9, 9, 9] and out["day_of_week"].tolist() == [0, 0, 0]
    assert out["recency_s"].tolist() == [90, -1, -1]  # unknown last event -> -1


def test_price_bucket_is_log2():
    assert price_bucket(pd.Series([0.0, 1.0, 3.0, 100.0, None])).tolist() == [0, 1, 2, 6, 0]


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
