"""Authentication and authorization: API keys and user tokens (hyperrec.online.access), and
a real server with auth on refusing every way to act as, or spy on, another user."""

import time

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from hyperrec.online.access import AuthError, Forbidden, KeyRing, UserTokens, open_authenticator
from serving.auth import authenticator_for, required_scope


def test_keys_verify_by_hash_and_revoke(tmp_path):
    ring = KeyRing(tmp_path / "keys.json")
    secret = ring.create("backend", ["recommend"])
    assert secret not in (tmp_path / "keys.json").read_text()  # only the hash is kept
    caller = ring.verify(secret)
    assert caller.name == "backend" and caller.may("recommend") and not caller.may("ingest")
    assert caller.acts_for("anyone") and not caller.sees_details_of("anyone")
    assert ring.verify(secret + "x") is None
    assert ring.revoke("backend")
    ring._checked = 0.0  # skip the one-second re-read interval
    assert ring.verify(secret) is None
    with pytest.raises(ValueError, match="scopes"):
        ring.create("bad", ["root"])


def test_user_tokens_act_only_as_their_user():
    tokens = UserTokens(secret=b"s" * 32)
    caller = tokens.verify(tokens.issue("u1"))
    assert caller.user_id == "u1" and caller.may("recommend") and not caller.may("admin")
    assert caller.acts_for("u1") and caller.acts_for(None) and not caller.acts_for("u2")
    assert caller.sees_details_of("u1") and not caller.sees_details_of("u2")
    with pytest.raises(ValueError):
        tokens.issue("u1", scopes=("admin",))  # a user token can never be an admin


@pytest.mark.parametrize("forge", ["other_secret", "expired", "alg_none", "no_sub", "garbage"])
def test_forged_tokens_are_refused(forge):
    tokens = UserTokens(secret=b"s" * 32)
    now = int(time.time())
    token = {
        "other_secret": jwt.encode({"sub": "u1", "exp": now + 60}, b"x" * 32, algorithm="HS256"),
        "expired": jwt.encode({"sub": "u1", "exp": now - 10}, b"s" * 32, algorithm="HS256"),
        "alg_none": jwt.encode({"sub": "u1", "exp": now + 60}, None, algorithm="none"),
        "no_sub": jwt.encode({"exp": now + 60}, b"s" * 32, algorithm="HS256"),
        "garbage": "a.b.c",
    }[forge]
    with pytest.raises(AuthError):
        tokens.verify(token)


def test_an_identity_providers_rs256_tokens():
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    tokens = UserTokens(public_key=pem.decode(), audience="hyperrec")
    claims = {"sub": "u9", "exp": int(time.time()) + 60, "aud": "hyperrec", "scope": "recommend openid"}
    caller = tokens.verify(jwt.encode(claims, key, algorithm="RS256"))
    assert caller.user_id == "u9" and caller.scopes == {"recommend"}
    with pytest.raises(AuthError, match="(?i)audience"):
        tokens.verify(jwt.encode({**claims, "aud": "other"}, key, algorithm="RS256"))
    # an HS256 token "signed" with the public key (the classic confusion attack) is refused
    with pytest.raises(AuthError):
        tokens.verify(jwt.encode(claims, b"k" * 32, algorithm="HS256"))


def test_routes_and_their_scopes():
    assert required_scope("GET", "/v2/health/ready") is None
    assert required_scope("GET", "/v1/schema/event") is None
    assert required_scope("POST", "/v1/models/recommender:predict") == "recommend"
    assert required_scope("POST", "/v2/models/recommender/infer") == "recommend"
    assert required_scope("POST", "/v1/events") == "ingest"
    assert required_scope("POST", "/v1/models/recommender:feedback") == "feedback"
    assert required_scope("GET", "/metrics") == "admin"
    assert required_scope("GET", "/docs") == "admin"
    assert required_scope("POST", "/v2/health/ready") == "admin"


def test_auth_is_on_off_loopback_and_never_silently_open(tmp_path):
    assert authenticator_for("127.0.0.1", "auto", tmp_path) is None
    assert authenticator_for("::1", "auto", tmp_path) is None
    with pytest.raises(SystemExit, match="no API key"):
        authenticator_for("0.0.0.0", "auto", tmp_path)
    with pytest.raises(SystemExit, match="no API key"):
        authenticator_for("127.0.0.1", "on", tmp_path)
    open_authenticator(tmp_path).keys.create("backend", ["recommend"])
    assert authenticator_for("0.0.0.0", "auto", tmp_path) is not None
    assert authenticator_for("0.0.0.0", "off", tmp_path) is None


def test_forbidden_names_the_missing_scope():
    caller = UserTokens(secret=b"s" * 32)
    token_caller = caller.verify(caller.issue("u1", scopes=("recommend",)))
    with pytest.raises(Forbidden, match="ingest"):
        token_caller.require("ingest")


# --- a real server with auth on -----------------------------------------------------------

KEYS = {}


def _create_keys(settings):
    auth = open_authenticator(settings.home, create_secret=True)
    KEYS.update(backend=auth.keys.create("backend", ["recommend"]), collector=auth.keys.create("collector", ["ingest"]),
                admin=auth.keys.create("ops", ["admin"]))


@pytest.fixture(scope="module")
def server(champion_server):
    with champion_server("auth", ("--auth", "on"), before_start=_create_keys) as built:
        tokens = open_authenticator(built["settings"].home).tokens
        users = built["world"].users
        consenting = users.loc[users["consent_personalization"], "user_id"].tolist()
        built.update(me=consenting[0], other=consenting[1],
                     token=lambda user, scopes=("recommend", "ingest", "feedback"): tokens.issue(user, scopes))
        yield built


def _post(server, path, body, credential=None, headers=None):
    auth = {"Authorization": f"Bearer {credential}"} if credential else {}
    return requests.post(server["url"] + path, json=body, headers={**auth, **(headers or {})}, timeout=30)


PREDICT = "/v1/models/recommender:predict"


@pytest.mark.slow
def test_no_credential_no_service(server):
    assert requests.get(server["url"] + "/v2/health/ready", timeout=10).status_code == 200
    assert requests.get(server["url"] + "/v1/schema/event", timeout=10).status_code == 200
    for path, body in ((PREDICT, {"instances": [{"user_id": server["me"]}]}),
                       ("/v2/models/recommender/infer", {"inputs": []}),
                       ("/v1/events", []),
                       ("/v1/models/recommender:feedback", {"request_id": "r", "item_id": "i", "reward": 1})):
        for credential in (None, "hr_backend_wrong", "not-a-credential"):
            resp = _post(server, path, body, credential)
            assert resp.status_code == 401, (path, credential, resp.text)
            assert resp.json()["error"] and resp.headers["www-authenticate"].startswith("Bearer")
    assert requests.get(server["url"] + "/metrics", timeout=10).status_code == 401
    metrics = requests.get(server["url"] + "/metrics", headers={"Authorization": f"Bearer {KEYS['admin']}"},
                           timeout=10)
    assert metrics.status_code == 200 and "hyperrec_model_version" in metrics.text
    wrong_scope = _post(server, "/v1/events", [], KEYS["backend"])
    assert wrong_scope.status_code == 403 and "ingest" in wrong_scope.json()["error"]


@pytest.mark.slow
def test_a_user_token_asks_only_for_its_own_list(server):
    me, other = server["me"], server["other"]
    mine = _post(server, PREDICT, {"instances": [{"user_id": me, "k": 5}]}, server["token"](me))
    assert mine.status_code == 200, mine.text
    rec = mine.json()["predictions"][0]
    assert rec["policy"] == "personalized" and all(item["reason"] for item in rec["items"])
    theirs = _post(server, PREDICT, {"instances": [{"user_id": me}, {"user_id": other}]}, server["token"](me))
    assert theirs.status_code == 403 and "[1]" in theirs.json()["error"]
    v2 = {"inputs": [{"name": "user_id", "shape": [1], "datatype": "BYTES", "data": [other]}]}
    assert _post(server, "/v2/models/recommender/infer", v2, server["token"](me)).status_code == 403


@pytest.mark.slow
def test_a_service_sees_lists_but_not_why_or_consent(server):
    resp = _post(server, PREDICT, {"instances": [{"user_id": server["other"], "k": 5}]}, KEYS["backend"])
    assert resp.status_code == 200, resp.text
    rec = resp.json()["predictions"][0]
    assert len(rec["items"]) == 5 and rec["policy"] == "" and not any(item["reason"] for item in rec["items"])
    admin = _post(server, PREDICT, {"instances": [{"user_id": server["other"], "k": 5}]}, KEYS["admin"])
    assert admin.json()["predictions"][0]["policy"] == "personalized"


@pytest.mark.slow
def test_a_user_token_posts_only_its_own_events(server):
    from hyperrec.data.eventlog import EventLog

    me, other = server["me"], server["other"]
    item = server["world"].items["item_id"].iloc[0]
    log = EventLog(server["settings"].event_log)
    before = log.counts()

    at = server["world"].events["ts"].max().isoformat()

    def event(user, n):
        return {"event_id": f"auth-{user}-{n}", "user_id": user, "item_id": item, "event_type": "view", "ts": at,
                "dwell_s": 20.0}

    forged = _post(server, "/v1/events", [event(me, 1), event(other, 2)], server["token"](me))
    assert forged.status_code == 403 and "[1]" in forged.json()["error"]
    assert log.counts() == before  # the whole batch refused: nothing stored as the other user
    own = _post(server, "/v1/events", [event(me, 3)], server["token"](me))
    assert own.status_code == 200 and own.json()["stored"] == 1, own.text
    collector = _post(server, "/v1/events", [event(other, 4)], KEYS["collector"])
    assert collector.status_code == 200 and collector.json()["stored"] == 1, collector.text


@pytest.mark.slow
def test_feedback_only_for_ones_own_lists(server):
    users = server["world"].users["user_id"].iloc[:60].tolist()
    explored = []
    for user in users:
        rec = _post(server, PREDICT, {"instances": [{"user_id": user, "k": 8}]}, server["token"](user))
        rec = rec.json()["predictions"][0]
        explored += [(user, rec["request_id"], i["item_id"]) for i in rec["items"]
                     if i["reason"].startswith("something new for you")]
        if len(explored) >= 2:
            break
    (owner, rid, item), (owner2, rid2, item2) = explored[:2]
    stranger = next(u for u in users if u not in (owner, owner2))
    body = {"request_id": rid, "item_id": item, "reward": 1.0}
    path = "/v1/models/recommender:feedback"
    assert _post(server, path, body, server["token"](stranger)).status_code == 404  # not their list
    assert _post(server, path, body, server["token"](owner)).json() == {"updated": True}
    assert _post(server, path, {"request_id": rid2, "item_id": item2, "reward": 0.0},
                 server["token"](owner2, ("recommend",))).status_code == 403  # no feedback scope


@pytest.mark.slow
def test_only_an_admin_may_hide_traffic_from_monitoring(server):
    from hyperrec.data.impressions import ImpressionLog

    log = ImpressionLog(server["settings"].impression_log)
    me = server["me"]

    def logged_after(credential) -> bool:
        resp = _post(server, PREDICT, {"instances": [{"user_id": me, "k": 3}]}, credential,
                     headers={"x-hyperrec-probe": "1"})
        rid = resp.json()["predictions"][0]["request_id"]
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if rid in set(log.read()["request_id"]):
                return True
            time.sleep(0.25)
        return False

    assert logged_after(server["token"](me))  # a client's probe header is ignored
    assert not logged_after(KEYS["admin"])


@pytest.mark.slow
def test_a_revoked_key_stops_working_on_the_running_server(server):
    auth = open_authenticator(server["settings"].home)
    secret = auth.keys.create("temporary", ["recommend"])
    body = {"instances": [{"user_id": server["me"]}]}
    deadline = time.monotonic() + 5
    while _post(server, PREDICT, body, secret).status_code != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _post(server, PREDICT, body, secret).status_code == 200
    auth.keys.revoke("temporary")
    time.sleep(1.5)
    assert _post(server, PREDICT, body, secret).status_code == 401


def test_a_key_may_come_as_bearer_apikey_or_header():
    from serving.auth import credential

    assert credential([(b"authorization", b"Bearer hr_a_1")]) == "hr_a_1"
    assert credential([(b"authorization", b"ApiKey hr_a_1")]) == "hr_a_1"  # behind Istio, Bearer means a JWT
    assert credential([(b"x-api-key", b"hr_a_1")]) == "hr_a_1"
    assert credential([(b"authorization", b"Basic abc")]) is None
