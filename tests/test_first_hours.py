"""hyperrec.demo.first_hours: which lists to drifted users were blind, what they were
served, and the ceilings of lists built from each user's evidence."""

import numpy as np
import pandas as pd
import pytest

from hyperrec.data.truth import Truth
from hyperrec.data.world import World
from hyperrec.demo.first_hours import first_hours, summary

T0 = pd.Timestamp("2026-01-01", tz="UTC")


def _at(day: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(days=day)


def _world() -> World:
    """u0 stays with category x; u1 and u2 turn from x to y on day 1 (done by day 1.5).
    Items a, b, c are x and d, e, f are y; appeal (bias) falls in that order within each."""
    e = np.eye(2)
    truth = Truth(user_base=e[[0, 0, 0]], user_shift=np.array([[0.0, 0.0], [-2.0, 2.0], [-2.0, 2.0]]),
                  drift_start=np.array([99.0, 1.0, 1.0]), drift_days=np.array([1.0, 0.5, 0.5]),
                  item_vec=e[[0, 0, 0, 1, 1, 1]], item_bias=np.array([0.6, 0.3, 0.0, 0.6, 0.3, 0.0]),
                  item_created_day=np.zeros(6))
    items = pd.DataFrame({"item_id": list("abcdef"), "category": ["x"] * 3 + ["y"] * 3})
    return World(pd.DataFrame({"user_id": ["u0", "u1", "u2"]}), items, pd.DataFrame(), truth,
                 {"config": {"start": "2026-01-01"}})


def _shown(lists: list[tuple[str, str, float, list[str]]]) -> pd.DataFrame:
    rows = [{"request_id": rid, "user_id": user, "ts": _at(day).timestamp(), "item_id": item, "position": pos,
             "policy": "personalized"} for rid, user, day, items in lists for pos, item in enumerate(items)]
    return pd.DataFrame(rows)


def test_a_list_is_blind_until_the_user_finds_or_clicks_something_after_their_drift():
    world, p = _world(), _world().truth.click_probability
    shown = _shown([("r0", "u0", 0.5, ["a", "b"]), ("r1", "u1", 0.5, ["a", "b"]), ("r2", "u2", 0.5, ["a", "b"]),
                    ("r3", "u0", 1.2, ["a", "b"]), ("r4", "u1", 1.2, ["a", "b"]), ("r5", "u2", 1.2, ["a", "d"])])
    events = pd.DataFrame({  # u1 views a list slot (names its list: not evidence); u2 finds d alone
        "user_id": ["u1", "u2", "u2"], "item_id": ["c", "d", "a"], "event_type": ["view", "view", "view"],
        "ts": [_at(1.1), _at(1.1), _at(0.9)], "request_id": ["r1", None, None]})
    result = first_hours(world, events, shown, spans=1, top=2)
    row = result["spans"].iloc[0]
    assert row["hours"] == "0-6" and row["drifted_lists"] == 2 and row["blind_share"] == 0.5

    def served(user: int, items: list[int], day: float) -> float:
        return float(p(np.full(len(items), user), np.array(items), day).mean())

    assert row["served_blind"] == pytest.approx(served(1, [0, 1], 1.2))
    assert row["served_informed"] == pytest.approx(served(2, [0, 3], 1.2))
    # u2's evidence names y: its best two items by appeal, d left out as already found
    assert row["ceiling_informed"] == pytest.approx(served(2, [4, 5], 1.2))
    assert row["hedge_drifted"] == pytest.approx(np.mean([served(u, [0, 3], 1.2) for u in (1, 2)]))
    assert row["hedge_others"] == pytest.approx(served(0, [0, 3], 1.2))
    before = result["before"]
    assert before["drifted"] == pytest.approx(np.mean([served(1, [0, 1], 0.5), served(2, [0, 1], 0.5)]))
    assert before["others"] == pytest.approx(served(0, [0, 1], 0.5))
    informed_best = max(served(2, [0, 3], 1.2), served(2, [4, 5], 1.2))
    assert row["drifted_ratio_ceiling"] == pytest.approx(
        (served(1, [0, 1], 1.2) + informed_best) / 2 / before["drifted"])
    assert row["all_ratio_ceiling"] == pytest.approx(
        (served(0, [0, 1], 1.2) + served(1, [0, 1], 1.2) + informed_best) / 3 / before["all"])
    out = summary(result)
    assert out["drifted_ratio_ceiling_min"] == pytest.approx(row["drifted_ratio_ceiling"])
    assert out["spans"][0]["blind_share"] == 0.5
