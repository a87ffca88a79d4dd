"""Retraining trigger (decision rule and safeguards) and the Evidently wrappers."""

import json

import numpy as np
import pandas as pd
import pytest

from hyperrec.bench.detection import TasteSim
from hyperrec.data.generate import CATEGORIES
from hyperrec.monitor.trigger import RetrainTrigger, TriggerConfig, Window, assess, column_drift

HOUR = 3600.0


def _window(rng, n: int = 2000, fav_ctr: float = 0.20, base_ctr: float = 0.05, k: int = 10) -> Window:
    """Served requests and impressions. Users click their four favourite categories at
    `fav_ctr`, the rest at `base_ctr`: lowering `fav_ctr` (tastes moving away) moves CTR,
    the clicked-category mix and the 7-day click features together."""
    ctr = (4 * fav_ctr + (len(CATEGORIES) - 4) * base_ctr) / len(CATEGORIES)
    views = rng.poisson(50, n)
    clicks = rng.binomial(views, ctr)
    features = pd.DataFrame({"views_7d": views, "clicks_7d": clicks, "ctr_7d": clicks / np.maximum(views, 1),
                             "mean_dwell_7d": rng.gamma(4, 7.5, n), "recency_s": rng.exponential(1e5, n),
                             "hour_of_day": rng.integers(0, 24, n)})
    category = rng.choice(CATEGORIES, n * k)
    clicked = rng.random(n * k) < np.where(np.isin(category, CATEGORIES[:4]), fav_ctr, base_ctr)
    return Window(features, pd.DataFrame({"score": rng.beta(1, 12, n * k), "category": category, "clicked": clicked}))


@pytest.fixture
def rng():
    return np.random.default_rng(7)


@pytest.fixture
def windows(rng):
    """A large reference, a same-distribution window, and one where tastes left the favourites."""
    return _window(rng, n=10_000), _window(rng), _window(rng, fav_ctr=0.05)


def test_assess_fires_on_a_ctr_collapse_and_not_on_same_distribution(windows):
    ref, same, shifted = windows
    assert assess(ref, same)["drifted"] == []
    result = assess(ref, shifted)
    assert {"outcome:ctr", "outcome:clicked_category", "feature:clicks_7d", "feature:ctr_7d"} <= set(result["drifted"])
    assert result["checks"]["outcome:ctr"]["relative_drop"] == pytest.approx(1 - 0.05 / 0.0875, abs=0.05)
    assert "feature:views_7d" not in result["drifted"]  # unshifted columns stay quiet
    # a CTR *rise* is not a reason to retrain: the CTR check is one-sided
    assert "outcome:ctr" not in assess(shifted, ref)["drifted"]


def test_trigger_on_simulated_taste_shift(tmp_path):
    """Seeded simulator: five normal days never fire; half the users changing taste does within two days."""
    sim = TasteSim(seed=0)
    sim.hours(168)
    ref = sim.hours(168)
    trigger = RetrainTrigger(tmp_path / "decisions.jsonl")
    normal = [trigger.decide(ref, sim.hours(24), "m1", now=sim.hour * HOUR) for _ in range(5)]
    assert [d.status for d in normal] == ["no_drift"] * 5
    sim.shift(0.5)
    after = [trigger.decide(ref, sim.hours(24), "m1", now=sim.hour * HOUR) for _ in range(2)]
    fired = next(d for d in after if d.retrain)
    assert fired.status == "fired"
    assert set(fired.reasons) & {"outcome:ctr", "feature:ctr_7d", "feature:clicks_7d"}


def test_min_sample_size_blocks(tmp_path, windows, rng):
    ref, _, _ = windows
    trigger = RetrainTrigger(tmp_path / "log.jsonl")
    small = _window(rng, n=500, fav_ctr=0.05)  # clearly shifted, but 500 requests < 1500
    decision = trigger.decide(ref, small, "m1", now=0)
    assert (decision.retrain, decision.status, decision.counts["requests"]) == (False, "too_few_samples", 500)
    few_clicks = _window(rng, n=1500, fav_ctr=0.01, base_ctr=0.01)  # enough requests, ~150 clicks < 200
    assert trigger.decide(ref, few_clicks, "m1", now=0).status == "too_few_samples"


def test_cooldown_blocks_until_it_expires(tmp_path, windows):
    ref, _, shifted = windows
    trigger = RetrainTrigger(tmp_path / "log.jsonl")
    first = trigger.decide(ref, shifted, "m1", now=0)
    assert first.retrain
    trigger.run_finished(first.run_id, now=HOUR)
    # a new reference (the retrained model's) so dedupe is not what blocks
    blocked = trigger.decide(ref, shifted, "m2", now=2 * HOUR)
    assert (blocked.retrain, blocked.blocked_by) == (False, "cooldown")
    assert trigger.decide(ref, shifted, "m2", now=25 * HOUR).retrain


def test_a_challenger_on_trial_blocks_a_new_run(tmp_path, windows):
    """The last retrain's model is still being A/B tested: its answer is in flight."""
    ref, _, shifted = windows
    trigger = RetrainTrigger(tmp_path / "log.jsonl")
    blocked = trigger.decide(ref, shifted, "m1", now=0, on_trial=True)
    assert (blocked.retrain, blocked.blocked_by) == (False, "trial")
    assert trigger.decide(ref, shifted, "m1", now=HOUR).retrain


def test_in_flight_run_blocks_until_finished(tmp_path, windows):
    ref, _, shifted = windows
    running = {"yes": True}
    trigger = RetrainTrigger(tmp_path / "log.jsonl", is_running=lambda run_id: running["yes"])
    assert trigger.decide(ref, shifted, "m1", now=0).retrain
    blocked = trigger.decide(ref, shifted, "m2", now=30 * HOUR)  # past the cooldown, run still going
    assert (blocked.retrain, blocked.blocked_by) == (False, "in_flight")
    running["yes"] = False  # the orchestrator reports it done: the trigger records that and may fire
    assert trigger.decide(ref, shifted, "m2", now=31 * HOUR).retrain
    assert sum(r.get("event") == "run_finished" for r in trigger.records()) == 1


def test_repeated_alarm_is_deduped(tmp_path, windows):
    ref, _, shifted = windows
    config = TriggerConfig(cooldown_s=HOUR, dedupe_s=48 * HOUR)
    trigger = RetrainTrigger(tmp_path / "log.jsonl", config)
    first = trigger.decide(ref, shifted, "m1", now=0)
    trigger.run_finished(first.run_id, now=HOUR)
    again = trigger.decide(ref, shifted, "m1", now=2 * HOUR)  # same alarm, same reference
    assert (again.retrain, again.blocked_by, again.reasons) == (False, "duplicate", first.reasons)
    assert trigger.decide(ref, shifted, "m2", now=3 * HOUR).retrain  # new reference: a new incident
    trigger.run_finished(trigger.in_flight, now=4 * HOUR)
    assert trigger.decide(ref, shifted, "m2", now=60 * HOUR).retrain  # dedupe window over, drift persists


def test_every_decision_is_recorded_and_state_survives_a_restart(tmp_path, windows, rng):
    ref, same, shifted = windows
    log = tmp_path / "monitor" / "decisions.jsonl"
    submitted = []
    trigger = RetrainTrigger(log, submit=lambda d: submitted.append(d) or "kfp-run-1")
    decisions = [trigger.decide(ref, same, "m1", now=0), trigger.decide(ref, _window(rng, n=100), "m1", now=1),
                 trigger.decide(ref, shifted, "m1", now=2)]
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert [r["status"] for r in records] == ["no_drift", "too_few_samples", "fired"] == [d.status for d in decisions]
    fired = records[-1]
    assert fired["run_id"] == "kfp-run-1" and submitted[0]["reasons"] == fired["reasons"]
    assert "outcome:ctr" in fired["reasons"]
    assert fired["checks"]["outcome:ctr"]["p_value"] < fired["checks"]["outcome:ctr"]["alpha"]
    assert fired["counts"] == {"requests": 2000, "impressions": 20_000, "clicks": int(shifted.outcomes.clicked.sum())}
    restarted = RetrainTrigger(log)  # e.g. the next CronJob run: cooldown and in-flight come from the log
    assert restarted.in_flight == "kfp-run-1"
    assert restarted.decide(ref, shifted, "m2", now=3).blocked_by == "in_flight"


def test_failed_submit_starts_no_cooldown(tmp_path, windows):
    ref, _, shifted = windows

    def broken(_):
        raise RuntimeError("pipeline API down")

    decision = RetrainTrigger(tmp_path / "log.jsonl", submit=broken).decide(ref, shifted, "m1", now=0)
    assert (decision.retrain, decision.blocked_by) == (False, "submit_failed")
    assert RetrainTrigger(tmp_path / "log.jsonl").decide(ref, shifted, "m1", now=1).retrain


def test_evidently_wrappers(tmp_path, rng):
    """Evidently's numbers for a shifted column and an unshifted one, snapshots in the workspace,
    and the numpy twin the bench uses agreeing with Evidently to float precision."""
    from monitoring.reports import column_drift as evidently_drift
    from monitoring.reports import drift_report

    ref = pd.DataFrame({"ctr_7d": rng.beta(2, 20, 3000), "views_7d": rng.poisson(50, 3000).astype(float)})
    cur = pd.DataFrame({"ctr_7d": rng.beta(2, 30, 1500), "views_7d": rng.poisson(50, 1500).astype(float)})
    workspace = tmp_path / "evidently"
    report = drift_report(ref, cur, ["ctr_7d", "views_7d"], workspace=workspace, name="features")
    cols = report["columns"]
    assert cols["ctr_7d"]["drifted"] and cols["ctr_7d"]["score"] > cols["ctr_7d"]["threshold"]
    assert not cols["views_7d"]["drifted"] and cols["views_7d"]["score"] < cols["views_7d"]["threshold"]
    assert (report["drifted_count"], report["drifted_share"], report["dataset_drift"]) == (1, 0.5, True)
    assert cols["ctr_7d"]["method"].startswith("Wasserstein")  # > 1000 reference rows: distance, not KS

    win_ref, win_cur = _window(rng, n=3000), _window(rng, n=1500, fav_ctr=0.05)
    got = evidently_drift(win_ref.outcome_frame(), win_cur.outcome_frame(), ["score"],
                          ["category", "clicked_category"], workspace=workspace)
    twin = column_drift(win_ref.outcome_frame(), win_cur.outcome_frame(), ["score"], ["category", "clicked_category"])
    for col, numbers in twin.items():
        for key in ("p_value", "distance", "n_current"):
            assert got[col][key] == pytest.approx(numbers[key], rel=1e-9, abs=1e-12), (col, key)
    assert got["clicked_category"]["p_value"] < 1e-6 and got["score"]["p_value"] > 1e-3
    snapshots = list(workspace.glob("*/snapshots/*.json"))
    assert len(snapshots) == 2 and {report["snapshot_id"], got["score"]["snapshot_id"]} == {p.stem for p in snapshots}


def test_the_short_rule_judges_outcomes_only_and_tests_categories_on_two_samples(rng):
    """TriggerConfig.short: no serving-time feature, the four outcome checks at the day's
    family alpha over four looks, and the category mix's p-value from the two-sample test
    (a small reference is a sample too: its counts are not the expected ones)."""
    short = TriggerConfig().short()
    assert short.features == () and short.n_checks == 4 and short.family_alpha == pytest.approx(0.0025)
    assert short.min_js == 0.2 and short.min_requests < TriggerConfig().min_requests
    ref, cur = _window(rng, n=500), _window(rng, n=500)
    result = assess(ref, cur, short)
    assert set(result["checks"]) == {"outcome:score", "outcome:category", "outcome:clicked_category", "outcome:ctr"}
    assert result["checks"]["outcome:category"]["p_method"] == "chi2_two_sample"
    one_sample = column_drift(ref.outcome_frame(), cur.outcome_frame(), [], ["clicked_category"])
    two_sample = column_drift(ref.outcome_frame(), cur.outcome_frame(), [], ["clicked_category"], "chi2_two_sample")
    assert two_sample["clicked_category"]["p_value"] > one_sample["clicked_category"]["p_value"]
    assert assess(ref, _window(rng, n=500, fav_ctr=0.05), short)["drifted"]  # a CTR collapse still fires


def test_short_windows_stay_quiet_without_drift_and_never_delay_the_days_verdict():
    """The bench's same-distribution 6-hour windows against the same hours of a reference
    day stay quiet; after a taste shift the short rule runs only where the day's window finds
    nothing, so it fires no later. (Its gain is in the monitor's first day after the
    reference, when the day's window is not ready: tests/test_monitor_job.py.)"""
    from hyperrec.bench.detection import detection_delay, false_alarms

    null = false_alarms(4, seed=3, config=TriggerConfig(), references=2)
    assert null["short"]["windows"] == 16 and null["short"]["alarms"] == 0 and null["short"]["assessed"] > 0
    day = detection_delay(502, TriggerConfig(), 0.5, max_days=2)
    short = detection_delay(502, TriggerConfig(), 0.5, short=True, max_days=2)
    assert short["hours"] is not None and short["hours"] <= day["hours"]
