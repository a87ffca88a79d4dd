"""`hyperrec bench cluster`: a cluster in a box. Every role runs as its own process in its
own private folder (`hyperrec.bench.roles`), and the state they share goes only through
real servers on loopback: PostgreSQL (privacy, the world, Feast registry and offline store,
the offline sink's events, MLflow's backend), Redis (online features, list cache, bandit),
Kafka (tansu: events, impressions) and an MLflow server with `--serve-artifacts`.

The run: a bootstrap role builds the world (three catalog items lose their recorded
events: new items) and publishes it to PostgreSQL, where every role reads it (`db:world`),
then the features and the first champion through the pipeline, whose runs keep their
outputs in one artifact store (HYPERREC_ARTIFACT_ROOT, the pipeline runs' and the erasure
Job's only shared folder, as on the cluster's manifests); 2 model servers, 2 stream
consumers (one group) and the offline sink start; events are posted
through both servers, one in ten naming a new item; one consumer and one server are killed
(-9) mid-stream and restarted; both servers take 200 requests/s together; a user is
erased; the monitor drains its impressions; a retrain runs through the pipeline on the
world plus what the sink stored. Written to --out:

- `servers`, `consumers`: model servers and stream consumers that ran;
- `shared_paths`: state files two roles held open (sampled every 0.2 s; code and system
  files are not state);
- `events_sent`, `events_acknowledged`, `events_lost`: acknowledged events (the erased
  user's aside) missing from the offline store, or that no consumer folded and pushed;
- `duplicates_applied`: events folded twice into one consumer's state (the consumers'
  fold journals, `hyperrec stream --journal`);
- `retrain_saw_new_items`: the new items are in the retrain's training set, and were not
  in the first run's;
- `erasure_remnants`: places outside the erasure list that still name the erased user
  (PostgreSQL rows, Redis keys and values, files of every role and of the pipelines' artifact
  store), read after the retrain;
- `p99_ms_at_200rps`: open-loop predict latency over both servers together.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import requests
from rich.console import Console

from hyperrec.bench.report import target_table, write_json
from hyperrec.bench.roles import OpenFiles, Role

HYPERREC = str(Path(sys.executable).with_name("hyperrec"))
PREDICT = "/v1/models/recommender:predict"
PARTITIONS = 4
GROUP = "hyperrec-online-features"
WORLD = "db:world"  # hyperrec.data.world_db.WORLD_IN_DATABASE: every role reads the one published world
ARTIFACTS = "artifact-store"  # the pipelines' outputs and snapshots (KFP's object store on a cluster)


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]
    roles: dict[str, Role] = field(default_factory=dict)
    ports: dict[str, int] = field(default_factory=dict)
    keys: dict[str, str] = field(default_factory=dict)
    world_end: str = ""
    new_items: list[str] = field(default_factory=list)  # catalog items no recorded event names

    def role(self, name: str, argv: list[str]) -> Role:
        role = Role(name, self.root, argv, self.env)
        self.roles[name] = role
        return role

    def run(self, name: str, argv: list[str], timeout_s: float = 900.0) -> str:
        """A one-off step of role `name` (a Job's pod): waits, raises with its log on failure."""
        role = self.roles[name] = Role(name, self.root, argv, self.env)
        code = role.start().wait(timeout_s)
        if code != 0:
            raise RuntimeError(f"{name}: `{' '.join(argv[1:4])} ...` exited {code}:\n{role.log_tail()}")
        return role.log_tail(20_000)


# --- servers and configuration -------------------------------------------------------------

def _servers(stack: contextlib.ExitStack, root: Path) -> dict[str, str]:
    """Start PostgreSQL, Redis, Kafka (topics made) and the MLflow server; the roles' environment."""
    import os

    from hyperrec.data.kafka_log import TOPIC
    from hyperrec.services import create_database, kafka_broker, mlflow_server, postgres_server, redis_server

    database = stack.enter_context(postgres_server())
    redis = stack.enter_context(redis_server())
    kafka = stack.enter_context(kafka_broker())
    _create_topics(kafka, {TOPIC: PARTITIONS, "hyperrec.impressions": PARTITIONS,
                           "hyperrec.events.dead-letters": 1})
    tracking = stack.enter_context(mlflow_server(create_database(database, "mlflow"),
                                                 root / "roles" / "mlflow" / "artifacts"))
    import secrets

    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYPERREC_", "MLFLOW_"))}
    return env | {"HYPERREC_PII_KEY": secrets.token_hex(32),  # the Secret erasure tokens are keyed with
                  "HYPERREC_DATABASE_URL": database, "HYPERREC_ONLINE_STORE": "redis", "HYPERREC_REDIS": redis,
                  "HYPERREC_RECS_CACHE": f"{redis},db=1", "HYPERREC_BANDIT_REDIS": f"{redis},db=2",
                  "HYPERREC_KAFKA_BOOTSTRAP": kafka, "MLFLOW_TRACKING_URI": tracking,
                  "HYPERREC_ARTIFACT_ROOT": str(root / ARTIFACTS),
                  "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2", "DO_NOT_TRACK": "true"}


def _create_topics(bootstrap: str, topics: dict[str, int]) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, partitions, 1) for name, partitions in topics.items()])
    finally:
        admin.close()


def _configure(role: Role, source: Role) -> None:
    """What a pod gets from its Secrets: the API keys (copies, not a shared volume). The
    event types come from the world published in PostgreSQL (world_db.role_event_types)."""
    for relative in ("auth/keys.json", "auth/jwt.secret"):
        src = source.home / relative
        if src.exists():
            (role.home / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, role.home / relative)


def _bootstrap(cluster: Cluster, console: Console, users: int, items: int, events: int) -> tuple[list, list]:
    """The first day: a world published to PostgreSQL (its folder was the Job's scratch
    space, gone with its pod), its features (PostgreSQL offline store, Redis online), the
    first champion through the pipeline (MLflow server), the API keys. Returns the users who
    consented to personalization and the catalog's items."""
    import pandas as pd

    console.print("bootstrap: world, features, first champion through the pipeline")
    scratch = cluster.root / "roles" / "bootstrap" / "scratch"
    cluster.run("bootstrap", [HYPERREC, "data", "generate", "--users", str(users), "--items", str(items),
                              "--days", "10", "--events", str(events), "--seed", "7", "--out", str(scratch)])
    cluster.new_items = _without_history(scratch, 3)
    cluster.run("bootstrap", [HYPERREC, "data", "publish", "--world", str(scratch)])
    cluster.world_end = pd.read_parquet(scratch / "events.parquet", columns=["ts"])["ts"].max().isoformat()
    consenting, catalog = load_world_users_items(scratch)
    shutil.rmtree(scratch)
    cluster.run("bootstrap", [HYPERREC, "features", "build", "--world", WORLD])
    summary = cluster.roles["bootstrap"].home / "first-run.json"
    cluster.run("bootstrap", [HYPERREC, "pipeline", "run", "--epochs", "3", "--world", WORLD,
                              "--summary", str(summary)], timeout_s=1800)
    first = json.loads(summary.read_text())
    if not first["blessed"]:  # a small world's model can miss the gate's margin over popularity: deployed by hand
        cluster.run("bootstrap", [HYPERREC, "model", "promote", str(first["version"]), "--reason",
                                  "first deployment of the bench cluster"])
    for name, scope in (("collector", "ingest"), ("backend", "recommend"), ("ops", "admin")):
        out = cluster.run("bootstrap", [HYPERREC, "auth", "create-key", name, "--scope", scope])
        cluster.keys[name] = next(word for word in out.split() if word.startswith(f"hr_{name}_"))
    return consenting, catalog


def _without_history(world_dir: Path, n: int) -> list[str]:
    """Make `n` catalog items new: their recorded events leave the world, so only the events
    posted during the run name them (what a retrain must learn from the offline sink)."""
    from hyperrec.data.world import World, load_world, save_world

    world = load_world(world_dir)
    counts = world.events["item_id"].value_counts()
    chosen = [str(item) for item in counts.index[len(counts) // 2:][:n]]
    save_world(World(world.users, world.items, world.events[~world.events["item_id"].isin(chosen)], None,
                     world.meta), world_dir)
    return chosen


# --- the long-running roles -------------------------------------------------------------------

def _start_server(cluster: Cluster, i: int) -> Role:
    from hyperrec.services import free_port

    name = f"server-{i}"
    port = cluster.ports.setdefault(name, free_port())
    role = cluster.role(name, [sys.executable, "-m", "serving", "--http_port", str(port), "--host", "127.0.0.1",
                               "--auth", "on", "--as_of", cluster.world_end, "--poll_s", "1"])
    _configure(role, cluster.roles["bootstrap"])
    return role.start()


def _wait_ready(cluster: Cluster, name: str, timeout_s: float = 300.0) -> None:
    role, port = cluster.roles[name], cluster.ports[name]
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not role.running:
            raise RuntimeError(f"{name} exited {role.proc.returncode}:\n{role.log_tail()}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"{name} not ready after {timeout_s:.0f}s:\n{role.log_tail()}")


def _start_consumer(cluster: Cluster, i: int) -> Role:
    name = f"consumer-{i}"
    journal = cluster.root / "roles" / name / "stream" / "journal.jsonl"
    role = cluster.role(name, [HYPERREC, "stream", "--kafka", cluster.env["HYPERREC_KAFKA_BOOTSTRAP"],
                               "--group", GROUP, "--journal", str(journal)])
    _configure(role, cluster.roles["bootstrap"])  # the world's history a rebuild folds first: the database's
    return role.start()


def _start_sink(cluster: Cluster) -> Role:
    role = cluster.role("sink", [HYPERREC, "sink", "--kafka", cluster.env["HYPERREC_KAFKA_BOOTSTRAP"]])
    _configure(role, cluster.roles["bootstrap"])
    return role.start()


# --- traffic ------------------------------------------------------------------------------------

class Collector:
    """A site's event collector: batches of events posted through the servers in turn (a
    Service in front of both), the next server tried when one does not answer. Counts what
    it sent and which event ids were acknowledged as stored."""

    def __init__(self, cluster: Cluster, users: list[str], items: list[str], batch: int = 20, pause_s: float = 0.05):
        self.cluster, self.users, self.items, self.batch, self.pause_s = cluster, users, items, batch, pause_s
        self.sent, self.acknowledged, self.refused = 0, set(), 0
        self.user_of: dict[str, str] = {}  # event id -> its user
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="collector", daemon=True)
        self._n = 0

    def __enter__(self) -> Collector:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join(120)

    def _events(self) -> list[dict]:
        import pandas as pd

        at = pd.Timestamp(self.cluster.world_end)
        out = []
        for _ in range(self.batch):
            n = self._n = self._n + 1
            user = self.users[n % len(self.users)]
            new = n % 10 == 0  # one event in ten names an item only these events know
            fresh = self.cluster.new_items
            item = fresh[(n // 10) % len(fresh)] if new else self.items[(n * 7) % len(self.items)]
            event = {"event_id": f"bench-{n}", "user_id": user, "item_id": item, "event_type": "click",
                     "ts": (at + pd.Timedelta(seconds=n)).isoformat(), "dwell_s": 12.0}
            self.user_of[event["event_id"]] = user
            out.append(event)
        return out

    def _post(self, events: list[dict]) -> bool:
        servers = [name for name in self.cluster.ports if name.startswith("server-")]
        for k in range(len(servers) * 2):
            name = servers[(self._n // self.batch + k) % len(servers)]
            try:
                resp = requests.post(f"http://127.0.0.1:{self.cluster.ports[name]}/v1/events", json=events,
                                     headers={"Authorization": f"Bearer {self.cluster.keys['collector']}"},
                                     timeout=15)
            except requests.RequestException:
                continue
            if resp.status_code == 200:
                body = resp.json()
                if body.get("stored") == len(events):
                    self.acknowledged.update(e["event_id"] for e in events)
                return True
            self.refused += 1
            time.sleep(0.2)
        return False

    def _run(self) -> None:
        while not self._stop.is_set():
            events = self._events()
            self.sent += len(events)
            self._post(events)
            self._stop.wait(self.pause_s)


def _latency(cluster: Cluster, users: list[str], rate: float, seconds: float) -> dict:
    """Open-loop predict load on both servers at once, `rate` requests/s in all."""
    import numpy as np

    from hyperrec.bench.loadgen import open_loop

    bodies = [json.dumps({"instances": [{"user_id": u}]}).encode() for u in users[:200]]
    headers = {"Authorization": f"Bearer {cluster.keys['backend']}"}
    servers = [name for name in cluster.ports if name.startswith("server-")]
    results: dict[str, object] = {}

    def load(name: str) -> None:
        results[name] = open_loop("127.0.0.1", cluster.ports[name], PREDICT, bodies, rate / len(servers), seconds,
                                  headers=headers)
    threads = [threading.Thread(target=load, args=(name,)) for name in servers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    latencies = np.concatenate([np.asarray(r.latencies_ms) for r in results.values()])
    return {"p99_ms": round(float(np.percentile(latencies, 99)), 1), "p50_ms": round(float(np.median(latencies)), 1),
            "sent": sum(r.sent for r in results.values()), "non_2xx": sum(r.non_2xx for r in results.values())}


# --- checks -------------------------------------------------------------------------------------

def _sunk_event_ids(database_url: str) -> set[str]:
    import psycopg

    with psycopg.connect(database_url) as conn:
        return {row[0] for row in conn.execute("SELECT event_id FROM offline.events")}


def _wait_sunk(cluster: Cluster, wanted: set[str], timeout_s: float = 180.0) -> set[str]:
    deadline = time.monotonic() + timeout_s
    while True:
        held = _sunk_event_ids(cluster.env["HYPERREC_DATABASE_URL"])
        if wanted <= held or time.monotonic() > deadline:
            return held
        time.sleep(1.0)


def _consumer_stats(cluster: Cluster) -> dict:
    """From every consumer's fold journal (its own folder, read after it stopped): events
    folded twice into one state (a replica's partition generation), and the event ids some
    replica folded live, i.e. pushed."""
    from collections import Counter

    folds: Counter = Counter()
    live: set[str] = set()
    for role in cluster.roles.values():
        path = role.home / "stream" / "journal.jsonl"
        if not role.name.startswith("consumer-") or not path.exists():
            continue
        for line in path.read_text().splitlines():
            if not line.endswith("}"):
                continue  # a line cut by the kill -9
            entry = json.loads(line)
            state = (entry["replica"], entry["scope"], entry["partition"], entry["generation"])
            folds.update((state, event_id) for event_id in entry["event_ids"])
            if entry["kind"] == "live" and entry["scope"] == "users":
                live.update(entry["event_ids"])
    return {"duplicates_applied": sum(n - 1 for n in folds.values() if n > 1), "live": live,
            "folds": sum(folds.values())}


def _remnants(cluster: Cluster, user_id: str) -> list[str]:
    """Every place outside the erasure list that still names `user_id`: PostgreSQL rows (every
    table of every schema), Redis keys and values (every db), files under every role's folder."""
    import psycopg
    import redis as redis_py

    from hyperrec.privacy import needles_in_file

    found: list[str] = []
    with psycopg.connect(cluster.env["HYPERREC_DATABASE_URL"]) as conn:
        tables = conn.execute("SELECT table_schema, table_name FROM information_schema.tables WHERE table_schema "
                              "NOT IN ('pg_catalog', 'information_schema') AND table_type = 'BASE TABLE'").fetchall()
        for schema, table in tables:
            if (schema, table) == ("privacy", "erased_users"):
                continue
            hits = conn.execute(f'SELECT count(*) FROM "{schema}"."{table}" t WHERE t::text LIKE %s',
                                (f"%{user_id}%",)).fetchone()[0]
            if hits:
                found.append(f"postgresql {schema}.{table}: {hits} rows")
    host, _, port = cluster.env["HYPERREC_REDIS"].partition(":")
    needle = user_id.encode()
    for db in range(3):
        client = redis_py.Redis(host=host, port=int(port), db=db)
        for key in client.scan_iter(count=1000):
            kind = client.type(key)
            values: list[bytes] = [key]
            if kind == b"string":
                values.append(client.get(key) or b"")
            elif kind == b"hash":
                values.extend(b for kv in client.hgetall(key).items() for b in kv)
            elif kind == b"set":
                values.extend(client.smembers(key))
            elif kind == b"list":
                values.extend(client.lrange(key, 0, -1))
            elif kind == b"zset":
                values.extend(client.zrange(key, 0, -1))
            if any(needle in v for v in values):
                found.append(f"redis db{db} {key[:60]!r}")
        client.close()
    for path in [*(cluster.root / "roles").rglob("*"), *(cluster.root / ARTIFACTS).rglob("*")]:
        # every role's folder (the MLflow server's artifacts too) and the pipelines' artifact store
        if path.is_file() and needles_in_file(path, {"id": needle}):  # role.log: what the pod printed
            found.append(f"{'log' if path.name == 'role.log' else 'file'} {path.relative_to(cluster.root)}")
    return found


def _trained_items(root: Path, first: bool) -> set[str]:
    """Items in the training set of the artifact store's first (the bootstrap's) or latest
    (the retrain's) pipeline run: train and test rows, both of which the served model is fit
    on (refit_for_serving)."""
    import pandas as pd

    runs = sorted((root / ARTIFACTS).glob("hyperrec-training-*/build-training-set/training_set"))
    if not runs:
        return set()
    run = runs[0] if first else runs[-1]
    return {item for name in ("train.parquet", "test_examples.parquet") if (run / name).exists()
            for item in pd.read_parquet(run / name, columns=["item_id"])["item_id"].astype(str)}


# --- the run ------------------------------------------------------------------------------------

def run(root: Path, out: Path | None, console: Console, users: int = 400, items: int = 200, events: int = 30_000,
        traffic_s: float = 60.0, rate: float = 200.0, latency_s: float = 20.0) -> dict:
    import pandas as pd

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        cluster = Cluster(root, _servers(stack, root))
        stack.callback(lambda: [role.stop() for role in cluster.roles.values()])
        consenting, catalog = _bootstrap(cluster, console, users, items, events)

        console.print("starting 2 consumers, the offline sink, 2 model servers")
        for i in range(2):
            _start_consumer(cluster, i)
        _start_sink(cluster)
        for i in range(2):
            _start_server(cluster, i)
        for i in range(2):
            _wait_ready(cluster, f"server-{i}")
        watch = stack.enter_context(OpenFiles(cluster.roles.values()))  # a live view: restarts and later roles too

        console.print(f"traffic for {traffic_s:.0f}s: consumer-1 and server-1 killed (-9) and restarted on the way")
        with Collector(cluster, consenting, catalog) as collector:
            time.sleep(traffic_s / 3)
            cluster.roles["consumer-1"].kill()
            time.sleep(traffic_s / 6)
            _start_consumer(cluster, 1)
            cluster.roles["server-1"].kill()
            time.sleep(traffic_s / 6)
            _start_server(cluster, 1)
            _wait_ready(cluster, "server-1")
            time.sleep(traffic_s / 3)
        held = _wait_sunk(cluster, collector.acknowledged)
        console.print(f"{collector.sent:,} events sent, {len(collector.acknowledged):,} acknowledged")

        latency = _latency(cluster, consenting, rate, latency_s)
        console.print(f"latency at {rate:.0f} req/s over both servers: p99 {latency['p99_ms']} ms")

        erased = consenting[3]
        console.print(f"erasing {erased}")
        cluster.run("privacy", [HYPERREC, "privacy", "erase", erased, "--reason", "bench"])
        cluster.run("monitor", [HYPERREC, "monitor", "--once", "--no-submit"], timeout_s=600)

        console.print("retraining through the pipeline on what the sink stored")
        summary = root / "roles" / "retrain" / "summary.json"
        cluster.run("retrain", [HYPERREC, "pipeline", "run", "--epochs", "2", "--merge-logged-events",
                                "--world", WORLD, "--summary", str(summary)], timeout_s=1800)
        version = json.loads(summary.read_text())["version"]
        before, after = _trained_items(root, first=True), _trained_items(root, first=False)

        time.sleep(3)  # consumers poll the erasure list between batches
        for role in cluster.roles.values():
            role.stop()
        stats = _consumer_stats(cluster)
        remnants = _remnants(cluster, erased)
        shared = watch.shared()

    applied = stats.pop("live")
    # the erased user's events leave the offline store with them (and their later ones are refused)
    counted = {e for e in collector.acknowledged if collector.user_of[e] != erased}
    lost = {e for e in counted if e not in held or e not in applied}
    result = {"servers": 2, "consumers": 2, "shared_paths": len(shared), "events_sent": collector.sent,
              "events_acknowledged": len(collector.acknowledged), "events_lost": len(lost),
              "duplicates_applied": stats["duplicates_applied"],
              "retrain_saw_new_items": bool(cluster.new_items) and set(cluster.new_items) <= after - before,
              "erasure_remnants": len(remnants),
              "p99_ms_at_200rps": latency["p99_ms"],
              "detail": {"shared": shared, "remnants": remnants, "lost_sample": sorted(lost)[:20],
                         "not_sunk": len(counted - held), "not_applied": len(counted - applied),
                         "erased_users_events": len(collector.acknowledged) - len(counted),
                         "latency": latency, "retrained_version": version, "refused_batches": collector.refused,
                         "consumer_folds": stats["folds"], "new_items": cluster.new_items,
                         "open_file_samples": watch.samples, "erased_user": erased,
                         "world_end": cluster.world_end, "when": pd.Timestamp.now("UTC").isoformat()},
              "seconds": round(time.monotonic() - started, 1)}
    console.print(target_table("a cluster in a box: every role its own process and folder", [
        ("servers", str(result["servers"]), ">= 2"), ("consumers", str(result["consumers"]), ">= 2"),
        *((key, str(result[key]), "0") for key in ("shared_paths", "events_lost", "duplicates_applied",
                                                   "erasure_remnants")),
        ("retrain_saw_new_items", str(result["retrain_saw_new_items"]), "True"),
        ("p99_ms_at_200rps", str(result["p99_ms_at_200rps"]), "")]))
    write_json(out, result)
    return result


def load_world_users_items(world: Path) -> tuple[list[str], list[str]]:
    """Users who consented to personalization, and the catalog's items."""
    import pandas as pd

    users = pd.read_parquet(world / "users.parquet")
    items = pd.read_parquet(world / "items.parquet", columns=["item_id"])
    return list(users.loc[users["consent_personalization"], "user_id"]), list(items["item_id"])
