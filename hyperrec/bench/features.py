"""`hyperrec bench features`: online-store lookup latency (SQLite and Redis) and how fast a
streamed event reaches the online store."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from hyperrec.config import Settings
from hyperrec.data.eventlog import EventLog
from hyperrec.features.store import online_features, online_user_features, open_store
from hyperrec.features.stream import StreamProcessor
from hyperrec.features.views import ITEM_VIEWS
from hyperrec.services import redis_server
from hyperrec.steps import feature_step, generate_step


def _pct(samples_s: list[float]) -> dict[str, float]:
    ms = np.array(samples_s) * 1000
    return {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99)), "n": len(ms)}


def _lookup_latency(store, users, items, now, n: int, candidates: int) -> dict[str, dict]:
    """Latency of the user read the server makes per request (1 user + context), and of a
    recommend-shaped read through Feast (the same plus `candidates` items)."""
    rng = np.random.default_rng(0)
    user_only, with_items = [], []
    for i in range(n + 10):
        user = [users[rng.integers(len(users))]]
        cands = list(rng.choice(items, size=min(candidates, len(items)), replace=False))
        t0 = time.perf_counter()
        online_user_features(store, user, now=now)
        t1 = time.perf_counter()
        online_features(store, ITEM_VIEWS, "item_id", cands, now=now)
        t2 = time.perf_counter()
        if i >= 10:  # the first reads warm caches and connections
            user_only.append(t1 - t0)
            with_items.append(t2 - t0)
    return {"user": _pct(user_only), "request": _pct(with_items)}


def _freshness(settings: Settings, world, log_path: Path, n: int) -> dict[str, float]:
    """Event acknowledged by the log -> visible in an online read, with the processor
    tailing the log in its own thread (as it runs beside the server)."""
    for stale in log_path.parent.glob(log_path.name + "*"):  # a fresh log each run (-wal, -shm too)
        stale.unlink()
    log = EventLog(log_path)
    proc = StreamProcessor(open_store(settings), log)
    proc.warm_start(world.events)
    stop = threading.Event()

    def tail():
        while not stop.is_set():
            if proc.run_once() == 0:
                time.sleep(0.005)

    worker = threading.Thread(target=tail, daemon=True)
    worker.start()
    reader = open_store(settings)
    users = world.users["user_id"].tolist()
    base = world.events["ts"].max().to_pydatetime()
    samples = []
    try:
        for i in range(n):
            user = users[i % len(users)]
            at = base + timedelta(seconds=10 * (i + 1))
            seen = online_user_features(reader, [user], now=at).loc[0, "last_event_ts"]
            ev = {"event_id": f"fresh-{i}", "user_id": user, "item_id": world.items["item_id"].iloc[0],
                  "event_type": "view", "ts": at.isoformat()}
            t = time.perf_counter()
            log.append([ev], now=at)
            while online_user_features(reader, [user], now=at).loc[0, "last_event_ts"] == seen:
                if time.perf_counter() - t > 5:
                    raise TimeoutError("event not visible online after 5 s")
                time.sleep(0.002)
            samples.append(time.perf_counter() - t)
    finally:
        stop.set()
        worker.join(5)
    return _pct(samples)


def _measure_store(settings: Settings, world, world_dir: Path, console: Console, lookups: int,
                   candidates: int, fresh: int) -> dict[str, dict]:
    """Load the world into this settings' online store, then time lookups and freshness."""
    label = settings.online_store
    now = world.events["ts"].max().to_pydatetime() + timedelta(minutes=1)
    uids, iids = world.users["user_id"].tolist(), world.items["item_id"].tolist()
    with console.status(f"{label}: feast apply + materialize"):
        feature_step(settings, world_dir, Console(quiet=True))
    with console.status(f"{label}: lookups"):
        result = _lookup_latency(open_store(settings), uids, iids, now, lookups, candidates)
    with console.status(f"{label}: event -> online freshness"):
        result["freshness"] = _freshness(settings, world, settings.home / "bench-events.db", fresh)
    return result


def bench_features(settings: Settings, console: Console, users: int = 2_000, items: int = 1_000,
                   events: int = 200_000, lookups: int = 200, candidates: int = 200, fresh: int = 100) -> dict:
    world_dir = settings.data_dir / "bench-world"
    world = generate_step(settings, world_dir, console, users=users, items=items, days=30, events=events)
    runs = {"sqlite": _measure_store(settings, world, world_dir, console, lookups, candidates, fresh)}
    with redis_server() as url:
        redis_settings = settings.model_copy(update={"online_store": "redis", "redis_url": url})
        runs["redis"] = _measure_store(redis_settings, world, world_dir, console, lookups, candidates, fresh)
    result = {}
    for store, run in runs.items():
        result |= {f"lookup_p50_ms_{store}": run["request"]["p50"], f"lookup_p99_ms_{store}": run["request"]["p99"],
                   f"user_lookup_p50_ms_{store}": run["user"]["p50"], f"user_lookup_p99_ms_{store}": run["user"]["p99"],
                   f"freshness_p50_ms_{store}": run["freshness"]["p50"],
                   f"freshness_p99_ms_{store}": run["freshness"]["p99"]}
    result |= {
        "freshness_p50_ms": result["freshness_p50_ms_sqlite"], "freshness_p99_ms": result["freshness_p99_ms_sqlite"],
        "redis_over_sqlite_p50": result["lookup_p50_ms_redis"] / result["lookup_p50_ms_sqlite"],
        "lookups": lookups, "candidates": candidates, "freshness_events": fresh,
        "world": {"users": users, "items": items, "events": len(world.events)},
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    table = Table(title=f"features: {lookups} lookups per store, {fresh} events for freshness")
    for col in ("metric", "p50 ms", "p99 ms"):
        table.add_column(col)
    for store, run in runs.items():
        for label, key in (("user + context (serving path)", "user"),
                           (f"user + {candidates} items via Feast", "request"), ("event -> online", "freshness")):
            table.add_row(f"{label}, {store}", f"{run[key]['p50']:.2f}", f"{run[key]['p99']:.2f}")
    console.print(table)
    return result
