"""The online trial of a challenger: promote it, retire it, or keep collecting.

Offline evaluation on logged traffic favours the model that chose what was logged (clicks
can only land on what it showed), so a retrain after a taste drift can trail the champion
offline and still serve users better. The model gate sends such a candidate to an online
trial (`hyperrec.model_gate`); the servers give it a stable share of users (salted hash of
the user, `serving.recommender`); this module judges the trial from the platform's own
logs: the lists each version served since the trial began, and the clicks they got.

Unit of analysis: the served list, outcome "got at least one click" (a user's experience
of one visit; the items of one list are not independent trials). The decision uses the
always-valid p-value of the mixture SPRT (`hyperrec.abtest.msprt_p_value`), because the
monitoring job looks again after every window: a fixed-horizon z-test checked that often
would promote noise. Lists of one user are still correlated; the minimum sample and the
per-user counts in the record keep that visible.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import pandas as pd

PROMOTE, RETIRE, CONTINUE = "promote", "retire", "continue"


@dataclass(frozen=True)
class CanaryConfig:
    alpha: float = 0.05  # of the always-valid test
    min_lists: int = 500  # per version, before any decision (the normal approximation needs a few hundred)
    max_lists: int = 100_000  # per version; undecided by then -> retire (no evidence it serves better)
    min_detectable_lift: float = 0.10  # relative; the mSPRT mixture's spread (tau): larger decides big effects sooner
    guardrail: str = "purchased"  # retire a challenger significantly worse on this, whatever its clicks


@dataclass(frozen=True)
class TrialVerdict:
    action: str  # promote | retire | continue
    reason: str
    champion: int
    challenger: int
    lists: dict[str, int]  # per role
    users: dict[str, int]
    rates: dict[str, float]  # per role: share of lists with a click
    guardrail_rates: dict[str, float]
    difference: float  # challenger - champion, share of lists with a click
    ci: tuple[float, float]  # fixed-horizon 95% interval of the difference (for reading, not deciding)
    p_always_valid: float
    guardrail_p_always_valid: float

    def to_dict(self) -> dict:
        return asdict(self)


def lists_with_outcomes(outcomes: pd.DataFrame) -> pd.DataFrame:
    """Per-shown-item outcomes (`hyperrec.traffic.attribute`) -> one row per served list:
    request_id, ts, user_id, model_version, clicked and purchased (0/1: any in the list)."""
    return (outcomes.groupby("request_id", sort=False)
            .agg(ts=("ts", "first"), user_id=("user_id", "first"), model_version=("model_version", "first"),
                 clicked=("clicked", "max"), purchased=("purchased", "max"))
            .reset_index())


def _counts(trial: pd.DataFrame, metric: str) -> tuple[int, int, int, int]:
    """(successes, lists) of the champion, then of the challenger."""
    grouped = trial.groupby("arm")[metric].agg(["sum", "count"])
    return (int(grouped.at["champion", "sum"]), int(grouped.at["champion", "count"]),
            int(grouped.at["challenger", "sum"]), int(grouped.at["challenger", "count"]))


def _always_valid_p(counts: tuple[int, int, int, int], lift: float) -> float:
    from hyperrec.abtest import msprt_p_value

    s_a, n_a, s_b, n_b = counts
    tau = max(s_a / n_a, 1.0 / n_a) * lift  # the difference worth finding, at the champion's rate
    return float(msprt_p_value(s_a, n_a, s_b, n_b, tau))


def judge(lists: pd.DataFrame, champion: int, challenger: int, cfg: CanaryConfig = CanaryConfig()) -> TrialVerdict:
    """Decide the trial from `lists` (lists_with_outcomes) served since it began. Lists of
    other versions are ignored; users are identified by `user_id` (anonymous lists count
    as their own users)."""
    from hyperrec.abtest import two_proportion_z_test

    roles = {champion: "champion", challenger: "challenger"}
    trial = lists[lists["model_version"].isin(roles)].copy()
    trial["arm"] = trial["model_version"].map(roles)
    trial["user_id"] = trial["user_id"].fillna(trial["request_id"])
    sizes = trial["arm"].value_counts().reindex(["champion", "challenger"], fill_value=0)
    users = trial.groupby("arm")["user_id"].nunique().reindex(["champion", "challenger"], fill_value=0)
    base = {"champion": champion, "challenger": challenger, "lists": {k: int(v) for k, v in sizes.items()},
            "users": {k: int(v) for k, v in users.items()}}
    if sizes.min() < cfg.min_lists:
        return TrialVerdict(CONTINUE, f"collecting: {sizes.min():,} lists in the smaller group, need "
                                      f"{cfg.min_lists:,} before deciding", rates={}, guardrail_rates={},
                            difference=0.0, ci=(0.0, 0.0), p_always_valid=1.0, guardrail_p_always_valid=1.0, **base)
    clicks, guard = _counts(trial, "clicked"), _counts(trial, cfg.guardrail)
    rates = {"champion": clicks[0] / clicks[1], "challenger": clicks[2] / clicks[3]}
    guard_rates = {"champion": guard[0] / guard[1], "challenger": guard[2] / guard[3]}
    p, gp = _always_valid_p(clicks, cfg.min_detectable_lift), _always_valid_p(guard, cfg.min_detectable_lift)
    diff = rates["challenger"] - rates["champion"]
    z = two_proportion_z_test(*clicks, alpha=0.05)
    lift = f"{rates['challenger']:.4f} vs {rates['champion']:.4f} lists with a click (always-valid p={p:.2g})"
    if gp < cfg.alpha and guard_rates["challenger"] < guard_rates["champion"]:
        action, reason = RETIRE, (f"guardrail: {cfg.guardrail} {guard_rates['challenger']:.4f} vs "
                                  f"{guard_rates['champion']:.4f} (always-valid p={gp:.2g})")
    elif p < cfg.alpha:
        action, reason = (PROMOTE, f"better: {lift}") if diff > 0 else (RETIRE, f"worse: {lift}")
    elif sizes.min() >= cfg.max_lists:
        action, reason = RETIRE, f"no evidence it serves better after {sizes.min():,} lists each: {lift}"
    else:
        action, reason = CONTINUE, f"undecided: {lift}"
    return TrialVerdict(action, reason, rates=rates, guardrail_rates=guard_rates, difference=float(diff),
                        ci=(float(z.ci_low), float(z.ci_high)), p_always_valid=p, guardrail_p_always_valid=gp, **base)
