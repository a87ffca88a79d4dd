"""The closed loop's summary table: per-arm rates with intervals and each ablated
mechanism's lift, judged per served list."""

import numpy as np
import pandas as pd
import pytest

from hyperrec.closed_loop import arm_table


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
