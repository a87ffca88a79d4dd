"""BENCHMARKS.md is written from the benches' JSON only: every number in it comes from a file,
a bench that did not run says so, and the closed loop's rows follow what that run did."""

import json

from hyperrec.bench.markdown import render


def test_the_report_prints_what_the_files_hold_and_names_what_did_not_run(tmp_path):
    (tmp_path / "serving.json").write_text(json.dumps({
        "p99_ms_at_500rps": 540.2, "max_rps_at_p99_50ms": 359, "naive_max_rps_at_p99_50ms": 52,
        "throughput_ratio_vs_naive": 6.93, "swap_non2xx": 0}))
    (tmp_path / "closed_loop.json").write_text(json.dumps({
        "seconds_total": 701.3, "ctr": {"CTR before the drift": 0.0971, "CTR after v2 was promoted": 0.081},
        "hidden_p_click": {"after v2 was promoted": {"users whose taste drifted": 0.0512}},
        "retrains": [{"wall_s": 300.0}],
        "trials": [{"action": "promote", "lists": {"champion": 2100, "challenger": 2000},
                    "metric": {"means": {"champion": 0.41, "challenger": 0.52}, "difference": 0.11,
                               "ci": [0.03, 0.19], "p_always_valid": 0.004}},
                   {"action": "retire", "holdback": True, "lists": {"interleaved": 900},  # v1 held back against v2
                    "metric": {"means": {"champion": 0.5, "challenger": 0.4}, "difference": -0.1,
                               "ci": [-0.15, -0.05], "p_always_valid": 0.01},
                    "retrain_lift": {"difference": 0.1, "ci": [0.05, 0.15]}}],
        "lifts": {"no-mmr": {"lift": -0.012, "low": -0.05, "high": 0.026, "p_holm": 0.9}},
        "ctr_trough_ratio": 0.655, "drifted_pclick_trough_ratio": 0.676, "hours_drift_to_first_retrain": 18.0}))
    text = render(tmp_path)
    assert "| max req/s at p99 <= 50 ms | 359 | >= 3x naive |" in text
    assert "| p99 at 500 req/s (open loop), ms | 540.2 | <= 25 |" in text
    assert "| p99 during the swap, ms | (missing) |" in text
    assert f"Not run (no `{tmp_path / 'index.json'}`)." in text
    assert "| `make demo`, world to summary, s | 701.3 | < 600 after setup |" in text
    assert "| CTR after v2 was promoted | 0.0810 |" in text
    assert "| hidden P(click) of the top 5 shown, users whose taste drifted, after v2 was promoted | 0.0512 |" in text
    assert "| lowest 6-hour CTR after the drift / CTR before it | 0.6550 | >= 0.85 |" in text
    assert "| simulated hours from the drift to the first retrain | 18.0 | <= 12 |" in text
    assert "| online trial 1: outcome | promote |" in text
    assert ("| online trial 1: the retrain's lift over keeping the model it replaces (clicks per list, same lists) | "
            "+0.1100 [+0.0300, +0.1900] | 95% CI |") in text
    assert "| online trial 1: clicks per list, champion -> challenger | 0.4100 -> 0.5200 |" in text
    assert "| online trial 2: outcome | retire (holdback: the replaced champion was the challenger) |" in text
    assert ("| online trial 2: the retrain's lift over keeping the model it replaces (clicks per list, same lists) | "
            "+0.1000 [+0.0500, +0.1500] | 95% CI |") in text
    assert "2,100 champion, 2,000 challenger" in text
    assert "| lift of the mechanism `no-mmr` switches off (lists with a click) | -0.0120 [-0.0500, +0.0260], p 0.9 |" \
        in text
