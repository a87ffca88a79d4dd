"""The online trial of a challenger: promote it, retire it, or keep collecting.

Offline evaluation on logged traffic favours the model that chose what was logged (clicks
can only land on what it showed), so a retrain after a taste drift can trail the champion
offline and still serve users better. The model gate sends such a candidate to an online
trial (`hyperrec.model_gate`); the servers give it a stable share of users (salted hash of
the user, `serving.recommender`); this module judges the trial from the platform's own
logs: the lists each version served since the trial began, and what users did with them.

Unit of analysis: the served list (the items of one list are not independent trials).
Metric: clicks per list, which keeps a list's second and third click (measured on a demo's
trial, 3,400 lists each: z 4.0 for clicks per list vs 2.8 for "got any click"; the rule
below would have promoted after 2,000 lists each, the any-click rule not within 3,400).
Guardrail: purchases per list. The decision uses the always-valid
p-value of the mixture SPRT (`hyperrec.abtest`), because the monitoring job looks again
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
    min_lists: int = 500  # per version, before any decision (the normal approximation needs a few hundred)
    max_lists: int = 100_000  # per version; undecided by then -> retire (no evidence it serves better)
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
    lists: dict[str, int]  # per role
    users: dict[str, int]
    metric: Difference | None = None
    guardrail: Difference | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def lists_with_outcomes(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Per-shown-item outcomes (`hyperrec.traffic.attribute`) -> one row per served list:
    request_id, ts, user_id, model_version, clicks and purchases (counts), clicked and
    purchased (0/1: any)."""
    lists = (outcomes.groupby("request_id", sort=False)
             .agg(ts=("ts", "first"), user_id=("user_id", "first"), model_version=("model_version", "first"),
                  clicks=("clicked", "sum"), purchases=("purchased", "sum"))
             .reset_index())
    return lists.assign(clicked=(lists["clicks"] > 0).astype(int), purchased=(lists["purchases"] > 0).astype(int))


def compare(trial: pd.DataFrame, column: str, lift: float) -> Difference:
    """challenger - champion on the per-list mean of `column` (`trial` has an `arm` column)."""
    from hyperrec.abtest import msprt_p_value_of_difference

    a = trial.loc[trial["arm"] == "champion", column].to_numpy(float)
    b = trial.loc[trial["arm"] == "challenger", column].to_numpy(float)
    diff, var = b.mean() - a.mean(), a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b)
    tau = max(a.mean(), 1.0 / len(a)) * lift  # the difference worth finding, at the champion's level
    half = 1.959964 * np.sqrt(var)
    return Difference({"champion": float(a.mean()), "challenger": float(b.mean())}, float(diff),
                      (float(diff - half), float(diff + half)), float(msprt_p_value_of_difference(diff, var, tau)))


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
    m = metric.means
    said = (f"{m['challenger']:.4f} vs {m['champion']:.4f} {cfg.metric} per list "
            f"(always-valid p={metric.p_always_valid:.2g})")
    if guard.p_always_valid < cfg.alpha and guard.difference < 0:
        g = guard.means
        action, reason = RETIRE, (f"guardrail: {g['challenger']:.4f} vs {g['champion']:.4f} {cfg.guardrail} per "
                                  f"list (always-valid p={guard.p_always_valid:.2g})")
    elif metric.p_always_valid < cfg.alpha:
        action, reason = (PROMOTE, f"better: {said}") if metric.difference > 0 else (RETIRE, f"worse: {said}")
    elif sizes.min() >= cfg.max_lists:
        action, reason = RETIRE, f"no evidence it serves better after {sizes.min():,} lists each: {said}"
    else:
        action, reason = CONTINUE, f"undecided: {said}"
    return TrialVerdict(action, reason, metric=metric, guardrail=guard, **base)
