"""The closed loop's summary table: per-arm rates with intervals and each ablated
mechanism's lift, judged per served list."""

import numpy as np
import pandas as pd
import pytest

from hyperrec.demo.closed_loop import arm_table


def _outcomes(p_click: dict[str, float], lists: int = 4_000, k: int = 5, seed: int = 0) -> pd.DataFrame:
    """Per shown item, k per list; a list's items are clicked with its arm's probability."""
    rng = np.random.default_rng(seed)
    rows = []
    for arm, p in p_click.items():
        for i in range(lists):
            clicked = rng.random(k) < p
            for pos in range(k):
                rows.append({"request_id": f"{arm}-{i}", "ts": float(i), "user_id": f"{arm}-u{i % 500}",
                             "arm": arm, "policy": "personalized", "model_version": 1, "position": pos,
                             "clicked": int(clicked[pos]), "purchased": 0})
    return pd.DataFrame(rows)


def test_lifts_are_full_minus_the_ablated_arm_per_list():
    table = arm_table(_outcomes({"full": 0.10, "no-mmr": 0.10, "no-bandit": 0.05}))
    assert table.loc["full", "impressions"] == 20_000 and table.loc["full", "lists"] == 4_000
    assert np.isnan(table.loc["full", "mechanism_lift"])
    hit = 1 - 0.9 ** 5  # P(a list of 5 gets a click) at 0.10 per item
    assert table.loc["full", "lists_with_click"] == pytest.approx(hit, abs=0.02)
    bandit = table.loc["no-bandit"]
    expected = hit - (1 - 0.95 ** 5)
    assert bandit["mechanism_lift"] == pytest.approx(expected, abs=0.03)
    assert bandit["lift_low"] < bandit["mechanism_lift"] < bandit["lift_high"] and bandit["lift_p_holm"] < 1e-6
    assert table.loc["no-mmr", "lift_low"] < 0 < table.loc["no-mmr", "lift_high"]
    assert table.loc["no-mmr", "lift_p_holm"] > 0.05


def test_without_a_full_arm_there_are_only_rates():
    table = arm_table(_outcomes({"control": 0.1, "diverse-explore": 0.1}, lists=500))
    assert "mechanism_lift" not in table and list(table.index) == ["control", "diverse-explore"]


def test_ctr_by_team_splits_interleaved_lists_by_the_version_that_placed_each_item():
    from hyperrec.demo.closed_loop import ctr_by_team

    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    steps = pd.DataFrame({"step": [0, 1], "sim_end": [t0 + pd.Timedelta(hours=6), t0 + pd.Timedelta(hours=12)]})
    ts = (t0 + pd.Timedelta(hours=1)).timestamp(), (t0 + pd.Timedelta(hours=7)).timestamp()
    outcomes = pd.DataFrame({
        "ts": [ts[0]] * 4 + [ts[1]] * 4 + [ts[1]],
        "policy": ["personalized"] * 8 + ["popular"],
        "team": [1, 1, 1, 1, 1, 2, 1, 2, 1],  # step 0: v1 alone; step 1: an interleaved list
        "clicked": [1, 0, 0, 0, 0, 1, 0, 1, 1],
    })
    table = ctr_by_team(outcomes, steps).set_index(["step", "model_version"])
    assert table.loc[(0, 1), "shown"] == 4 and table.loc[(0, 1), "ctr"] == 0.25
    assert table.loc[(1, 1), "ctr"] == 0.0 and table.loc[(1, 2), "ctr"] == 1.0  # the popular list is left out


def test_hidden_quality_scores_the_top_slots_by_each_users_taste_on_the_day_shown():
    """Two users who like item a; user 1's taste moves to item b within day 1. The
    measure reads the truth on the day each item was shown, per step and user group, and
    leaves out popular lists and slots below the top."""
    from hyperrec.data.truth import Truth
    from hyperrec.data.world import World
    from hyperrec.demo.closed_loop import LoopConfig, hidden_quality
    from hyperrec.demo.story import QUALITY_GROUPS, story_numbers

    e = np.eye(2)
    truth = Truth(user_base=e[[0, 0]], user_shift=np.array([[0.0, 0.0], [-2.0, 2.0]]), drift_start=np.array([9.0, 1.0]),
                  drift_days=np.array([1.0, 0.5]), item_vec=e, item_bias=np.zeros(2), item_created_day=np.zeros(2))
    world = World(pd.DataFrame({"user_id": ["u0", "u1"]}), pd.DataFrame({"item_id": ["a", "b"]}), pd.DataFrame(),
                  truth, {"config": {"start": "2026-01-01"}})
    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    steps = pd.DataFrame({"step": [0, 1], "sim_end": [t0 + pd.Timedelta(days=1), t0 + pd.Timedelta(days=2)],
                          "ctr": [0.2, 0.1]})
    day = [(t0 + pd.Timedelta(hours=h)).timestamp() for h in (12, 36)]
    outcomes = pd.DataFrame({  # each user is shown item b (at day 0.5 and day 1.5), in the top slot
        "ts": [day[0], day[0], day[1], day[1], day[1], day[1]],
        "user_id": ["u0", "u1", "u0", "u1", "u1", "u1"], "item_id": ["b", "b", "b", "b", "a", "b"],
        "position": [0, 0, 0, 0, 7, 0], "policy": ["personalized"] * 5 + ["popular"]})
    table = hidden_quality(world, outcomes, steps).set_index(["step", "drifting"])
    p = truth.click_probability
    assert table.loc[(0, True), "p_click"] == pytest.approx(p(np.array([1]), np.array([1]), 0.5)[0])
    assert table.loc[(1, True), "p_click"] == pytest.approx(p(np.array([1]), np.array([1]), 1.5)[0])
    assert table.loc[(1, True), "shown"] == 1  # position 7 and the popular list are left out
    assert table.loc[(1, True), "p_click"] > 2 * table.loc[(0, True), "p_click"]  # b is u1's taste after the drift
    assert table.loc[(1, False), "p_click"] == pytest.approx(table.loc[(0, False), "p_click"])

    retrains = [{"sim_time": steps["sim_end"][0]}]
    story = story_numbers(steps, retrains, [], drift_day=1.0, loop=LoopConfig(step_hours=24),
                          quality=table.reset_index())
    assert story["ctr"] == {"CTR before the drift": 0.2, "CTR in the step the retrain started": 0.2,
                            "CTR after the retrain": 0.1}
    after = story["hidden_p_click"]["after the retrain"]
    assert after[QUALITY_GROUPS[True]] == pytest.approx(table.loc[(1, True), "p_click"])
    assert after[QUALITY_GROUPS[False]] == pytest.approx(table.loc[(1, False), "p_click"])


def test_story_has_a_phase_per_confirmed_model_and_the_share_of_the_drop_won_back():
    """Two retrains, each decided by a trial: each confirmed model's phase runs from its
    trial's decision to the step the next retrain started in (that step is still its own)."""
    from hyperrec.demo.closed_loop import LoopConfig
    from hyperrec.demo.story import story_numbers

    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    ends = [t0 + pd.Timedelta(days=d) for d in range(1, 9)]
    steps = pd.DataFrame({"step": range(8), "sim_end": ends, "ctr": [0.1, 0.04, 0.05, 0.06, 0.07, 0.08, 0.09, 0.085]})
    retrains = [{"sim_time": ends[1]}, {"sim_time": ends[4]}]
    trials = [{"sim_time": ends[2], "challenger": 1, "champion": 2, "action": "retire"},  # holdback: v2 confirmed
              {"sim_time": ends[5], "challenger": 3, "champion": 2, "action": "promote"}]
    story = story_numbers(steps, retrains, trials, drift_day=1.0, loop=LoopConfig(step_hours=24))
    assert story["ctr"] == pytest.approx({"CTR before the drift": 0.1, "CTR in the step the retrain started": 0.04,
                                          "CTR after v2 confirmed": 0.065, "CTR after v3 promoted": 0.0875})
    assert story["recovered"]["phase"] == "after v3 promoted"
    assert story["recovered"]["share_of_drop"] == pytest.approx((0.0875 - 0.04) / (0.1 - 0.04))


def test_the_plot_draws_three_rounds_of_retrain_and_trial(tmp_path):
    """Four versions, three trials: every version serving beside another gets its line (the
    palette once ran out at three), a handful of items makes no point, and the PNG is written."""
    from PIL import Image

    from hyperrec.demo.closed_loop import plot, side_by_side

    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    n = 40
    steps = pd.DataFrame({"step": range(n), "sim_end": [t0 + pd.Timedelta(hours=6 * (i + 1)) for i in range(n)],
                          "ctr": np.linspace(0.09, 0.06, n), "hit_rate": np.linspace(0.6, 0.4, n)})
    at = steps["sim_end"]
    retrains = [{"sim_time": at[s], "champion_before": v, "champion_after": v, "challenger": v + 1}
                for s, v in ((8, 1), (20, 2), (32, 3))]
    trials = [{"sim_time": at[s], "challenger": v + 1, "champion": v, "action": "promote"}
              for s, v in ((11, 1), (23, 2), (35, 3))]
    per_version = pd.DataFrame([{"step": s, "model_version": version, "shown": 400 if s > start else 10, "ctr": 0.07}
                                for start, champion in ((8, 1), (20, 2), (32, 3))
                                for s in range(start, start + 4) for version in (champion, champion + 1)])
    lines = side_by_side(per_version, dict(zip(steps["step"], np.arange(n) / 4)))
    assert sorted(lines) == [1, 2, 3, 4]
    assert np.nanmax(lines[2][0]) == 23 / 4 and np.nanmin(lines[2][0]) == 9 / 4  # no point from 10 items
    assert np.isnan(lines[2][0]).sum() == 1  # v2 serves in two trials: two lines
    out = plot(steps, retrains, 1.0, tmp_path / "ctr.png", 10.0, trials, per_version)
    assert Image.open(out).size == (990, 572)


def test_drift_response_gives_the_troughs_after_the_drift_and_the_hours_to_the_first_retrain():
    """Six-hour steps, the drift starting after day 1 (step 4): the troughs are the lowest
    step after it over the mean before it (CTR; the drifted users' hidden click
    probability), and the first retrain's monitor pass came 18 h after the drift began."""
    from hyperrec.demo.closed_loop import LoopConfig
    from hyperrec.demo.story import drift_response, story_numbers

    t0 = pd.Timestamp("2026-01-01", tz="UTC")
    ends = [t0 + pd.Timedelta(hours=6 * (i + 1)) for i in range(10)]
    ctr = [0.10, 0.08, 0.10, 0.08, 0.09, 0.06, 0.045, 0.07, 0.08, 0.09]
    steps = pd.DataFrame({"step": range(10), "sim_end": ends, "ctr": ctr, "lists": [100] * 10})
    p_drifted = [0.2, 0.2, 0.2, 0.2, 0.15, 0.1, 0.05, 0.08, 0.12, 0.15]
    quality = pd.DataFrame([{"step": s, "drifting": d, "shown": 50, "p_click": p_drifted[s] if d else 0.2}
                            for s in range(10) for d in (True, False)])
    retrains = [{"sim_time": ends[6]}]  # the pass at the end of step 6: 42 h after the loop's start
    loop = LoopConfig(step_hours=6)
    got = drift_response(steps, retrains, drift_day=1.0, loop=loop, quality=quality)
    assert got["ctr_trough_ratio"] == pytest.approx(0.045 / 0.09)
    assert got["drifted_pclick_trough_ratio"] == pytest.approx(0.05 / 0.2)
    assert got["hours_drift_to_first_retrain"] == pytest.approx(18.0)
    story = story_numbers(steps, retrains, [], drift_day=1.0, loop=loop, quality=quality)
    assert story["ctr_trough_ratio"] == got["ctr_trough_ratio"]  # top-level keys of closed_loop.json
    none = drift_response(steps, [], drift_day=1.0, loop=loop)
    assert none["hours_drift_to_first_retrain"] is None and none["drifted_pclick_trough_ratio"] is None
    # three-hour steps pool into six-hour spans, weighted by lists
    fine = pd.DataFrame({"step": range(4), "sim_end": [t0 + pd.Timedelta(hours=3 * (i + 1)) for i in range(4)],
                         "ctr": [0.1, 0.1, 0.04, 0.08], "lists": [10, 10, 10, 30]})
    got = drift_response(fine, [], drift_day=0.25, loop=LoopConfig(step_hours=3))
    assert got["ctr_trough_ratio"] == pytest.approx((0.04 * 10 + 0.08 * 30) / 40 / 0.1)


def test_write_summary_carries_the_drift_response_keys(tmp_path):
    import json

    from hyperrec.demo.story import write_summary

    story = {"ctr": {"CTR before the drift": 0.1}, "ctr_trough_ratio": 0.7, "drifted_pclick_trough_ratio": 0.5,
             "hours_drift_to_first_retrain": 18.0}
    arms = pd.DataFrame({"lists_with_click": [0.5]}, index=["full"])
    out = json.loads(write_summary(tmp_path / "c.json", story, arms, {}, 1.0, [], []).read_text())
    assert out["ctr_trough_ratio"] == 0.7 and out["hours_drift_to_first_retrain"] == 18.0
    assert out["drifted_pclick_trough_ratio"] == 0.5
