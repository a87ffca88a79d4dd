"""The model server over real HTTP: both protocols, the policies, bad input, readiness,
per-stage metrics, bandit feedback, and hot swap (a new champion under concurrent load,
a corrupt artifact that must not replace the serving model)."""

import contextlib
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pandas as pd
import pytest
import requests

from hyperrec.registry.deploy import deploy
from hyperrec.registry.model_registry import configure, move_alias, register_model

pytestmark = pytest.mark.slow
BLESSED = {"blessed": True, "reasons": []}


@pytest.fixture(scope="module")
def server(champion_server):
    """A small world, one quickly trained model registered as champion (the pipeline and its
    gates are tested elsewhere), and a server polling the alias every half second."""
    with champion_server("serving", ("--poll_s", "0.5")) as built:
        yield built


def consenting(world) -> list[str]:
    """Users whose CRM profile grants personalization (the generator's 92%)."""
    return world.users.loc[world.users["consent_personalization"], "user_id"].tolist()


@contextlib.contextmanager
def streaming(settings, users_changed=None):
    """The stream processor tailing the workspace's event log in a thread, as `hyperrec
    stream` would (warm-started from the history); yields the log."""
    from hyperrec.data.eventlog import EventLog
    from hyperrec.features.store import open_store
    from hyperrec.features.stream import StreamProcessor, history, tail

    log = EventLog(settings.event_log)
    processor = StreamProcessor(open_store(settings), log, users_changed=users_changed)
    processor.warm_start(history(log, settings.data_dir / "world"))
    stop = threading.Event()
    worker = threading.Thread(target=tail, args=(processor, stop), daemon=True)
    worker.start()
    try:
        yield log
    finally:
        stop.set()
        worker.join(10)


def predict(server, instances, timeout=30):
    return requests.post(f"{server['url']}/v1/models/recommender:predict", json={"instances": instances},
                         timeout=timeout)


def test_v1_serves_known_users_sessions_and_strangers(server):
    world = server["world"]
    user = consenting(world)[0]
    session = world.items["item_id"].iloc[:3].tolist()
    resp = predict(server, [{"user_id": user, "k": 5, "context": {"device": "mobile", "page": "home"}},
                            {"session": {"recent_items": session}, "k": 4},
                            {"user_id": "someone-new", "k": 3, "context": {"page": "category:" +
                                                                               world.items["category"].iloc[0]}}])
    assert resp.status_code == 200, resp.text
    known, anonymous, stranger = resp.json()["predictions"]
    titles = world.items.set_index("item_id")["title"]
    for rec, k in ((known, 5), (anonymous, 4), (stranger, 3)):
        assert rec["model_version"] == server["version"] and rec["arm"] and rec["request_id"]
        ids = [i["item_id"] for i in rec["items"]]
        assert len(ids) == k == len(set(ids))
        assert all(titles[i["item_id"]] == i["title"] and i["reason"] for i in rec["items"])
    assert known["policy"] == "personalized" and anonymous["policy"] == "personalized"
    assert not set(session) & {i["item_id"] for i in anonymous["items"]}  # the session's items are not repeated
    assert any(i["reason"].startswith("because you engaged with") for i in anonymous["items"])
    # nothing to personalize from: popular in the page's category
    assert stranger["policy"] == "popular"
    assert {i["category"] for i in stranger["items"]} == {world.items["category"].iloc[0]}


def test_v2_open_inference_protocol(server):
    users = server["world"].users["user_id"].iloc[:2].tolist()
    body = {"id": "req-1", "inputs": [{"name": "user_id", "shape": [3], "datatype": "BYTES", "data": [*users, ""]},
                                      {"name": "k", "shape": [1], "datatype": "INT32", "data": [4]},
                                      {"name": "recent_items", "shape": [3], "datatype": "BYTES",
                                       "data": ["", "", server["world"].items["item_id"].iloc[0]]}]}
    resp = requests.post(f"{server['url']}/v2/models/recommender/infer", json=body, timeout=30)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["id"] == "req-1" and out["model_version"] == str(server["version"])
    tensors = {o["name"]: o for o in out["outputs"]}
    assert tensors["item_id"]["shape"] == [3, 4] and tensors["score"]["datatype"] == "FP32"
    assert all(tensors["item_id"]["data"]) and len(tensors["policy"]["data"]) == 3
    meta = requests.get(f"{server['url']}/v2/models/recommender", timeout=10)
    assert meta.status_code == 200 and meta.json()["name"] == "recommender"


BAD = [  # (path, body, headers, status, text in the error)
    # an unparseable body is refused by KServe's decoder or by ours, whatever the content type
    ("v1", b"{bad", {}, 400, ""),
    ("v1", b"{bad", {"Content-Type": "application/json"}, 400, ""),
    ("v1", b"{bad", {"Content-Type": "text/plain"}, 400, ""),
    ("v1", b"\xff\xfe", {"Content-Type": "text/plain"}, 400, ""),
    ("v1", b'{"instances": [{"user_id": "u", "k": 0}]}', {}, 400, "instances[0]: k"),
    ("v1", b'{"instances": [{"user_id": 7}]}', {}, 400, "instances[0]: user_id"),
    ("v1", b'{"instances": [{"k": 3}]}', {}, 400, "give user_id"),
    ("v1", b'{"instances": {"user_id": "u"}}', {}, 400, "instances"),
    ("v1", b'[1, 2]', {}, 400, ""),
    ("v2", b'{"inputs": [{"name": "user_id", "shape": [1], "datatype": "FP32", "data": [1.5]}]}',
     {"Content-Type": "application/json"}, 400, "datatype must be BYTES"),
    ("v2", b'{"inputs": "nope"}', {"Content-Type": "application/json"}, 400, "inputs"),
    ("v2", b'{bad', {"Content-Type": "application/json"}, 400, ""),
    ("v1-unknown", b'{"instances": [{"user_id": "u"}]}', {}, 404, "nope"),
    ("v2-unknown", b'{"inputs": []}', {"Content-Type": "application/json"}, 404, "nope"),
]
PATHS = {"v1": "/v1/models/recommender:predict", "v2": "/v2/models/recommender/infer",
         "v1-unknown": "/v1/models/nope:predict", "v2-unknown": "/v2/models/nope/infer"}


@pytest.mark.parametrize("path, body, headers, status, text", BAD)
def test_client_mistakes_get_4xx_naming_the_problem(server, path, body, headers, status, text):
    resp = requests.post(server["url"] + PATHS[path], data=body, headers=headers, timeout=10)
    assert resp.status_code == status, resp.text
    assert resp.json()["error"] and text in resp.json()["error"]
    assert server["proc"].poll() is None


def test_oversized_body_is_413_and_the_server_stays_up(server):
    big = b'{"instances": [' + b",".join([b'{"user_id": "u"}'] * 80_000) + b"]}"
    resp = requests.post(server["url"] + PATHS["v1"], data=big, timeout=30)
    assert resp.status_code == 413 and "over" in resp.json()["error"]

    def chunks():  # no Content-Length: counted as it streams
        yield b'{"instances": ['
        for _ in range(80_000):
            yield b'{"user_id": "u"},'
        yield b'{"user_id": "u"}]}'

    assert requests.post(server["url"] + PATHS["v1"], data=chunks(), timeout=30).status_code == 413
    assert predict(server, [{"user_id": "u"}]).status_code == 200


def test_good_and_bad_requests_at_once_only_bad_ones_fail(server):
    users = server["world"].users["user_id"].iloc[:20].tolist()

    def call(i):
        if i % 3 == 0:
            return i, requests.post(server["url"] + PATHS["v1"], json={"instances": [{"user_id": users[i], "k": -1}]},
                                    timeout=30)
        return i, predict(server, [{"user_id": users[i], "k": 3}])

    with ThreadPoolExecutor(8) as pool:
        for i, resp in pool.map(call, range(20)):
            assert resp.status_code == (400 if i % 3 == 0 else 200)
            if resp.status_code == 200:
                assert resp.json()["predictions"][0]["user_id"] == users[i]  # each answer matches its request


def test_metrics_per_stage_and_batch_size(server):
    predict(server, [{"user_id": u} for u in server["world"].users["user_id"].iloc[:5]])
    text = requests.get(server["url"] + "/metrics", timeout=10).text
    for stage in ("feature_fetch", "retrieval", "ranking", "rerank"):
        assert f'hyperrec_stage_seconds_count{{stage="{stage}"}}' in text
    assert "hyperrec_batch_size_count" in text and "hyperrec_recommendations_total" in text
    assert f"hyperrec_model_version {float(server['version'])}" in text


def test_bandit_feedback_credits_only_explored_slots(server):
    users = server["world"].users["user_id"].iloc[:40].tolist()
    recs = predict(server, [{"user_id": u, "k": 8} for u in users]).json()["predictions"]
    explored = [(r["request_id"], i["item_id"]) for r in recs for i in r["items"]
                if i["reason"].startswith("something new for you")]
    assert explored, "the exploring arm fills a slot for about half the users"
    url = server["url"] + "/v1/models/recommender:feedback"
    rid, item = explored[0]
    assert requests.post(url, json={"request_id": rid, "item_id": item, "reward": 1.0}, timeout=10).json() == \
        {"updated": True}
    again = requests.post(url, json={"request_id": rid, "item_id": item, "reward": 1.0}, timeout=10)
    assert again.status_code == 404 and "already credited" in again.json()["error"]
    assert requests.post(url, json={"request_id": rid, "reward": 3}, timeout=10).status_code == 400


def _served_versions(server, stop: threading.Event, out: list, errors: list):
    users = server["world"].users["user_id"].iloc[:30].tolist()
    i = 0
    while not stop.is_set():
        try:
            resp = predict(server, [{"user_id": users[i % 30], "k": 5}], timeout=30)
        except requests.RequestException as exc:
            errors.append(repr(exc))
            continue
        if resp.status_code != 200:
            errors.append(resp.status_code)
        else:
            out.append(resp.json()["predictions"][0]["model_version"])
        i += 1


def _under_load(server, until, timeout_s=60):
    """Run 4 client threads until `until()` holds; returns (versions per thread, errors)."""
    stop, errors = threading.Event(), []
    seen = [[] for _ in range(4)]
    threads = [threading.Thread(target=_served_versions, args=(server, stop, seen[t], errors)) for t in range(4)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + timeout_s
    try:
        while not until(seen) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(1.0)  # and a little longer after the condition
    finally:
        stop.set()
        for t in threads:
            t.join()
    return seen, errors


def _metric(server, name):
    for line in requests.get(server["url"] + "/metrics", timeout=10).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return 0.0


def test_new_champion_swaps_in_under_load_without_an_error(server):
    settings, old = server["settings"], server["version"]
    new = register_model(settings, server["model_dir"], {}, {}, BLESSED)  # moves the alias
    seen, errors = _under_load(server, lambda seen: all(s and s[-1] == new for s in seen))
    assert errors == []
    for versions in seen:
        assert versions[-1] == new
        first_new = versions.index(new)
        assert set(versions[:first_new]) <= {old} and set(versions[first_new:]) == {new}  # never back
    server["version"] = new
    # the pipeline's deploy step confirms the roll-out against this server and records it
    assert deploy(settings, settings.model_name, new, blessed=True, endpoint=server["url"])["status"] == "serving"
    assert configure(settings).get_model_version(settings.model_name, str(new)).tags["deploy_status"] == "serving"


def test_corrupt_artifact_fails_to_load_and_the_old_model_keeps_serving(server, tmp_path):
    settings, serving = server["settings"], server["version"]
    broken = tmp_path / "broken"
    shutil.copytree(server["model_dir"], broken)
    (broken / "ranker" / "saved_model.pb").write_bytes(b"\x00 not a saved model")
    failures_before = _metric(server, "hyperrec_model_load_failures_total")
    bad = register_model(settings, broken, {}, {}, BLESSED)  # a bad artifact that passed the gate
    assert int(configure(settings).get_model_version_by_alias(settings.model_name, "champion").version) == bad
    seen, errors = _under_load(server, lambda _: _metric(server, "hyperrec_model_load_failures_total")
                               > failures_before)
    assert errors == [] and _metric(server, "hyperrec_model_load_failures_total") == failures_before + 1
    assert {v for s in seen for v in s} == {serving}
    with pytest.raises(RuntimeError, match=f"still serves version {serving}"):
        deploy(settings, settings.model_name, bad, blessed=True, endpoint=server["url"], timeout_s=2)
    assert configure(settings).get_model_version(settings.model_name, str(bad)).tags["deploy_status"] == "failed"
    move_alias(settings, serving, "rollback: version failed to load")  # the alias goes back; no reload needed
    time.sleep(1.5)
    assert predict(server, [{"user_id": "u"}]).json()["predictions"][0]["model_version"] == serving


def _wait_metric(server, name, value, timeout_s=60):
    deadline = time.monotonic() + timeout_s
    while _metric(server, name) != value:
        assert time.monotonic() < deadline, f"{name} stayed {_metric(server, name)}, expected {value}"
        time.sleep(0.2)


def _versions_by_user(server, users, field="model_version"):
    out = {}
    for lo in range(0, len(users), 64):
        for pred in predict(server, [{"user_id": u, "k": 3} for u in users[lo:lo + 64]]).json()["predictions"]:
            out[pred["user_id"]] = pred[field]
    return out


def test_a_challenger_serves_its_share_of_users_until_promoted_or_retired(server):
    """The gate's online trial: the challenger alias loads a second unit; exactly the users
    the canary hash picks (20% by default) get it (interleaved with the champion's items), on
    every request; promotion moves them
    all to it without reloading, retirement moves them all back."""
    from hyperrec.data.impressions import ImpressionLog
    from hyperrec.online.serving_path import stable_fraction
    from hyperrec.registry.model_registry import challenger_version, end_challenger
    from serving.recommender import CANARY_SALT, ServerConfig

    settings, champion = server["settings"], server["version"]
    users = consenting(server["world"])[:240]
    trial = {"blessed": False, "canary": True, "reasons": ["ndcg_at_10 vs champion: 0.09 < required 0.097"]}
    challenger = register_model(settings, server["model_dir"], {}, {}, trial)
    assert challenger_version(settings) == challenger and _metric(server, "hyperrec_model_version") == champion
    assert deploy(settings, settings.model_name, challenger, blessed=False, endpoint=None)["status"] == "canary"
    _wait_metric(server, "hyperrec_canary_version", challenger)

    # popular-in-context lists (users the model cannot personalize for) have nothing to compare
    personal = {u for u, policy in _versions_by_user(server, users, "policy").items() if policy == "personalized"}
    expected = {u: challenger if stable_fraction(CANARY_SALT, u) < ServerConfig.canary_share and u in personal
                else champion for u in users}
    assert 0.1 < sum(v == challenger for v in expected.values()) / len(users) < 0.3
    assert _versions_by_user(server, users) == expected
    assert _versions_by_user(server, users) == expected  # stable across requests
    # the trial's lists interleave both versions (ServerConfig.trial), each item logged with its team
    trial_users = {u for u, v in expected.items() if v == challenger}
    deadline = time.monotonic() + 10
    while True:
        logged = ImpressionLog(settings.impression_log).read()
        mine = logged[logged["user_id"].isin(trial_users) & (logged["model_version"] == challenger)]
        if len(mine) >= 2 * len(trial_users) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert len(mine) >= 2 * len(trial_users)
    assert all(len(entry) == 4 for items in mine["items"] for entry in items)
    assert all({entry[3] for entry in items} == {champion, challenger} for items in mine["items"])

    swaps = _metric(server, "hyperrec_model_swaps_total")
    end_challenger(settings, "promoted", "test: it won")
    _wait_metric(server, "hyperrec_model_version", challenger)
    _wait_metric(server, "hyperrec_canary_version", 0)
    assert set(_versions_by_user(server, users).values()) == {challenger}
    assert _metric(server, "hyperrec_model_swaps_total") == swaps + 1
    tags = configure(settings).get_model_version(settings.model_name, str(challenger)).tags
    assert tags["canary_outcome"] == "promoted" and challenger_version(settings) is None

    retired = register_model(settings, server["model_dir"], {}, {}, trial)
    _wait_metric(server, "hyperrec_canary_version", retired)
    assert retired in set(_versions_by_user(server, users).values())
    end_challenger(settings, "retired", "test: it lost")
    _wait_metric(server, "hyperrec_canary_version", 0)
    assert set(_versions_by_user(server, users).values()) == {challenger}
    server["version"] = challenger


def test_a_server_without_a_champion_refuses_to_start(tmp_path, monkeypatch):
    """load() is what the process runs before it binds its port: no champion, no server."""
    from hyperrec.config import load_settings
    from serving.recommender import RecommenderModel

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # mlflow.set_tracking_uri exports it
    model = RecommenderModel("recommender", load_settings(tmp_path / "empty"))
    with pytest.raises(RuntimeError, match="no 'hyperrec-retrieval@champion' in the registry"):
        model.load()
    assert not model.ready


# --- event ingestion and adaptation within the session -----------------------------------

def _click(user, item, at, event_id):
    return {"event_id": event_id, "user_id": user, "item_id": item, "event_type": "click",
            "ts": at.isoformat(), "dwell_s": 40.0}


def test_served_lists_are_logged_for_monitoring_and_outcomes_join_them(server):
    from hyperrec.data.eventlog import EventLog
    from hyperrec.data.impressions import ImpressionLog
    from hyperrec.monitor.traffic import attribute, shown_items
    from hyperrec.monitor.trigger import FEATURES
    from hyperrec.registry.deploy import serving_version

    world, settings = server["world"], server["settings"]
    assert serving_version(server["url"]) == server["version"]  # a deploy probe: answered, not logged
    users = consenting(world)[10:14]
    answer = predict(server, [{"user_id": u, "k": 4} for u in users]).json()["predictions"]
    ids = [p["request_id"] for p in answer]
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # written off the request path, every 0.2 s
        logged = ImpressionLog(settings.impression_log).read()
        if set(ids) <= set(logged["request_id"]):
            break
        time.sleep(0.1)
    assert "deploy-probe" not in set(logged["user_id"])
    logged = logged.set_index("request_id").loc[ids]
    for p in answer:
        row = logged.loc[p["request_id"]]
        assert row["user_id"] == p["user_id"] and row["arm"] == p["arm"] and row["model_version"] == p["model_version"]
        assert [i[0] for i in row["items"]] == [i["item_id"] for i in p["items"]]
        assert all(pd.notna(row[f]) for f in FEATURES)
    clicked = answer[0]["items"][1]["item_id"]
    at = pd.Timestamp(logged["ts"].iloc[0], unit="s", tz="UTC").to_pydatetime() + timedelta(seconds=5)
    click = _click(users[0], clicked, at, "impression-click") | {"request_id": ids[0]}
    assert requests.post(f"{server['url']}/v1/events", json=[click], timeout=30).json()["stored"] == 1
    outcomes = attribute(shown_items(logged.reset_index()), EventLog(settings.event_log).read(0, 10**9)[1])
    hits = outcomes[outcomes["clicked"] == 1]
    assert list(zip(hits["request_id"], hits["item_id"])) == [(ids[0], clicked)]


def test_simulated_users_play_the_server_and_every_click_is_attributed_to_its_list(server):
    """The closed loop's traffic generator against the real server: lists served, events
    posted with their request ids, and the platform's own logs account for every click."""
    from hyperrec.data.eventlog import EventLog
    from hyperrec.data.impressions import ImpressionLog
    from hyperrec.demo.simulate import SimConfig, Simulator
    from hyperrec.monitor.traffic import attribute, shown_items

    world, settings = server["world"], server["settings"]
    t0 = world.events["ts"].max().to_pydatetime() + timedelta(hours=2)
    # no organic visits: their clicks name no list, and one on an item a list showed the user
    # in the last 30 minutes counts for that list (view-through attribution, tested elsewhere)
    sim = Simulator(world, server["url"], SimConfig(organic_per_list=0.0), seed=5)
    served = sim.run(120, t0, t0 + timedelta(hours=1)).frame
    assert len(served) == 120 and served["ts"].is_monotonic_increasing and served["clicks"].sum() > 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        logged = ImpressionLog(settings.impression_log).read()
        if set(served["request_id"]) <= set(logged["request_id"]):
            break
        time.sleep(0.1)
    outcomes = attribute(shown_items(logged[logged["request_id"].isin(served["request_id"])]),
                         EventLog(settings.event_log).read(0, 10**9)[1])
    per_list = outcomes.groupby("request_id")[["clicked", "purchased"]].sum()
    expected = served.set_index("request_id")[["clicks", "purchases"]]
    assert (per_list.loc[expected.index].to_numpy() == expected.to_numpy()).all()


def test_event_ingestion_counts_reconcile_and_bad_events_are_dead_lettered(server):
    from hyperrec.data.eventlog import EventLog

    world = server["world"]
    user, item = world.users["user_id"].iloc[3], world.items["item_id"].iloc[3]
    at = world.events["ts"].max().to_pydatetime()
    good = [_click(user, item, at, f"ingest-{i}") for i in range(3)]
    bad = [{"event_id": "ingest-bad-1", "user_id": user}, {**good[0], "event_id": "ingest-bad-2", "dwell_s": -1}]
    url = f"{server['url']}/v1/events"
    first = requests.post(url, json=good + bad, timeout=30)
    assert first.status_code == 200, first.text
    assert first.json() | {"errors": None} == {"received": 5, "stored": 3, "duplicates": 0, "dead_lettered": 2,
                                               "suppressed": 0, "errors": None}
    assert any("dwell_s" in e for e in first.json()["errors"])
    replay = requests.post(url, json={"events": good}, timeout=30).json()  # at-least-once delivery: one effect
    assert (replay["stored"], replay["duplicates"]) == (0, 3)
    for body in (b"{not json", b'{"events": "nope"}', b"42"):
        refused = requests.post(url, data=body, timeout=30)
        assert refused.status_code == 400 and refused.json()["error"] and refused.json()["dead_lettered"] == 1
    log = EventLog(server["settings"].event_log)
    dead = log.dead_letters()
    assert {raw for raw, _ in dead} >= {b"{not json", b'{"events": "nope"}', b"42"}  # raw bytes kept
    assert any(b"ingest-bad-1" in raw for raw, _ in dead)
    assert requests.get(f"{server['url']}/metrics", timeout=10).text.count("hyperrec_events_total") >= 3


def test_the_event_contract_is_served(server):
    """`GET /v1/schema/event`: the JSON Schema POST /v1/events is held to (hyperrec.data.contract)."""
    from hyperrec.data.contract import event_json_schema

    resp = requests.get(f"{server['url']}/v1/schema/event", timeout=10)
    assert resp.status_code == 200 and resp.headers["content-type"].startswith("application/json")
    assert resp.json() == event_json_schema()


def test_clicks_shift_recommendations_toward_their_category_within_a_second(server):
    """A user clicks several items of one category; with the stream processor running, the
    next recommendations lean toward it, with no retraining."""
    settings, world = server["settings"], server["world"]
    items = world.items.set_index("item_id")["category"]
    user = consenting(world)[5]

    def share(category):
        rec = predict(server, [{"user_id": user, "k": 10}]).json()["predictions"][0]
        return sum(items[i["item_id"]] == category for i in rec["items"]) / len(rec["items"])

    before = {c: share(c) for c in items.unique()}
    target = min(before, key=before.get)  # the category this user is shown least
    clicked = items[items == target].index[:6].tolist()
    with streaming(settings):
        at = world.events["ts"].max().to_pydatetime()
        events = [_click(user, item, at + pd.Timedelta(seconds=i + 1), f"adapt-{user}-{i}")
                  for i, item in enumerate(clicked)]
        sent = time.monotonic()
        assert requests.post(f"{server['url']}/v1/events", json=events, timeout=30).json()["stored"] == 6
        after = before[target]
        while time.monotonic() - sent < 5 and after <= before[target]:
            after = share(target)
        elapsed = time.monotonic() - sent
    assert after > before[target], f"share of {target} stayed at {before[target]}"
    assert elapsed < 1.0, f"took {elapsed:.2f} s"


def test_a_bought_item_is_never_offered_again(server):
    """The long-term purchase filter: after a purchase and 25 later clicks, the bought item
    has left the user's 20 recent items, and still never comes back."""
    from hyperrec.data.eventlog import EventLog
    from hyperrec.features.store import online_user_features, open_store
    from hyperrec.features.stream import StreamProcessor, history

    settings, world = server["settings"], server["world"]
    user = consenting(world)[7]
    first = predict(server, [{"user_id": user, "k": 10}]).json()["predictions"][0]
    bought = first["items"][0]["item_id"]
    others = [i for i in world.items["item_id"] if i != bought and i not in {x["item_id"] for x in first["items"]}]
    at = world.events["ts"].max().to_pydatetime() + timedelta(minutes=5)
    events = [{"event_id": f"buy-{user}", "user_id": user, "item_id": bought, "event_type": "purchase",
               "ts": at.isoformat()}]
    events += [_click(user, item, at + timedelta(seconds=i + 1), f"after-buy-{user}-{i}")
               for i, item in enumerate(others[:25])]
    assert requests.post(f"{server['url']}/v1/events", json=events, timeout=30).json()["stored"] == 26
    store, log = open_store(settings), EventLog(settings.event_log)
    processor = StreamProcessor(store, log)
    processor.warm_start(history(log, settings.data_dir / "world"))
    while processor.run_once():
        pass
    online = online_user_features(store, [user], now=at + timedelta(minutes=1))
    assert bought not in list(online.loc[0, "recent_items"])  # not what keeps it out
    again = predict(server, [{"user_id": user, "k": 100}]).json()["predictions"][0]
    assert again["policy"] == "personalized" and len(again["items"]) >= 50
    assert bought not in {i["item_id"] for i in again["items"]}


def test_consent_decides_personalization_and_a_withdrawal_counts_at_once(server):
    from hyperrec.privacy import ConsentLedger

    world = server["world"]
    refusing = world.users.loc[~world.users["consent_personalization"], "user_id"].iloc[0]
    user = consenting(world)[7]
    recs = predict(server, [{"user_id": refusing, "k": 5}, {"user_id": user, "k": 5}]).json()["predictions"]
    assert [r["policy"] for r in recs] == ["popular", "personalized"]
    ledger = ConsentLedger.open(server["settings"])
    ledger.record_consent(user, "personalization", False, at=world.events["ts"].max() - pd.Timedelta(seconds=1),
                          source="test")
    ledger.close()
    assert predict(server, [{"user_id": user, "k": 5}]).json()["predictions"][0]["policy"] == "popular"


def test_cached_lists_are_served_until_the_users_online_features_change(server, tmp_path):
    """A second server on the same workspace with the Redis recommendation cache: a repeated
    request is a cache hit; after the user's clicks reach the online store, the stream
    processor's invalidation makes the next request recompute (the list shifts toward the
    clicked category within a second, not after the cache's TTL)."""
    from hyperrec.online.recs_cache import invalidator
    from hyperrec.services import free_port, redis_server
    from serving.launch import start_server, stop_server, wait_ready

    settings, world = server["settings"], server["world"]
    items = world.items.set_index("item_id")["category"]
    user = consenting(world)[11]
    with redis_server() as url:
        cached = settings.model_copy(update={"recs_cache": url})
        port = free_port()
        proc = start_server(cached, port, tmp_path / "cached.log", as_of=world.events["ts"].max().to_pydatetime(),
                            extra_args=("--recs_cache_ttl_s", "600"))
        try:
            wait_ready(proc, port, log_path=tmp_path / "cached.log")
            other = {"url": f"http://127.0.0.1:{port}"}

            def served():
                return predict(other, [{"user_id": user, "k": 10}]).json()["predictions"][0]

            first, again = served(), served()
            assert [i["item_id"] for i in again["items"]] == [i["item_id"] for i in first["items"]]
            assert again["request_id"] != first["request_id"]  # each answer is its own impression
            assert _metric(other, 'hyperrec_recs_cache_total{outcome="hit"}') >= 1
            shown = pd.Series([items[i["item_id"]] for i in first["items"]]).value_counts()
            target = next(c for c in items.unique() if c not in shown.index)  # a category the list lacks
            with streaming(settings, users_changed=invalidator(cached)):
                at = world.events["ts"].max().to_pydatetime() + timedelta(minutes=1)
                clicks = [_click(user, item, at + timedelta(seconds=i), f"cached-{user}-{i}")
                          for i, item in enumerate(items[items == target].index[:6])]
                sent = time.monotonic()
                assert requests.post(f"{other['url']}/v1/events", json=clicks, timeout=30).json()["stored"] == 6
                share = 0.0
                while time.monotonic() - sent < 5 and share == 0.0:
                    share = sum(items[i["item_id"]] == target for i in served()["items"]) / 10
                elapsed = time.monotonic() - sent
        finally:
            stop_server(proc)
    assert share > 0, f"the cached list of {user} never changed after the clicks on {target}"
    assert elapsed < 1.0, f"took {elapsed:.2f} s"


def _view(user, item, at, event_id, request_id=None):
    return {"event_id": event_id, "user_id": user, "item_id": item, "event_type": "view", "ts": at.isoformat(),
            **({"request_id": request_id} if request_id else {})}


def test_views_of_items_found_alone_pull_a_list_and_passed_over_slots_push_it(server):
    """The same views of one category's items, from the stream to the feedback query over
    HTTP: without a request_id (the user found them alone) the user's list moves toward
    that category; naming a served list (slots passed over), away from it."""
    settings, world = server["settings"], server["world"]
    category = world.items.set_index("item_id")["category"]
    def rank_of(user, target):
        """Mean position of the target category's items in the user's list of 30 (missing: 30)."""
        items = predict(server, [{"user_id": user, "k": 30}]).json()["predictions"][0]["items"]
        where = [p for p, i in enumerate(items) if category[i["item_id"]] == target]
        return sum(where + [30] * (8 - len(where))) / 8 if len(where) <= 8 else sum(where[:8]) / 8

    target = category.value_counts().index[0]  # the largest category: enough items to view
    found = consenting(world)[21]
    # a user with room to move the category down (earlier tests' events shape some lists)
    passed = next(u for u in consenting(world)[22:60] if rank_of(u, target) <= 24)
    before = {user: rank_of(user, target) for user in (found, passed)}
    targets = category[category == target].index[:8]
    at = world.events["ts"].max().to_pydatetime() + timedelta(minutes=2)
    events = [_view(found, item, at + timedelta(seconds=i), f"found-{i}") for i, item in enumerate(targets)]
    events += [_view(passed, item, at + timedelta(seconds=i), f"passed-{i}", request_id=f"list-{i}")
               for i, item in enumerate(targets)]
    with streaming(settings) as log:
        assert requests.post(f"{server['url']}/v1/events", json=events, timeout=30).json()["stored"] == len(events)
        sent = time.monotonic()
        while not log.read(log.committed("online-features"), limit=1)[1].empty:  # until pushed online
            assert time.monotonic() - sent < 10, "the stream processor did not catch up within 10 s"
            time.sleep(0.05)
        after = {user: rank_of(user, target) for user in (found, passed)}
    assert after[found] < before[found], f"{target} did not move up: {before[found]} -> {after[found]}"
    assert after[passed] > before[passed], f"{target} did not move down: {before[passed]} -> {after[passed]}"
