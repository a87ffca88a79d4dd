"""Retraining trigger: compare a serving window with the training reference, decide whether
to retrain, and keep a JSON-lines record of every decision.

Framework-free: drift numbers come from an injected `DriftFn`. In production that is
`monitoring.reports.column_drift` (Evidently, and it saves a snapshot for the UI); the
bench and the unit tests use `column_drift` below, a numpy/scipy twin of the same four
Evidently tests (~20x faster: no report widgets), and a test holds the two equal.

Why a check fires only when a Bonferroni-corrected p-value (family 0.01 over the 10
checks) AND an effect floor agree (Evidently's own distance thresholds: normed Wasserstein
>= 0.1, Jensen-Shannon >= 0.1; CTR: a relative drop >= 10%), measured on same-distribution
windows of `hyperrec.bench.detection` (share of windows that would fire; one reference
week unless noted):

    window (requests)            any p<0.05   Bonferroni p only   distance only   both (chosen)
    200   (10% of a day)            52%            3.5%               96.5%          1.0% (*)
    1000  (half a day)              60%            5%                  4%             1.0% (*)
    1500  (3/4 of a day)            60%            9%                  0%             0 of 200
    2000  (a day, 10 ref. weeks)    58.5%          6%                  0%             0 of 200
    2000  (3-hourly, 12 weeks)      67%           12%                  0.4%           2 of 960
    20000 (10 days)                100%           88%                  0%             0 of 40
    (*) below `min_requests`: the trigger does not run on such windows.

- p-values grow over-sensitive with n and with dependence between rows: one user makes
  many requests with near-identical features, a list's ten impressions are one user's
  draws, and Evidently's chi-square even treats the reference counts as exact (served
  category mix: p < 0.001 in 3% of half-day windows, in 72% of ten-day ones).
- distances are biased upwards on small samples (noise ~ 1/sqrt(n)), so a floor alone
  fires on small windows; `min_requests` keeps windows where the floor sits above the
  noise (99th percentile of the null distances: up to 0.12 at 1000 requests, <= 0.08 at
  1500), and the p-value covers the rest.
- a reference week is itself one random draw: the 2 alarms in 960 came from two of the
  twelve weeks (ctr_7d, mean_dwell_7d at 0.1002 and 0.1000), so the bench spreads its
  windows over ten reference weeks rather than trusting one.
CTR is tested one-sided (a drop is a reason to retrain, a rise is not).
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial import distance

FEATURES = ("views_7d", "clicks_7d", "ctr_7d", "mean_dwell_7d", "recency_s", "hour_of_day")
# day_of_week is left out on purpose: a one-day window always "drifts" from a week of reference
OUTCOME_NUMERICAL = ("score",)
OUTCOME_CATEGORICAL = ("category", "clicked_category")

# (reference, current, numerical columns, categorical columns) -> {column: numbers}
DriftFn = Callable[[pd.DataFrame, pd.DataFrame, list[str], list[str]], dict[str, dict]]


@dataclass(frozen=True)
class TriggerConfig:
    family_alpha: float = 0.01  # chance that a same-distribution window fires, split over all checks
    min_wasserstein: float = 0.1  # numeric effect floor: Wasserstein distance / reference std
    min_js: float = 0.1  # categorical effect floor: Jensen-Shannon distance (natural log)
    min_ctr_drop: float = 0.10  # relative CTR drop
    min_requests: int = 1500  # feature rows in the current window (see the table above)
    min_clicks: int = 200  # clicked impressions in the current window
    cooldown_s: float = 24 * 3600  # after a retrain is submitted
    dedupe_s: float = 7 * 24 * 3600  # the same alarm on the same reference fires once per this
    features: tuple[str, ...] = FEATURES
    outcome_numerical: tuple[str, ...] = OUTCOME_NUMERICAL
    outcome_categorical: tuple[str, ...] = OUTCOME_CATEGORICAL
    # The short window (`short`): the last few hours against the same hours of the reference
    # day, looked at every pass, so a drift can fire within hours rather than after a whole
    # day's window. Only the outcome checks (what was shown, scored and clicked, and CTR): the
    # 7-day activity features and recency move over days, with the traffic's own slow trends
    # (in the demo, as the loop's days replace the history's in the 7-day windows, ctr_7d and
    # recency_s "drifted" in the first 6 hours after the reference day, before any taste had
    # moved), and are left to the day's window. Its family alpha is the day's split over the
    # four 6-hour looks a day (Bonferroni over looks as over checks: valid under any
    # dependence between them), and its minimum sample is a quarter of the day's; same effect
    # floors (hyperrec.bench.detection measures its false alarms on 6-hour windows).
    short_features: tuple[str, ...] = ()
    short_family_alpha: float = 0.0025
    short_min_requests: int = 375
    short_min_clicks: int = 50
    # a short window's few hundred clicks, many of them one user's, put the served and clicked
    # category mix's Jensen-Shannon distance above 0.1 by chance alone (0.145 and 0.151 with
    # p < 0.001 in 2 of 160 same-distribution 6-hour windows): its floor is doubled
    short_min_js: float = 0.2
    categorical_test: str = "chisquare"  # "chi2_two_sample" in the short rule (`_categorical`)

    @property
    def n_checks(self) -> int:
        return len(self.features) + len(self.outcome_numerical) + len(self.outcome_categorical) + 1  # + CTR

    def short(self) -> TriggerConfig:
        """The rule for a short window: the outcome checks (`short_features`: none of the
        serving-time features) at the short window's family alpha, minimum sample and
        categorical floor, with the two-sample test for categories (`_categorical`)."""
        return replace(self, family_alpha=self.short_family_alpha, min_requests=self.short_min_requests,
                       min_clicks=self.short_min_clicks, categorical_test="chi2_two_sample",
                       features=self.short_features, min_js=self.short_min_js)


@dataclass
class Window:
    """One side of a comparison: a row per served request (features) and a row per
    impression (`score`, `category`, `clicked`)."""

    features: pd.DataFrame
    outcomes: pd.DataFrame

    def outcome_frame(self) -> pd.DataFrame:
        """Outcomes plus `clicked_category` (NaN unless clicked: drift tests drop NaN, so the
        column compares the category mix of clicks, where a taste shift shows first)."""
        out = self.outcomes.drop(columns=["clicked"])
        out["clicked_category"] = self.outcomes["category"].where(self.outcomes["clicked"].astype(bool))
        return out


def _categorical(ref: pd.Series, cur: pd.Series, test: str = "chisquare") -> dict:
    """Evidently's `chisquare` (reference counts as expected) and `jensenshannon` tests;
    `test="chi2_two_sample"`: the p-value of the two-sample test of homogeneity instead (the
    reference is a sample too: on a short window's few hundred clicks against a day's same
    hours, taking its counts as exact fired in 8 of 36 same-distribution 6-hour windows)."""
    counts = pd.concat([ref.value_counts(), cur.value_counts()], axis=1).fillna(0).to_numpy(float)
    r, c = counts[counts.sum(axis=1) > 0].T  # values seen on either side (pandas lists unused categories too)
    if test == "chi2_two_sample":
        p = float(stats.chi2_contingency(np.stack([r, c]), correction=False)[1]) if len(r) > 1 else 1.0
        return {"p_value": p, "p_method": test,
                "distance": float(distance.jensenshannon(r / r.sum(), c / c.sum())), "distance_method": "jensenshannon"}
    with np.errstate(divide="ignore"):  # a value new in `current` has no expected count: p = 0
        p = float(stats.chisquare(c, r * c.sum() / r.sum())[1])
    return {"p_value": p, "p_method": "chisquare",
            "distance": float(distance.jensenshannon(r / r.sum(), c / c.sum())), "distance_method": "jensenshannon"}


def column_drift(reference: pd.DataFrame, current: pd.DataFrame, numerical: list[str],
                 categorical: list[str], categorical_test: str = "chisquare") -> dict[str, dict]:
    """Per column: a p-value (KS or chi-square) and a distance (normed Wasserstein or
    Jensen-Shannon), computed as Evidently 0.7 computes them; NaN and inf rows dropped.
    `categorical_test`: see `_categorical`."""
    out = {}
    for col in categorical:
        ref, cur = reference[col].dropna(), current[col].dropna()
        out[col] = {"kind": "categorical", **_categorical(ref, cur, categorical_test), "n_reference": len(ref),
                    "n_current": len(cur)}
    for col in numerical:
        r, c = (f[col].to_numpy(float) for f in (reference, current))
        r, c = r[np.isfinite(r)], c[np.isfinite(c)]
        out[col] = {"kind": "numerical", "p_value": float(stats.ks_2samp(r, c)[1]), "p_method": "ks",
                    "distance": float(stats.wasserstein_distance(r, c) / max(float(np.std(r)), 0.001)),
                    "distance_method": "wasserstein", "n_reference": len(r), "n_current": len(c)}
    return out


def ctr_check(reference_clicked: pd.Series, current_clicked: pd.Series) -> dict:
    """One-sided two-proportion z-test for a CTR drop, with the relative drop as effect."""
    n1, n2 = len(reference_clicked), len(current_clicked)
    p1, p2 = float(reference_clicked.mean()), float(current_clicked.mean())
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    se = np.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / n1 + 1 / n2))
    return {"kind": "rate", "p_value": float(stats.norm.cdf((p2 - p1) / se)), "p_method": "z_drop",
            "ctr_reference": p1, "ctr_current": p2, "relative_drop": (p1 - p2) / p1 if p1 > 0 else 0.0,
            "n_reference": n1, "n_current": n2}


def assess(reference: Window, current: Window, config: TriggerConfig = TriggerConfig(),
           drift_fn: DriftFn = column_drift) -> dict:
    """Every check's numbers and verdict; `drifted` lists the checks that fired. No safeguards."""
    if drift_fn is column_drift and config.categorical_test != "chisquare":
        drift_fn = functools.partial(column_drift, categorical_test=config.categorical_test)
    checks = {f"feature:{k}": v for k, v in drift_fn(
        reference.features, current.features, list(config.features), []).items()}
    checks |= {f"outcome:{k}": v for k, v in drift_fn(
        reference.outcome_frame(), current.outcome_frame(), list(config.outcome_numerical),
        list(config.outcome_categorical)).items()}
    checks["outcome:ctr"] = ctr_check(reference.outcomes["clicked"], current.outcomes["clicked"])
    alpha = config.family_alpha / config.n_checks  # Bonferroni: valid under any dependence between checks
    for check in checks.values():
        effect, floor = {"numerical": ("distance", config.min_wasserstein),
                         "categorical": ("distance", config.min_js),
                         "rate": ("relative_drop", config.min_ctr_drop)}[check["kind"]]
        check |= {"alpha": alpha, "floor": floor,
                  "drifted": bool(check["p_value"] < alpha and check[effect] >= floor)}
    return {"drifted": sorted(k for k, v in checks.items() if v["drifted"]), "checks": checks}


@dataclass
class Decision:
    """One line of the decision log: what was decided, why, and every number behind it."""

    ts: float
    retrain: bool
    status: str  # "fired" | "no_drift" | "blocked" | "too_few_samples"
    reasons: list[str]
    reference_id: str
    counts: dict
    checks: dict = field(default_factory=dict)
    blocked_by: str | None = None  # "cooldown" | "in_flight" | "trial" | "duplicate" | "submit_failed"
    run_id: str | None = None
    event: str = "decision"


class RetrainTrigger:
    """`assess` plus safeguards, in this order: too few requests or clicks (no verdict);
    a retraining run still in flight (`is_running` asks the orchestrator, else the log's
    `run_finished` records tell); the cooldown since the last retrain; and dedupe: the same
    drifted checks against the same reference fire once per `dedupe_s` (the incident is
    being handled; a retrained model brings a new reference and so a new incident).

    State is rebuilt from the decision log on start, so a trigger run by a CronJob in a
    fresh process each time keeps its cooldown, in-flight run and last alarm."""

    def __init__(self, log_path: Path, config: TriggerConfig = TriggerConfig(), drift_fn: DriftFn = column_drift,
                 submit: Callable[[dict], str] | None = None, is_running: Callable[[str], bool] | None = None):
        self.log_path, self.config, self.drift_fn = Path(log_path), config, drift_fn
        self.submit, self.is_running = submit, is_running
        self.last_retrain_ts: float | None = None
        self.in_flight: str | None = None
        self.last_alarm: tuple[str, list[str]] | None = None  # (reference_id, drifted checks)
        for record in self.records():
            self._apply(record)

    def records(self) -> list[dict]:
        """Every decision and run_finished record so far, oldest first."""
        if not self.log_path.exists():
            return []
        return [json.loads(line) for line in self.log_path.read_text().splitlines() if line.strip()]

    def _apply(self, r: dict) -> None:
        if r.get("event") == "run_finished" and r.get("run_id") == self.in_flight:
            self.in_flight = None
        elif r.get("retrain"):
            self.last_retrain_ts, self.in_flight = r["ts"], r["run_id"]
            self.last_alarm = (r["reference_id"], sorted(r["reasons"]))

    def _write(self, record: dict) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("a") as f:
            f.write(json.dumps(record, default=float) + "\n")
        self._apply(record)

    def run_finished(self, run_id: str, now: float | None = None) -> None:
        """Tell the trigger a retraining run ended (succeeded or not): a new one may start."""
        self._write({"event": "run_finished", "run_id": run_id, "ts": time.time() if now is None else now})

    def _blocker(self, drifted: list[str], reference_id: str, now: float, on_trial: bool = False) -> str | None:
        if on_trial:  # the last retrain's model is still being A/B tested: it is the answer in flight
            return "trial"
        if self.in_flight and self.is_running is not None and not self.is_running(self.in_flight):
            self.run_finished(self.in_flight, now)
        if self.in_flight:
            return "in_flight"
        if self.last_retrain_ts is not None and now - self.last_retrain_ts < self.config.cooldown_s:
            return "cooldown"
        if self.last_alarm == (reference_id, drifted) and now - self.last_retrain_ts < self.config.dedupe_s:
            return "duplicate"
        return None

    def decide(self, reference: Window, current: Window, reference_id: str, now: float | None = None,
               on_trial: bool = False) -> Decision:
        """Assess `current` against `reference`, apply the safeguards, submit if it fires, log.
        `on_trial`: a challenger is serving a share of users (blocks a new run)."""
        now = time.time() if now is None else now
        clicks = int(current.outcomes["clicked"].sum())
        counts = {"requests": len(current.features), "impressions": len(current.outcomes), "clicks": clicks}
        base = {"ts": now, "reference_id": reference_id, "counts": counts}
        if counts["requests"] < self.config.min_requests or clicks < self.config.min_clicks:
            need = f"need >= {self.config.min_requests} requests and >= {self.config.min_clicks} clicks"
            decision = Decision(**base, retrain=False, status="too_few_samples", reasons=[need])
        else:
            result = assess(reference, current, self.config, self.drift_fn)
            drifted, base["checks"] = result["drifted"], result["checks"]
            blocker = self._blocker(drifted, reference_id, now, on_trial) if drifted else None
            if not drifted:
                decision = Decision(**base, retrain=False, status="no_drift", reasons=[])
            elif blocker:
                decision = Decision(**base, retrain=False, status="blocked", reasons=drifted, blocked_by=blocker)
            else:
                decision = self._fire(base, drifted)
        self._write(asdict(decision))
        return decision

    def _fire(self, base: dict, drifted: list[str]) -> Decision:
        decision = Decision(**base, retrain=True, status="fired", reasons=drifted)
        try:
            decision.run_id = self.submit(asdict(decision)) if self.submit else f"retrain-{int(base['ts'])}"
        except Exception as err:  # record it; no cooldown starts for a run that never started
            decision.retrain, decision.status, decision.blocked_by = False, "blocked", "submit_failed"
            decision.reasons = [*drifted, f"submit failed: {err!r}"]
        return decision
