"""Team-draft interleaving (hyperrec.experiments.interleave) and its judgment (hyperrec.experiments.canary): each
list is fair to both versions, items keep their source's score and reason, and a paired
test on per-list team clicks finds a preference an A/B test of the same size misses."""

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from hyperrec.experiments.canary import (
    CONTINUE,
    PROMOTE,
    RETIRE,
    CanaryConfig,
    describe_sizes,
    judge,
    judge_interleaved,
    team_lists,
)
from hyperrec.experiments.interleave import interleave, team_draft
from hyperrec.online.serving_path import Recommended

CHAMPION, CHALLENGER = 1, 2


def rec(items, version, explored=None):
    return Recommended(item_ids=list(items), titles=[f"t{i}" for i in items], categories=["c"] * len(items),
                       scores=[float(version)] * len(items), reasons=[f"from v{version}"] * len(items),
                       policy="personalized", arm="full", model_version=version, explored_item=explored,
                       explored_x=np.ones(3) * version if explored else None)


def test_team_draft_is_distinct_balanced_and_fills_from_either_list():
    rng = np.random.default_rng(0)
    a, b = list("abcdefgh"), list("bxaycz")
    for _ in range(200):
        draft = team_draft(a, b, 6, rng)
        items = [(a, b)[t][i] for t, i in draft]
        assert len(items) == len(set(items)) == 6
        counts = Counter(t for t, _ in draft)
        assert abs(counts[0] - counts[1]) <= 1  # neither team gets more than one extra pick
        for team in (0, 1):  # each team adds its items in its own order
            own = [i for t, i in draft if t == team]
            assert own == sorted(own)
    # one list runs out: the other fills the rest; both run out: stop short
    assert [t for t, _ in team_draft(["q"], list("abcd"), 4, rng)].count(1) == 3
    assert len(team_draft(["a"], ["a"], 5, rng)) == 1


def test_the_first_pick_is_a_fair_coin():
    rng = np.random.default_rng(1)
    first = [team_draft(list("abc"), list("xyz"), 3, rng)[0][0] for _ in range(2000)]
    assert 0.46 < np.mean(first) < 0.54


def test_interleave_keeps_each_items_source_and_the_exploration_slot_of_its_team():
    rng = np.random.default_rng(2)
    merged = interleave(rec("abcd", CHAMPION, explored="c"), rec("wxyz", CHALLENGER, explored="z"), 4, rng)
    assert merged.model_version == CHALLENGER and len(merged.teams) == 4
    for item, team, score, reason in zip(merged.item_ids, merged.teams, merged.scores, merged.reasons):
        assert (item in "abcd") == (team == CHAMPION) and score == float(team) and reason == f"from v{team}"
    assert merged.explored_item is None  # neither "c" nor "z" made the top 4 (2 picks each)
    kept = interleave(rec("abcd", CHAMPION, explored="a"), rec("wxyz", CHALLENGER), 4, rng)
    assert kept.explored_item == "a" and kept.explored_x[0] == CHAMPION
    # an item both lists hold counts for the team that placed it, and the exploration slot
    # goes with it only if that team explored it
    shared = interleave(rec("ab", CHAMPION), rec("ab", CHALLENGER, explored="a"), 2, rng)
    team_of_a = shared.teams[shared.item_ids.index("a")]
    assert (shared.explored_item == "a") == (team_of_a == CHALLENGER)


def _interleaved_outcomes(rng, n, p: dict[int, float], k=6, buy: dict[int, float] | None = None) -> pd.DataFrame:
    """Per-item outcomes of `n` interleaved lists, k/2 items per team: each item clicked
    (and bought) with its team's rate."""
    buy = buy or {CHAMPION: 0.01, CHALLENGER: 0.01}
    team = np.tile(np.repeat([CHAMPION, CHALLENGER], k // 2), n)
    lists = np.repeat(np.arange(n), k)
    rate = np.where(team == CHAMPION, p[CHAMPION], p[CHALLENGER])
    bought = np.where(team == CHAMPION, buy[CHAMPION], buy[CHALLENGER])
    return pd.DataFrame({"request_id": lists.astype(str), "ts": lists.astype(float),
                         "user_id": (lists % 300).astype(str), "model_version": CHALLENGER, "interleaved": True,
                         "team": team, "clicked": (rng.random(n * k) < rate).astype(int),
                         "purchased": (rng.random(n * k) < bought).astype(int)})


def test_team_lists_count_clicks_per_team_and_only_this_trials_interleaved_lists():
    items = pd.DataFrame({"request_id": ["a"] * 4 + ["b"] * 2 + ["c"] * 2,
                          "ts": [1.0] * 8, "user_id": ["u"] * 8,
                          "model_version": [2] * 4 + [1, 1] + [2, 2],
                          "interleaved": [True] * 4 + [False] * 2 + [False] * 2,
                          "team": [1, 2, 2, 1, 1, 1, 2, 2],
                          "clicked": [1, 1, 1, 0, 1, 0, 1, 1], "purchased": [0, 1, 0, 0, 0, 0, 0, 0]})
    lists = team_lists(items, CHAMPION, CHALLENGER)
    assert lists["request_id"].tolist() == ["a"]  # b: a champion list, c: an A/B challenger list
    row = lists.iloc[0]
    assert (row["clicks_champion"], row["clicks_challenger"], row["purchases_challenger"]) == (1, 2, 1)


@pytest.mark.parametrize("rates, action", [({CHAMPION: 0.06, CHALLENGER: 0.08}, PROMOTE),
                                           ({CHAMPION: 0.08, CHALLENGER: 0.06}, RETIRE)])
def test_a_clear_preference_decides_the_interleaved_trial(rates, action):
    verdict = judge_interleaved(team_lists(_interleaved_outcomes(np.random.default_rng(3), 3000, rates),
                                           CHAMPION, CHALLENGER), CHAMPION, CHALLENGER)
    assert verdict.action == action and verdict.design == "interleaved"
    assert verdict.lists == {"interleaved": 3000} and verdict.users == {"interleaved": 300}
    assert describe_sizes(verdict.to_dict()) == "3,000 interleaved lists" and "by team" in verdict.reason


def test_the_interleaved_guardrail_and_the_minimum_sample():
    rng = np.random.default_rng(4)
    guard = judge_interleaved(team_lists(_interleaved_outcomes(
        rng, 4000, {CHAMPION: 0.06, CHALLENGER: 0.065}, buy={CHAMPION: 0.04, CHALLENGER: 0.01}),
        CHAMPION, CHALLENGER), CHAMPION, CHALLENGER)
    assert guard.action == RETIRE and guard.reason.startswith("guardrail:")
    early = judge_interleaved(team_lists(_interleaved_outcomes(rng, 200, {CHAMPION: 0.05, CHALLENGER: 0.1}),
                                         CHAMPION, CHALLENGER), CHAMPION, CHALLENGER)
    assert early.action == CONTINUE and "need 500" in early.reason and early.metric is None


def test_repeated_looks_at_equal_teams_rarely_promote():
    """As for the A/B judge: looked at after every 1,000 lists up to 5,000, equal teams
    are promoted in < 5% of 100 trials (the always-valid p-value)."""
    rng = np.random.default_rng(5)
    promoted = 0
    for _ in range(100):
        lists = team_lists(_interleaved_outcomes(rng, 5000, {CHAMPION: 0.07, CHALLENGER: 0.07}), CHAMPION, CHALLENGER)
        promoted += any(judge_interleaved(lists.iloc[:n], CHAMPION, CHALLENGER).action == PROMOTE
                        for n in range(1000, 5001, 1000))
    assert promoted < 5


def test_interleaving_needs_fewer_lists_than_ab_when_users_differ_a_lot():
    """Users whose click rates differ tenfold (heterogeneity an A/B test pays for, a paired
    comparison does not): at the same number of lists the interleaved trial decides, the A/B
    trial does not. Challenger items are clicked 25% more often in both designs."""
    rng = np.random.default_rng(6)
    n, k = 2000, 6
    base = rng.choice([0.01, 0.1], size=n)  # each list's user: rarely or often clicking
    lift = {CHAMPION: 1.0, CHALLENGER: 1.25}
    rows = []
    for i in range(n):
        teams = [CHAMPION, CHALLENGER] * (k // 2)
        for team in teams:
            rows.append({"request_id": f"r{i}", "ts": float(i), "user_id": f"u{i}", "model_version": CHALLENGER,
                         "interleaved": True, "team": team, "purchased": 0,
                         "clicked": int(rng.random() < base[i] * lift[team])})
    mixed = judge_interleaved(team_lists(pd.DataFrame(rows), CHAMPION, CHALLENGER), CHAMPION, CHALLENGER)
    version = np.repeat([CHAMPION, CHALLENGER], n // 2)
    ab_lists = pd.DataFrame({"request_id": [f"a{i}" for i in range(n)], "user_id": [f"u{i}" for i in range(n)],
                             "model_version": version, "purchases": 0,
                             "clicks": rng.binomial(k, base * np.where(version == CHALLENGER, 1.25, 1.0))})
    ab = judge(ab_lists, CHAMPION, CHALLENGER, CanaryConfig())
    assert mixed.metric.p_always_valid < ab.metric.p_always_valid
    assert mixed.action == PROMOTE and ab.action == CONTINUE
