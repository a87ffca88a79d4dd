"""The closed loop, run for real on one machine: the model server and the stream processor
as their own processes, simulated users over several simulated days (their tastes drift
partway), the monitoring job every few simulated hours, and the retraining run it starts,
gated, registered and hot-swapped into the running server, either as champion (the
champion it replaced then goes on online trial as a holdback) or as a challenger on online
trial (a share of users, whose lists interleave both versions' items) until the
monitoring job's test promotes or retires it. Outcomes are read back from
the platform's own logs, per step, arm and model version, and plotted.

While a retraining run works (minutes of wall time), simulated time stands still: the
users wait for the platform, so what they see after it is exactly the new champion.
"""

from __future__ import annotations

import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import requests
from rich.console import Console

from hyperrec.config import Settings, export_env
from hyperrec.data.world import World


@dataclass(frozen=True)
class LoopConfig:
    # simulated days after the world's end: drift, detection, then three rounds of retrain, trial
    # and promotion (each round ~3 days: a reference day, a window, the trial), and after
    days: float = 10.5
    drift_after_days: float = 1.0  # tastes start to drift after the monitor's reference day
    drift_spread_days: float = 0.25  # a taste shift, not a slow slide: drifting users start within 6 h
    drift_max_days: float = 1.0  # and have moved within a day, so the retrain sees the new tastes
    drift_categories: int | None = None  # categories they turn to (WorldConfig.drift_categories); None: any
    lists_per_day: int | None = None  # default: as many views a day as the world's history had
    step_hours: float = 6.0  # the monitoring job runs after every step
    short_window_hours: float = 6.0  # the monitor's short window (monitoring.job.run_once; 0: the day's only)
    epochs: int = 6  # of each retraining run
    # each costs ~100 s of wall time; later firings are recorded, not run. In one run (README,
    # Monitoring) the first retrain won back 53% of the drift's CTR drop, the third 86%
    max_retrains: int = 3
    # Users in a challenger's trial. Interleaved, every one: each list still holds half the
    # champion's items and is its own control, so the trial needs no control group, and
    # twice the lists decide it sooner (an A/B trial would need 0.5: two equal groups)
    canary_share: float = 1.0
    trial: str = "interleave"  # their lists: both versions' items by team draft, or "ab" (the challenger's list)
    experiment: str = "ablation"  # the server's re-ranking arms (hyperrec.online.serving_path.EXPERIMENTS)
    feedback: bool = True  # the server moves queries by users' recent reactions (hyperrec.online.feedback)
    seed: int = 0


def history_lists_per_day(world: World, examined_per_list: float) -> int:
    """Lists a day that give as many views a day as the world's history had: the same
    traffic intensity, so 7-day activity features do not drift merely because the
    simulation is busier or quieter than the past."""
    views = world.events[world.events["event_type"] == "view"]
    days = max((world.events["ts"].max() - world.events["ts"].min()) / pd.Timedelta(days=1), 1.0)
    return max(int(round(len(views) / days / examined_per_list)), 1)


def _ready_file(settings: Settings) -> Path:
    return settings.home / "logs" / "stream.ready"


def start_stream(settings: Settings, experiment: str) -> subprocess.Popen:
    """`hyperrec stream` as a child process (its output in logs/stream.log); it creates
    logs/stream.ready once it tails new events (`wait_tailing`). The caller stops it."""
    ready = _ready_file(settings)
    ready.parent.mkdir(parents=True, exist_ok=True)
    ready.unlink(missing_ok=True)
    log = open(settings.home / "logs" / "stream.log", "ab")  # noqa: SIM115 (the child owns it)
    return subprocess.Popen([sys.executable, "-m", "hyperrec.cli", "stream", "--home", str(settings.home),
                             "--experiment", experiment, "--ready-file", str(ready)],
                            env=export_env(settings), stdout=log, stderr=subprocess.STDOUT)


def wait_tailing(settings: Settings, proc: subprocess.Popen, timeout_s: float = 300.0) -> float:
    """Seconds until the stream processor tails new events. Users start only then: before,
    the monitor's reference day was served without real-time features (the processor was
    still importing and folding the history), and recency_s "drifted" in every run."""
    ready, started = _ready_file(settings), time.monotonic()
    while not ready.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"the stream processor exited with code {proc.returncode}: see logs/stream.log")
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"the stream processor was not tailing after {timeout_s:.0f}s: see logs/stream.log")
        time.sleep(0.2)
    return time.monotonic() - started


def _gauge_values(url: str, gauge: str) -> list[float]:
    """A gauge's values on the server's /metrics: one, or one per worker (a pid label)."""
    text = requests.get(f"{url}/metrics", timeout=30).text
    return [float(line.split()[-1]) for line in text.splitlines()
            if line.startswith(gauge + " ") or line.startswith(gauge + "{")]


def _wait_for_gauge(url: str, gauge: str, version: int, timeout_s: float = 300.0) -> float:
    """Seconds until the server's Prometheus `gauge` (hyperrec_model_version, or
    hyperrec_canary_version) reads `version` in every worker. Read from /metrics, not by
    asking for a list: a probe list would be logged as traffic."""
    started = time.monotonic()
    while not (values := _gauge_values(url, gauge)) or any(v != version for v in values):
        if time.monotonic() - started > timeout_s:
            raise TimeoutError(f"the server's {gauge} did not reach {version} within {timeout_s:.0f}s: {values}")
        time.sleep(0.5)
    return time.monotonic() - started


def run_loop(settings: Settings, world: World, url: str, console: Console, stream: subprocess.Popen,
             cfg: LoopConfig = LoopConfig()) -> dict:
    """Simulate, monitor, retrain, swap; return per-step outcomes and every monitor report.
    `stream`: the stream processor (`start_stream`), stopped by the caller; users start once
    it tails new events."""
    from hyperrec.demo.simulate import Simulator
    from hyperrec.training.retrain import LocalRetrain
    from monitoring.job import run_once

    sim = Simulator(world, url, seed=cfg.seed)
    submitter = _Capped(LocalRetrain(settings, epochs=cfg.epochs), cfg.max_retrains)
    steps, reports, retrains, trials = [], [], [], []
    t = world.events["ts"].max().to_pydatetime()
    step = timedelta(hours=cfg.step_hours)
    n_steps = int(round(cfg.days * 24 / cfg.step_hours))
    per_day = cfg.lists_per_day or history_lists_per_day(world, sim.examined_per_list)
    lists = int(round(per_day * cfg.step_hours / 24))
    console.print(f"{per_day:,} lists a day ({sim.examined_per_list:.1f} items examined per list: the history's "
                  f"views a day)")
    waited = wait_tailing(settings, stream)
    console.print(f"stream processor tailing the event log (waited {waited:.1f}s for it)")
    for i in range(n_steps):
        wall = time.monotonic()
        served = sim.run(lists, t, t + step).frame
        t += step
        time.sleep(0.5)  # the last events reach the online store and the impression log
        report = run_once(settings, submitter, probe_index=(i % 4 == 3), short_window_s=cfg.short_window_hours * 3600)
        reports.append(report)
        ctr = served["clicks"].sum() / served["shown"].sum()
        steps.append({"step": i, "sim_end": t, "lists": len(served), "ctr": float(ctr),
                      "hit_rate": float((served["clicks"] > 0).mean()),
                      "purchases_per_list": float(served["purchases"].mean()),
                      "model_version": int(served["model_version"].mode()[0]), "monitor": report.get("status"),
                      "wall_s": time.monotonic() - wall})
        console.print(f"day {cfg.days * (i + 1) / n_steps:4.1f}: {len(served):,} lists, CTR {ctr:.3f}, "
                      f"hit rate {steps[-1]['hit_rate']:.2f}, serving "
                      + "+".join(f"v{v}" for v in sorted(served["model_version"].unique())) + "; "
                      f"monitor: {report.get('status')} {', '.join(report.get('reasons') or [])[:90]}")
        trial = report.get("trial")
        if trial and trial["action"] != "continue":
            trials.append({"sim_time": t, **trial})
            console.print(f"online trial of v{trial['challenger']}: {trial['action']} ({trial['reason']})")
        if report.get("run_id"):
            retrains.append(_follow_retrain(settings, submitter, report["run_id"], url, console, t))
    frame = pd.DataFrame(steps)
    open_trial = next((r["trial"] for r in reversed(reports) if r.get("trial")), None)
    if open_trial and open_trial["action"] != "continue":
        open_trial = None
    return {"steps": frame, "reports": reports, "retrains": retrains, "trials": trials, "open_trial": open_trial,
            "served": _served_outcomes(settings)}


class _Capped:
    """The retrain submitter, refusing after `limit` runs (the trigger records the refusal as
    submit_failed, so the decision log stays complete)."""

    def __init__(self, submitter, limit: int):
        self.submitter, self.limit, self.runs = submitter, limit, 0

    def submit(self, decision: dict) -> str:
        if self.runs >= self.limit:
            raise RuntimeError(f"the demo runs at most {self.limit} retraining run(s)")
        self.runs += 1
        return self.submitter.submit(decision)

    def is_running(self, run_id: str) -> bool:
        return self.submitter.is_running(run_id)


def _follow_retrain(settings, submitter, run_id, url, console, sim_time) -> dict:
    from hyperrec.registry.model_registry import challenger_version, champion_version
    from hyperrec.training.retrain import run_status

    before = champion_version(settings)
    started = time.monotonic()
    with console.status(f"retraining ({run_id}): snapshot + features + kfp.local pipeline; simulated time waits"):
        while submitter.is_running(run_id):
            time.sleep(2.0)
    status = run_status(settings, run_id) or {}
    took = time.monotonic() - started
    after, trial = champion_version(settings), challenger_version(settings)
    on_trial = trial is not None and trial == status.get("version")
    held_back = after != before and trial is not None and trial == before
    if after != before:
        seen_s = _wait_for_gauge(url, "hyperrec_model_version", after)
        verdict = f"v{after} passed the model gate and is serving (swap seen after {seen_s:.1f}s)"
        if held_back:
            _wait_for_gauge(url, "hyperrec_canary_version", trial)
            verdict += (f"; v{trial}, the champion it replaced, stays on online trial against it (holdback): "
                        f"the trial measures the retrain and promoting v{trial} would roll it back")
    elif on_trial:
        seen_s = _wait_for_gauge(url, "hyperrec_canary_version", trial)
        verdict = (f"v{trial} trails v{before} offline on logged traffic, within the canary margin: its items go "
                   f"into its share of users' lists until the trial decides (loaded after {seen_s:.1f}s)")
    else:
        verdict = f"the model gate kept v{before}: nothing deployed"
    console.print(f"retrain {status.get('state', '?')} in {took:.0f}s: {verdict}")
    return {"run_id": run_id, "sim_time": sim_time, "wall_s": took, "state": status.get("state"),
            "version": status.get("version"), "blessed": status.get("blessed"), "champion_before": before,
            "champion_after": after, "challenger": trial if on_trial or held_back else None,
            "holdback": held_back}


def _served_outcomes(settings: Settings) -> pd.DataFrame:
    """Per shown item, from the platform's own logs: arm, version, clicked, purchased."""
    from hyperrec.data.eventlog import EventLog
    from hyperrec.data.impressions import ImpressionLog
    from hyperrec.monitor.traffic import attribute, shown_items

    impressions = ImpressionLog(settings.impression_log).read()
    return attribute(shown_items(impressions), EventLog(settings.event_log).read(0, limit=2**62)[1])


def ctr_by_team(outcomes: pd.DataFrame, steps: pd.DataFrame) -> pd.DataFrame:
    """CTR of each version's items in personalized lists per loop step (step, model_version,
    shown, ctr): a version's items are the ones it placed, in its own lists or in
    interleaved ones."""
    outcomes = outcomes[outcomes["policy"] == "personalized"]
    ends = pd.to_datetime(steps["sim_end"], utc=True).astype("int64").to_numpy() / 1e9
    step = np.searchsorted(ends, outcomes["ts"].to_numpy(float), side="left")
    inside = step < len(ends)
    frame = outcomes.loc[inside, ["team", "clicked"]].assign(step=steps["step"].to_numpy()[step[inside]])
    table = frame.groupby(["step", "team"])["clicked"].agg(shown="size", ctr="mean").reset_index()
    return table.rename(columns={"team": "model_version"})


def hidden_quality(world: World, outcomes: pd.DataFrame, steps: pd.DataFrame, top: int = 5) -> pd.DataFrame:
    """Per loop step and user group (`drifting`: the user's hidden taste shifts in this
    world, or not): the mean hidden click probability (the simulator's truth on the day it
    was shown, before position and boredom) of the items personalized lists showed in their
    first `top` slots. Served CTR also moves with who happened to visit and what they had
    already seen; this measures only whether the platform put in front of each user what
    that user likes now, which is what a retrain should repair (step, drifting, shown,
    p_click)."""
    truth = world.truth
    shown = outcomes[(outcomes["policy"] == "personalized") & (outcomes["position"] < top)]
    users = pd.Index(world.users["user_id"]).get_indexer(shown["user_id"])
    items = pd.Index(world.items["item_id"]).get_indexer(shown["item_id"])
    known = (users >= 0) & (items >= 0)
    start = pd.Timestamp(world.meta["config"]["start"], tz="UTC").timestamp()
    ts = shown["ts"].to_numpy(float)[known]
    p_click = truth.click_probability(users[known], items[known], (ts - start) / 86_400)
    ends = pd.to_datetime(steps["sim_end"], utc=True).astype("int64").to_numpy() / 1e9
    step = np.searchsorted(ends, ts, side="left")
    inside = step < len(ends)
    drifting = np.linalg.norm(truth.user_shift, axis=1) > 0
    frame = pd.DataFrame({"step": steps["step"].to_numpy()[step[inside]], "drifting": drifting[users[known]][inside],
                          "p_click": p_click[inside]})
    return frame.groupby(["step", "drifting"])["p_click"].agg(shown="size", p_click="mean").reset_index()


def arm_table(outcomes: pd.DataFrame, full: str | None = "full") -> pd.DataFrame:
    """Per arm (personalized lists): CTR and conversion per shown item with 95% Wilson
    intervals, and, when the arms are the ablation experiment's, each switched-off
    mechanism's lift: share of lists with a click in `full` minus in the arm, with its 95%
    interval and a Holm-adjusted two-sided p-value over the comparisons. The lift is judged
    per list, the unit a user experiences (items of one list are not independent)."""
    from hyperrec.experiments.abtest import arm_metrics, holm_adjust, two_proportion_z_test
    from hyperrec.experiments.canary import lists_with_outcomes

    personal = outcomes[outcomes["policy"] == "personalized"]
    ctr = arm_metrics(personal, "clicked")
    conv = arm_metrics(personal, "purchased")
    table = pd.DataFrame({"impressions": ctr["impressions"], "ctr": ctr["rate"], "ctr_low": ctr["ci_low"],
                          "ctr_high": ctr["ci_high"], "conversion": conv["rate"], "conv_low": conv["ci_low"],
                          "conv_high": conv["ci_high"]})
    lists = lists_with_outcomes(personal).merge(personal[["request_id", "arm"]].drop_duplicates("request_id"),
                                                on="request_id")
    hits = lists.groupby("arm")["clicked"].agg(["sum", "count"])
    table["lists"] = hits["count"]
    table["lists_with_click"] = hits["sum"] / hits["count"]
    if full is None or full not in hits.index or len(hits) < 2:
        return table
    ablated = [a for a in hits.index if a != full]
    tests = {a: two_proportion_z_test(int(hits.at[a, "sum"]), int(hits.at[a, "count"]), int(hits.at[full, "sum"]),
                                      int(hits.at[full, "count"])) for a in ablated}
    adjusted = dict(zip(ablated, holm_adjust([tests[a].p_value for a in ablated])))
    table["mechanism_lift"] = pd.Series({a: tests[a].difference for a in ablated})
    table["lift_low"] = pd.Series({a: tests[a].ci_low for a in ablated})
    table["lift_high"] = pd.Series({a: tests[a].ci_high for a in ablated})
    table["lift_p_holm"] = pd.Series(adjusted)
    return table


def _retrain_mark(r: dict) -> str:
    if r["champion_after"] != r["champion_before"]:
        return f"retrain -> v{r['champion_after']}" + (f", v{r['challenger']} held back" if r.get("holdback") else "")
    return f"retrain -> v{r['challenger']} on trial" if r.get("challenger") else "retrain (gate said no)"


def trial_outcome(trial: dict) -> str:
    """'v3 promoted', 'v3 retired'; for a holdback, what it meant for the retrained model."""
    from hyperrec.experiments.canary import PROMOTE, is_holdback

    if is_holdback(trial):
        return (f"v{trial['challenger']} restored (rollback)" if trial["action"] == PROMOTE
                else f"v{trial['champion']} confirmed")
    return f"v{trial['challenger']} {'promoted' if trial['action'] == PROMOTE else 'retired'}"


MIN_SHOWN_PER_POINT = 50  # a version's items in one step, fewer: not plotted


def side_by_side(per_version: pd.DataFrame, day_of_step: dict) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per version, (days, CTR) of its items in the steps where two versions served
    (`ctr_by_team`), NaN between trials so each trial is its own line; points from fewer
    than MIN_SHOWN_PER_POINT items (a version's first lists, in the step its retrain fired
    in) are left out."""
    rows = per_version[per_version["shown"] >= MIN_SHOWN_PER_POINT]
    rows = rows[rows.groupby("step")["model_version"].transform("nunique") > 1]
    lines = {}
    for v, group in rows.groupby("model_version"):
        gaps = np.flatnonzero(np.diff(group["step"].to_numpy()) > 1) + 1
        lines[int(v)] = (np.insert(group["step"].map(day_of_step).to_numpy(float), gaps, np.nan),
                         np.insert(group["ctr"].to_numpy(float), gaps, np.nan))
    return lines


def plot(steps: pd.DataFrame, retrains: list[dict], drift_day: float | None, out: Path, days: float,
         trials: list[dict] = (), per_version: pd.DataFrame | None = None) -> Path:
    """CTR per step with the retrains, the online trials' outcomes and the start of the taste
    drift marked; while two versions serve side by side, the CTR of each one's items as well
    (`ctr_by_team`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = (np.arange(len(steps)) + 1) * days / len(steps)
    day_of_step = dict(zip(steps["step"], x))

    def day_of(sim_time) -> float:
        return (pd.Timestamp(sim_time) - steps["sim_end"].iloc[0]) / pd.Timedelta(days=1) + x[0]

    fig, ax = plt.subplots(figsize=(9, 5.2), dpi=110)
    ax.plot(x, steps["ctr"], marker="o", color="#1f77b4", label="CTR (clicks / shown items), all users")
    if per_version is not None and len(per_version):
        palette = ("#9467bd", "#8c564b", "#e377c2", "#bcbd22", "#17becf", "#7f7f7f")
        for i, (v, (days_, ctr)) in enumerate(side_by_side(per_version, day_of_step).items()):
            ax.plot(days_, ctr, marker="s", linestyle=":", color=palette[i % len(palette)],
                    label=f"CTR of v{v}'s items while two versions serve")
    ax2 = ax.twinx()
    ax2.plot(x, steps["hit_rate"], marker=".", color="#ff7f0e", alpha=0.6, label="lists with a click")
    ax2.set_ylabel("lists with a click")
    marks = [(day_of(r["sim_time"]), _retrain_mark(r), "#2ca02c") for r in retrains]
    marks += [(day_of(t["sim_time"]), trial_outcome(t), "#17becf" if t["action"] == "promote" else "#7f7f7f")
              for t in trials]
    for i, (day, label, colour) in enumerate(marks):
        ax.axvline(day, color=colour, linestyle="--")
        ax.annotate(label, (day, ax.get_ylim()[1]), xytext=(4, -14 - 12 * i), textcoords="offset points",
                    color=colour, fontsize=8)
    if drift_day is not None:
        ax.axvspan(drift_day, x[-1], color="#d62728", alpha=0.06, label="tastes drifting")
        if (x <= drift_day).any():  # the level recovery is judged against
            ax.axhline(float(steps["ctr"][x <= drift_day].mean()), color="#1f77b4", linestyle=":", linewidth=1,
                       label="CTR before the drift (mean)")
    ax.set_xlabel("simulated day after the training data ends")
    ax.set_ylabel("CTR")
    ax.set_title("hyperrec closed loop: served CTR, drift, retraining, online trial")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    # below the axes: inside, it covers the early steps' points
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper center", bbox_to_anchor=(0.5, -0.15), ncol=3,
              fontsize=7, frameon=False)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
