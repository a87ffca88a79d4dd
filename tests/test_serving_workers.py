"""`python -m serving --workers 2` over real HTTP: both processes answer on one port,
bandit feedback reaches the shared state whichever worker it lands on, a new champion
reaches both, events and impressions from both are stored, a killed worker is replaced,
and SIGTERM stops everything.

Every request here opens a new connection (no session), so the kernel hands it to either
worker; `x-hyperrec-worker` names the process that answered."""

import os
import signal
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests

from hyperrec.registry.model_registry import register_model
from hyperrec.services import child_pids

pytestmark = pytest.mark.slow
BLESSED = {"blessed": True, "reasons": []}
PREDICT = "/v1/models/recommender:predict"


@pytest.fixture(scope="module")
def server(champion_server):
    """conftest's champion server, with two workers polling the alias every half second."""
    with champion_server("workers", ("--poll_s", "0.5", "--workers", "2")) as built:
        yield built


def predict(server, instances):
    resp = requests.post(server["url"] + PREDICT, json={"instances": instances}, timeout=30)
    assert resp.status_code == 200, resp.text
    return resp.headers["x-hyperrec-worker"], resp.json()["predictions"]


def until(condition, timeout_s: float, every_s: float = 0.05):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(every_s)
    return condition()


def per_worker(server, gauge) -> dict[int, float]:
    """A gauge's value per live worker (pid label), from one scrape of any worker."""
    text = requests.get(server["url"] + "/metrics", timeout=10).text
    return {int(line.split('pid="')[1].split('"')[0]): float(line.split()[-1])
            for line in text.splitlines() if line.startswith(gauge + "{")}


def total(server, counter) -> float:
    text = requests.get(server["url"] + "/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(counter + "{"))


def test_both_workers_answer_on_one_port(server):
    users = server["world"].users["user_id"].iloc[:40].tolist()
    seen = {}
    for user in users:
        worker, [rec] = predict(server, [{"user_id": user, "k": 5}])
        assert rec["model_version"] == server["version"] and len(rec["items"]) == 5
        seen[worker] = seen.get(worker, 0) + 1
    assert len(seen) == 2, f"answers by worker: {seen}"
    assert {int(w) for w in seen} == set(child_pids(server["proc"].pid))  # the supervisor's two children
    server["workers"] = {int(w) for w in seen}
    # one download of the champion, shared by both
    versions = server["settings"].home / "serving" / "versions"
    assert {p.name for p in versions.iterdir() if p.is_dir()} == {str(server["version"])}


def test_metrics_from_either_worker_cover_both(server):
    """/metrics answered by one worker sums both workers' counters and lists each one's
    gauges (prometheus multiprocess mode)."""
    before = total(server, "hyperrec_recommendations_total")
    users = server["world"].users["user_id"].iloc[:30].tolist()
    answered = {predict(server, [{"user_id": u, "k": 3}])[0] for u in users}
    assert len(answered) == 2
    for _ in range(6):  # whichever worker answers the scrape
        assert total(server, "hyperrec_recommendations_total") == before + 30
    assert per_worker(server, "hyperrec_model_version") == dict.fromkeys(server["workers"], float(server["version"]))


def test_feedback_reaches_the_shared_bandit_from_either_worker(server):
    users = server["world"].users["user_id"].iloc[:120].tolist()
    explored = []  # (served by, request id, item)
    for i in range(0, len(users), 4):
        worker, recs = predict(server, [{"user_id": u, "k": 8} for u in users[i:i + 4]])
        explored += [(worker, r["request_id"], it["item_id"]) for r in recs for it in r["items"]
                     if it["reason"].startswith("something new for you")]
    assert len(explored) >= 10, "the exploring arm fills a slot for about half the users"
    url = server["url"] + "/v1/models/recommender:feedback"
    credited, crossed = 0, 0
    for served_by, rid, item in explored:  # each credit lands on whichever worker takes the connection
        resp = requests.post(url, json={"request_id": rid, "item_id": item, "reward": 1.0}, timeout=10)
        assert resp.status_code == 200 and resp.json() == {"updated": True}, resp.text
        credited += 1
        crossed += resp.headers["x-hyperrec-worker"] != served_by
        if crossed:
            break
    assert crossed, "no credit landed on the other worker"
    credited_at = time.monotonic()
    # a second credit is refused by either worker, at once
    for _ in range(4):
        again = requests.post(url, json={"request_id": rid, "item_id": item, "reward": 1.0}, timeout=10)
        assert again.status_code == 404 and "already credited" in again.json()["error"]
    # both workers' bandits have every credit within ~1 s (each re-reads the store every 0.25 s)
    latest = {}

    def caught_up():
        latest.update(per_worker(server, "hyperrec_bandit_updates"))
        return set(latest) == server["workers"] and all(u == credited for u in latest.values())

    assert until(caught_up, timeout_s=1.5), f"bandit updates per worker: {latest}, expected {credited}"
    assert time.monotonic() - credited_at < 1.5
    # feedback that no worker served is refused (after waiting out the pending writes)
    unknown = requests.post(url, json={"request_id": "nope", "item_id": "nope", "reward": 1.0}, timeout=10)
    assert unknown.status_code == 404


def test_events_and_impressions_from_both_workers_are_stored(server):
    """Several processes writing the same SQLite logs wait for each other (busy timeouts)."""
    from hyperrec.data.eventlog import EventLog
    from hyperrec.data.impressions import ImpressionLog

    world, settings = server["world"], server["settings"]
    at = world.events["ts"].max().to_pydatetime()
    users, items = world.users["user_id"].tolist(), world.items["item_id"].tolist()

    def post(batch_no):
        events = [{"event_id": f"multi-{batch_no}-{i}", "user_id": users[(batch_no + i) % len(users)],
                   "item_id": items[i % len(items)], "event_type": "click", "ts": at.isoformat(), "dwell_s": 5.0}
                  for i in range(25)]
        resp = requests.post(f"{server['url']}/v1/events", json=events, timeout=60)
        return resp.status_code, resp.headers["x-hyperrec-worker"], resp.json()

    def serve(i):
        return predict(server, [{"user_id": users[i], "k": 3}])

    with ThreadPoolExecutor(8) as pool:
        posted = list(pool.map(post, range(40)))
        served = list(pool.map(serve, range(40)))
    assert all(status == 200 for status, _, _ in posted)
    assert sum(body["stored"] for _, _, body in posted) == 1000
    assert {worker for _, worker, _ in posted} == {str(w) for w in server["workers"]}
    stored = EventLog(settings.event_log).read(0, 10**9)[1]
    assert stored["event_id"].str.startswith("multi-").sum() == 1000
    ids = {rec["request_id"] for _, recs in served for rec in recs}
    assert {worker for worker, _ in served} == {str(w) for w in server["workers"]}
    assert until(lambda: ids <= set(ImpressionLog(settings.impression_log).read()["request_id"]), 10, 0.2)


def test_a_new_champion_reaches_both_workers(server):
    new = register_model(server["settings"], server["model_dir"], {}, {}, BLESSED)  # moves the alias
    latest = {}

    def both_new():
        worker, [rec] = predict(server, [{"user_id": "u", "k": 2}])
        latest[worker] = rec["model_version"]
        return len(latest) == 2 and set(latest.values()) == {new}

    assert until(both_new, timeout_s=60, every_s=0.1), f"versions per worker: {latest}"
    versions = server["settings"].home / "serving" / "versions"
    assert (versions / str(new) / ".complete").exists()
    server["version"] = new


def test_a_killed_worker_is_replaced_while_the_other_serves(server):
    victim, survivor = sorted(server["workers"])
    os.kill(victim, signal.SIGKILL)
    replaced = until(lambda: set(child_pids(server["proc"].pid)) - {victim, survivor}, timeout_s=10, every_s=0.2)
    assert replaced, "the supervisor did not start a replacement"
    assert until(lambda: victim not in per_worker(server, "hyperrec_model_version"), timeout_s=5)  # its gauges go
    for _ in range(10):  # the survivor serves meanwhile; the replacement joins only once it is loaded
        worker, _ = predict(server, [{"user_id": "u", "k": 2}])
        assert worker == str(survivor)
    assert server["proc"].poll() is None


def test_sigterm_stops_the_supervisor_and_every_worker(server):
    proc = server["proc"]
    workers = set(child_pids(proc.pid))
    assert workers
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    for pid in workers:
        assert not Path(f"/proc/{pid}").exists(), f"worker {pid} outlived the supervisor"
    with pytest.raises(requests.ConnectionError):
        requests.get(server["url"] + "/v2/health/ready", timeout=5)
