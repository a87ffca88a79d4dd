"""`hyperrec bench faults`: a hostile client's probes replayed against a live model server
(auth on) and stream processor, on a small generated workspace of its own.

Each probe states what a correct server does (a 4xx naming the problem, a 503 that says
so, a refusal) and is counted as failed otherwise. Across all of them:
- `server_5xx`: 5xx answers no probe asked for (a 503 for a locked or deleted log is asked for);
- `events_lost`: events acknowledged as stored that the log does not hold, or that the
  stream processor never folded;
- `stream_crashes`: the stream processor exiting on its own (it is restarted and counted);
- `impersonation_accepted`: requests acting as, or reading, another user that got a 2xx.
The last probe deletes the event log, so it runs last.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from rich.console import Console

from hyperrec.bench.report import target_table, write_json
from hyperrec.config import Settings, load_settings

PREDICT = "/v1/models/recommender:predict"
INFER = "/v2/models/recommender/infer"
FEEDBACK = "/v1/models/recommender:feedback"
INTENDED_STOP = 3  # `hyperrec stream`'s exit code when its log is gone: a refusal, not a crash


@dataclass
class Tally:
    probes: int = 0
    failed: list[str] = field(default_factory=list)
    server_5xx: int = 0
    impersonation_accepted: int = 0
    acknowledged: set[str] = field(default_factory=set)  # event ids answered as stored
    stream_crashes: int = 0

    def check(self, name: str, ok: bool, detail: str = "") -> bool:
        self.probes += 1
        if not ok:
            self.failed.append(f"{name}: {detail}"[:300])
        return ok

    def impersonation(self, name: str, resp: requests.Response, refused: bool | None = None) -> None:
        """`refused`: whether the server kept the other user's data from the caller (default: a 4xx)."""
        refused = (400 <= resp.status_code < 500) if refused is None else refused
        if not refused:
            self.impersonation_accepted += 1
        self.check(name, refused, f"{resp.status_code} {resp.text[:120]}")


class Client:
    """Requests to the server, every answer seen by the tally (unasked-for 5xx counted)."""

    def __init__(self, url: str, tally: Tally):
        self.url, self.tally = url, tally

    def call(self, method: str, path: str, credential: str | None = None, expect_5xx: bool = False,
             headers: dict | None = None, **kwargs) -> requests.Response:
        auth = {"Authorization": f"Bearer {credential}"} if credential else {}
        resp = requests.request(method, self.url + path, headers={**auth, **(headers or {})}, timeout=60, **kwargs)
        if resp.status_code >= 500 and not expect_5xx:
            self.tally.server_5xx += 1
            self.tally.failed.append(f"unexpected {resp.status_code} on {method} {path}: {resp.text[:200]}")
        return resp


@dataclass
class Live:
    """The workspace, its server and stream processor, and the credentials the probes use."""

    settings: Settings
    world: object
    client: Client
    keys: dict[str, str]
    token: object  # user id -> a user token
    stream: subprocess.Popen
    server: subprocess.Popen
    at: str  # event time: the world's last moment
    port: int
    stop_cache: object  # stops the Redis the server caches lists in

    def event(self, tag: str, user: str | None = None, **extra) -> dict:
        return {"event_id": f"faults-{tag}", "user_id": user or self.user(0), "item_id": self.item(0),
                "event_type": "view", "ts": self.at, "dwell_s": 15.0, **extra}

    def user(self, i: int) -> str:
        users = self.world.users
        return users.loc[users["consent_personalization"], "user_id"].iloc[i]

    def item(self, i: int) -> str:
        return self.world.items["item_id"].iloc[i]

    def ingest(self, events: list, credential: str | None = None, **kwargs) -> requests.Response:
        """POST events; those answered as stored join the tally's acknowledged ids."""
        resp = self.client.call("POST", "/v1/events", credential or self.keys["collector"], json=events, **kwargs)
        if resp.status_code == 200 and resp.json()["stored"] == len(events):
            self.client.tally.acknowledged.update(e["event_id"] for e in events)
        return resp


# --- the probes, by the issue's items -------------------------------------------------------

def probe_unauthenticated(live: Live, tally: Tally) -> None:
    c = live.client
    for path, body in ((PREDICT, {"instances": [{"user_id": live.user(0)}]}), (INFER, {"inputs": []}),
                       ("/v1/events", []), (FEEDBACK, {"request_id": "r", "item_id": "i", "reward": 1})):
        for credential in (None, "hr_nobody_x", "a.b.c"):
            resp = c.call("POST", path, credential, json=body)
            tally.check(f"no valid credential on {path}", resp.status_code == 401, str(resp.status_code))
    tally.check("/metrics needs admin", c.call("GET", "/metrics").status_code == 401)
    tally.check("/metrics with admin", c.call("GET", "/metrics", live.keys["admin"]).status_code == 200)
    tally.check("ingest with a recommend key", c.call("POST", "/v1/events", live.keys["backend"],
                                                      json=[]).status_code == 403)
    tally.check("health stays open", c.call("GET", "/v2/health/ready").status_code == 200)


def probe_impersonation(live: Live, tally: Tally) -> None:
    import jwt

    c, me, other = live.client, live.user(0), live.user(1)
    mine = live.token(me)
    tally.impersonation("predict as another user",
                        c.call("POST", PREDICT, mine, json={"instances": [{"user_id": other}]}))
    v2 = {"inputs": [{"name": "user_id", "shape": [1], "datatype": "BYTES", "data": [other]}]}
    tally.impersonation("v2 infer as another user", c.call("POST", INFER, mine, json=v2))
    tally.impersonation("events as another user", live.ingest([live.event("forged", other)], mine))
    for name, forged in (("a token signed with another secret",
                          jwt.encode({"sub": other, "exp": time.time() + 60}, b"x" * 32, algorithm="HS256")),
                         ("an unsigned token", jwt.encode({"sub": other, "exp": time.time() + 60}, None,
                                                          algorithm="none"))):
        tally.impersonation(name, c.call("POST", PREDICT, forged, json={"instances": [{"user_id": other}]}))
    service = c.call("POST", PREDICT, live.keys["backend"], json={"instances": [{"user_id": other, "k": 5}]})
    rec = service.json()["predictions"][0] if service.status_code == 200 else {}
    tally.impersonation("a service reading another user's reasons and consent", service,
                        refused=service.status_code == 200 and rec.get("policy") == ""
                        and not any(i["reason"] for i in rec.get("items", [])))
    _probe_feedback(live, tally)
    _probe_hidden_traffic(live, tally)


def _probe_feedback(live: Live, tally: Tally) -> None:
    c = live.client
    for i in range(60):
        user = live.user(i)
        resp = c.call("POST", PREDICT, live.token(user), json={"instances": [{"user_id": user, "k": 8}]})
        rec = resp.json()["predictions"][0]
        explored = [x["item_id"] for x in rec["items"] if x["reason"].startswith("something new for you")]
        if explored:
            body = {"request_id": rec["request_id"], "item_id": explored[0], "reward": 1.0}
            stranger = live.user(i + 1)
            tally.impersonation("crediting another user's list", c.call("POST", FEEDBACK, live.token(stranger),
                                                                        json=body))
            own = c.call("POST", FEEDBACK, live.token(user), json=body)
            tally.check("crediting one's own list", own.status_code == 200, own.text[:120])
            return
    tally.check("an explored slot to credit", False, "none in 60 users' lists")


def _probe_hidden_traffic(live: Live, tally: Tally) -> None:
    from hyperrec.data.impressions import ImpressionLog

    me = live.user(0)
    resp = live.client.call("POST", PREDICT, live.token(me), headers={"x-hyperrec-probe": "1"},
                            json={"instances": [{"user_id": me, "k": 3}]})
    rid = resp.json()["predictions"][0]["request_id"]
    log, deadline, logged = ImpressionLog(live.settings.impression_log), time.monotonic() + 5, False
    while not logged and time.monotonic() < deadline:
        logged = rid in set(log.read()["request_id"])
        time.sleep(0.25)
    log.close()
    tally.impersonation("hiding a user's traffic from monitoring", resp, refused=logged)


def probe_hostile_events(live: Live, tally: Tally) -> None:
    resp = live.ingest([live.event("year-one", ts="0001-01-01T00:00:00+00:00"), live.event("beside-year-one")])
    tally.check("an event dated year 1", resp.status_code == 200 and resp.json()["dead_lettered"] == 1, resp.text)
    deep = json.dumps(live.event("deep"))[:-1] + ', "x": ' + "[" * 900 + "]" * 900 + "}"
    body = "[" + json.dumps(live.event("beside-deep")) + ", " + deep + "]"
    resp = live.client.call("POST", "/v1/events", live.keys["collector"], data=body.encode(),
                            headers={"Content-Type": "application/json"})
    ok = resp.status_code == 200 and (resp.json()["stored"], resp.json()["dead_lettered"]) == (1, 1)
    if ok:
        tally.acknowledged.add("faults-beside-deep")
    tally.check("one deep event in a batch", ok, resp.text)
    resp = live.client.call("POST", "/v1/events", live.keys["collector"], data=("[" * 100_000).encode())
    tally.check("events nested past the parser", resp.status_code == 400, resp.text)
    resp = live.ingest([live.event("k-true", event_type="teleport")])
    tally.check("an undeclared event type", resp.status_code == 200 and resp.json()["dead_lettered"] == 1)


def probe_client_mistakes(live: Live, tally: Tally) -> None:
    c, key = live.client, live.keys["admin"]
    nested = ('{"instances": ' + "[" * 100_000 + "]" * 100_000 + "}").encode()
    for content_type in (None, "application/json", "application/json; charset=utf-8", "text/plain"):
        headers = {"Content-Type": content_type} if content_type else {}
        resp = c.call("POST", PREDICT, key, data=nested, headers=headers)
        tally.check(f"predict nested past the parser ({content_type})", resp.status_code == 400, resp.text[:100])
    resp = c.call("POST", PREDICT, key, json={"instances": [{"user_id": live.user(0), "k": True}]})
    tally.check('"k": true', resp.status_code == 400, resp.text[:100])
    tally.check("GET on :predict", c.call("GET", PREDICT, key).status_code == 405)
    for length in ("abc", "-5", "999999"):
        resp = c.call("POST", INFER, key, data=b'{"inputs": []}',
                      headers={"Inference-Header-Content-Length": length, "Content-Type": "application/octet-stream"})
        tally.check(f"binary header length {length}", resp.status_code == 400, resp.text[:100])
    resp = c.call("POST", PREDICT, key, data=b"x" * (2 << 20))
    tally.check("an oversized body", resp.status_code == 413)


def probe_open_inference_protocol(live: Live, tally: Tally) -> None:
    try:
        import numpy as np
        import tritonclient.http as triton
    except ImportError:  # a dev tool: the runtime image does not carry it
        tally.check("tritonclient installed", False, "pip install tritonclient[http] (the dev extra)")
        return
    headers = {"Authorization": f"Bearer {live.keys['admin']}"}
    client = triton.InferenceServerClient(live.client.url.removeprefix("http://"))
    meta = client.get_model_metadata("recommender", headers=headers)
    tally.check("model metadata lists inputs and outputs", bool(meta["inputs"]) and bool(meta["outputs"]))
    user = triton.InferInput("user_id", [1], "BYTES")
    user.set_data_from_numpy(np.array([live.user(0).encode()], dtype=object))
    result = client.infer("recommender", [user], outputs=[triton.InferRequestedOutput("item_id")], headers=headers)
    tally.check("tritonclient infer, requested output only",
                [o["name"] for o in result.get_response()["outputs"]] == ["item_id"])


def probe_slow_clients(live: Live, tally: Tally) -> None:
    import socket

    auth = b"Authorization: Bearer " + live.keys["collector"].encode() + b"\r\n"
    for name, data in (("headers trickling", b"POST /v1/events HTTP/1.1\r\nHost: x\r\n"),
                       ("a body trickling", b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                                            + auth + b"\r\n[")):
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", live.port), timeout=60) as sock:
            sock.sendall(data)
            reply = sock.recv(4096)
        tally.check(f"a client {name}", reply.startswith(b"HTTP/1.1 408") and time.monotonic() - started < 30,
                    reply[:60].decode(errors="replace"))


def probe_cache_outage(live: Live, tally: Tally) -> None:
    user = live.user(2)
    body = {"instances": [{"user_id": user}]}
    before = live.client.call("POST", PREDICT, live.keys["admin"], json=body)
    tally.check("no degraded flag while the cache is up", "x-hyperrec-degraded" not in before.headers)
    live.stop_cache()
    during = live.client.call("POST", PREDICT, live.keys["admin"], json=body)
    tally.check("a list while the cache is down, flagged degraded",
                during.status_code == 200 and during.headers.get("x-hyperrec-degraded") == "recs-cache",
                f"{during.status_code} {during.headers.get('x-hyperrec-degraded')}")


def nan_embeddings(model_dir: Path, out: Path) -> Path:
    """A copy of `model_dir` whose item embeddings, and the index built from them, hold NaN
    rows (what a diverged training run exports): every file still loads."""
    import shutil

    import numpy as np

    shutil.copytree(model_dir, out)
    with np.load(out / "candidates.npz") as z:
        ids, embeddings = z["item_ids"], z["embeddings"].copy()
    embeddings[::7] = np.nan
    np.savez(out / "candidates.npz", item_ids=ids, embeddings=embeddings)
    if (out / "index" / "embeddings.npy").exists():
        np.save(out / "index" / "embeddings.npy", embeddings)
    return out


def probe_nan_model(live: Live, tally: Tally) -> None:
    """A diverged version (NaN item embeddings) made champion behind the server's back: it
    must keep serving the old one, and rollback/promote must refuse the bad one."""
    import shutil

    import numpy as np

    from hyperrec.registry.model_registry import (
        RefusedVersion,
        champion_version,
        move_alias,
        promote,
        register_model,
    )

    good = champion_version(live.settings)
    bad_dir = live.settings.data_dir / "model-nan"
    shutil.rmtree(bad_dir, ignore_errors=True)
    nan_embeddings(live.settings.data_dir / "model", bad_dir)
    bad = register_model(live.settings, bad_dir, {"purpose": "faults-nan"}, {}, {"blessed": True, "reasons": []})
    move_alias(live.settings, bad, "faults bench: a diverged model made champion by hand")
    time.sleep(4)  # the server polls the alias every 0.5 s
    resp = live.client.call("POST", PREDICT, live.keys["admin"], json={"instances": [{"user_id": live.user(0)}]})
    rec = resp.json()["predictions"][0] if resp.status_code == 200 else {}
    tally.check("a NaN model is not swapped in", rec.get("model_version") == good, str(rec.get("model_version")))
    tally.check("scores stay finite", all(np.isfinite(i["score"]) for i in rec.get("items", [{"score": np.nan}])))
    move_alias(live.settings, good, "faults bench: back to the good version")
    try:
        promote(live.settings, bad, "faults bench: promote the NaN version")
        refused = False
    except RefusedVersion:
        refused = True
    tally.check("promote or rollback to a version that failed to load is refused", refused)
    tally.check("@champion stays on the good version", champion_version(live.settings) == good)


def probe_erasure(live: Live, tally: Tally) -> None:
    """Erase a user while the server and processor run: nothing they do next may store the id."""
    from hyperrec.data.impressions import ImpressionLog
    from hyperrec.privacy import erase_user

    gone = live.user(5)
    erase_user(live.settings, gone, "faults bench")
    live.client.call("POST", PREDICT, live.keys["admin"], json={"instances": [{"user_id": gone}]})
    late = live.ingest([live.event("after-erase", gone)])
    tally.check("an erased user's new event is suppressed", late.status_code == 200
                and late.json()["suppressed"] == 1, late.text)
    bad = live.client.call("POST", "/v1/events", live.keys["collector"],
                           json=[live.event("after-erase-bad", gone, ts="not a time")])
    tally.check("an erased user's invalid event is not kept", bad.status_code == 200
                and bad.json()["suppressed"] == 1, bad.text)
    time.sleep(1.0)  # the impression recorder flushes every 0.2 s
    log = ImpressionLog(live.settings.impression_log)
    kept = int((log.read()["user_id"] == gone).sum())
    log.close()
    tally.check("no impression row names the erased user", kept == 0, f"{kept} rows")
    db = sqlite3.connect(live.settings.event_log)
    letters = db.execute("SELECT COUNT(*) FROM dead_letters WHERE CAST(raw AS TEXT) LIKE ?",
                         (f"%{gone}%",)).fetchone()[0]
    db.close()
    tally.check("no dead letter names the erased user", letters == 0, f"{letters} dead letters")


class Load:
    """Valid events posted in the background throughout the probes (a collector's traffic):
    what `events_lost` is counted over."""

    def __init__(self, live: Live, batch: int = 20, pause_s: float = 0.05):
        import threading

        self.live, self.batch, self.pause_s = live, batch, pause_s
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="faults-load", daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            # users 10-49: the erasure probe erases user 5, whose acknowledged events it then removes
            events = [self.live.event(f"load-{n + i}", self.live.user(10 + (n + i) % 40), event_type="click",
                                      dwell_s=20.0) for i in range(self.batch)]
            n += self.batch
            try:
                resp = self.live.ingest(events, expect_5xx=True)  # a 503 while a probe locks the log is asked for
            except requests.RequestException:
                continue
            self.sent += len(events) if resp.status_code == 200 else 0
            self._stop.wait(self.pause_s)


def kill_stream(live: Live, tally: Tally) -> None:
    """kill -9 the stream processor mid-stream and start another: it must pick up where the
    committed offset says, exactly once (an intended fault, not a crash)."""
    from hyperrec.demo.closed_loop import wait_tailing

    live.stream.kill()
    live.stream.wait(30)
    live.stream = _start_stream(live.settings)
    wait_tailing(live.settings, live.stream)
    tally.check("the stream processor restarts after kill -9", live.stream.poll() is None)


def probe_locked_log(live: Live, tally: Tally) -> None:
    holder = sqlite3.connect(live.settings.event_log, isolation_level=None, timeout=5)
    holder.execute("BEGIN IMMEDIATE")
    try:
        resp = live.ingest([live.event("while-locked")], expect_5xx=True)
        tally.check("a locked log", resp.status_code == 503 and resp.headers.get("retry-after") == "1", resp.text)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    resp = live.ingest([live.event("while-locked")])
    tally.check("the retry after a lock", resp.status_code == 200 and resp.json()["stored"] == 1, resp.text)


def count_lost(live: Live, tally: Tally, timeout_s: float = 120.0) -> int:
    """Acknowledged events missing from the log, or not yet folded by the stream processor."""
    db = sqlite3.connect(live.settings.event_log)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            last = db.execute("SELECT COALESCE(MAX(offset), 0) FROM events").fetchone()[0]
            row = db.execute("SELECT offset FROM consumer_offsets WHERE consumer = 'online-features'").fetchone()
            if row and row[0] >= last:
                break
            time.sleep(0.5)
        held = {r[0] for r in db.execute("SELECT event_id FROM events")}
        committed = (row or (0,))[0]
        unfolded = db.execute("SELECT COUNT(*) FROM events WHERE offset > ?", (committed,)).fetchone()[0]
    finally:
        db.close()
    return len(tally.acknowledged - held) + unfolded


def probe_deleted_log(live: Live, tally: Tally) -> None:
    path = live.settings.event_log
    for suffix in ("", "-wal", "-shm"):
        path.with_name(path.name + suffix).unlink(missing_ok=True)
    resp = live.ingest([live.event("into-nothing")], expect_5xx=True)
    tally.check("ingest into a deleted log", resp.status_code == 503, resp.text)
    ready = live.client.call("GET", "/v2/health/ready", expect_5xx=True)
    tally.check("readiness with the log deleted", ready.status_code == 503, str(ready.status_code))
    try:
        code = live.stream.wait(15)
    except subprocess.TimeoutExpired:
        code = None
    tally.check("the stream processor stops on a deleted log", code == INTENDED_STOP, f"exit {code}")
    restarted = _start_stream(live.settings)
    code = restarted.wait(120)
    tally.check("a restarted processor refuses the new empty log", code == INTENDED_STOP, f"exit {code}")


# --- the run ------------------------------------------------------------------------------------

def _start_stream(settings: Settings) -> subprocess.Popen:
    from hyperrec.demo.closed_loop import start_stream

    return start_stream(settings, "rerank")


def _watch_stream(live: Live, tally: Tally) -> None:
    """Count a processor that died on its own, and start another in its place."""
    from hyperrec.demo.closed_loop import wait_tailing

    if live.stream.poll() is not None:
        tally.stream_crashes += 1
        tally.failed.append(f"the stream processor exited with {live.stream.returncode} (logs/stream.log)")
        live.stream = _start_stream(live.settings)
        wait_tailing(live.settings, live.stream)


def _prepare(settings: Settings, console: Console):
    from hyperrec.models.two_tower import TwoTowerConfig
    from hyperrec.online.access import open_authenticator
    from hyperrec.registry.model_registry import register_model
    from hyperrec.steps import feature_step, generate_step
    from hyperrec.training.dataset import build_training_set
    from hyperrec.training.fit import fit_models

    world_dir = settings.data_dir / "world"
    world = generate_step(settings, world_dir, console, users=300, items=150, days=10, events=25_000, seed=7)
    feature_step(settings, world_dir, console)
    data_dir, model_dir = settings.data_dir / "training_set", settings.data_dir / "model"
    build_training_set(settings, world_dir, data_dir)
    fit_models(data_dir, model_dir, TwoTowerConfig(epochs=2), log=lambda *_: None)
    register_model(settings, model_dir, {"purpose": "faults-bench"}, {}, {"blessed": True, "reasons": []})
    auth = open_authenticator(settings.home, create_secret=True)
    keys = {"admin": auth.keys.create("ops", ["admin"]), "backend": auth.keys.create("backend", ["recommend"]),
            "collector": auth.keys.create("collector", ["ingest"])}
    return world, keys, auth.tokens


PROBES = (probe_unauthenticated, probe_impersonation, probe_hostile_events, probe_client_mistakes,
          probe_open_inference_protocol, probe_slow_clients, kill_stream, probe_locked_log, probe_nan_model,
          probe_erasure, probe_cache_outage)


def run(home: Path, out: Path | None, console: Console) -> dict:
    import contextlib
    import shutil

    from hyperrec.demo.closed_loop import wait_tailing
    from hyperrec.services import free_port, redis_server
    from serving.launch import start_server, stop_server, wait_ready

    shutil.rmtree(home, ignore_errors=True)  # a fresh workspace: the probes count what they add
    started = time.monotonic()
    with contextlib.ExitStack() as cache:
        settings = load_settings(home).model_copy(update={"recs_cache": cache.enter_context(redis_server())})
        world, keys, tokens = _prepare(settings, console)
        port, tally = free_port(), Tally()
        (settings.home / "logs").mkdir(parents=True, exist_ok=True)
        server = start_server(settings, port, settings.home / "logs" / "server.log",
                              as_of=world.events["ts"].max().to_pydatetime(),
                              extra_args=("--auth", "on", "--ingest_wait_s", "1", "--poll_s", "0.5",
                                          "--header_timeout_s", "3", "--body_timeout_s", "3"))
        live = Live(settings, world, Client(f"http://127.0.0.1:{port}", tally), keys,
                    lambda user: tokens.issue(user), _start_stream(settings), server,
                    world.events["ts"].max().isoformat(), port, cache.close)
        try:
            wait_ready(server, port, log_path=settings.home / "logs" / "server.log")
            wait_tailing(settings, live.stream)
            with Load(live) as load:
                for probe in PROBES:
                    console.print(f"probing: {probe.__name__.removeprefix('probe_').replace('_', ' ')}")
                    probe(live, tally)
                    _watch_stream(live, tally)
            events_lost = count_lost(live, tally)
            probe_deleted_log(live, tally)
            tally.check("the server survived every probe", server.poll() is None)
        finally:
            stop_server(server)
            if live.stream.poll() is None:
                live.stream.terminate()
                live.stream.wait(20)
    result = {"probes": tally.probes, "failed": len(tally.failed), "server_5xx": tally.server_5xx,
              "events_lost": events_lost, "stream_crashes": tally.stream_crashes,
              "impersonation_accepted": tally.impersonation_accepted,
              "failures": tally.failed, "events_acknowledged": len(tally.acknowledged), "load_events_sent": load.sent,
              "seconds": round(time.monotonic() - started, 1)}
    console.print(target_table("hostile probes against a live server and stream processor", [
        ("probes", str(result["probes"]), ""), *((key, str(result[key]), "0") for key in
                                                 ("failed", "server_5xx", "events_lost", "stream_crashes",
                                                  "impersonation_accepted"))]))
    for failure in tally.failed:
        console.print(f"[red]{failure}[/]")
    write_json(out, result)
    return result
