"""A/B test statistics: known published values, simulated A/A and A/B experiments (seeded), edge cases.
Pure numpy/scipy/pandas, a few seconds in total."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from scipy import special, stats

from hyperrec.experiments.abtest import (
    ab_verdict,
    arm_metrics,
    bayes_compare,
    format_report,
    holm_adjust,
    msprt_p_value,
    newcombe_interval,
    prob_b_beats_a,
    report,
    required_sample_size,
    two_proportion_z_test,
    wilson_interval,
)


def impressions(arms: dict[str, tuple[int, float]], seed: int = 0, per_user: int = 4) -> pd.DataFrame:
    """n impressions per arm with click rate p; ~per_user impressions per user, users never cross arms;
    a conversion is a click that converts with probability 0.2."""
    rng = np.random.default_rng(seed)
    frames = []
    for arm, (n, p) in arms.items():
        clicked = rng.random(n) < p
        frames.append(pd.DataFrame({
            "user_id": [f"{arm}-u{k}" for k in rng.integers(0, max(1, n // per_user), n)],
            "arm": arm,
            "clicked": clicked.astype(int),
            "converted": clicked & (rng.random(n) < 0.2),  # bool on purpose: both encodings must work
            "model_version": 3,
        }))
    return pd.concat(frames, ignore_index=True)


# ----------------------------------------------------------------------------- known values


@pytest.mark.parametrize(("s", "n", "low", "high"), [
    (81, 263, 0.2553, 0.3662),  # Newcombe (1998), Stat Med 17:857, table I, method 3 (Wilson score)
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_interval_matches_newcombe_1998(s, n, low, high):
    assert wilson_interval(s, n) == pytest.approx((low, high), abs=5e-5)


@pytest.mark.parametrize(("a", "b", "low", "high"), [
    ((48, 80), (56, 70), 0.0524, 0.3339),  # Newcombe (1998), Stat Med 17:873, method 10
    ((3, 10), (9, 10), 0.1705, 0.8090),
])
def test_difference_interval_matches_newcombe_1998(a, b, low, high):
    assert newcombe_interval(*a, *b) == pytest.approx((low, high), abs=5e-5)
    test = two_proportion_z_test(*a, *b)
    assert (test.ci_low, test.ci_high) == pytest.approx((low, high), abs=5e-5)


def test_z_test_matches_hand_calculation_and_scipy_chi_square():
    test = two_proportion_z_test(200, 2000, 250, 2000)
    pooled = 450 / 4000
    z = (0.125 - 0.10) / math.sqrt(pooled * (1 - pooled) * (2 / 2000))
    assert test.z == pytest.approx(z, rel=1e-12) and test.z == pytest.approx(2.50196, abs=1e-5)
    assert test.p_value == pytest.approx(math.erfc(z / math.sqrt(2)), rel=1e-10)
    chi2, p, _, _ = stats.chi2_contingency([[200, 1800], [250, 1750]], correction=False)
    assert test.z**2 == pytest.approx(chi2, rel=1e-10) and test.p_value == pytest.approx(p, rel=1e-10)
    assert test.difference == pytest.approx(0.025) and test.relative_lift == pytest.approx(0.25)
    assert test.significant and test.ci_low > 0
    swapped = two_proportion_z_test(250, 2000, 200, 2000)
    assert swapped.z == pytest.approx(-test.z) and swapped.p_value == pytest.approx(test.p_value)
    assert not two_proportion_z_test(200, 2000, 250, 2000, alpha=0.01).significant  # p = 0.0124


def test_required_sample_size_matches_textbook_value():
    # 0.10 -> 0.11, two-sided alpha .05, power .8: 14,751 per arm (Fleiss; Evan Miller's calculator)
    assert required_sample_size(0.10, 0.10) == 14_751
    assert required_sample_size(0.10, 0.10, power=0.9) > 14_751
    assert required_sample_size(0.10, 0.10, alpha=0.01) > 14_751
    assert required_sample_size(0.10, 0.20) < 14_751


def test_required_sample_size_delivers_the_power_it_promises():
    """At the computed n, simulated experiments with the true lift reject ~80% of the time."""
    n = required_sample_size(0.10, 0.10)
    rng = np.random.default_rng(11)
    runs = 400
    s_a, s_b = rng.binomial(n, 0.10, runs), rng.binomial(n, 0.11, runs)
    power = np.mean([two_proportion_z_test(a, n, b, n).significant for a, b in zip(s_a, s_b)])
    assert abs(power - 0.8) < 3 * math.sqrt(0.8 * 0.2 / runs)  # 3 standard errors: ±0.06


def test_holm_adjust_hand_values():
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjust([0.2, 0.9]) == pytest.approx([0.4, 0.9])
    assert holm_adjust([0.6, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1, never below a smaller raw p's


# ----------------------------------------------------------------------------- simulated experiments


def test_aa_false_positive_rate_is_near_alpha():
    rng = np.random.default_rng(2024)
    runs, n, alpha = 400, 5000, 0.05
    s_a, s_b = rng.binomial(n, 0.08, runs), rng.binomial(n, 0.08, runs)
    rate = np.mean([two_proportion_z_test(a, n, b, n, alpha).significant for a, b in zip(s_a, s_b)])
    assert abs(rate - alpha) < 3 * math.sqrt(alpha * (1 - alpha) / runs)  # 3 standard errors: ±0.033


def test_true_lift_is_detected_as_treatment_wins():
    df = impressions({"control": (20_000, 0.05), "treatment": (20_000, 0.065)}, seed=1)  # +30%
    assert 2 * required_sample_size(0.05, 0.30) < 20_000
    v = ab_verdict(df, min_detectable_lift=0.30)
    (c,) = v.comparisons
    assert v.verdict == "treatment wins" and v.winner == "treatment" and v.correction == "none"
    assert c.significant and c.test.p_value < 1e-6 and c.test.relative_lift == pytest.approx(0.30, abs=0.1)
    assert c.bayes.prob_b_beats_a > 0.999 and c.bayes.expected_loss_b < c.bayes.expected_loss_a
    assert c.p_always_valid < 0.05
    assert v.arms.loc["treatment", "successes"] == df.loc[df.arm == "treatment", "clicked"].sum()
    assert v.warnings == ()


def test_a_drop_is_control_wins():
    df = impressions({"control": (20_000, 0.05), "treatment": (20_000, 0.035)}, seed=2)
    v = ab_verdict(df, treatment="treatment")
    assert v.verdict == "control wins" and v.winner == "control" and v.comparisons[0].test.difference < 0


def test_underpowered_null_asks_for_more_impressions():
    df = impressions({"control": (600, 0.10), "treatment": (500, 0.10)}, seed=3)
    v = ab_verdict(df, min_detectable_lift=0.05)
    (c,) = v.comparisons
    required = required_sample_size(v.arms.loc["control", "rate"], 0.05)
    assert not c.significant and c.required_per_arm == required and c.more_needed_per_arm == required - 500
    match = re.fullmatch(r"no significant difference yet \(need ~([\d,]+) more impressions per arm\)", v.verdict)
    assert match and 0 <= int(match[1].replace(",", "")) - c.more_needed_per_arm < 0.1 * c.more_needed_per_arm


def test_powered_null_does_not_ask_for_more():
    df = impressions({"control": (20_000, 0.10), "treatment": (20_000, 0.10)}, seed=4)
    v = ab_verdict(df, min_detectable_lift=0.30)
    assert v.comparisons[0].more_needed_per_arm == 0 and v.winner is None
    assert v.verdict == "no significant difference (enough impressions to detect a 30% lift)"


def test_several_treatments_are_holm_corrected():
    df = impressions({"control": (20_000, 0.05), "big": (20_000, 0.065), "same": (20_000, 0.05)}, seed=5)
    v = ab_verdict(df, metric="clicked", alpha=0.05)
    by_arm = {c.treatment: c for c in v.comparisons}
    assert v.correction == "holm" and set(by_arm) == {"big", "same"}
    assert v.verdict == "treatment wins" and v.winner == "big"
    assert by_arm["big"].significant and not by_arm["same"].significant
    raw = [by_arm[t].test.p_value for t in ("big", "same")]
    assert [by_arm[t].p_adjusted for t in ("big", "same")] == pytest.approx(holm_adjust(raw))
    assert all(c.test.alpha == pytest.approx(0.025) for c in v.comparisons)  # Bonferroni-level intervals


def test_converted_metric_accepts_bool_column():
    df = impressions({"control": (3000, 0.1), "treatment": (3000, 0.1)}, seed=6)
    table = arm_metrics(df, metric="converted")
    assert table.loc["control", "successes"] == df.loc[df.arm == "control", "converted"].sum()
    assert (table.ci_low <= table.rate).all() and (table.rate <= table.ci_high).all()
    assert table.loc["control", "users"] == df.loc[df.arm == "control", "user_id"].nunique()


# ----------------------------------------------------------------------------- Bayesian


def _exact_prob_b_beats_a(s_a, n_a, s_b, n_b) -> float:
    """Closed form for integer Beta parameters (Evan Miller, 'Formulas for Bayesian A/B testing')."""
    a_a, b_a, a_b, b_b = 1 + s_a, 1 + n_a - s_a, 1 + s_b, 1 + n_b - s_b
    i = np.arange(a_b)
    terms = special.betaln(a_a + i, b_a + b_b) - np.log(b_b + i) - special.betaln(1 + i, b_b) - special.betaln(a_a, b_a)
    return float(np.exp(terms).sum())


@pytest.mark.parametrize("counts", [(10, 100, 15, 100), (200, 2000, 250, 2000), (0, 50, 3, 50), (40, 1000, 2, 30),
                                    (40_000, 1_000_000, 1, 30)])  # a needle-thin posterior against a wide one
def test_bayes_matches_closed_form_and_monte_carlo(counts):
    s_a, n_a, s_b, n_b = counts
    result = bayes_compare(*counts)
    assert result.prob_b_beats_a == pytest.approx(_exact_prob_b_beats_a(*counts), abs=1e-4)
    rng = np.random.default_rng(7)
    a = rng.beta(1 + s_a, 1 + n_a - s_a, 400_000)
    b = rng.beta(1 + s_b, 1 + n_b - s_b, 400_000)
    assert result.prob_b_beats_a == pytest.approx(np.mean(b > a), abs=0.005)
    assert result.expected_loss_a == pytest.approx(np.mean(np.maximum(b - a, 0)), abs=5e-4)
    assert result.expected_loss_b == pytest.approx(np.mean(np.maximum(a - b, 0)), abs=5e-4)


def test_bayes_aa_is_a_coin_flip_and_a_big_lift_is_not():
    same = bayes_compare(120, 1000, 120, 1000)
    assert same.prob_b_beats_a == pytest.approx(0.5, abs=1e-6)
    assert same.expected_loss_a == pytest.approx(same.expected_loss_b, rel=1e-6)
    assert prob_b_beats_a(100, 1000, 130, 1000) + prob_b_beats_a(130, 1000, 100, 1000) == pytest.approx(1, abs=1e-6)
    assert prob_b_beats_a(500, 10_000, 650, 10_000) > 0.95
    # over A/A replications P(b > a) is spread around 0.5 (about uniform), tracking the z-test's Φ(z)
    rng = np.random.default_rng(8)
    n = 5000
    probs, phis = [], []
    for s_a, s_b in zip(rng.binomial(n, 0.08, 60), rng.binomial(n, 0.08, 60)):
        probs.append(prob_b_beats_a(s_a, n, s_b, n))
        phis.append(stats.norm.cdf(two_proportion_z_test(s_a, n, s_b, n).z))
    assert abs(np.mean(probs) - 0.5) < 3 * math.sqrt(1 / 12 / 60)  # 3 standard errors of a uniform mean
    assert np.max(np.abs(np.array(probs) - phis)) < 0.02


# ----------------------------------------------------------------------------- sequential


def test_msprt_survives_peeking_where_the_z_test_does_not():
    """20 looks at a growing A/A experiment: stopping at the first naive p < .05 inflates false
    positives well past alpha; the always-valid p-value keeps them at or under alpha."""
    rng = np.random.default_rng(9)
    runs, looks, batch, p, alpha = 400, 20, 500, 0.1, 0.05
    s_a = rng.binomial(batch, p, (runs, looks)).cumsum(axis=1)
    s_b = rng.binomial(batch, p, (runs, looks)).cumsum(axis=1)
    n = batch * np.arange(1, looks + 1)
    pooled = (s_a + s_b) / (2 * n)
    z = (s_b - s_a) / n / np.sqrt(pooled * (1 - pooled) * 2 / n)
    naive = np.mean((2 * stats.norm.sf(np.abs(z)) < alpha).any(axis=1))
    always_valid = np.mean((msprt_p_value(s_a, n, s_b, n, tau=0.01) < alpha).any(axis=1))
    assert naive > 0.12
    assert always_valid <= alpha + 2 * math.sqrt(alpha * (1 - alpha) / runs)
    # and it still has power: a +30% lift is caught in nearly every run by the last look
    lifted = rng.binomial(batch, 1.3 * p, (runs, looks)).cumsum(axis=1)
    assert np.mean(msprt_p_value(s_a[:, -1], n[-1], lifted[:, -1], n[-1], tau=0.01) < alpha) > 0.9


# ----------------------------------------------------------------------------- edge cases


def test_rates_of_zero_and_one_stay_finite():
    for counts in [(0, 100, 0, 100), (100, 100, 100, 100), (0, 100, 100, 100), (0, 100, 3, 100), (100, 100, 97, 100)]:
        test = two_proportion_z_test(*counts)
        bayes = bayes_compare(*counts)
        values = [test.z, test.p_value, test.ci_low, test.ci_high, test.difference, *vars(bayes).values(),
                  msprt_p_value(*counts, tau=0.01)]
        assert all(math.isfinite(x) for x in values), counts
        assert -1 <= test.ci_low <= test.difference <= test.ci_high <= 1
    assert two_proportion_z_test(0, 100, 0, 100).p_value == 1.0
    assert two_proportion_z_test(0, 100, 3, 100).relative_lift == math.inf
    df = impressions({"control": (300, 0.0), "treatment": (300, 0.0)})
    v = ab_verdict(df)
    assert v.verdict.startswith("no significant difference yet (need ~") and v.comparisons[0].required_per_arm
    assert "nan" not in format_report(v).lower()
    ones = impressions({"control": (300, 1.0), "treatment": (300, 1.0)})
    assert "nan" not in report(ones).lower()


@pytest.mark.parametrize(("mutate", "kwargs", "message"), [
    (lambda df: df.drop(columns="clicked"), {}, r"missing column\(s\) \['clicked'\]"),
    (lambda df: df.drop(columns="user_id"), {}, r"missing column\(s\) \['user_id'\]"),
    (lambda df: df, {"control": "baseline"}, "unknown control arm 'baseline'"),
    (lambda df: df, {"treatment": "nope"}, r"unknown treatment arm\(s\) \['nope'\]"),
    (lambda df: df[df.arm == "control"], {}, "at least one treatment arm"),
    (lambda df: df.assign(arm=pd.Categorical(df.arm, categories=["control", "treatment", "ghost"])), {},
     r"\['ghost'\] have zero impressions"),
    (lambda df: df.iloc[:0], {}, "impressions is empty"),
    (lambda df: df.assign(clicked=df.clicked * 2), {}, "must hold only 0/1"),
    (lambda df: df.assign(clicked=df.clicked.where(df.index > 0)), {}, "missing values"),
    (lambda df: df, {"min_detectable_lift": 0.0}, "min_detectable_lift > 0"),
    (lambda df: df, {"power": 1.5}, r"power in \(0, 1\)"),
])
def test_bad_input_raises_value_error_naming_the_problem(mutate, kwargs, message):
    df = impressions({"control": (200, 0.1), "treatment": (200, 0.1)})
    with pytest.raises(ValueError, match=message):
        ab_verdict(mutate(df), **kwargs)


def test_bad_counts_and_sizes_raise():
    with pytest.raises(ValueError, match="zero impressions"):
        two_proportion_z_test(0, 0, 5, 100)
    with pytest.raises(ValueError, match="between 0 and n"):
        two_proportion_z_test(101, 100, 5, 100)
    with pytest.raises(ValueError, match="zero impressions"):
        bayes_compare(0, 100, 0, 0)
    with pytest.raises(ValueError, match="p_base"):
        required_sample_size(0.0, 0.1)
    with pytest.raises(ValueError, match="inside \\(0, 1\\)"):
        required_sample_size(0.9, 0.2)  # 0.9 -> 1.08
    with pytest.raises(ValueError, match="non-zero"):
        required_sample_size(0.1, 0.0)


# ----------------------------------------------------------------------------- report


def test_report_is_a_compact_markdown_table_with_warnings():
    df = impressions({"control": (5000, 0.05), "b": (5000, 0.08), "c": (5000, 0.05)}, seed=10)
    df.loc[0, "user_id"] = df.loc[df.arm == "b", "user_id"].iloc[0]  # one user in two arms
    df.loc[df.index[-1], "model_version"] = 4  # arm c's model changed mid-test
    text = report(df, metric="clicked")
    lines = text.splitlines()
    assert lines[0] == "## A/B report: clicked (control: control)"
    assert sum(line.startswith(("| control |", "| b |", "| c |")) for line in lines) == 5  # 3 arms + 2 comparisons
    assert "**Verdict: treatment wins** (ship b)" in text and "Holm correction over 2 comparisons" in text
    assert "1 user(s) appear in more than one arm" in text and "arm 'c' served 2 model versions" in text
    assert len(text) < 2000
