"""Monitoring over served traffic: outcome attribution, hit rate, embedding drift, index
recall, one `hyperrec monitor` pass end to end (impression log + event log -> decision,
run submitted, safeguards, dashboard snapshot), and the embedded retrain submitter."""

import json
import sys
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import pytest

from hyperrec.data.eventlog import EventLog
from hyperrec.data.impressions import ImpressionLog, ImpressionRecorder
from hyperrec.models.index import BruteForceIndex, IvfIndex
from hyperrec.monitor.traffic import attribute, embedding_drift, hit_rate, index_recall, shown_items
from hyperrec.monitor.trigger import FEATURES, TriggerConfig
from hyperrec.online.serving_path import Recommended

T0 = datetime(2026, 3, 1, tzinfo=UTC).timestamp()


def served(request_id, ts, user, items, categories=None, policy="personalized", arm="control", version=1,
           query=None, teams=None, **features):
    rec = Recommended(item_ids=list(items), titles=list(items), categories=list(categories or ["c"] * len(items)),
                      scores=[1.0 - 0.1 * i for i in range(len(items))], reasons=[""] * len(items), policy=policy,
                      arm=arm, model_version=version, query=query, teams=teams)
    return request_id, user, rec, {f: float(features.get(f, 1.0)) for f in FEATURES}, ts


def write(log, rows, query_every=1):
    recorder = ImpressionRecorder(log, flush_s=60, query_every=query_every)
    rids, users, recs, feats, times = zip(*rows)
    recorder.add(rids, users, recs, feats, times)
    recorder.close()


def event(eid, user, item, ts, kind="click", request_id=None):
    e = {"event_id": eid, "user_id": user, "item_id": item, "event_type": kind,
         "ts": datetime.fromtimestamp(ts, UTC).isoformat(), "dwell_s": 5.0 if kind == "click" else None}
    return e | ({"request_id": request_id} if request_id else {})


def test_outcomes_are_attributed_by_request_id_or_the_latest_list_within_the_window(tmp_path):
    log = ImpressionLog(tmp_path / "impressions.db")
    write(log, [served("r1", T0, "u1", ["a", "b", "c"]), served("r2", T0 + 60, "u1", ["b", "d"]),
                served("r3", T0, "u2", ["a", "b"]), served("r4", T0, None, ["a"], policy="popular")])
    impressions = log.read()
    assert list(impressions["request_id"]) == ["r1", "r3", "r4", "r2"] and impressions.loc[0, "views_7d"] == 1.0
    events = pd.DataFrame([
        event("e1", "u1", "a", T0 + 10, request_id="r1"),   # exact
        event("e2", "u1", "b", T0 + 120),                    # loose: the latest list with b is r2, not r1
        event("e3", "u2", "b", T0 + 3 * 3600),               # loose but hours later: no list
        event("e4", "u1", "c", T0 + 30, kind="purchase"),    # a purchase from r1
        event("e5", "u9", "a", T0 + 5),                       # another user's click
    ])
    out = attribute(shown_items(impressions), events).set_index(["request_id", "item_id"])
    assert out["clicked"].to_dict() == {("r1", "a"): 1, ("r1", "b"): 0, ("r1", "c"): 0, ("r3", "a"): 0,
                                        ("r3", "b"): 0, ("r4", "a"): 0, ("r2", "b"): 1, ("r2", "d"): 0}
    assert out["purchased"].sum() == 1 and out.loc[("r1", "c"), "purchased"] == 1
    assert out.loc[("r1", "a"), "dwell_s"] == 5.0 and out.loc[("r2", "b"), "dwell_s"] == 5.0  # exact and loose
    assert out["dwell_s"].notna().sum() == 2
    rates = hit_rate(out.reset_index())
    assert rates["lists"] == 4 and rates["hit_rate"] == 0.5 and rates["hit_rate_personalized"] == 2 / 3


def test_data_quality_names_a_feature_gone_missing_or_out_of_range():
    from hyperrec.monitor.traffic import data_quality

    rng = np.random.default_rng(2)
    reference = pd.DataFrame({f: rng.gamma(3, 10, 2_000) for f in FEATURES})
    current = pd.DataFrame({f: rng.gamma(3, 10, 2_000) for f in FEATURES})
    assert data_quality(reference, current)["problems"] == []
    current.loc[:99, "ctr_7d"] = np.nan  # 5% missing
    current["mean_dwell_7d"] *= 100  # a unit change upstream (seconds -> centiseconds)
    report = data_quality(reference, current)
    assert report["problems"] == ["ctr_7d", "mean_dwell_7d"]
    assert report["columns"]["ctr_7d"]["missing_share"] == pytest.approx(0.05)
    assert report["columns"]["mean_dwell_7d"]["out_of_range_share"] > 0.9


def test_embedding_drift_is_small_on_the_same_distribution_and_large_after_a_shift():
    rng = np.random.default_rng(0)
    cov = np.diag([4.0, 2.0, 1.0, 0.5, 0.1, 0.1, 0.1, 0.1])

    def frame(n, shift=0.0):
        q = rng.multivariate_normal(np.zeros(8), cov, n).astype(np.float32)
        q[:, 0] += shift
        return pd.DataFrame({"query": list(q)})

    same = embedding_drift(frame(800), frame(800))
    moved = embedding_drift(frame(800), frame(800, shift=1.5))
    assert same.max_distance < 0.1 and moved.distances["pc1"] > 0.5
    assert embedding_drift(frame(800), frame(10)) is None  # too few sampled queries to say


def test_served_item_drift_sees_recommendations_move_in_the_item_space():
    from hyperrec.monitor.traffic import served_item_drift

    rng = np.random.default_rng(5)
    item_ids = np.array([f"i{j}" for j in range(200)])
    embeddings = rng.normal(size=(200, 8)).astype(np.float32)
    embeddings[100:, 0] += 4.0  # the second half of the catalog lies elsewhere

    def lists(items, n):
        return pd.DataFrame({"items": [[(items[(i + j) % len(items)], "c", 1.0) for j in range(5)] for i in range(n)]})

    first_half, second_half = item_ids[:100], item_ids[100:]
    same = served_item_drift(lists(first_half, 300), lists(first_half[::-1], 300), item_ids, embeddings)
    moved = served_item_drift(lists(first_half, 300), lists(second_half, 300), item_ids, embeddings)
    assert same.max_distance < 0.2 and moved.max_distance > 1.0 and moved.n_current == 1_500
    assert served_item_drift(lists(first_half, 3), lists(second_half, 3), item_ids, embeddings) is None


def test_index_recall_is_exact_for_brute_force_and_measured_for_an_approximate_index():
    rng = np.random.default_rng(1)
    items = rng.normal(size=(4_000, 16)).astype(np.float32)
    queries = rng.normal(size=(100, 16)).astype(np.float32)
    assert index_recall(BruteForceIndex.build(items), items, queries, k=20) == 1.0
    coarse = index_recall(IvfIndex.build(items, nlist=64, nprobe=1), items, queries, k=20)
    fine = index_recall(IvfIndex.build(items, nlist=64, nprobe=64), items, queries, k=20)
    assert coarse < 0.9 and fine == 1.0


def test_the_monitor_decodes_only_new_rows_and_rereads_after_an_erasure(tmp_path, monkeypatch):
    """A pass reuses what earlier passes decoded, picks up rows logged since, and after a
    user's erasure deleted logged rows it never reports them again."""
    from hyperrec.config import load_settings
    from hyperrec.data import impressions
    from monitoring import job

    monkeypatch.setattr(job, "_DECODED", {})
    settings = load_settings(tmp_path / "home")
    log, events = ImpressionLog(settings.impression_log), EventLog(settings.event_log)
    assert job._served(settings).empty and "model_version" in job._served(settings)  # no rows yet, same columns
    write(log, [served("r2", T0 + 60, "u2", ["b"]), served("r1", T0, "u1", ["a"])])
    events.append([event("e1", "u1", "a", T0 + 5, request_id="r1")])
    assert list(job._served(settings)["request_id"]) == ["r1", "r2"] and len(job._events(settings)) == 1
    decoded, real_decode = [], impressions._decode
    monkeypatch.setattr(impressions, "_decode", lambda rows: decoded.append(len(rows)) or real_decode(rows))
    write(log, [served("r3", T0 - 30, "u3", ["c"])])  # logged later, served earlier: still in time order
    events.append([event("e2", "u2", "b", T0 + 65, request_id="r2")])
    assert list(job._served(settings)["request_id"]) == ["r3", "r1", "r2"] and decoded == [1]
    assert list(job._events(settings)["event_id"]) == ["e1", "e2"]
    log.db.execute("DELETE FROM impressions WHERE user_id = 'u1'")  # what an erasure does
    events.db.execute("DELETE FROM events WHERE event_id = 'e1'")
    assert list(job._served(settings)["request_id"]) == ["r3", "r2"]
    assert list(job._events(settings)["event_id"]) == ["e2"]


class FakeSubmitter:
    def __init__(self):
        self.submitted, self.running = [], True

    def submit(self, decision):
        self.submitted.append(decision["reasons"])
        return f"run-{len(self.submitted)}"

    def is_running(self, run_id):
        return self.running


def traffic(rng, n, start, shift, prefix, categories=("c0", "c1", "c2", "c3")):
    """`n` lists 50 s apart; users click the first item with p 0.15; after the shift the
    activity features double."""
    rows, events = [], []
    for i in range(n):
        ts = start + 50 * i
        items = [f"i{(i + j) % 50}" for j in range(5)]
        feats = {"views_7d": rng.poisson(20 * (1 + shift)), "clicks_7d": rng.poisson(3 * (1 + shift)),
                 "ctr_7d": rng.beta(2, 12), "mean_dwell_7d": rng.gamma(3, 10), "recency_s": rng.exponential(600),
                 "hour_of_day": int(ts // 3600) % 24}
        rows.append(served(f"{prefix}{i}", ts, f"u{i % 300}", items,
                           categories=[categories[(i + j) % 4] for j in range(5)],
                           query=rng.normal(size=8).astype(np.float32) + shift, **feats))
        if rng.random() < 0.15:
            events.append(event(f"{prefix}e{i}", f"u{i % 300}", items[0], ts + 5, request_id=f"{prefix}{i}"))
    return rows, events


@pytest.mark.slow
def test_one_monitor_pass_decides_submits_and_respects_its_safeguards(settings):
    from monitoring.dashboard import list_windows
    from monitoring.job import paths, run_once

    rng = np.random.default_rng(3)
    log, events = ImpressionLog(settings.impression_log), EventLog(settings.event_log)
    ref_rows, ref_events = traffic(rng, 2_000, T0, 0.0, "ref")
    write(log, ref_rows, query_every=5)
    submitter = FakeSubmitter()
    config = TriggerConfig(min_clicks=150)
    early = run_once(settings, submitter, champion=1, config=config, probe_index=False, dashboard=False)
    assert early["status"] == "window_not_ready"  # a day of reference, then a few hours: not a whole day yet

    cur_rows, cur_events = traffic(rng, 2_400, T0 + 100_000 + 3_600, 1.0, "cur")
    write(log, cur_rows, query_every=5)
    events.append(ref_events + cur_events)
    report = run_once(settings, submitter, champion=1, config=config, probe_index=False)
    assert report["status"] == "fired" and report["run_id"] == "run-1" and submitter.submitted
    assert any(r.startswith("feature:views_7d") for r in report["reasons"])
    assert report["embedding_drift"]["distances"]["norm"] > 0.5
    assert 0.1 < report["hit_rate"] < 0.2
    [variant] = report["outcomes"]  # one arm, one version
    assert (variant["arm"], variant["model_version"], variant["mean_dwell_s"]) == ("control", 1, 5.0)
    assert variant["lists"] == report["window"]["lists"] and 0.02 < variant["ctr"] < 0.04
    assert "unavailable" in report["item_embedding_drift"]["error"]  # no registered model in this test
    assert "views_7d" in report["data_quality"]["problems"]  # doubled activity leaves the reference's range
    # the window ends 30 min before the newest list (clicks still arriving are not counted as misses)
    assert report["window"]["to"] == pytest.approx(cur_rows[-1][4] - 1800)
    assert len(list_windows(paths(settings)["workspace"], "hyperrec")) == 1

    again = run_once(settings, submitter, champion=1, config=config, probe_index=False, dashboard=False)
    assert again["status"] == "blocked" and again["blocked_by"] == "in_flight" and len(submitter.submitted) == 1
    submitter.running = False  # the run ended: the cooldown (from the first decision) still holds
    third = run_once(settings, submitter, champion=1, config=config, probe_index=False, dashboard=False)
    assert third["blocked_by"] == "cooldown" and len(submitter.submitted) == 1
    decisions = [json.loads(line) for line in paths(settings)["decisions"].read_text().splitlines()]
    assert [d.get("status") for d in decisions if d["event"] == "decision"] == ["fired", "blocked", "blocked"]
    assert any(d["event"] == "run_finished" and d["run_id"] == "run-1" for d in decisions)


STUB = """
import sys, time
from hyperrec.config import load_settings
from hyperrec.training.retrain import _status_path, _write
args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
settings = load_settings(args["--home"])
time.sleep(1.0)
_write(_status_path(settings, args["--run-id"]), {"run_id": args["--run-id"], "state": "succeeded"})
"""


def test_local_retrain_runs_detached_and_reports_when_it_ended(settings):
    from hyperrec.training.retrain import LocalRetrain, run_status

    submitter = LocalRetrain(settings, command=[sys.executable, "-c", STUB])
    run_id = submitter.submit({"reasons": ["feature:views_7d"]})
    assert submitter.is_running(run_id) and run_status(settings, run_id)["reasons"] == ["feature:views_7d"]
    deadline = time.monotonic() + 60
    while submitter.is_running(run_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert run_status(settings, run_id)["state"] == "succeeded" and not submitter.is_running(run_id)


def test_a_retrain_that_died_without_a_status_counts_as_ended(settings):
    from hyperrec.training.retrain import LocalRetrain

    submitter = LocalRetrain(settings, command=[sys.executable, "-c", "import sys; sys.exit(3)"])
    run_id = submitter.submit({})
    deadline = time.monotonic() + 30
    while submitter.is_running(run_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not submitter.is_running(run_id)


def test_a_snapshot_appends_logged_events_once(settings):
    from hyperrec.data.generate import WorldConfig, generate_world
    from hyperrec.data.world import load_world, save_world
    from hyperrec.training.retrain import snapshot_world

    world = generate_world(WorldConfig(users=30, items=20, days=3, events=600, seed=4))
    save_world(world, settings.data_dir / "world")
    first = world.events.iloc[0]
    later = world.events["ts"].max() + timedelta(minutes=1)
    replayed = {k: v for k, v in first.to_dict().items() if not pd.isna(v)} | {"ts": first["ts"].isoformat()}
    log = EventLog(settings.event_log)
    result = log.append([event("new1", first["user_id"], first["item_id"], later.timestamp()), replayed],
                        now=later.to_pydatetime() + timedelta(minutes=1))
    assert result.stored == 2  # the world's own event, sent again through ingestion
    snap = load_world(snapshot_world(settings, settings.data_dir / "snapshots" / "s1"))
    assert len(snap.events) == len(world.events) + 1  # the replayed world event is not doubled
    assert snap.events["event_id"].is_unique and snap.events["ts"].is_monotonic_increasing


def test_only_the_newest_snapshots_are_kept(settings):
    """Each run's snapshot is a full copy of the world: the oldest go once SNAPSHOTS_KEPT newer exist."""
    import os

    from hyperrec.data.generate import WorldConfig, generate_world
    from hyperrec.data.world import save_world
    from hyperrec.training.retrain import SNAPSHOTS_KEPT, snapshot_world

    save_world(generate_world(WorldConfig(users=30, items=20, days=3, events=600, seed=4)), settings.data_dir / "world")
    made = []
    for i in range(SNAPSHOTS_KEPT + 2):
        made.append(snapshot_world(settings, settings.snapshots_dir / f"run-{i}"))
        os.utime(made[-1] / "events.parquet", (1_000 + i, 1_000 + i))  # distinct ages, whatever the clock's grain
    kept = sorted(p.name for p in settings.snapshots_dir.iterdir())
    assert kept == [f"run-{i}" for i in range(2, SNAPSHOTS_KEPT + 2)]


def _registry(settings, versions: int, champion: int, challenger: int) -> None:
    """A registry with `versions` versions, `champion` and `challenger` (on trial) set; no
    artifacts needed."""
    from hyperrec.registry.model_registry import configure, move_alias, start_challenger

    client = configure(settings)
    client.create_registered_model(settings.model_name)
    for _ in range(versions):
        client.create_model_version(settings.model_name, source=(settings.home / "nothing").as_uri())
    move_alias(settings, champion, "test")
    start_challenger(settings, challenger, "test")


def _two_versions(settings):
    """Versions 1 (champion) and 2 (challenger on trial)."""
    _registry(settings, 2, champion=1, challenger=2)


def trial_traffic(settings, rng, n, p_click: dict[int, float], start: float, prefix: str) -> None:
    """Log `n` lists 20 s apart from `start`, users alternating between the versions, and a
    click on the first item with the version's probability."""
    rows, events = [], []
    for i in range(n):
        version, ts, rid = 1 + i % 2, start + 20 * i, f"{prefix}{i}"
        rows.append(served(rid, ts, f"u{i % 600}", ["a", "b", "c"], version=version))
        if rng.random() < p_click[version]:
            events.append(event(f"{rid}-click", f"u{i % 600}", "a", ts + 5, request_id=rid))
    write(ImpressionLog(settings.impression_log), rows)
    EventLog(settings.event_log).append(events)


def interleaved_traffic(settings, rng, n, p_click: dict[int, float], start: float, teams: tuple[int, int] = (1, 2),
                        prefix: str = "mix") -> None:
    """Log `n` interleaved lists of version 2's trial 20 s apart: items a, b from one of
    `teams` and c, d from the other (which team leads alternates), each clicked with its
    team's probability."""
    rows, events = [], []
    for i in range(n):
        ts, rid, user = start + 20 * i, f"{prefix}{i}", f"u{i % 600}"
        teams_ = [teams[0]] * 2 + [teams[1]] * 2 if i % 2 else [teams[1]] * 2 + [teams[0]] * 2
        rows.append(served(rid, ts, user, ["a", "b", "c", "d"], version=2, teams=teams_))
        events += [event(f"{rid}-{item}", user, item, ts + 5, request_id=rid)
                   for item, team in zip("abcd", teams_) if rng.random() < p_click[team]]
    write(ImpressionLog(settings.impression_log), rows)
    EventLog(settings.event_log).append(events)


def test_the_monitor_judges_an_interleaved_trial_by_team(settings):
    """Servers that interleave log each item's team; the monitor judges those lists by the
    per-list difference of the teams' clicks, and promotes the preferred challenger."""
    from hyperrec.registry.model_registry import challenger_version, champion_version
    from monitoring.job import run_once

    _two_versions(settings)
    interleaved_traffic(settings, np.random.default_rng(12), 1_500, {1: 0.10, 2: 0.16}, T0)
    shown = shown_items(ImpressionLog(settings.impression_log).read())
    assert shown["interleaved"].all() and shown.groupby("request_id")["team"].nunique().eq(2).all()
    trial = run_once(settings, FakeSubmitter(), probe_index=False, dashboard=False)["trial"]
    assert trial["design"] == "interleaved" and trial["lists"]["interleaved"] > 1_000
    means = trial["metric"]["means"]
    assert trial["action"] == "promote", trial["reason"]
    assert 0.15 < means["champion"] < 0.25 and 0.25 < means["challenger"] < 0.40  # two items a team
    assert champion_version(settings) == 2 and challenger_version(settings) is None
    # the new champion's reference is what it serves on its own, not its half of the trial's lists
    after = run_once(settings, FakeSubmitter(), probe_index=False, dashboard=False)
    assert after["status"] == "reference_not_ready" and "served 0 lists" in after["detail"]


def test_the_monitor_promotes_a_challenger_that_wins_its_online_trial(settings):
    from hyperrec.registry.model_registry import challenger_version, champion_version
    from monitoring.job import paths, run_once

    _two_versions(settings)
    rng = np.random.default_rng(11)
    trial_traffic(settings, rng, 600, {1: 0.15, 2: 0.30}, T0, "early")
    early = run_once(settings, FakeSubmitter(), probe_index=False, dashboard=False)
    assert early["trial"]["action"] == "continue" and "need 500" in early["trial"]["reason"]
    assert challenger_version(settings) == 2

    trial_traffic(settings, rng, 4_000, {1: 0.15, 2: 0.30}, T0 + 20_000, "more")
    report = run_once(settings, FakeSubmitter(), probe_index=False, dashboard=False)
    trial = report["trial"]
    means = trial["metric"]["means"]
    assert trial["action"] == "promote" and means["challenger"] > means["champion"]
    assert trial["lists"]["champion"] >= 500 and trial["metric"]["p_always_valid"] < 0.05
    assert champion_version(settings) == 2 and challenger_version(settings) is None
    recorded = [json.loads(line) for line in paths(settings)["trials"].read_text().splitlines()]
    assert [r["action"] for r in recorded] == ["continue", "promote"]
    assert run_once(settings, FakeSubmitter(), probe_index=False, dashboard=False).get("trial") is None


def test_a_holdback_trial_counts_only_the_lists_since_its_champion_first_served(settings):
    """After a second retrain, the champion it replaced (v2) is held back against the new v3.
    v2 served long before, in v1's trial too: those interleaved lists (teams 1 and 2, logged
    as v2's) and v2's own lists say nothing of v3, and before they were left out they made
    v3 look five times worse than v2 and rolled back every later retrain in `make demo`."""
    from hyperrec.registry.model_registry import challenger_version, champion_version
    from monitoring.job import run_once

    _registry(settings, 3, champion=3, challenger=2)
    rng = np.random.default_rng(5)
    interleaved_traffic(settings, rng, 800, {1: 0.05, 2: 0.30}, T0, (1, 2), "v1v2-")  # v1's trial: v2 against v1
    interleaved_traffic(settings, rng, 300, {2: 0.30}, T0 + 20_000, (2, 2), "v2-")  # v2 alone, as champion
    interleaved_traffic(settings, rng, 1_200, {2: 0.10, 3: 0.20}, T0 + 30_000, (3, 2), "v3v2-")  # this trial
    trial = run_once(settings, FakeSubmitter(), probe_index=False, dashboard=False)["trial"]
    assert (trial["champion"], trial["challenger"]) == (3, 2)
    assert trial["lists"]["interleaved"] <= 1_200  # none of the lists before v3 first served
    means = trial["metric"]["means"]
    assert means["champion"] > means["challenger"], trial["reason"]  # v3's team is clicked twice as often
    assert trial["action"] == "retire" and champion_version(settings) == 3 and challenger_version(settings) is None


def _lists(rng, n, start, p_click, prefix):
    rows, events = [], []
    for i in range(n):
        ts = start + 50 * i
        items = [f"i{(i + j) % 50}" for j in range(5)]
        rows.append(served(f"{prefix}{i}", ts, f"u{i % 300}", items, categories=[f"c{(i + j) % 4}" for j in range(5)],
                           hour_of_day=int(ts // 3600) % 24, recency_s=rng.exponential(600)))
        if rng.random() < p_click:
            events.append(event(f"{prefix}e{i}", f"u{i % 300}", items[0], ts + 5, request_id=f"{prefix}{i}"))
    return rows, events


@pytest.mark.slow
def test_the_short_window_fires_within_hours_while_the_days_window_is_not_ready(settings):
    """A day of reference, then 8 hours: the day's window is not ready, so the last 6 hours
    are judged against the reference's same times of day by the short rule (outcome checks
    only). The same CTR: no drift; a CTR fallen by two thirds: it fires and submits."""
    from monitoring.job import paths, run_once, same_time_of_day

    rng = np.random.default_rng(5)
    config = TriggerConfig(short_min_requests=300, short_min_clicks=15)
    log, events = ImpressionLog(settings.impression_log), EventLog(settings.event_log)
    ref_rows, ref_events = _lists(rng, 1_800, T0, 0.3, "ref")  # 25 h
    write(log, ref_rows)
    calm_rows, calm_events = _lists(rng, 576, T0 + 90_000, 0.3, "calm")  # 8 h, the same CTR
    write(log, calm_rows)
    events.append(ref_events + calm_events)
    submitter = FakeSubmitter()
    calm = run_once(settings, submitter, champion=1, config=config, probe_index=False, dashboard=False)
    assert calm["status"] == "window_not_ready" and calm["short_window"]["status"] == "no_drift"
    assert calm["short_window"]["window"]["lists"] == pytest.approx(432, abs=2)  # 6 h at one list per 50 s
    assert 400 <= calm["short_window"]["window"]["reference_lists"] <= 470  # the same 6 h of the reference day
    assert not submitter.submitted

    drop_rows, drop_events = _lists(rng, 576, T0 + 90_000 + 8 * 3600, 0.1, "drop")
    write(log, drop_rows)
    events.append(drop_events)
    report = run_once(settings, submitter, champion=1, config=config, probe_index=False, dashboard=False)
    assert report["status"] == "fired" and report["run_id"] == "run-1" and report["reasons"] == ["outcome:ctr"]
    assert report["short_window"]["window_s"] == 6 * 3600
    decisions = [json.loads(line) for line in paths(settings)["decisions"].read_text().splitlines()]
    assert [d["status"] for d in decisions] == ["no_drift", "fired"]
    # a reference too thin at those hours (a day mostly spent in a trial) gives no verdict
    thin = run_once(settings, submitter, champion=1, config=TriggerConfig(short_min_requests=500, short_min_clicks=15),
                    probe_index=False, dashboard=False)
    assert thin["short_window"]["status"] == "reference_too_small" and len(submitter.submitted) == 1
    # times of day: a window across midnight takes the reference's lists on both sides of it
    ref = pd.DataFrame({"ts": T0 + np.arange(0, 86_400, 3_600.0)})
    assert len(same_time_of_day(ref, T0 + 86_400 * 3 - 3 * 3600, T0 + 86_400 * 3 + 3 * 3600)) == 6


def test_the_monitors_download_of_a_version_is_fetched_again_once_an_erasure_redacted_it(settings, monkeypatch):
    """The monitor keeps a download of each version it checks (its own folder on a cluster):
    a version redacted since (a grown erasure_redactions tag) is downloaded again."""
    from hyperrec.registry import model_registry
    from monitoring import job

    fetched, count = [], {"redactions": 0}

    def download(settings, version, folder):
        (folder / "model").mkdir(parents=True, exist_ok=True)
        (folder / "model" / "vocab.json").write_text(f"fetch {len(fetched)}")
        fetched.append(version)
        return folder / "model"

    monkeypatch.setattr(model_registry, "model_version_dir", download)
    monkeypatch.setattr(model_registry, "redactions", lambda settings, version: count["redactions"])
    first = job._model_dir(settings, 3)
    assert job._model_dir(settings, 3) == first and fetched == [3]  # once per version
    count["redactions"] = 1
    again = job._model_dir(settings, 3)
    assert fetched == [3, 3] and (again / "vocab.json").read_text() == "fetch 1"
