"""`hyperrec bench freshness`: how fast behaviour reaches recommendations, end to end.

On the serving bench's workspace (100k-item catalog, registered champion), with the model
server and the stream processor (`hyperrec stream`) each in its own process, as embedded
mode runs them:

1. event -> changed recommendations: a consenting user's list is read, a few clicks on
   items of the category they are shown least are POSTed to /v1/events, and the list is
   read again every 10 ms until it changes. Time from the POST to the first changed list
   (the POST's own round trip included), over many users.
2. ingestion: batches of valid events POSTed back to back for a few seconds; every
   acknowledged event is durable (SQLite WAL, synchronous=FULL) when the answer arrives.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import requests
from rich.console import Console

from hyperrec.bench.report import target_table, write_json
from hyperrec.config import Settings

PATH = "/v1/models/recommender:predict"


def _recs(url: str, user: str) -> list[str]:
    body = {"instances": [{"user_id": user, "k": 10}]}
    return [i["item_id"] for i in requests.post(url + PATH, json=body, timeout=30).json()["predictions"][0]["items"]]


def _clicks(user: str, items: list[str], at, tag: str) -> list[dict]:
    return [{"event_id": f"{tag}-{user}-{i}", "user_id": user, "item_id": item, "event_type": "click",
             "ts": (at + np.timedelta64(i + 1, "s")).isoformat(), "dwell_s": 30.0} for i, item in enumerate(items)]


def _event_to_recs(url: str, world, users: list[str], console: Console, timeout_s: float = 5.0) -> list[float]:
    category = world.items.set_index("item_id")["category"]
    by_category = {c: ids.tolist() for c, ids in world.items.groupby("category")["item_id"]}
    at = world.events["ts"].max()
    out = []
    for n, user in enumerate(users):
        before = _recs(url, user)
        shown = category.reindex(before).value_counts()
        target = min(by_category, key=lambda c: shown.get(c, 0))
        events = _clicks(user, by_category[target][n * 3:n * 3 + 3], at, "freshness")
        sent = time.perf_counter()
        requests.post(url + "/v1/events", json=events, timeout=30).raise_for_status()
        while (after := _recs(url, user)) == before and time.perf_counter() - sent < timeout_s:
            time.sleep(0.01)
        out.append((time.perf_counter() - sent) * 1000 if after != before else float("inf"))
    missed = sum(np.isinf(out))
    if missed:
        console.print(f"  {missed} of {len(users)} lists did not change within {timeout_s:.0f} s")
    return out


def _ingest(url: str, world, seconds: float, batch: int = 500) -> dict:
    users = world.users["user_id"].astype(str).to_numpy()
    items = world.items["item_id"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    at = world.events["ts"].max()
    stored = sent = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        events = [{"event_id": f"ingest-{sent + i}", "user_id": str(rng.choice(users)),
                   "item_id": str(rng.choice(items)), "event_type": "view", "ts": at.isoformat()} for i in range(batch)]
        stored += requests.post(url + "/v1/events", json=events, timeout=60).json()["stored"]
        sent += batch
    elapsed = time.perf_counter() - started
    return {"events_sent": sent, "events_stored": stored, "seconds": round(elapsed, 2),
            "ingest_events_per_s": round(stored / elapsed, 1), "batch": batch}


def run(settings: Settings, out: Path | None, console: Console, users: int = 60, ingest_s: float = 10.0) -> dict:
    from hyperrec.bench.serving import _launch, prepare
    from hyperrec.demo.closed_loop import start_stream, wait_tailing
    from hyperrec.features.stream import start_log_over
    from hyperrec.services import free_port
    from serving.launch import stop_server

    info = prepare(settings, console)
    world = info.pop("world")
    start_log_over(settings)  # each run starts from an empty log
    as_of = world.events["ts"].max().to_pydatetime().isoformat()
    logs = settings.home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = _launch([sys.executable, "-m", "serving", "--home", str(settings.home), "--http_port", str(port),
                      "--as_of", as_of, "--poll_s", "60"], settings, port, logs / "server-freshness.log")
    # users start once this run's processor has folded the history (its ready file). Waiting
    # for "tailing" in the appended log let a second run start at once, on its predecessor's
    # line: its first users' events waited for the fold, and 4 to 14 of 60 lists missed 5 s.
    stream = start_stream(settings, "rerank")  # the server's default experiment
    try:
        wait_tailing(settings, stream, timeout_s=600)
        consenting = world.users.loc[world.users["consent_personalization"], "user_id"].astype(str).tolist()
        console.rule("event -> changed recommendations")
        latencies = _event_to_recs(url, world, consenting[:users], console)
        console.rule("ingestion")
        ingest = _ingest(url, world, ingest_s)
    finally:
        stream.terminate()
        stream.wait(30)
        stop_server(server)
    finite = np.array([x for x in latencies if np.isfinite(x)]) if latencies else np.array([np.nan])
    result = {"catalog_items": info["items"], "users_measured": len(latencies),
              "changed_within_5s": int(np.isfinite(latencies).sum()),
              "event_to_recs_p50_ms": round(float(np.percentile(finite, 50)), 1),
              "event_to_recs_p99_ms": round(float(np.percentile(finite, 99)), 1),
              "event_to_recs_max_ms": round(float(finite.max()), 1), **ingest}
    _table(console, result)
    write_json(out, result)
    return result


def _table(console: Console, r: dict) -> None:
    console.print(target_table(f"freshness over a {r['catalog_items']:,}-item catalog (loopback)", [
        ("event -> changed recommendations, p50", f"{r['event_to_recs_p50_ms']:.0f} ms", ""),
        ("event -> changed recommendations, p99", f"{r['event_to_recs_p99_ms']:.0f} ms", "< 1000 ms"),
        ("lists changed within 5 s", f"{r['changed_within_5s']} of {r['users_measured']}", "all"),
        ("ingestion (durable, acknowledged)", f"{r['ingest_events_per_s']:,.0f} events/s", "")]))
