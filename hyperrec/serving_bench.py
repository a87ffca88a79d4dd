"""`hyperrec bench serving`: the full request path over a generated 100k-item catalog
against the naive per-request KServe path, side by side in one run, on loopback.

1. Workspace: a generated world with a 100k-item catalog, its Feast store, one model
   trained through the normal path (1 epoch: serving cost does not depend on quality) and
   registered as champion. Reused on the next run when the catalog size matches.
2. Naive server (serving/naive.py): per request one Feast lookup + one TFRS BruteForce
   SavedModel call, retrieval only. wrk closed loop over 1..16 connections.
3. hyperrec server: wrk closed loop over 1..64 connections; an open loop at 500 req/s
   (latency from the scheduled send time); an open loop during which the champion alias
   moves to a new version (non-2xx counted across the swap).
One server runs at a time, so neither steals the other's cores.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from rich.console import Console

from hyperrec.bench_report import target_table, write_json
from hyperrec.config import Settings, export_env
from hyperrec.loadgen import open_loop, wrk

HOST = "127.0.0.1"
PATH = "/v1/models/recommender:predict"
P99_BUDGET_MS = 50.0


def prepare(settings: Settings, console: Console, items: int = 100_000, users: int = 5_000,
            events: int = 300_000) -> dict:
    """World + Feast + one registered champion; reused when the catalog size matches."""
    from hyperrec.data.world import load_world
    from hyperrec.models.two_tower import TwoTowerConfig
    from hyperrec.privacy import privacy_db
    from hyperrec.registry import champion_model_dir, register_model
    from hyperrec.steps import feature_step, generate_step, record_consents
    from hyperrec.train import fit_models
    from hyperrec.training_set import build_training_set

    world_dir = settings.data_dir / "world"
    marker = settings.home / "bench-serving.json"
    if marker.exists() and json.loads(marker.read_text()).get("items") == items and champion_model_dir(settings):
        console.print(f"reusing the {items:,}-item workspace in {settings.home}")
        world = load_world(world_dir)
        if not privacy_db(settings).exists():  # a workspace from before the consent ledger
            record_consents(settings, world.users)
        return json.loads(marker.read_text()) | {"world": world}
    t = time.monotonic()
    world = generate_step(settings, world_dir, console, users=users, items=items, days=10, events=events, seed=11)
    feature_step(settings, world_dir, console)
    data_dir, model_dir = settings.data_dir / "training_set", settings.data_dir / "model"
    build_training_set(settings, world_dir, data_dir)
    fit_models(data_dir, model_dir, TwoTowerConfig(epochs=1), log=console.print)
    version = register_model(settings, model_dir, {"purpose": "serving-bench"}, {}, {"blessed": True, "reasons": []})
    info = {"items": items, "users": users, "version": version, "prepare_s": round(time.monotonic() - t, 1)}
    marker.write_text(json.dumps(info))
    return info | {"world": world}


def _bodies(world, n: int = 2_000) -> list[bytes]:
    users = world.users["user_id"].astype(str).iloc[:n]
    return [json.dumps({"instances": [{"user_id": u, "k": 10}]}).encode() for u in users]


def _launch(cmd: list[str], settings: Settings, port: int, log: Path):
    import subprocess

    from serving.launch import wait_ready

    with open(log, "ab") as out:
        proc = subprocess.Popen(cmd, env=export_env(settings), stdout=out, stderr=subprocess.STDOUT)
    wait_ready(proc, port, timeout_s=600)
    return proc


def _best_under_budget(runs: list[dict]) -> float:
    ok = [r["rps"] for r in runs if r["p99_ms"] <= P99_BUDGET_MS and r["non_2xx"] == 0]
    return max(ok, default=0.0)


def _sweep(port: int, bodies, connections, seconds, console, label) -> list[dict]:
    wrk(HOST, port, PATH, bodies, connections=4, seconds=3)  # warm-up, not counted (first calls trace graphs)
    runs = []
    for c in connections:
        r = wrk(HOST, port, PATH, bodies, connections=c, seconds=seconds)
        console.print(f"  {label} c={c}: {r['rps']:.0f} req/s, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms"
                      + (f", non-2xx {r['non_2xx']}" if r["non_2xx"] else ""))
        runs.append(r)
        if r["p99_ms"] > 4 * P99_BUDGET_MS:
            break  # far past the budget: more connections only queue
    return runs


def run(settings: Settings, out: Path | None, console: Console, seconds: int = 10, rate: float = 500.0) -> dict:
    import sys

    from hyperrec.registry import champion_model_dir, register_model
    from hyperrec.services import free_port
    from serving.launch import recommend, stop_server

    info = prepare(settings, console)
    world = info.pop("world")
    as_of = world.events["ts"].max().to_pydatetime().isoformat()
    bodies = _bodies(world)
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    model_dir = champion_model_dir(settings)
    result: dict = {"catalog_items": info["items"], "users_in_requests": len(bodies), "seconds_per_run": seconds}

    console.rule("naive: one Feast lookup + one BruteForce SavedModel call per request")
    port = free_port()
    proc = _launch([sys.executable, "-m", "serving.naive", "--model_dir", str(model_dir), "--home", str(settings.home),
                    "--http_port", str(port), "--as_of", as_of], settings, port, logs / "naive.log")
    try:
        naive = _sweep(port, bodies, (1, 2, 4, 8, 16), seconds, console, "naive")
    finally:
        stop_server(proc)
    result["naive_runs"] = naive
    result["naive_max_rps_at_p99_50ms"] = _best_under_budget(naive)

    console.rule("hyperrec: micro-batched retrieval -> ranking -> re-ranking")
    port = free_port()
    proc = _launch([sys.executable, "-m", "serving", "--home", str(settings.home), "--http_port", str(port),
                    "--as_of", as_of, "--poll_s", "1"], settings, port, logs / "server.log")
    try:
        full = _sweep(port, bodies, (1, 2, 4, 8, 16, 32, 64), seconds, console, "hyperrec")
        result["runs"] = full
        result["max_rps_at_p99_50ms"] = _best_under_budget(full)
        fixed = open_loop(HOST, port, PATH, bodies, rate=rate, seconds=max(seconds, 20)).summary()
        console.print(f"  open loop {rate:.0f} req/s: p50 {fixed['p50_ms']} ms, p99 {fixed['p99_ms']} ms, "
                      f"non-2xx {fixed['non_2xx']}")
        result["open_loop_500"] = fixed
        result["p99_ms_at_500rps"] = fixed["p99_ms"]

        before = recommend(port, [world.users["user_id"].iloc[0]], k=1)[0]["model_version"]
        swapped = threading.Event()

        def swap_at(t: float):
            if t >= 5.0 and not swapped.is_set():
                swapped.set()
                threading.Thread(target=register_model, args=(
                    settings, model_dir, {"purpose": "swap-under-load"}, {}, {"blessed": True, "reasons": []})).start()

        swap = open_loop(HOST, port, PATH, bodies, rate=rate / 2, seconds=max(seconds, 20), on_tick=swap_at)
        after = recommend(port, [world.users["user_id"].iloc[0]], k=1)[0]["model_version"]
        result["swap"] = swap.summary() | {"from_version": before, "to_version": after}
        result["swap_non2xx"] = swap.non_2xx
        console.print(f"  swap v{before} -> v{after} under {rate / 2:.0f} req/s: non-2xx {swap.non_2xx}, "
                      f"p99 {result['swap']['p99_ms']} ms")
    finally:
        stop_server(proc)
    result["throughput_ratio_vs_naive"] = round(result["max_rps_at_p99_50ms"] /
                                                max(result["naive_max_rps_at_p99_50ms"], 1e-9), 2)
    _table(console, result)
    write_json(out, result)
    return result


def _table(console: Console, r: dict) -> None:
    console.print(target_table(f"serving over a {r['catalog_items']:,}-item catalog (loopback, same run)", [
        ("p99 at 500 req/s (open loop)", f"{r['p99_ms_at_500rps']:.1f} ms", "<= 25 ms"),
        ("max req/s at p99 <= 50 ms, hyperrec", f"{r['max_rps_at_p99_50ms']:.0f}", ""),
        ("max req/s at p99 <= 50 ms, naive", f"{r['naive_max_rps_at_p99_50ms']:.0f}", ""),
        ("ratio", f"{r['throughput_ratio_vs_naive']:.2f}x", ">= 3x"),
        ("non-2xx during a model swap", str(r["swap_non2xx"]), "0")]))
