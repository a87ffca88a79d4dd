"""The online trial of a challenger: promote it, retire it, or keep collecting.

Offline evaluation on logged traffic favours the model that chose what was logged (clicks
can only land on what it showed), so a retrain after a taste drift can trail the champion
offline and still serve users better. The model gate sends such a candidate to an online
trial (`hyperrec.evaluation.gate`); the servers give it a stable share of users (salted hash of
the user, `serving.recommender`); this module judges the trial from the platform's own
logs: the lists each version served since the trial began, and what users did with them.

Two designs, chosen by the servers (`ServerConfig.trial`) and recognised here from the log:
- interleaved (the default): the trial share's lists mix both versions' items by team draft
  (`hyperrec.experiments.interleave`); per list, the challenger's clicks minus the champion's is a
  paired difference, free of the between-user and between-moment variance of an A/B test;
- A/B: the trial share is served the challenger's lists, the rest the champion's.

Unit of analysis: the served list (the items of one list are not independent trials).
Metric: clicks per list, which keeps a list's second and third click (measured on a demo's
trial, 3,400 lists each: z 4.0 for clicks per list vs 2.8 for "got any click"; the rule
below would have promoted after 2,000 lists each, the any-click rule not within 3,400).
Guardrail: purchases per list. The decision uses the always-valid
p-value of the mixture SPRT (`hyperrec.experiments.abtest`), because the monitoring job looks again
after every window: a fixed-horizon test checked that often would promote noise. Lists of
one user are still correlated; the minimum sample and the per-user counts in the record
keep that visible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd

PROMOTE, RETIRE, CONTINUE = "promote", "retire", "continue"
ROLES = ("champion", "challenger")


@dataclass(frozen=True)
class CanaryConfig:
    alpha: float = 0.05  # of the always-valid test
    min_lists: int = 500  # per version (or interleaved lists), before any decision (the normal approximation
    # needs a few hundred)
    max_lists: int = 100_000  # the same count; undecided by then -> retire (no evidence it serves better)
    # relative difference the mSPRT mixture is spread over (tau = champion's mean x this):
    # a retrain after a detected drift is a large change (+27% CTR in both measured cases)
    min_detectable_lift: float = 0.2
    metric: str = "clicks"  # per list
    guardrail: str = "purchases"  # per list: retire a challenger significantly worse on this, whatever its clicks


@dataclass(frozen=True)
class Difference:
    """challenger - champion on a per-list mean, with its always-valid p-value."""

    means: dict[str, float]
    difference: float
    ci: tuple[float, float]  # fixed-horizon 95% interval (for reading, not for deciding)
    p_always_valid: float


@dataclass(frozen=True)
class TrialVerdict:
    action: str  # promote | retire | continue
    reason: str
    champion: int
    challenger: int
    lists: dict[str, int]  # per role (A/B), or {"interleaved": n}
    users: dict[str, int]
    metric: Difference | None = None
    guardrail: Difference | None = None
    design: str = "ab"  # or "interleaved"

    def to_dict(self) -> dict:
        return asdict(self)


def is_holdback(verdict: dict) -> bool:
    """A trial whose challenger is the champion a blessed retrain replaced (the model gate's
    holdback): registry versions only grow, so its challenger is the older version.
    Promoting it is a rollback; retiring it confirms the retrain."""
    return verdict["challenger"] < verdict["champion"]


def retrain_lift(verdict: dict) -> dict | None:
    """The newer version's clicks per list minus the older one's on the trial's lists, with
    its 95% interval: what the retrain bought over keeping the model it would replace, for
    a challenger's trial and a holdback alike. None before the trial has a metric."""
    m = verdict.get("metric")
    if not m:
        return None
    sign = -1.0 if is_holdback(verdict) else 1.0
    low, high = sorted((sign * m["ci"][0], sign * m["ci"][1]))
    return {"retrained": max(verdict["champion"], verdict["challenger"]),
            "kept": min(verdict["champion"], verdict["challenger"]),
            "difference": sign * m["difference"], "ci": (low, high), "p_always_valid": m["p_always_valid"]}


def describe_sizes(verdict: dict) -> str:
    """'1,234 interleaved lists' or '900 vs 950 lists' (challenger vs champion)."""
    lists = verdict["lists"]
    if verdict.get("design") == "interleaved":
        return f"{lists['interleaved']:,} interleaved lists"
    return f"{lists['challenger']:,} vs {lists['champion']:,} lists"


def lists_with_outcomes(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Per-shown-item outcomes (`hyperrec.monitor.traffic.attribute`) -> one row per served list:
    request_id, ts, user_id, model_version, clicks and purchases (counts), clicked and
    purchased (0/1: any)."""
    lists = (outcomes.groupby("request_id", sort=False)
             .agg(ts=("ts", "first"), user_id=("user_id", "first"), model_version=("model_version", "first"),
                  clicks=("clicked", "sum"), purchases=("purchased", "sum"))
             .reset_index())
    return lists.assign(clicked=(lists["clicks"] > 0).astype(int), purchased=(lists["purchases"] > 0).astype(int))


def team_lists(outcomes: pd.DataFrame, champion: int, challenger: int) -> pd.DataFrame:
    """Per-shown-item outcomes with a `team` column (`hyperrec.monitor.traffic.shown_items`) -> one
    row per interleaved list of this trial: request_id, ts, user_id and, per team,
    clicks_champion, clicks_challenger, purchases_champion, purchases_challenger."""
    roles = {champion: "champion", challenger: "challenger"}
    mixed = outcomes[outcomes["interleaved"].astype(bool) & (outcomes["model_version"] == challenger)
                     & outcomes["team"].isin(roles)]
    columns = {f"{name}_{role}": mixed[column].where(mixed["team"] == version, 0).astype(int)
               for column, name in (("clicked", "clicks"), ("purchased", "purchases"))
               for version, role in roles.items()}
    return (mixed[["request_id", "ts", "user_id"]].assign(**columns)
            .groupby("request_id", sort=False)
            .agg(ts=("ts", "first"), user_id=("user_id", "first"), **{c: (c, "sum") for c in columns})
            .reset_index())


def compare(trial: pd.DataFrame, column: str, lift: float) -> Difference:
    """challenger - champion on the per-list mean of `column` (`trial` has an `arm` column)."""
    a = trial.loc[trial["arm"] == "champion", column].to_numpy(float)
    b = trial.loc[trial["arm"] == "challenger", column].to_numpy(float)
    return _difference(a, b, b.mean() - a.mean(), a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b), lift)


def compare_paired(lists: pd.DataFrame, name: str, lift: float) -> Difference:
    """challenger - champion on the per-list difference of `name`_challenger and `name`_champion
    (team_lists): a paired comparison, one observation per interleaved list."""
    a, b = (lists[f"{name}_{role}"].to_numpy(float) for role in ROLES)
    d = b - a
    return _difference(a, b, d.mean(), d.var(ddof=1) / len(d), lift)


def _difference(a: np.ndarray, b: np.ndarray, diff: float, var: float, lift: float) -> Difference:
    """The Difference of champion values `a` and challenger values `b`, given the estimate
    of the difference and its variance; the mSPRT mixture is spread over `lift` times the
    champion's mean (at least one event over the sample)."""
    from hyperrec.experiments.abtest import msprt_p_value_of_difference

    tau = max(a.mean(), 1.0 / len(a)) * lift
    half = 1.959964 * np.sqrt(var)
    return Difference({"champion": float(a.mean()), "challenger": float(b.mean())}, float(diff),
                      (float(diff - half), float(diff + half)), float(msprt_p_value_of_difference(diff, var, tau)))


def judge_interleaved(lists: pd.DataFrame, champion: int, challenger: int,
                      cfg: CanaryConfig = CanaryConfig()) -> TrialVerdict:
    """Decide the trial from its interleaved lists (team_lists): the same rules as `judge`,
    on each list's challenger-minus-champion clicks (and purchases for the guardrail)."""
    n = len(lists)
    users = lists["user_id"].fillna(lists["request_id"]).nunique() if n else 0
    base = {"champion": champion, "challenger": challenger, "lists": {"interleaved": n},
            "users": {"interleaved": int(users)}, "design": "interleaved"}
    if n < cfg.min_lists:
        return TrialVerdict(CONTINUE, f"collecting: {n:,} interleaved lists, need {cfg.min_lists:,} before deciding",
                            **base)
    metric = compare_paired(lists, cfg.metric, cfg.min_detectable_lift)
    guard = compare_paired(lists, cfg.guardrail, cfg.min_detectable_lift)
    return _decide(metric, guard, cfg, base, unit="per interleaved list, by team", sample=f"{n:,} interleaved lists",
                   capped=n >= cfg.max_lists)


def judge(lists: pd.DataFrame, champion: int, challenger: int, cfg: CanaryConfig = CanaryConfig()) -> TrialVerdict:
    """Decide the trial from `lists` (lists_with_outcomes) served since it began. Lists of
    other versions are ignored; users are identified by `user_id` (anonymous lists count
    as their own users)."""
    roles = {champion: "champion", challenger: "challenger"}
    trial = lists[lists["model_version"].isin(roles)].copy()
    trial["arm"] = trial["model_version"].map(roles)
    trial["user_id"] = trial["user_id"].fillna(trial["request_id"])
    sizes = trial["arm"].value_counts().reindex(ROLES, fill_value=0)
    users = trial.groupby("arm")["user_id"].nunique().reindex(ROLES, fill_value=0)
    base = {"champion": champion, "challenger": challenger, "lists": {k: int(v) for k, v in sizes.items()},
            "users": {k: int(v) for k, v in users.items()}}
    if sizes.min() < cfg.min_lists:
        return TrialVerdict(CONTINUE, f"collecting: {sizes.min():,} lists in the smaller group, need "
                                      f"{cfg.min_lists:,} before deciding", **base)
    metric, guard = compare(trial, cfg.metric, cfg.min_detectable_lift), compare(trial, cfg.guardrail,
                                                                                   cfg.min_detectable_lift)
    return _decide(metric, guard, cfg, base, unit="per list", sample=f"{sizes.min():,} lists each",
                   capped=sizes.min() >= cfg.max_lists)


def _decide(metric: Difference, guard: Difference, cfg: CanaryConfig, base: dict, unit: str, sample: str,
            capped: bool) -> TrialVerdict:
    """The guardrail first, then the metric, then the sample cap (`capped`)."""
    m = metric.means
    said = (f"{m['challenger']:.4f} vs {m['champion']:.4f} {cfg.metric} {unit} "
            f"(always-valid p={metric.p_always_valid:.2g})")
    if guard.p_always_valid < cfg.alpha and guard.difference < 0:
        g = guard.means
        action, reason = RETIRE, (f"guardrail: {g['challenger']:.4f} vs {g['champion']:.4f} {cfg.guardrail} {unit} "
                                  f"(always-valid p={guard.p_always_valid:.2g})")
    elif metric.p_always_valid < cfg.alpha:
        action, reason = (PROMOTE, f"better: {said}") if metric.difference > 0 else (RETIRE, f"worse: {said}")
    elif capped:
        action, reason = RETIRE, f"no evidence it serves better after {sample}: {said}"
    else:
        action, reason = CONTINUE, f"undecided: {said}"
    return TrialVerdict(action, reason, metric=metric, guardrail=guard, **base)
