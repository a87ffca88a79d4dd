"""The data gate and the model gate, on small frames and metric dicts."""

import pandas as pd

from hyperrec.data.gate import check_world
from hyperrec.data.generate import WorldConfig, generate_world
from hyperrec.evaluation.gate import ModelGateConfig, decide


def _world():
    return generate_world(WorldConfig(users=120, items=60, days=3, events=6_000, seed=3))


def test_clean_world_passes_and_report_reads():
    w = _world()
    report = check_world(w.events, w.users, w.items)
    assert report.passed, report.to_markdown()
    assert "# Data gate: PASSED" in report.to_markdown()
    assert report.profile["events"] == len(w.events)


def test_each_kind_of_bad_data_fails_its_own_check():
    w = _world()
    events = w.events.copy()
    events.loc[:9, "user_id"] = None  # missing required field
    events.loc[20:29, "item_id"] = "no-such-item"  # orphans (schema-valid)
    events = pd.concat([events, events.iloc[100:400]])  # duplicates
    report = check_world(events, w.users, w.items, previous={"events": len(events) * 4, "categories": []})
    failed = {c.name for c in report.failures}
    assert {"events: schema", "events: duplicates", "events: rows vs champion's data",
            "items: new categories"} <= failed
    md = report.to_markdown()
    assert "FAILED" in md and "user_id: 10 rows (missing value)" in md


def _metrics(ndcg, pop=0.05, cold=None):
    m = {"ndcg_at_10": ndcg, "popularity_ndcg_at_10": pop}
    if cold is not None:
        m |= {"segment.cold_items.ndcg_at_10": cold, "segment.cold_items.users": 100.0}
    return m


def test_model_gate_blesses_a_better_model_and_rejects_worse_ones():
    assert decide(_metrics(0.10), None).blessed  # first model: beats popularity
    assert not decide(_metrics(0.051), None).blessed  # within 5% of popularity
    assert decide(_metrics(0.100, cold=0.08), _metrics(0.101, cold=0.08)).blessed  # within tolerance
    worse = decide(_metrics(0.045, pop=0.02), _metrics(0.10))
    assert not worse.blessed and not worse.canary and "ndcg_at_10 vs champion" in worse.reasons[0]
    segment = decide(_metrics(0.11, cold=0.02), _metrics(0.10, cold=0.08))
    assert not segment.blessed and segment.reasons[0].startswith("cold_items")
    assert "REJECTED" in segment.to_markdown()


def test_a_candidate_close_behind_the_champion_goes_to_an_online_trial():
    """Within the canary margin (50% overall) of the champion, and only there: offline
    metrics on logged traffic favour the champion, so the A/B test decides. Far behind
    (overall or in a segment), or behind popularity, stays rejected; a segment near zero
    for both cannot block a trial."""
    close = decide(_metrics(0.072), _metrics(0.100))
    assert not close.blessed and close.canary and close.to_dict()["canary"]
    assert "ONLINE TRIAL" in close.to_markdown()
    assert not decide(_metrics(0.045, pop=0.02), _metrics(0.100)).canary  # 55% behind
    assert decide(_metrics(0.090, cold=0.0), _metrics(0.100, cold=0.004)).canary  # a near-zero segment
    assert not decide(_metrics(0.090, cold=0.03), _metrics(0.100, cold=0.08)).canary  # a segment 62% behind
    assert not decide(_metrics(0.090, cold=0.0, pop=0.09), _metrics(0.100, cold=0.004)).canary  # popularity wins
    assert not decide(_metrics(0.051, pop=0.05), _metrics(0.052)).canary  # no better than popularity
    assert not decide(_metrics(0.12), _metrics(0.10)).canary  # blessed outright
    assert not decide(_metrics(0.072), _metrics(0.100), ModelGateConfig(canary_max_relative_drop=None)).canary


def test_small_segments_do_not_veto():
    cand, champ = _metrics(0.11, cold=0.0), _metrics(0.10, cold=0.08)
    cand["segment.cold_items.users"] = 3.0
    assert decide(cand, champ, ModelGateConfig(min_segment_users=20)).blessed


def test_a_blessed_candidate_replacing_a_champion_puts_it_on_trial_as_a_holdback():
    """Offline metrics on logged traffic are biased both ways, so the champion a blessing
    replaces serves on in the online trial (hyperrec.registry.model_registry.register_model acts on it)."""
    replacing = decide(_metrics(0.12), _metrics(0.10))
    assert replacing.blessed and replacing.holdback and replacing.to_dict()["holdback"]
    assert "holdback" in replacing.to_markdown()
    assert not decide(_metrics(0.10), None).holdback  # the first model replaces nothing
    assert not decide(_metrics(0.04), _metrics(0.10)).holdback  # not blessed
    assert not decide(_metrics(0.12), _metrics(0.10), ModelGateConfig(holdback=False)).holdback
