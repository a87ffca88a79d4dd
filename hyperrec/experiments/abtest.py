"""A/B test statistics for logged impressions: did the treatment arm move a rate?

Input is one row per impression (`user_id`, `arm`, a 0/1 metric such as `clicked` or
`converted`, optionally `model_version`). Users are assigned to arms elsewhere; this module
only analyses. Three views of the same counts, because they answer different questions:

- frequentist: pooled two-proportion z-test (the decision), Newcombe interval for the
  difference, sample size for the minimum detectable lift (how much longer to wait);
- Bayesian: Beta(1, 1) priors, P(treatment beats control) and the expected loss of
  shipping each arm (what a wrong call would cost);
- sequential: an mSPRT always-valid p-value, which stays valid however often it is peeked at.

Caveat: the unit of analysis is the impression while the unit of randomisation is the user,
so impressions are treated as independent. With many impressions per user the variances are
understated; keep the impressions-per-user ratio (reported per arm) in mind.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

BAYES_GRID_POINTS = 4_001  # integration grid over the treatment posterior: ~1e-5 from the exact value


# ----------------------------------------------------------------------------- per-arm rates


def _check_counts(successes: int, n: int, name: str) -> None:
    """Counts must be whole, non-negative and consistent: a bad count is a logging bug, not a result."""
    if n != int(n) or successes != int(successes):
        raise ValueError(f"arm {name}: counts must be integers, got successes={successes}, n={n}")
    if n <= 0:
        raise ValueError(f"arm {name} has zero impressions: nothing to compare")
    if not 0 <= successes <= n:
        raise ValueError(f"arm {name}: successes={successes} must be between 0 and n={n}")


def _z(alpha: float) -> float:
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    return float(stats.norm.isf(alpha / 2))


def wilson_interval(successes, n, alpha: float = 0.05):
    """Wilson score interval for a proportion: unlike the Wald interval it stays inside [0, 1]
    and keeps a non-zero width at rates of exactly 0 or 1. Works on scalars or arrays."""
    s, n = np.asarray(successes, np.float64), np.asarray(n, np.float64)
    if np.any(n <= 0):
        raise ValueError("Wilson interval needs n > 0 (an arm with zero impressions has no rate)")
    z = _z(alpha)
    p = s / n
    denom = 1 + z**2 / n
    center = (p + z**2 / (2 * n)) / denom
    half = z * np.sqrt(p * (1 - p) / n + z**2 / (4 * n**2)) / denom
    low, high = np.clip(center - half, 0.0, 1.0), np.clip(center + half, 0.0, 1.0)
    return (float(low), float(high)) if low.ndim == 0 else (low, high)


def _validate(impressions: pd.DataFrame, metric: str) -> None:
    """Fail early, naming what is wrong, rather than with a KeyError deep in a groupby."""
    if not isinstance(impressions, pd.DataFrame):
        raise ValueError(f"impressions must be a pandas DataFrame, got {type(impressions).__name__}")
    missing = [c for c in ("user_id", "arm", metric) if c not in impressions.columns]
    if missing:
        raise ValueError(f"impressions is missing column(s) {missing}; has {list(impressions.columns)}")
    if impressions.empty:
        raise ValueError("impressions is empty: no arm has any impressions")
    values = impressions[metric]
    if values.isna().any():
        raise ValueError(f"column {metric!r} has missing values; it must be 0/1 or bool on every row")
    if not np.isin(values.to_numpy(), [0, 1]).all():
        examples = sorted(map(str, values.unique()))[:5]
        raise ValueError(f"column {metric!r} must hold only 0/1 or bool, got e.g. {examples}")
    if impressions["arm"].isna().any():
        raise ValueError("column 'arm' has missing values: every impression must belong to an arm")


def arm_metrics(impressions: pd.DataFrame, metric: str = "clicked", alpha: float = 0.05) -> pd.DataFrame:
    """One row per arm: impressions, distinct users, successes, rate and its Wilson CI.

    An arm that is declared (a categorical level) but has no impressions raises, because
    silently dropping it would hide a broken assignment."""
    _validate(impressions, metric)
    arms = impressions["arm"]
    if isinstance(arms.dtype, pd.CategoricalDtype):
        empty = sorted(set(arms.cat.categories) - set(arms.unique()))
        if empty:
            raise ValueError(f"arm(s) {empty} have zero impressions")
    arms = arms.astype(str)  # arm labels are names; 1 and "1" are the same arm
    grouped = impressions.assign(arm=arms, _y=impressions[metric].astype(np.int64)).groupby("arm", sort=True)
    table = pd.DataFrame({
        "impressions": grouped.size(),
        "users": grouped["user_id"].nunique(),
        "successes": grouped["_y"].sum(),
    })
    table["rate"] = table["successes"] / table["impressions"]
    table["ci_low"], table["ci_high"] = wilson_interval(table["successes"].to_numpy(), table["impressions"].to_numpy(),
                                                        alpha)
    table.index.name = "arm"
    return table


# ----------------------------------------------------------------------------- frequentist


@dataclass(frozen=True)
class ZTest:
    """Arm a is the control, b the treatment; `difference` is rate_b - rate_a."""

    rate_a: float
    rate_b: float
    difference: float
    relative_lift: float  # difference / rate_a; inf when rate_a is 0 and rate_b is not
    z: float  # pooled under H0: rate_a == rate_b
    p_value: float  # two-sided
    ci_low: float  # Newcombe hybrid-score interval for the difference, at level 1 - alpha
    ci_high: float
    alpha: float
    significant: bool


def newcombe_interval(s_a: int, n_a: int, s_b: int, n_b: int, alpha: float = 0.05) -> tuple[float, float]:
    """Newcombe (1998, method 10) interval for rate_b - rate_a, built from the two Wilson intervals:
    better coverage than Wald at small counts, and finite with non-zero width at rates of 0 or 1."""
    p_a, p_b = s_a / n_a, s_b / n_b
    low_a, high_a = wilson_interval(s_a, n_a, alpha)
    low_b, high_b = wilson_interval(s_b, n_b, alpha)
    d = p_b - p_a
    return d - math.hypot(p_b - low_b, high_a - p_a), d + math.hypot(high_b - p_b, p_a - low_a)


def two_proportion_z_test(s_a: int, n_a: int, s_b: int, n_b: int, alpha: float = 0.05) -> ZTest:
    """Pooled two-sided z-test of rate_b == rate_a (equivalent to the chi-square test without
    continuity correction). When both rates are 0 (or both 1) there is no variance and no
    evidence of a difference: z = 0, p = 1, rather than NaN."""
    _check_counts(s_a, n_a, "a")
    _check_counts(s_b, n_b, "b")
    _z(alpha)
    p_a, p_b = s_a / n_a, s_b / n_b
    pooled = (s_a + s_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    z = (p_b - p_a) / se if se > 0 else 0.0
    p_value = float(2 * stats.norm.sf(abs(z)))
    lift = (p_b - p_a) / p_a if p_a > 0 else (math.inf if p_b > 0 else 0.0)
    low, high = newcombe_interval(s_a, n_a, s_b, n_b, alpha)
    return ZTest(p_a, p_b, p_b - p_a, lift, z, p_value, low, high, alpha, p_value < alpha)


def required_sample_size(p_base: float, min_detectable_lift: float, alpha: float = 0.05, power: float = 0.8) -> int:
    """Impressions per arm for a two-sided two-proportion test to detect p_base -> p_base * (1 + lift)
    with the given power (Fleiss' formula without continuity correction: pooled variance under H0,
    unpooled under H1). E.g. 0.10 -> 0.11 at alpha .05, power .8: 14,751 per arm."""
    if not 0 < p_base < 1:
        raise ValueError(f"p_base must be in (0, 1), got {p_base}")
    if not 0 < power < 1:
        raise ValueError(f"power must be in (0, 1), got {power}")
    p_alt = p_base * (1 + min_detectable_lift)
    if min_detectable_lift == 0 or not 0 < p_alt < 1:
        raise ValueError(f"min_detectable_lift={min_detectable_lift} must be non-zero and keep the rate "
                         f"{p_base} * (1 + lift) = {p_alt:.4g} inside (0, 1)")
    z_alpha, z_beta = _z(alpha), float(stats.norm.ppf(power))
    p_bar = (p_base + p_alt) / 2
    numerator = (z_alpha * math.sqrt(2 * p_bar * (1 - p_bar))
                 + z_beta * math.sqrt(p_base * (1 - p_base) + p_alt * (1 - p_alt))) ** 2
    return math.ceil(numerator / (p_alt - p_base) ** 2)


def holm_adjust(p_values: Sequence[float]) -> np.ndarray:
    """Holm step-down adjusted p-values: controls the family-wise error rate like Bonferroni
    but rejects at least as often, at no extra assumption."""
    p = np.asarray(p_values, np.float64)
    m = len(p)
    order = np.argsort(p)
    stepped = np.maximum.accumulate((m - np.arange(m)) * p[order])
    adjusted = np.empty(m)
    adjusted[order] = np.minimum(stepped, 1.0)
    return adjusted


# ----------------------------------------------------------------------------- Bayesian


@dataclass(frozen=True)
class BayesResult:
    """Beta(1, 1) priors. A loss is the rate given up, on average, by shipping that arm."""

    prob_b_beats_a: float
    expected_loss_a: float  # E[max(rate_b - rate_a, 0)]: the cost of keeping a
    expected_loss_b: float  # E[max(rate_a - rate_b, 0)]: the cost of shipping b


def _posteriors(s_a: int, n_a: int, s_b: int, n_b: int):
    _check_counts(s_a, n_a, "a")
    _check_counts(s_b, n_b, "b")
    return (1 + s_a, 1 + n_a - s_a), (1 + s_b, 1 + n_b - s_b)


def _integrate_over_b(a_params, b_params):
    """A grid over the bulk of b's posterior (where the integrand lives, however narrow it is) and
    b's density on it, normalised on the grid so discretisation error largely cancels."""
    posterior_b = stats.beta(*b_params)
    y = np.linspace(posterior_b.ppf(1e-12), posterior_b.isf(1e-12), BAYES_GRID_POINTS)
    density = posterior_b.pdf(y)
    density /= np.trapezoid(density, y)
    return y, density, stats.beta(*a_params)


def bayes_compare(s_a: int, n_a: int, s_b: int, n_b: int) -> BayesResult:
    """P(rate_b > rate_a) = ∫ f_b(y) F_a(y) dy and the expected losses, by deterministic numeric
    integration (no Monte Carlo noise, stable at any sample size). The inner expectation has a closed
    form: E[max(y - rate_a, 0)] = y F_a(y) - mean_a F'_a(y), F' the CDF of Beta(alpha_a + 1, beta_a)."""
    a_params, b_params = _posteriors(s_a, n_a, s_b, n_b)
    y, density, posterior_a = _integrate_over_b(a_params, b_params)
    cdf_a = posterior_a.cdf(y)
    mean_a, mean_b = posterior_a.mean(), stats.beta.mean(*b_params)
    prob = float(np.clip(np.trapezoid(density * cdf_a, y), 0.0, 1.0))
    shortfall_a = y * cdf_a - mean_a * stats.beta.cdf(y, a_params[0] + 1, a_params[1])
    loss_a = float(max(np.trapezoid(density * shortfall_a, y), 0.0))
    loss_b = max(loss_a - (mean_b - mean_a), 0.0)  # E[(a - b)+] = E[(b - a)+] - E[b - a]
    return BayesResult(prob, loss_a, float(loss_b))


def prob_b_beats_a(s_a: int, n_a: int, s_b: int, n_b: int) -> float:
    """Posterior probability that b's true rate is higher than a's (Beta(1, 1) priors)."""
    return bayes_compare(s_a, n_a, s_b, n_b).prob_b_beats_a


# ----------------------------------------------------------------------------- sequential


def msprt_p_value(s_a, n_a, s_b, n_b, tau: float):
    """Always-valid p-value of the mixture SPRT (Johari et al. 2017) with a N(0, tau²) mixture over
    the difference, normal approximation with the pooled variance s²:
    Λ = sqrt(s² / (s² + tau²)) · exp(z² tau² / (2 (s² + tau²))), p = min(1, 1 / Λ).
    Valid at any stopping time, so it may be checked after every batch; the running minimum over
    looks is valid too. tau is the size of difference you expect (e.g. the absolute MDE).
    Works on scalars or arrays (one value per look)."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    s_a, n_a, s_b, n_b = (np.asarray(v, np.float64) for v in (s_a, n_a, s_b, n_b))
    if np.any(n_a <= 0) or np.any(n_b <= 0):
        raise ValueError("mSPRT needs impressions in both arms (an arm has zero impressions)")
    pooled = (s_a + s_b) / (n_a + n_b)
    var = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    return msprt_p_value_of_difference(s_b / n_b - s_a / n_a, var, tau)


def msprt_p_value_of_difference(diff, var, tau: float):
    """The same always-valid p-value for any difference of means with its variance (e.g.
    clicks per list: var = s_a²/n_a + s_b²/n_b)."""
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    diff, var = np.asarray(diff, np.float64), np.asarray(var, np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        z2 = np.where(var > 0, diff**2 / var, 0.0)
        log_lambda = 0.5 * np.log(var / (var + tau**2)) + 0.5 * z2 * tau**2 / (var + tau**2)
    p = np.where(var > 0, np.minimum(1.0, np.exp(-np.minimum(log_lambda, 700.0))), 1.0)
    return float(p) if p.ndim == 0 else p


# ----------------------------------------------------------------------------- verdict


@dataclass(frozen=True)
class Comparison:
    """One treatment against the control. `test` is computed at the Bonferroni level alpha / m (so its
    CI is simultaneous over the m comparisons); `significant` is the Holm decision on `p_adjusted`."""

    treatment: str
    test: ZTest
    p_adjusted: float
    significant: bool
    bayes: BayesResult
    p_always_valid: float  # mSPRT, tau = the absolute MDE at the control's rate; not multiplicity-adjusted
    required_per_arm: int | None  # for min_detectable_lift at the (Bonferroni) level; None if it cannot be sized
    more_needed_per_arm: int | None
    verdict: str


@dataclass(frozen=True)
class ABVerdict:
    metric: str
    control: str
    alpha: float
    power: float
    min_detectable_lift: float
    correction: str  # "none" for one comparison, else "holm"
    arms: pd.DataFrame  # arm_metrics at level 1 - alpha
    comparisons: tuple[Comparison, ...]
    verdict: str
    winner: str | None  # the arm to ship: a treatment, the control, or None while undecided
    warnings: tuple[str, ...] = ()


def _about(n: int) -> int:
    """Round up to two significant figures: the hint is an estimate, not a quota."""
    if n < 100:
        return n
    step = 10 ** (len(str(n)) - 2)
    return -(-n // step) * step


def _sizing_rate(successes: int, n: int) -> float:
    """The control rate to size for: observed, or the Beta(1, 1) posterior mean when it is exactly
    0 or 1, a rate the sample-size formula cannot use."""
    return successes / n if 0 < successes < n else (successes + 1) / (n + 2)


def _size(s_c: int, n_c: int, n_t: int, lift: float, alpha: float, power: float) -> tuple[int | None, int | None]:
    p = _sizing_rate(s_c, n_c)
    for signed_lift in (lift, -lift):  # a rise past 100% cannot be detected; size for the same drop instead
        try:
            required = required_sample_size(p, signed_lift, alpha, power)
        except ValueError:
            continue
        return required, max(0, required - min(n_c, n_t))
    return None, None


def _comparison_verdict(test: ZTest, significant: bool, more: int | None, lift: float) -> str:
    if significant:
        return "treatment wins" if test.difference > 0 else "control wins"
    if more is None:
        return "no significant difference yet (cannot size the test at this rate)"
    if more > 0:
        return f"no significant difference yet (need ~{_about(more):,} more impressions per arm)"
    return f"no significant difference (enough impressions to detect a {abs(lift) * 100:g}% lift)"


def _warnings(impressions: pd.DataFrame) -> tuple[str, ...]:
    """Signs that the assignment or the arms are not what the test assumes."""
    out = []
    per_user = impressions.groupby("user_id")["arm"].nunique()
    crossed = int((per_user > 1).sum())
    if crossed:
        out.append(f"{crossed} user(s) appear in more than one arm: assignment is not stable")
    if "model_version" in impressions.columns:
        versions = impressions.groupby("arm")["model_version"].nunique()
        for arm, count in versions[versions > 1].items():
            out.append(f"arm {arm!r} served {count} model versions during the test")
    return tuple(out)


def ab_verdict(impressions: pd.DataFrame, control: str = "control", treatment: str | Sequence[str] | None = None,
               metric: str = "clicked", alpha: float = 0.05, min_detectable_lift: float = 0.05,
               power: float = 0.8) -> ABVerdict:
    """Compare each treatment arm (default: every arm but the control) with the control on `metric`.

    The decision is the pooled z-test. With more than one treatment, p-values are Holm-adjusted
    (family-wise error rate <= alpha), while intervals and sample sizes use the Bonferroni level
    alpha / m, the simultaneous version Holm has no interval for. Overall: "treatment wins" if any
    treatment is significantly better (winner: the best of those), "control wins" if every treatment
    is significantly worse, else "no significant difference" with the largest sample-size hint."""
    if not min_detectable_lift > 0 or not 0 < power < 1:
        raise ValueError(f"need min_detectable_lift > 0 and power in (0, 1), got {min_detectable_lift}, {power}")
    arms = arm_metrics(impressions, metric, alpha)
    names = [str(a) for a in arms.index]
    if control not in names:
        raise ValueError(f"unknown control arm {control!r}; arms present: {names}")
    treatments = [a for a in names if a != control] if treatment is None else (
        [treatment] if isinstance(treatment, str) else list(dict.fromkeys(treatment)))
    unknown = [t for t in treatments if t not in names]
    if unknown:
        raise ValueError(f"unknown treatment arm(s) {unknown}; arms present: {names}")
    if not treatments or control in treatments:
        raise ValueError(f"need at least one treatment arm distinct from the control {control!r}; arms: {names}")

    arms = arms.loc[[control, *(a for a in names if a != control)]]  # control first in every listing
    m = len(treatments)
    level = alpha / m
    s_c, n_c = int(arms.at[control, "successes"]), int(arms.at[control, "impressions"])
    counts = {t: (int(arms.at[t, "successes"]), int(arms.at[t, "impressions"])) for t in treatments}
    tests = {t: two_proportion_z_test(s_c, n_c, s, n, level) for t, (s, n) in counts.items()}
    adjusted = dict(zip(treatments, holm_adjust([tests[t].p_value for t in treatments])))  # m = 1: unchanged
    tau = _sizing_rate(s_c, n_c) * abs(min_detectable_lift)

    comparisons = []
    for t, (s, n) in counts.items():
        test, p_adj = tests[t], float(adjusted[t])
        required, more = _size(s_c, n_c, n, min_detectable_lift, level, power)
        significant = p_adj < alpha
        comparisons.append(Comparison(
            treatment=t, test=test, p_adjusted=p_adj, significant=significant,
            bayes=bayes_compare(s_c, n_c, s, n), p_always_valid=msprt_p_value(s_c, n_c, s, n, tau),
            required_per_arm=required, more_needed_per_arm=more,
            verdict=_comparison_verdict(test, significant, more, min_detectable_lift)))

    better = [c for c in comparisons if c.significant and c.test.difference > 0]
    if better:
        verdict, winner = "treatment wins", max(better, key=lambda c: c.test.rate_b).treatment
    elif all(c.significant and c.test.difference < 0 for c in comparisons):
        verdict, winner = "control wins", control
    else:
        undecided = [c for c in comparisons if not c.significant]
        verdict, winner = max(undecided, key=lambda c: -1 if c.more_needed_per_arm is None
                              else c.more_needed_per_arm).verdict, None
    return ABVerdict(metric, control, alpha, power, min_detectable_lift, "holm" if m > 1 else "none", arms,
                     tuple(comparisons), verdict, winner, _warnings(impressions))


# ----------------------------------------------------------------------------- report


def _pct(x: float, digits: int = 2, sign: str = "+") -> str:
    return "n/a" if not math.isfinite(x) else f"{x:{sign}.{digits}%}"


def _p(p: float) -> str:
    return "<0.0001" if p < 1e-4 else f"{p:.4f}"


def format_report(verdict: ABVerdict) -> str:
    """A compact markdown report: per-arm rates (control first), one row per comparison, the verdict."""
    v = verdict
    m = len(v.comparisons)
    level = (1 - v.alpha / m) * 100
    lines = [f"## A/B report: {v.metric} (control: {v.control})", "",
             f"| arm | impressions | users | successes | rate | {(1 - v.alpha) * 100:g}% CI |",
             "|---|---:|---:|---:|---:|---|"]
    for row in v.arms.itertuples():
        lines.append(f"| {row.Index} | {int(row.impressions):,} | {int(row.users):,} | {int(row.successes):,} "
                     f"| {row.rate:.2%} | [{row.ci_low:.2%}, {row.ci_high:.2%}] |")
    p_head = "p" if v.correction == "none" else "p (Holm)"
    lines += ["", f"| treatment | diff | {level:g}% CI (diff) | lift | z | {p_head} | always-valid p "
                  "| P(beats control) | loss if shipped | verdict |",
              "|---|---:|---|---:|---:|---:|---:|---:|---:|---|"]
    for c in v.comparisons:
        t = c.test
        lines.append(f"| {c.treatment} | {_pct(t.difference, 3)} | [{_pct(t.ci_low, 3)}, {_pct(t.ci_high, 3)}] "
                     f"| {_pct(t.relative_lift, 1)} | {t.z:.2f} | {_p(c.p_adjusted)} | {_p(c.p_always_valid)} "
                     f"| {c.bayes.prob_b_beats_a:.3f} | {_pct(c.bayes.expected_loss_b, 3, '')} | {c.verdict} |")
    notes = [f"Holm correction over {m} comparisons; intervals at the Bonferroni level {level:g}%."] if m > 1 else []
    lines += ["", f"**Verdict: {v.verdict}**" + (f" (ship {v.winner})" if v.winner else ""),
              *(f"- {n}" for n in notes), *(f"- warning: {w}" for w in v.warnings)]
    return "\n".join(lines) + "\n"


def report(impressions: pd.DataFrame, **kw) -> str:
    """`hyperrec ab report`: ab_verdict(impressions, **kw) rendered by format_report."""
    return format_report(ab_verdict(impressions, **kw))
