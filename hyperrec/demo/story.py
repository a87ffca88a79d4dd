"""`make demo`: the whole story on embedded defaults: a world, the feature store, the
training pipeline, the server, then the closed loop (users, drift, monitoring, retraining,
swap) with a plot of served CTR."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
from rich.console import Console
from rich.table import Table

from hyperrec.config import Settings
from hyperrec.demo.closed_loop import LoopConfig, trial_outcome
from hyperrec.experiments.canary import describe_sizes, is_holdback, retrain_lift
from hyperrec.registry.model_registry import configure
from hyperrec.steps import feature_step, generate_step, training_step


def _recent_categories(world_events: pd.DataFrame, items: pd.DataFrame, user: str, n: int = 5) -> str:
    clicks = world_events[(world_events["user_id"] == user) & (world_events["event_type"] == "click")]
    cats = items.set_index("item_id").loc[clicks["item_id"].tail(n), "category"]
    return ", ".join(cats) or "(no clicks)"


def story_phases(steps: pd.DataFrame, retrains: list[dict], trials: list[dict], drift_day: float,
                 loop: LoopConfig) -> dict[str, np.ndarray]:
    """The turns of the story as masks over the loop's steps: before the drift, the step the
    first retrain was started in (the trough), then, per decided online trial, the steps
    from its decision to the step the next retrain started in (or the end): what each
    confirmed model served on its own. With no decided trial, everything after the first
    retrain. `trials`: the decided ones (run_loop keeps only those)."""
    day = (np.arange(len(steps)) + 1) * loop.step_hours / 24
    phases = {"before the drift": day <= drift_day}
    if not retrains:
        return phases
    ends = steps["sim_end"]
    fired = np.flatnonzero((ends <= retrains[0]["sim_time"]).to_numpy())[-1]
    phases["in the step the retrain started"] = np.arange(len(steps)) == fired
    periods = [(f"after {trial_outcome(t)}", t["sim_time"]) for t in trials] or [("after the retrain",
                                                                                   retrains[0]["sim_time"])]
    for label, since in periods:
        until = next((r["sim_time"] for r in retrains if r["sim_time"] > since), None)
        mask = (ends > since).to_numpy() & ((ends <= until).to_numpy() if until is not None else True)
        if mask.any():
            phases[label] = mask
    return phases


def story_numbers(steps: pd.DataFrame, retrains: list[dict], trials: list[dict], drift_day: float,
                  loop: LoopConfig, quality: pd.DataFrame | None = None) -> dict:
    """Served CTR at the turns of the story (`story_phases`), the share of the drift's drop
    that the last of them won back ((last - trough) / (before - trough)) and, given
    `quality` (closed_loop.hidden_quality), the hidden click probability of what was shown
    then, for the users whose taste drifted and for the others."""
    phases = story_phases(steps, retrains, trials, drift_day, loop)
    story = {"ctr": {f"CTR {label}": float(steps["ctr"][mask].mean()) for label, mask in phases.items()}}
    ctr = list(story["ctr"].values())
    if len(ctr) >= 3 and ctr[0] > ctr[1]:
        story["recovered"] = {"phase": list(phases)[-1], "share_of_drop": (ctr[-1] - ctr[1]) / (ctr[0] - ctr[1])}
    if quality is not None:
        story["hidden_p_click"] = {label: _p_click_by_group(quality, steps["step"].to_numpy()[mask])
                                   for label, mask in phases.items()}
    return story | drift_response(steps, retrains, drift_day, loop, quality)


TROUGH_HOURS = 6.0  # the span over which the trough is judged (the loop's step by default)


def drift_response(steps: pd.DataFrame, retrains: list[dict], drift_day: float, loop: LoopConfig,
                   quality: pd.DataFrame | None = None) -> dict:
    """How much a taste drift cost before the platform caught up, and how soon it retrained:
    `ctr_trough_ratio`, the lowest CTR of any 6-hour span after the drift begins (steps
    pooled into spans of max(6 h, step)) over the CTR before it; the same for the hidden
    click probability of what the users whose taste drifted were shown
    (`drifted_pclick_trough_ratio`, from `quality`, closed_loop.hidden_quality); and
    `hours_drift_to_first_retrain`, simulated hours from the drift's start to the monitor
    pass that started the first retrain (None: none started). `drift_day`: days after the
    loop's start."""
    span_h = max(TROUGH_HOURS, loop.step_hours)
    end_h = (np.arange(len(steps)) + 1) * loop.step_hours
    span = np.floor((end_h - 1e-9) / span_h).astype(int)
    before = end_h <= drift_day * 24 + 1e-9
    after = span * span_h >= drift_day * 24 - 1e-9
    weight = steps["lists"].to_numpy(float) if "lists" in steps else np.ones(len(steps))
    out: dict = {"ctr_trough_ratio": None, "drifted_pclick_trough_ratio": None, "hours_drift_to_first_retrain": None}
    frame = pd.DataFrame({"span": span, "ctr": steps["ctr"].to_numpy(float), "w": weight})
    if before.any() and after.any():
        per_span = (frame["ctr"] * frame["w"]).groupby(frame["span"]).sum() / frame.groupby("span")["w"].sum()
        trough = float(per_span[sorted(set(span[after]))].min())
        out["ctr_trough_ratio"] = trough / float(steps["ctr"][before].mean())
    if quality is not None and before.any() and after.any():
        drifted = quality[quality["drifting"].astype(bool)]
        span_of = dict(zip(steps["step"], span))
        rows = drifted.assign(span=drifted["step"].map(span_of), mass=drifted["p_click"] * drifted["shown"])
        base = rows[rows["step"].isin(steps["step"][before])]
        per_span = rows.groupby("span")["mass"].sum() / rows.groupby("span")["shown"].sum()
        per_span = per_span[per_span.index.isin(sorted(set(span[after])))]
        if len(base) and base["shown"].sum() and len(per_span):
            out["drifted_pclick_trough_ratio"] = float(per_span.min()) / float(base["mass"].sum() / base["shown"].sum())
    if retrains:
        start = pd.Timestamp(steps["sim_end"].iloc[0]) - pd.Timedelta(hours=loop.step_hours)
        fired = (pd.Timestamp(retrains[0]["sim_time"]) - start) / pd.Timedelta(hours=1)
        out["hours_drift_to_first_retrain"] = float(fired - drift_day * 24)
    return out


QUALITY_GROUPS = {True: "users whose taste drifted", False: "other users"}


def _p_click_by_group(quality: pd.DataFrame, steps: np.ndarray) -> dict[str, float]:
    """Mean hidden click probability per user group over `steps`, weighted by items shown
    (a group with nothing shown there is left out)."""
    rows = quality[quality["step"].isin(steps)]
    shown = rows.groupby("drifting")["shown"].sum()
    weighted = (rows["p_click"] * rows["shown"]).groupby(rows["drifting"]).sum()
    return {QUALITY_GROUPS[bool(d)]: float(weighted[d] / shown[d]) for d in shown.index if shown[d]}


def write_summary(path: Path, story: dict, arms: pd.DataFrame, timings: dict, total_s: float, retrains: list[dict],
                  trials: list[dict], open_trial: dict | None = None) -> Path:
    """The closed loop's numbers for `hyperrec bench report` (BENCHMARKS.md)."""
    lifts = {arm: {"lift": row["mechanism_lift"], "low": row["lift_low"], "high": row["lift_high"],
                   "p_holm": row["lift_p_holm"], "lists": int(row["lists"])}
             for arm, row in arms.iterrows() if "mechanism_lift" in arms and pd.notna(row["mechanism_lift"])}
    data = {"seconds_total": total_s, "timings_s": timings, **story, "lifts": lifts,
            "lists_with_click": {arm: float(v) for arm, v in arms["lists_with_click"].items()},
            "retrains": [{k: r.get(k) for k in ("wall_s", "state", "champion_before", "champion_after", "challenger",
                                                "holdback")}
                         for r in retrains],
            "trials": [{**{k: t[k] for k in ("action", "reason", "champion", "challenger", "lists", "users", "metric",
                                             "guardrail", "design")},
                        "holdback": is_holdback(t), "retrain_lift": retrain_lift(t)}
                       for t in trials + ([open_trial] if open_trial and open_trial.get("metric") else [])]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=float))
    return path


def _arms_rich(arms: pd.DataFrame) -> Table:
    """The per-arm table: rates with intervals and, for the ablation arms, the lift of the
    mechanism each one switches off."""
    table = Table(title="served lists per experiment arm (personalized; 95% intervals). Lift of a mechanism: "
                        "lists with a click in 'full' minus in the arm without it", title_justify="left")
    for col in ("arm", "shown items", "CTR", "conversion", "lists with a click", "mechanism lift", "p (Holm)"):
        table.add_column(col)
    for arm, row in arms.iterrows():
        has_lift = "mechanism_lift" in arms and not pd.isna(row.get("mechanism_lift"))
        lift = f"{row['mechanism_lift']:+.4f} [{row['lift_low']:+.4f}, {row['lift_high']:+.4f}]" if has_lift else ""
        ctr = f"{row['ctr']:.4f} [{row['ctr_low']:.4f}, {row['ctr_high']:.4f}]"
        table.add_row(arm, f"{int(row['impressions']):,}", ctr,
                      f"{row['conversion']:.4f} [{row['conv_low']:.4f}, {row['conv_high']:.4f}]",
                      f"{row['lists_with_click']:.4f} of {int(row['lists']):,}", lift,
                      f"{row['lift_p_holm']:.2g}" if has_lift else "")
    return table


def _fresh_loop_state(settings: Settings) -> None:
    """A demo tells one story: the previous run's served traffic, decisions and snapshots go,
    and the stream processor's record of the log it followed (the registry keeps its
    history; the world is regenerated from the same seed)."""
    from hyperrec.features.stream import start_log_over

    start_log_over(settings)
    for path in settings.home.glob(settings.impression_log.name + "*"):
        path.unlink()
    for folder in (settings.monitoring_dir, settings.snapshots_dir):
        shutil.rmtree(folder, ignore_errors=True)


def run_demo(settings: Settings, console: Console, users: int, items: int, days: int, events: int,
             epochs: int, port: int, loop: LoopConfig = LoopConfig()) -> dict:
    from hyperrec.demo.closed_loop import arm_table, ctr_by_team, hidden_quality, plot, run_loop, start_stream
    from hyperrec.demo.first_hours import from_home
    from hyperrec.demo.first_hours import summary as first_hours_summary
    from serving.launch import recommend, start_server, stop_server, wait_ready

    timings, t0 = {}, time.monotonic()
    _fresh_loop_state(settings)
    world_dir = settings.data_dir / "world"
    console.rule("[bold]1. data: a synthetic world")
    drift_day = days + loop.drift_after_days  # after the day the monitor takes as its reference
    world = generate_step(settings, world_dir, console, users=users, items=items, days=days, events=events,
                          drift_start_day=drift_day, drift_spread_days=loop.drift_spread_days,
                          drift_max_days=loop.drift_max_days, drift_categories=loop.drift_categories)
    console.print(f"{len(world.users):,} users, {len(world.items):,} items, {len(world.events):,} events "
                  f"-> {world_dir}; half the users' tastes will drift from simulated day {drift_day - days:.1f}")
    timings["data"] = time.monotonic() - t0

    console.rule("[bold]2. features: Feast (parquet + DuckDB offline, SQLite online)")
    t = time.monotonic()
    feature_step(settings, world_dir, console)
    timings["features"] = time.monotonic() - t

    console.rule("[bold]3. training pipeline: kfp.local -> TFRS two-tower + DCN ranker -> MLflow")
    t = time.monotonic()
    version, blessed = training_step(settings, world_dir, console, epochs)
    client = configure(settings)
    mv = client.get_model_version(settings.model_name, str(version))
    metrics = client.get_run(mv.tags["run_id"]).data.metrics
    status = "as @champion" if blessed else "but the model gate rejected it (@champion unchanged)"
    console.print(f"registered [bold]{settings.model_name}[/bold] v{version} {status}; "
                  f"Recall@20 {metrics['recall_at_20']:.3f} (popularity {metrics['popularity_recall_at_20']:.3f}), "
                  f"NDCG@10 {metrics['ndcg_at_10']:.3f} (popularity {metrics['popularity_ndcg_at_10']:.3f}, "
                  f"retrieval alone {metrics['retrieval_ndcg_at_10']:.3f})")
    timings["training"] = time.monotonic() - t

    console.rule("[bold]4. serving: KServe ModelServer, v1 protocol over HTTP")
    t = time.monotonic()
    log_path = settings.home / "logs" / "server.log"
    world_now = world.events["ts"].max().to_pydatetime()  # serve as of the simulated clock
    proc = start_server(settings, port, log_path, as_of=world_now,
                        extra_args=("--poll_s", "1", "--canary_share", str(loop.canary_share),
                                    "--trial", loop.trial, "--experiment", loop.experiment,
                                    "--feedback", "on" if loop.feedback else "off"))
    stream = start_stream(settings, loop.experiment)  # folds the history while the server loads
    try:
        with console.status(f"starting model server on :{port} (loads the champion from MLflow)"):
            ready_s = wait_ready(proc, port, log_path=log_path)
        console.print(f"ready in {ready_s:.1f}s")
        sample = world.users["user_id"].iloc[:3].tolist()
        t_req = time.monotonic()
        recs = recommend(port, sample, k=5)
        latency_ms = (time.monotonic() - t_req) * 1000
        for rec in recs:
            table = Table(title=f"{rec['user_id']} — recently clicked: "
                                f"{_recent_categories(world.events, world.items, rec['user_id'])} "
                                f"({rec['policy']}, arm {rec['arm']})", title_justify="left")
            for col in ("item", "title", "category", "why"):
                table.add_column(col)
            for it in rec["items"]:
                table.add_row(it["item_id"], it["title"], it["category"], it["reason"])
            console.print(table)
        console.print(f"one HTTP request for {len(sample)} users: {latency_ms:.0f} ms")
        timings["serving"] = time.monotonic() - t

        console.rule(f"[bold]5. the closed loop: {loop.days:g} simulated days of users, monitoring every "
                     f"{loop.step_hours:.0f} h, retraining when it fires")
        t = time.monotonic()
        result = run_loop(settings, world, f"http://127.0.0.1:{port}", console, stream, loop)
        timings["closed loop"] = time.monotonic() - t
    finally:
        stream.terminate()
        stream.wait(30)
        stop_server(proc)

    console.rule("[bold]summary")
    steps, retrains = result["steps"], result["retrains"]
    png = plot(steps, retrains, drift_day - days, settings.home / "demo" / "ctr.png", loop.days, result["trials"],
               ctr_by_team(result["served"], steps))
    arms = arm_table(result["served"])
    console.print(_arms_rich(arms))
    for r in retrains:
        trial = (f", v{r['challenger']} on online trial" + (" (holdback)" if r.get("holdback") else "")
                 if r.get("challenger") else "")
        console.print(f"retrain {r['run_id']}: {r['state']}, {r['wall_s']:.0f}s; champion v{r['champion_before']} -> "
                      f"v{r['champion_after']}{trial}")
    for trial in result["trials"]:
        console.print(f"online trial of v{trial['challenger']} vs v{trial['champion']}: {trial['action']}; "
                      f"{describe_sizes(trial)}; {trial['reason']}")
        if lift := retrain_lift(trial):
            console.print(f"  the drift-triggered retrain's lift over keeping v{lift['kept']} (same lists): "
                          f"{lift['difference']:+.4f} [{lift['ci'][0]:+.4f}, {lift['ci'][1]:+.4f}] clicks per list "
                          f"(95% CI)")
    if (trial := result.get("open_trial")) and trial.get("metric"):
        m = trial["metric"]
        console.print(f"online trial of v{trial['challenger']} vs v{trial['champion']}: still undecided after "
                      f"{describe_sizes(trial)}; clicks per list "
                      f"{m['means']['challenger']:.4f} vs {m['means']['champion']:.4f}, difference 95% CI "
                      f"[{m['ci'][0]:+.4f}, {m['ci'][1]:+.4f}], always-valid p {m['p_always_valid']:.2g} "
                      f"(the trial continues; see the README on trial power)")
    story = story_numbers(steps, retrains, result["trials"], drift_day - days, loop,
                          hidden_quality(world, result["served"], steps))
    console.print(" ".join(f"{label} {value:.4f};" for label, value in story["ctr"].items()))
    if recovered := story.get("recovered"):
        console.print(f"{recovered['phase']}, CTR has won back {recovered['share_of_drop']:.0%} of its drop from "
                      "before the drift to the step the retrain started")
    console.print("hidden click probability of the top 5 personalized items shown (the simulator's truth): "
                  + "; ".join(f"{label}: " + ", ".join(f"{group} {p:.3f}" for group, p in groups.items())
                              for label, groups in story["hidden_p_click"].items()))
    console.print("cost of the drift before the platform caught up: "
                  + ", ".join(f"{key} {value:.3f}" if value is not None else f"{key} none"
                              for key in ("ctr_trough_ratio", "drifted_pclick_trough_ratio",
                                          "hours_drift_to_first_retrain")
                              for value in [story.get(key)]))
    hours = first_hours_summary(from_home(settings, world))
    story["first_hours"] = hours
    blind = ", ".join(f"{r['blind_share']:.2f}" for r in hours["spans"])
    console.print("ceilings of lists built from each drifted user's own evidence (hyperrec.demo.first_hours, read "
                  "with the truth): lowest 6-hour hidden P(click) ratio, "
                  f"drifted {hours['drifted_ratio_ceiling_min']:.3f}, everyone {hours['all_ratio_ceiling_min']:.3f}; "
                  f"share of drifted users' lists served before any evidence, by 6-hour span: {blind}")
    console.print("stage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
                  + f"; total {time.monotonic() - t0:.0f}s")
    console.print(f"plot: {png}")
    console.print("dashboards: make ui (Evidently, http://127.0.0.1:8000); "
                  f"MLflow: .venv/bin/mlflow ui --backend-store-uri {settings.tracking_uri}")
    console.print(f"decisions: {settings.monitoring_dir / 'decisions.jsonl'}; logs: {settings.home / 'logs'}")
    summary = write_summary(settings.home / "bench" / "closed_loop.json", story, arms, timings,
                            time.monotonic() - t0, retrains, result["trials"], result.get("open_trial"))
    console.print(f"summary for BENCHMARKS.md: {summary}")
    return {"version": version, "metrics": metrics, "recommendations": recs, "timings": timings,
            "steps": steps, "retrains": retrains, "arms": arms, "plot": png}
