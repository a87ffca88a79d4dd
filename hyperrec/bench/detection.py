"""Detection bench (`python -m hyperrec.bench.detection [out.json]`): how often the
retraining trigger fires without drift, and how many requests after a taste shift it fires.

No models are trained. A small simulator plays the platform's loop hour by hour: users with
latent tastes (the click rule of `hyperrec.data.truth`) request lists from a *stale* model
that believes their old tastes (7 ranked slots, 3 exploration slots); clicks and dwell
follow the true tastes; 7-day counters per user give the serving-time features, as
`hyperrec.features.windows` defines them. A taste shift moves some users' tastes to another
category: what they click, their CTR and their 7-day features move; served lists do not.

1. false alarms: `windows` one-day same-distribution windows (~2k requests, ~20k
   impressions), spread over ten reference weeks, each assessed with no cooldown (every
   window is a fresh chance to fire); the same numbers are also judged by simpler rules.
   Each day is also cut into four 6-hour windows, each judged against the same hours of the
   reference week's last day by the monitor's short rule (`TriggerConfig.short`): its false
   alarms, and the share of days with an alarm from either rule.
2. detection delay: after a day of normal traffic, tastes shift; the full trigger
   (safeguards on) checks the trailing 24 hours every 6 hours. "Events" are served
   requests (lists of `SimConfig.k` impressions) from the shift to the firing check.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import pandas as pd
from rich.console import Console

from hyperrec.bench.report import target_table, write_json
from hyperrec.data.generate import CATEGORIES
from hyperrec.data.truth import CLICK_BIAS, CLICK_SLOPE, normalize, sigmoid
from hyperrec.monitor.trigger import RetrainTrigger, TriggerConfig, Window, assess

SLOTS = 168  # hourly buckets in the 7-day feature window


@dataclass(frozen=True)
class SimConfig:
    users: int = 5_000
    items: int = 2_000
    dim: int = 16
    k: int = 10  # items per served list
    explore: int = 3  # of which drawn uniformly over categories
    requests_per_day: int = 2_000
    model_noise: float = 0.3  # how wrong the stale model's belief about each user is


class TasteSim:
    """Users, items and a stale recommender; `hours(n)` advances time and returns the rows."""

    def __init__(self, cfg: SimConfig = SimConfig(), seed: int = 0):
        self.cfg, self.rng = cfg, np.random.default_rng(seed)
        rng, n_cat = self.rng, len(CATEGORIES)
        self.centroids = normalize(rng.normal(size=(n_cat, cfg.dim)))
        pop = 1.0 / np.arange(1, n_cat + 1) ** 0.7
        cat = rng.choice(n_cat, cfg.items, p=pop / pop.sum())
        cat[:n_cat] = np.arange(n_cat)  # every category exists
        self.item_cat = np.sort(cat)  # items grouped by category: a category's items are a slice
        self.cat_start = np.searchsorted(self.item_cat, np.arange(n_cat))
        self.cat_count = np.bincount(self.item_cat, minlength=n_cat)
        self.item_vec = normalize(self.centroids[self.item_cat] + 0.6 * rng.normal(size=(cfg.items, cfg.dim)))
        self.item_bias = rng.normal(0, 0.4, cfg.items)
        self.taste = normalize(self.centroids[rng.integers(0, n_cat, cfg.users)]
                               + 0.5 * rng.normal(size=(cfg.users, cfg.dim)))
        # the stale model's belief about each user: learnt before any shift, never updated here
        self.model = normalize(self.taste + cfg.model_noise * rng.normal(size=self.taste.shape))
        logits = 4.0 * self.model @ self.centroids.T
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        self.cat_cdf = np.cumsum(p / p.sum(axis=1, keepdims=True), axis=1)
        activity = np.exp(rng.normal(0, 0.8, cfg.users))
        self.activity = activity / activity.sum()
        self.ring = np.zeros((3, cfg.users, SLOTS))  # views, clicks, dwell per hourly bucket
        self.sums = np.zeros((3, cfg.users))
        # users existed before the simulation: a stationary time since each one's last request
        self.last_hour = -rng.exponential(24 / (cfg.requests_per_day * self.activity))
        self.hour = 0

    def shift(self, share: float, towards: list[int] | None = None) -> np.ndarray:
        """Move `share` of users' tastes towards a random category (as `generate.py` drifts
        them), or towards one of the `towards` categories (a trend). Returns the users moved."""
        pool = np.arange(len(self.centroids)) if towards is None else np.asarray(towards)
        users = np.flatnonzero(self.rng.random(self.cfg.users) < share)
        target = normalize(self.centroids[self.rng.choice(pool, len(users))]
                           + 0.3 * self.rng.normal(size=(len(users), self.cfg.dim)))
        self.taste[users] = normalize(self.taste[users] + 1.5 * (target - self.taste[users]))
        return users

    def _serve(self, users: np.ndarray):
        cfg, rng = self.cfg, self.rng
        n = len(users)
        ranked = (self.cat_cdf[users][:, None, :] > rng.random((n, cfg.k - cfg.explore, 1))).argmax(axis=2)
        cats = np.concatenate([ranked, rng.integers(0, len(self.centroids), (n, cfg.explore))], axis=1)
        items = self.cat_start[cats] + np.floor(self.cat_count[cats] * rng.random(cats.shape) ** 1.3).astype(int)
        bias = self.item_bias[items]
        score = sigmoid(CLICK_SLOPE * np.einsum("nd,nkd->nk", self.model[users], self.item_vec[items]) + CLICK_BIAS
                        + bias)
        affinity = np.einsum("nd,nkd->nk", self.taste[users], self.item_vec[items])
        clicked = rng.random(cats.shape) < sigmoid(CLICK_SLOPE * affinity + CLICK_BIAS + bias)
        dwell = np.exp(rng.normal(np.log(8 + 60 * np.clip(affinity, 0, 1)), 0.5)) * clicked
        return cats, score, clicked, dwell

    def _step(self) -> tuple[dict, dict]:
        cfg, rng, h = self.cfg, self.rng, self.hour
        slot = h % SLOTS
        self.sums -= self.ring[:, :, slot]  # events of this hour a week ago leave the window
        self.ring[:, :, slot] = 0
        rate = cfg.requests_per_day / 24 * (1 + 0.6 * np.sin(2 * np.pi * ((h % 24) - 9) / 24))  # diurnal
        users = rng.choice(cfg.users, size=rng.poisson(rate), p=self.activity)
        views, clicks, dwell = self.sums[:, users]
        at = h + rng.random(len(users))
        features = {"views_7d": views, "clicks_7d": clicks,
                    "ctr_7d": np.divide(clicks, views, out=np.zeros_like(clicks), where=views > 0),
                    "mean_dwell_7d": np.divide(dwell, clicks, out=np.zeros_like(dwell), where=clicks > 0),
                    "recency_s": np.round((at - self.last_hour[users]) * 3600),
                    "hour_of_day": np.full(len(users), h % 24)}
        cats, score, clicked, dwell_s = self._serve(users)
        for i, values in enumerate((np.full(len(users), cfg.k), clicked.sum(axis=1), dwell_s.sum(axis=1))):
            np.add.at(self.ring[i, :, slot], users, values)
            np.add.at(self.sums[i], users, values)
        self.last_hour[users] = np.maximum(self.last_hour[users], at)
        self.hour += 1
        return features, {"score": score.ravel(), "cat": cats.ravel(), "clicked": clicked.ravel()}

    def hours(self, n: int) -> Window:
        """Advance `n` hours; the requests and impressions served meanwhile."""
        feats, outs = zip(*(self._step() for _ in range(n)))
        features = pd.DataFrame({k: np.concatenate([f[k] for f in feats]) for k in feats[0]})
        outcomes = pd.DataFrame({"score": np.concatenate([o["score"] for o in outs]),
                                 "category": pd.Categorical.from_codes(np.concatenate([o["cat"] for o in outs]),
                                                                       CATEGORIES),
                                 "clicked": np.concatenate([o["clicked"] for o in outs])})
        return Window(features, outcomes)


def concat(windows: list[Window]) -> Window:
    """Consecutive windows as one (a trailing window from hourly chunks)."""
    return Window(pd.concat([w.features for w in windows], ignore_index=True),
                  pd.concat([w.outcomes for w in windows], ignore_index=True))


def _reference(seed: int) -> tuple[TasteSim, Window]:
    """A simulator past its 7-day warm-up (counters full) and the week it serves next."""
    sim, week, _ = _reference_days(seed)
    return sim, week


def _reference_days(seed: int) -> tuple[TasteSim, Window, Window]:
    """`_reference`, and the week's last day apart: the short windows' reference (the monitor
    takes one day of a champion's traffic as its reference)."""
    sim = TasteSim(seed=seed)
    sim.hours(SLOTS)
    days = [sim.hours(24) for _ in range(SLOTS // 24)]  # the same draws as one sim.hours(SLOTS)
    return sim, concat(days), days[-1]


def same_hours(reference: Window, current: Window, k: int = SimConfig.k) -> Window:
    """The rows of `reference` at the hours of day `current` covers (`current` spans whole
    hours): what a short window is compared with, so that hour_of_day, and any daily cycle,
    compare like with like. Outcomes are `k` rows per request, in request order."""
    keep = reference.features["hour_of_day"].isin(set(current.features["hour_of_day"])).to_numpy()
    return Window(reference.features[keep].reset_index(drop=True),
                  reference.outcomes[np.repeat(keep, k)].reset_index(drop=True))


def false_alarms(windows: int, seed: int, config: TriggerConfig, references: int = 10, short_h: int = 6) -> dict:
    """Assess `windows` one-day, same-distribution windows, spread over `references` reference
    weeks (a reference is one draw too: an unlucky week raises every later window's chance
    to fire, and one reference would hide that). Counts where the trigger's rule fires, and
    where simpler rules would have fired on the same numbers. With `short_h`, each day is also
    looked at as its `short_h`-hour windows, each against the same hours of the reference
    week's last day by the short rule (`TriggerConfig.short`), as the monitor does every pass:
    those windows' alarms, and the share of days with an alarm from either rule (the rate a
    monitor passing every `short_h` hours pays)."""
    alpha_each = config.family_alpha / config.n_checks
    fired = dict.fromkeys(("trigger", "p_lt_0.05_any", "bonferroni_only", "evidently_distance_0.1_any"), 0)
    short_config = config.short() if short_h else None
    short = {"windows": 0, "assessed": 0, "alarms": 0, "days_with_alarm": 0, "requests": 0}
    requests = 0
    for r in range(references):
        sim, ref, ref_day = _reference_days(seed * 1000 + r)
        for _ in range(windows // references + (r < windows % references)):
            chunks = [sim.hours(short_h) for _ in range(24 // short_h)] if short_h else [sim.hours(24)]
            cur = concat(chunks)
            requests += len(cur.features)
            result = assess(ref, cur, config)
            checks = result["checks"].values()
            fired["trigger"] += bool(result["drifted"])
            fired["p_lt_0.05_any"] += any(c["p_value"] < 0.05 for c in checks)
            fired["bonferroni_only"] += any(c["p_value"] < alpha_each for c in checks)
            fired["evidently_distance_0.1_any"] += any(c.get("distance", 0) >= 0.1 for c in checks)
            day_alarm = bool(result["drifted"])
            for chunk in chunks if short_config else ():
                short["windows"] += 1
                short["requests"] += len(chunk.features)
                if (len(chunk.features) < short_config.min_requests
                        or chunk.outcomes["clicked"].sum() < short_config.min_clicks):
                    continue  # the trigger gives no verdict on it
                short["assessed"] += 1
                alarm = bool(assess(same_hours(ref_day, chunk), chunk, short_config)["drifted"])
                short["alarms"] += alarm
                day_alarm |= alarm
            short["days_with_alarm"] += day_alarm
    out = {"rates": {k: v / windows for k, v in fired.items()}, "alarms": fired["trigger"],
           "requests_per_window": round(requests / windows), "references": references}
    if short_config:
        out["short"] = {"hours": short_h, "windows": short["windows"], "assessed": short["assessed"],
                        "alarms": short["alarms"], "false_alarm_rate": short["alarms"] / max(short["assessed"], 1),
                        "requests_per_window": round(short["requests"] / max(short["windows"], 1)),
                        "days": windows, "days_with_alarm": short["days_with_alarm"],
                        "false_alarm_rate_per_day": short["days_with_alarm"] / windows}
    return out


def detection_delay(seed: int, config: TriggerConfig, share: float, towards: list[int] | None = None,
                    step_h: int = 6, max_days: int = 14, short: bool = False) -> dict:
    """Shift tastes after a day of normal traffic, then run the full trigger (safeguards on)
    every `step_h` hours over the trailing 24 hours; requests served from shift to fire.
    `short`: when that gives no verdict or no drift, the last `step_h` hours are also judged
    against the same hours of the reference week's last day by the short rule."""
    sim, ref, ref_day = _reference_days(seed)
    per_day = 24 // step_h
    chunks = [sim.hours(step_h) for _ in range(per_day)]
    sim.shift(share, towards)
    served = 0
    with TemporaryDirectory() as tmp:
        log = Path(tmp) / "decisions.jsonl"
        trigger = RetrainTrigger(log, config)
        for n in range(1, max_days * per_day + 1):
            chunks = [*chunks[1:], sim.hours(step_h)]
            served += len(chunks[-1].features)
            decision = trigger.decide(ref, concat(chunks), reference_id="champion", now=sim.hour * 3600.0)
            if short and decision.status in ("no_drift", "too_few_samples"):  # as monitoring.job does
                decision = RetrainTrigger(log, config.short()).decide(
                    same_hours(ref_day, chunks[-1]), chunks[-1], reference_id="champion", now=sim.hour * 3600.0)
            if decision.retrain:
                return {"requests": served, "hours": n * step_h, "reasons": decision.reasons}
    return {"requests": None, "hours": None, "reasons": []}


def run(out: Path | None, windows: int = 200, seed: int = 0, trials: int = 5,
        console: Console | None = None) -> dict:
    """False-alarm rate over `windows` one-day windows, and the detection delay of two taste
    shifts over `trials` seeds; printed as a table, written to `out` as JSON if given."""
    console = console or Console()
    config = TriggerConfig()
    started = time.perf_counter()
    null = false_alarms(windows, seed, config)
    scenarios = {"diffuse": (0.5, None), "trend": (0.3, [4, 5])}  # trend: garden and sports
    delays = {name: [detection_delay(seed * 1000 + 500 + t, config, share, towards) for t in range(trials)]
              for name, (share, towards) in scenarios.items()}
    short = null["short"]  # its delay: no shorter here (tests/test_monitoring.py), see docs/monitoring.md
    result = {"false_alarm_rate": null["rates"]["trigger"], "windows": windows,
              "false_alarms": null["alarms"], "references": null["references"],
              "window": f"24 h (~{null['requests_per_window']} requests)",
              "baseline_false_alarm_rates": {k: v for k, v in null["rates"].items() if k != "trigger"},
              **_summary(delays),
              # the monitor's short window (TriggerConfig.short), looked at every 6 hours beside the day's
              "short_window": short,
              "false_alarm_rate_per_day_with_short": short["false_alarm_rate_per_day"],
              "seconds": round(time.perf_counter() - started, 1)}
    _table(console, result)
    write_json(out, result)
    return result


def _summary(delays: dict[str, list[dict]]) -> dict:
    out = {"detection": {}}
    for name, trials in delays.items():
        got = [t["requests"] for t in trials if t["requests"] is not None]
        out["detection"][name] = {
            "median_requests": int(np.median(got)) if got else None,  # over the trials that fired
            "per_trial_requests": [t["requests"] for t in trials],
            "median_hours": float(np.median([t["hours"] for t in trials if t["hours"]])) if got else None,
            "detected": f"{len(got)} of {len(trials)}",
            "first_reasons": sorted({r for t in trials for r in t["reasons"]})}
    main = out["detection"]["diffuse"]
    # events = served requests (each a list of SimConfig.k impressions) from the shift to the firing check
    out["detection_delay_events"] = main["median_requests"]
    return out


RULES = {"p_lt_0.05_any": "  rule: any p < 0.05", "bonferroni_only": "  rule: any p < 0.01/10 only",
         "evidently_distance_0.1_any": "  rule: any distance >= 0.1 only"}


def _table(console: Console, r: dict) -> None:
    rows = [(f"false alarms ({r['references']} reference weeks)",
             f"{r['false_alarms']} of {r['windows']} ({r['false_alarm_rate']:.1%})", "< 1%")]
    rows += [(RULES[name], f"{rate:.1%}", "") for name, rate in r["baseline_false_alarm_rates"].items()]
    for name, d in r["detection"].items():
        value = (f"{d['median_requests']:,} requests (~{d['median_hours']:.0f} h), {d['detected']}"
                 if d["median_requests"] is not None else f"not within 14 days ({d['detected']})")
        rows.append((f"delay, {name} taste shift (median)", value, ""))
    if short := r.get("short_window"):
        rows.append((f"short windows ({short['hours']} h, ~{short['requests_per_window']} requests): false alarms",
                     f"{short['alarms']} of {short['assessed']} assessed ({short['false_alarm_rate']:.1%}; "
                     f"{short['windows'] - short['assessed']} too small)", ""))
        rows.append(("days with an alarm, day's and short windows",
                     f"{short['days_with_alarm']} of {short['days']} ({short['false_alarm_rate_per_day']:.1%})",
                     "< 1%"))
    rows.append(("bench time", f"{r['seconds']:.0f} s", "< 120 s"))
    console.print(target_table(f"retraining trigger, simulated traffic, {r['window']} windows", rows))


if __name__ == "__main__":
    import sys

    run(Path(sys.argv[1]) if len(sys.argv) > 1 else None)
