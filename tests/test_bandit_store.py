"""The bandit's shared store, one contract for both backends: the SQLite file (one host) and
Redis (replicas on several nodes, on a real redis-server). Credits are checked against the
request's explored item, its owner and a second credit; they update the *stored* state, so
another process follows it; concurrent credits from several processes all count; the newest
`limit` contexts are kept. Redis alone: an outage never reaches `remember`, and the buffer
reaches Redis once it is back."""

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis

from hyperrec.config import Settings
from hyperrec.online.bandit import LinUCB
from hyperrec.online.bandit_redis import RedisBanditStore, init_redis_state
from hyperrec.online.bandit_store import BanditStore, Credit, init_bandit_state, open_bandit_store, owner_of
from hyperrec.services import find_redis_server, free_port, redis_client, redis_server


def until(condition, timeout_s: float, every_s: float = 0.02):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(every_s)
    return condition()


@pytest.fixture(scope="module")
def redis_url():
    with redis_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "redis"])
def backend(request, tmp_path):
    """(name, target, open): `open(bandit, **kw)` opens a store on one shared state."""
    if request.param == "sqlite":
        path = tmp_path / "bandit.db"
        opened = []

        def open_sqlite(bandit, **kw):
            opened.append(BanditStore(path, bandit, **kw))
            return opened[-1]
        yield "sqlite", str(path), open_sqlite
    else:
        url = request.getfixturevalue("redis_url")
        redis_client(url).flushdb()
        opened = []

        def open_redis(bandit, **kw):
            opened.append(RedisBanditStore(url, bandit, **kw))
            return opened[-1]
        yield "redis", url, open_redis
    for store in opened:
        store.close()


def test_credit_checks_the_item_the_owner_and_a_second_credit(backend):
    _, _, open_store = backend
    store = open_store(LinUCB(4))
    x = np.array([1.0, 0.0, 2.0, 0.5])
    store.remember("r1", "item-a", x, owner_of("r1", "alice"))
    store.remember("r2", "item-b", x)
    assert store.credit("nope", "item-a", 1.0) is Credit.UNKNOWN
    assert store.credit("r1", "item-b", 1.0) is Credit.REFUSED  # not the explored item
    assert store.credit("r1", "item-a", 1.0, owner_of("r1", "bob")) is Credit.REFUSED  # another user's list
    assert store.bandit.updates == 0
    assert store.credit("r1", "item-a", 1.0, owner_of("r1", "alice")) is Credit.CREDITED
    assert store.credit("r1", "item-a", 1.0) is Credit.REFUSED  # once only
    assert store.credit("r2", "item-b", 0.0) is Credit.CREDITED  # no owner asked: a service credit
    assert store.bandit.updates == 2
    expected = LinUCB(4)
    expected.update(x, 1.0)
    expected.update(x, 0.0)
    np.testing.assert_allclose(store.bandit.A_inv, expected.A_inv)
    np.testing.assert_allclose(store.bandit.b, expected.b)


def test_another_process_follows_the_stored_state_and_credits_what_this_one_served(backend):
    _, _, open_store = backend
    one, other = open_store(LinUCB(3), refresh_s=0.05), open_store(LinUCB(3), refresh_s=0.05)
    one.remember("r1", "i", [1.0, 2.0, 3.0])
    other.remember("r2", "i", [0.0, 1.0, 0.0])
    assert until(lambda: other.credit("r1", "i", 1.0) is Credit.CREDITED, 2)  # flushed by one's thread
    assert other.bandit.updates == 1
    assert until(lambda: one.bandit.updates == 1, 2)  # the background refresh took it
    assert one.credit("r2", "i", 1.0) is Credit.CREDITED  # applied on top of the stored update
    assert until(lambda: other.bandit.updates == 2, 2)
    np.testing.assert_allclose(one.bandit.A_inv, other.bandit.A_inv)
    np.testing.assert_allclose(one.bandit.b, [1.0, 3.0, 3.0])


def test_the_newest_limit_contexts_are_kept(backend):
    _, _, open_store = backend
    store = open_store(LinUCB(2), limit=5)
    for i in range(8):
        store.remember(f"r{i}", "i", [1.0, float(i)])
        time.sleep(0.001)  # distinct times: Redis orders by when a context was remembered
    store.flush()
    store.trim()
    assert [store.credit(f"r{i}", "i", 1.0) for i in range(8)] == [Credit.UNKNOWN] * 3 + [Credit.CREDITED] * 5
    assert store.credit("r7", "i", 1.0) is Credit.REFUSED  # a credited row is kept, flagged


def test_the_state_outlives_the_store_and_another_dimension_replaces_it(backend):
    _, _, open_store = backend
    store = open_store(LinUCB(3))
    store.remember("r1", "i", [1.0, 1.0, 1.0])
    store.remember("r2", "i", [1.0, 1.0, 1.0])
    assert store.credit("r1", "i", 1.0) is Credit.CREDITED
    store.close()
    again = open_store(LinUCB(3))
    assert again.bandit.updates == 1 and again.bandit.b.tolist() == [1.0, 1.0, 1.0]
    again.close()
    wider = open_store(LinUCB(4))
    assert wider.bandit.updates == 0 and wider.bandit.b.tolist() == [0.0] * 4
    assert wider.credit("r2", "i", 1.0) is Credit.UNKNOWN  # the old contexts went with the old state


CREDITOR = """
import sys
from pathlib import Path
from hyperrec.online.bandit import LinUCB
from hyperrec.online.bandit_store import BanditStore, Credit
from hyperrec.online.bandit_redis import RedisBanditStore
backend, target, dim, first, step, n = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:])
bandit = LinUCB(dim)
store = BanditStore(Path(target), bandit) if backend == "sqlite" else RedisBanditStore(target, bandit, timeout_s=10)
outcomes = [store.credit(f"r{i}", "item", 1.0) for i in range(first, n, step)]
assert all(o is Credit.CREDITED for o in outcomes), outcomes
store.close()
"""


def test_credits_from_several_processes_at_once_all_count(backend):
    """Concurrent credits serialise on the stored state: none is lost or applied twice."""
    name, target, open_store = backend
    n, procs_n = 240, 3
    xs = np.random.default_rng(3).random((n, 5))
    store = open_store(LinUCB(5))
    for i, x in enumerate(xs):
        store.remember(f"r{i}", "item", x)
    store.flush()
    procs = [subprocess.Popen([sys.executable, "-c", CREDITOR, name, target, "5", str(k), str(procs_n), str(n)])
             for k in range(procs_n)]
    assert [p.wait(120) for p in procs] == [0] * procs_n
    assert until(lambda: store.refresh() or store.bandit.updates == n, 2)
    assert store.bandit.updates == n
    np.testing.assert_allclose(store.bandit.A_inv, np.linalg.inv(np.eye(5) + xs.T @ xs), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(store.bandit.b, xs.sum(axis=0))


# --- Redis alone ----------------------------------------------------------------------------

class OwnRedis:
    """A redis-server on a fixed port that can be stopped and started again with its data
    (append-only file): an outage and a recovery at the same address."""

    def __init__(self, workdir: Path):
        self.port, self.workdir, self.proc = free_port(), workdir, None
        self.url = f"127.0.0.1:{self.port}"

    def start(self):
        self.proc = subprocess.Popen([find_redis_server(), "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--save", "", "--appendonly", "yes", "--dir", str(self.workdir)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        assert until(lambda: self._pings(), 10, 0.05), "redis-server did not come up"

    def _pings(self) -> bool:
        try:
            return redis_client(self.url, timeout_s=0.2).ping()
        except redis.RedisError:
            return False

    def stop(self):
        self.proc.terminate()
        self.proc.wait(10)


def test_a_redis_outage_never_reaches_the_request_path(tmp_path):
    server = OwnRedis(tmp_path)
    server.start()
    store = RedisBanditStore(server.url, LinUCB(3), limit=10, timeout_s=0.2)
    store.remember("before", "i", [1.0, 0.0, 0.0])
    assert store.credit("before", "i", 1.0) is Credit.CREDITED
    server.stop()
    for i in range(25):  # 25 lists served meanwhile; `limit` is 10
        store.remember(f"r{i}", "i", [0.0, 1.0, float(i)])
    with pytest.raises(redis.RedisError):  # the feedback path says so
        store.credit("r0", "i", 1.0)
    time.sleep(0.3)  # the background thread fails a few times, quietly
    assert store.bandit.updates == 1  # what it learned stays in use
    server.start()
    assert until(lambda: not store._buffer, 5)  # flushed once Redis answers
    assert store.dropped == 15  # the oldest beyond `limit`: they would be trimmed anyway
    assert store.credit("r0", "i", 1.0) is Credit.UNKNOWN
    assert store.credit("r24", "i", 1.0) is Credit.CREDITED
    assert store.bandit.updates == 2  # the credit from before the outage survived the restart
    other = RedisBanditStore(server.url, LinUCB(3), limit=10, timeout_s=0.2)  # another replica starting now
    assert other.bandit.updates == 2
    other.close()
    store.close()
    server.stop()


def test_a_server_started_while_redis_is_down_joins_the_state_later(tmp_path):
    server = OwnRedis(tmp_path)
    server.start()
    learned = RedisBanditStore(server.url, LinUCB(3))
    learned.remember("r", "i", [1.0, 2.0, 3.0])
    assert learned.credit("r", "i", 1.0) is Credit.CREDITED
    learned.close()
    server.stop()
    late = RedisBanditStore(server.url, LinUCB(3), timeout_s=0.2, refresh_s=0.05)  # does not raise
    late.remember("s", "i", [1.0, 0.0, 0.0])
    assert late.bandit.updates == 0
    server.start()
    assert until(lambda: late.bandit.updates == 1, 5)  # the stored state, not a fresh one over it
    assert late.credit("s", "i", 1.0) is Credit.CREDITED
    late.close()
    server.stop()


def test_init_keeps_a_state_of_this_dimension_and_replaces_another(redis_url):
    client = redis_client(redis_url)
    client.flushdb()
    assert init_redis_state(client, 3) is True
    assert init_redis_state(client, 3) is False  # idempotent: several processes may call it
    assert init_redis_state(client, 4) is True
    assert int(client.hget("{hyperrec:bandit}:state", "dim")) == 4


def test_settings_pick_the_backend(tmp_path, redis_url):
    redis_client(redis_url).flushdb()
    local = Settings(home=tmp_path, tracking_uri="x")
    shared = Settings(home=tmp_path, tracking_uri="x", bandit_redis=redis_url)
    init_bandit_state(shared, 6)
    assert int(redis_client(redis_url).hget("{hyperrec:bandit}:state", "dim")) == 6
    for settings, kind in ((local, BanditStore), (shared, RedisBanditStore)):
        store = open_bandit_store(settings, LinUCB(6), limit=10)
        assert isinstance(store, kind)
        store.close()
    init_bandit_state(Settings(home=tmp_path, tracking_uri="x", bandit_redis="127.0.0.1:1"), 6)  # only logged


@pytest.mark.slow
def test_replicas_sharing_redis_credit_each_others_lists(champion_server, redis_url, monkeypatch):
    """A real server with HYPERREC_BANDIT_REDIS and a second store on the same Redis (another
    replica, on another node): a list one served is credited through the other, both ways;
    the server waits for a list the other has not written yet."""
    import requests

    from hyperrec.online.rerank import EXPLORATION_DIM

    redis_client(redis_url).flushdb()
    monkeypatch.setenv("HYPERREC_BANDIT_REDIS", redis_url)
    with champion_server("bandit-redis") as server:
        assert server["settings"].bandit_redis == redis_url
        assert not (server["settings"].home / "serving" / "bandit.db").exists()
        users = server["world"].users["user_id"].iloc[:40].tolist()
        resp = requests.post(server["url"] + "/v1/models/recommender:predict",
                             json={"instances": [{"user_id": u, "k": 8} for u in users]}, timeout=60)
        explored = [(r["request_id"], i["item_id"]) for r in resp.json()["predictions"] for i in r["items"]
                    if i["reason"].startswith("something new for you")]
        assert explored
        other = RedisBanditStore(redis_url, LinUCB(EXPLORATION_DIM), flush_s=0.5)
        try:
            rid, item = explored[0]
            assert until(lambda: other.credit(rid, item, 1.0) is Credit.CREDITED, 2)  # served by the server

            def updates() -> float:
                text = requests.get(server["url"] + "/metrics", timeout=10).text
                return next(float(line.split()[-1]) for line in text.splitlines()
                            if line.startswith("hyperrec_bandit_updates"))
            assert until(lambda: updates() == 1, 3)  # the server followed the stored state
            other.remember("served-elsewhere", "i1", np.full(EXPLORATION_DIM, 0.5))  # flushed within 0.5 s
            answer = requests.post(server["url"] + "/v1/models/recommender:feedback",
                                   json={"request_id": "served-elsewhere", "item_id": "i1", "reward": 1.0}, timeout=10)
            assert answer.json() == {"updated": True}
            assert until(lambda: other.bandit.updates == 2, 3)
        finally:
            other.close()
