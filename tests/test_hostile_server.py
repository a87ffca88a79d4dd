"""A hostile client against the real server: bodies nested past any parser's limit, a
locked event log, and the log's file deleted while serving. Client mistakes are 4xx, the
server's own trouble a 503 that says so; never a 500, never an acknowledgement into nothing.
(The tests run in file order: the last one deletes the log.)"""

import contextlib
import json
import sqlite3
import time

import pytest
import requests

pytestmark = pytest.mark.slow
PREDICT = "/v1/models/recommender:predict"


@pytest.fixture(scope="module")
def server(champion_server):
    """The server caches lists in a real Redis of its own, which a test stops (`stop_cache`)."""
    from hyperrec.services import redis_server

    with contextlib.ExitStack() as cache, pytest.MonkeyPatch.context() as mp:
        mp.setenv("HYPERREC_RECS_CACHE", cache.enter_context(redis_server()))
        with champion_server("hostile", ("--ingest_wait_s", "1", "--header_timeout_s", "2",
                                         "--body_timeout_s", "2")) as built:
            built["at"] = built["world"].events["ts"].max().isoformat()
            built["stop_cache"] = cache.close
            yield built


def _event(server, i, **extra) -> dict:
    user = server["world"].users["user_id"].iloc[0]
    item = server["world"].items["item_id"].iloc[0]
    return {"event_id": f"hostile-{i}", "user_id": user, "item_id": item, "event_type": "view",
            "ts": server["at"], "dwell_s": 12.0, **extra}


def _nested_text(levels: int) -> str:
    return "[" * levels + "]" * levels


@pytest.mark.parametrize("content_type", [None, "application/json", "application/json; charset=utf-8",
                                          "text/plain", "text/plain; charset=utf-8"])
def test_predict_nested_past_the_parser_limit_is_a_400(server, content_type):
    body = ('{"instances": ' + _nested_text(100_000) + "}").encode()
    headers = {"Content-Type": content_type} if content_type else {}
    resp = requests.post(server["url"] + PREDICT, data=body, headers=headers, timeout=30)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]


def test_events_nested_past_the_parser_limit_are_a_400_and_kept(server):
    from hyperrec.data.eventlog import EventLog

    log = EventLog(server["settings"].event_log)
    before = log.counts()["dead_letters"]
    resp = requests.post(server["url"] + "/v1/events", data=_nested_text(100_000).encode(), timeout=30)
    assert resp.status_code == 400 and "nested" in resp.json()["error"]
    assert log.counts()["dead_letters"] == before + 1


def test_one_deep_event_is_dead_lettered_alone(server):
    deep = _event(server, "deep")
    body = ('[' + json.dumps(_event(server, "fine")) + ", "
            + json.dumps(deep)[:-1] + ', "x": ' + _nested_text(900) + "}]")
    resp = requests.post(server["url"] + "/v1/events", data=body.encode(),
                         headers={"Content-Type": "application/json"}, timeout=30)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert (out["received"], out["stored"], out["dead_lettered"]) == (2, 1, 1)


def test_a_locked_log_is_a_503_with_retry_after_not_a_500(server):
    holder = sqlite3.connect(server["settings"].event_log, isolation_level=None, timeout=5)
    holder.execute("BEGIN IMMEDIATE")  # another process holding the write lock
    try:
        started = time.monotonic()
        resp = requests.post(server["url"] + "/v1/events", json=[_event(server, "locked")], timeout=30)
        waited = time.monotonic() - started
        assert resp.status_code == 503, resp.text
        assert resp.headers["retry-after"] == "1" and "busy" in resp.json()["error"]
        assert waited < 10
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    again = requests.post(server["url"] + "/v1/events", json=[_event(server, "locked")], timeout=30)
    assert again.status_code == 200 and again.json()["stored"] == 1  # the retry lands


def test_a_client_trickling_its_headers_is_cut_off(server):
    import socket

    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=30) as sock:
        sock.sendall(b"POST /v1/models/recommender:predict HTTP/1.1\r\nHost: x\r\n")
        reply = b""
        while chunk := sock.recv(4096):  # never finishing the headers; the server must hang up
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 10
    with socket.create_connection(("127.0.0.1", server["port"]), timeout=30) as idle:
        assert idle.recv(4096).startswith(b"HTTP/1.1 408")  # an idle connection too


def test_a_body_that_trickles_is_a_408(server):
    import socket

    with socket.create_connection(("127.0.0.1", server["port"]), timeout=30) as sock:
        sock.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: 1000\r\n\r\n[")
        reply = sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 408"), reply[:200]


def test_lists_made_while_the_cache_is_down_are_flagged_degraded(server):
    user = server["world"].users["user_id"].iloc[0]
    before = requests.post(server["url"] + PREDICT, json={"instances": [{"user_id": user}]}, timeout=30)
    assert before.status_code == 200 and "x-hyperrec-degraded" not in before.headers
    server["stop_cache"]()
    during = requests.post(server["url"] + PREDICT, json={"instances": [{"user_id": user}]}, timeout=30)
    assert during.status_code == 200 and during.headers["x-hyperrec-degraded"] == "recs-cache"
    assert during.json()["predictions"][0]["items"]
    v2 = {"inputs": [{"name": "user_id", "shape": [1], "datatype": "BYTES", "data": [user]}]}
    infer = requests.post(server["url"] + "/v2/models/recommender/infer", json=v2, timeout=30)
    assert infer.status_code == 200 and infer.json()["parameters"]["degraded"] == "recs-cache"


def test_zz_a_deleted_event_log_turns_the_server_unready_and_ingest_503(server):
    path = server["settings"].event_log
    assert requests.get(server["url"] + "/v2/health/ready", timeout=10).status_code == 200
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    resp = requests.post(server["url"] + "/v1/events", json=[_event(server, "after-delete")], timeout=30)
    assert resp.status_code == 503 and "deleted or replaced" in resp.json()["error"]
    assert requests.get(server["url"] + "/v2/health/ready", timeout=10).status_code != 200
    # lists are still answered while the orchestrator drains the pod
    user = server["world"].users["user_id"].iloc[0]
    assert requests.post(server["url"] + PREDICT, json={"instances": [{"user_id": user}]},
                         timeout=30).status_code == 200
