"""`make demo`: the walking skeleton, every stage real, on embedded defaults."""

from __future__ import annotations

import time

import pandas as pd
from rich.console import Console
from rich.table import Table

from hyperrec.config import Settings
from hyperrec.registry import configure
from hyperrec.steps import feature_step, generate_step, training_step


def _recent_categories(world_events: pd.DataFrame, items: pd.DataFrame, user: str, n: int = 5) -> str:
    clicks = world_events[(world_events["user_id"] == user) & (world_events["event_type"] == "click")]
    cats = items.set_index("item_id").loc[clicks["item_id"].tail(n), "category"]
    return ", ".join(cats) or "(no clicks)"


def run_demo(settings: Settings, console: Console, users: int, items: int, days: int, events: int,
             epochs: int, port: int) -> dict:
    from serving.launch import recommend, start_server, stop_server, wait_ready

    timings, t0 = {}, time.monotonic()
    world_dir = settings.data_dir / "world"
    console.rule("[bold]1. data: a synthetic world")
    world = generate_step(settings, world_dir, console, users=users, items=items, days=days, events=events)
    console.print(f"{len(world.users):,} users, {len(world.items):,} items, {len(world.events):,} events "
                  f"-> {world_dir}")
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
    proc = start_server(settings, port, log_path, as_of=world_now)
    try:
        with console.status(f"starting model server on :{port} (loads the champion from MLflow)"):
            ready_s = wait_ready(proc, port)
        console.print(f"ready in {ready_s:.1f}s")
        sample = world.users["user_id"].iloc[:3].tolist()
        t_req = time.monotonic()
        recs = recommend(port, sample, k=5)
        latency_ms = (time.monotonic() - t_req) * 1000
    finally:
        stop_server(proc)
    timings["serving"] = time.monotonic() - t
    for rec in recs:
        table = Table(title=f"{rec['user_id']} — recently clicked: "
                            f"{_recent_categories(world.events, world.items, rec['user_id'])} "
                            f"({rec['policy']}, arm {rec['arm']})", title_justify="left")
        for col in ("item", "title", "category", "why"):
            table.add_column(col)
        for it in rec["items"]:
            table.add_row(it["item_id"], it["title"], it["category"], it["reason"])
        console.print(table)
    console.rule("[bold]summary")
    console.print(f"one HTTP request for {len(sample)} users: {latency_ms:.0f} ms; model v{recs[0]['model_version']}")
    console.print("stage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in timings.items())
                  + f"; total {time.monotonic() - t0:.0f}s")
    console.print(f"MLflow UI: .venv/bin/mlflow ui --backend-store-uri {settings.tracking_uri}")
    console.print(f"logs: {settings.home / 'logs'}")
    return {"version": version, "metrics": metrics, "recommendations": recs, "timings": timings}
