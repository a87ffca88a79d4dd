"""The model gate (TFX "blessing"): may this candidate replace the champion?

The candidate must beat the popularity baseline by a margin and reach an absolute floor,
and must not be worse than the current champion, evaluated on the same test data, beyond
a tolerance: overall and in every segment both were measured on (cold users, cold items,
the largest categories). Thresholds come from config; every comparison is kept with its
numbers, so a rejection says exactly why.

A third outcome, the online trial (canary): a candidate that clears the baseline and the
floor but trails the champion, overall and per segment, by less than
`canary_max_relative_drop` is not trusted to be worse. When the test data is logged
traffic (a retrain after drift), its clicks could only land on what the champion chose
to show, so offline metrics favour the champion by construction. Measured on the closed
loop's first retrain after a taste drift: offline, NDCG@10 0.426 champion vs 0.405
candidate; online, the same 2,000 simulated lists over the same window, CTR 0.0457
champion vs 0.0558 candidate. Later runs' retrains trailed by 15% overall (19% in one
category) and by 27.5% (32%); the latter served CTR 0.0527 vs the champion's 0.0415 on
the same simulated lists. A candidate within the margin is served
to a share of users and the A/B test (`hyperrec.experiments.canary`) promotes or retires it; one that
fails the absolute checks (the floor, beating popularity) never reaches users.

The same bias cuts the other way too, so a blessing is not the last word either: a blessed
candidate that replaces a champion is served, and the champion it replaced goes on the
same online trial as a holdback (`ModelGateConfig.holdback`). The trial then measures
what the retrain bought online (the new model against keeping the old, on the same lists)
and, should the old one serve significantly better, promoting it is the rollback.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ModelGateConfig:
    metric: str = "ndcg_at_10"
    min_absolute: float = 0.0  # the candidate's overall metric must reach this
    min_lift_over_baseline: float = 0.05  # relative: candidate >= popularity * (1 + this)
    max_relative_drop: float = 0.03  # vs champion: candidate >= champion * (1 - this) - abs tolerance
    abs_tolerance: float = 0.002
    min_segment_users: int = 20  # smaller segments are too noisy to veto a model
    canary_max_relative_drop: float | None = 0.5  # trailing the champion overall by less -> online trial; None: never
    holdback: bool = True  # a blessed candidate replacing a champion: the old one goes on online trial


@dataclass
class Comparison:
    name: str
    passed: bool
    candidate: float
    reference: float
    required: float
    skipped: bool = False


@dataclass
class GateDecision:
    blessed: bool
    comparisons: list[Comparison]
    canary: bool = False  # not blessed, but close enough to the champion for an online trial
    holdback: bool = False  # blessed, and the champion it replaces goes on online trial against it

    @property
    def reasons(self) -> list[str]:
        return [f"{c.name}: {c.candidate:.4f} < required {c.required:.4f}" for c in self.comparisons
                if not c.passed and not c.skipped]

    def to_dict(self) -> dict:
        return {"blessed": self.blessed, "canary": self.canary, "holdback": self.holdback, "reasons": self.reasons,
                "comparisons": [asdict(c) for c in self.comparisons]}

    def to_markdown(self) -> str:
        head = ("BLESSED" + (" (the champion it replaces goes on online trial: holdback)" if self.holdback else "")
                if self.blessed else ("ONLINE TRIAL (canary), offline: " if self.canary else "REJECTED: ")
                + "; ".join(self.reasons))
        rows = ["| comparison | candidate | reference | required | result |", "|---|---|---|---|---|"]
        for c in self.comparisons:
            result = "skipped (too few users)" if c.skipped else ("pass" if c.passed else "**FAIL**")
            rows.append(f"| {c.name} | {c.candidate:.4f} | {c.reference:.4f} | {c.required:.4f} | {result} |")
        return f"# Model gate: {head}\n\n" + "\n".join(rows) + "\n"


def _segments(metrics: dict[str, float], metric: str) -> dict[str, str]:
    """segment name -> its metric key, for keys like 'segment.cold_items.ndcg_at_10'."""
    return {key.split(".", 1)[1].rsplit(".", 1)[0]: key for key in metrics
            if key.startswith("segment.") and key.endswith("." + metric)}


def decide(candidate: dict[str, float], champion: dict[str, float] | None,
           cfg: ModelGateConfig = ModelGateConfig()) -> GateDecision:
    """`candidate` and `champion` are evaluate_model outputs on the same test data
    (champion None: there is none yet, only the absolute and baseline checks apply)."""
    m = cfg.metric
    value = candidate[m]
    checks = [Comparison(f"{m} >= floor", value >= cfg.min_absolute, value, cfg.min_absolute, cfg.min_absolute)]
    baseline = candidate[f"popularity_{m}"]
    need = baseline * (1 + cfg.min_lift_over_baseline)
    checks.append(Comparison(f"{m} vs popularity", value >= need, value, baseline, need))
    if champion is not None:
        def floor(ref: float) -> float:
            return ref * (1 - cfg.max_relative_drop) - cfg.abs_tolerance

        checks.append(Comparison(f"{m} vs champion", value >= floor(champion[m]), value, champion[m],
                                 floor(champion[m])))
        for seg, key in _segments(candidate, m).items():
            if key not in champion:
                continue
            users = candidate.get(f"segment.{seg}.users", 0.0)
            skipped = users < cfg.min_segment_users
            ok = skipped or candidate[key] >= floor(champion[key])
            checks.append(Comparison(f"{seg} {m} vs champion", ok, candidate[key], champion[key],
                                     floor(champion[key]), skipped))
    blessed = all(c.passed for c in checks)
    return GateDecision(blessed, checks, canary=not blessed and _close_to_champion(checks, cfg),
                        holdback=blessed and champion is not None and cfg.holdback)


def _close_to_champion(checks: list[Comparison], cfg: ModelGateConfig) -> bool:
    """Only champion comparisons failed, each by less than the canary margin; a segment
    whose champion value is within noise of zero (< 10x the absolute tolerance, e.g. cold
    items at NDCG 0.004) cannot block a trial."""
    if cfg.canary_max_relative_drop is None:
        return False
    failed = [c for c in checks if not c.passed and not c.skipped]
    meaningful = [c for c in failed if c.name == f"{cfg.metric} vs champion" or c.reference >= 10 * cfg.abs_tolerance]
    return (bool(failed) and all("vs champion" in c.name for c in failed)
            and all(c.candidate > c.reference * (1 - cfg.canary_max_relative_drop) for c in meaningful))
