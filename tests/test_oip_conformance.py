"""Open Inference Protocol conformance of the model server over real HTTP, driven by the
clients people use against it: Triton's tritonclient.http (binary tensors by default, no
Content-Type), KServe's own InferenceRESTClient, and raw requests for the error cases
(every error is {"error": ...}; a malformed binary-extension header is a 400)."""

import asyncio
import json

import numpy as np
import pytest
import requests

pytestmark = pytest.mark.slow

INFER = "/v2/models/recommender/infer"
INPUTS = {"user_id": "BYTES", "k": "INT32", "recent_items": "BYTES", "device": "BYTES", "page": "BYTES"}
OUTPUTS = {"item_id": ("BYTES", [-1, -1]), "score": ("FP32", [-1, -1]), "reason": ("BYTES", [-1, -1]),
           "policy": ("BYTES", [-1]), "arm": ("BYTES", [-1]), "request_id": ("BYTES", [-1])}


@pytest.fixture(scope="module")
def server(champion_server):
    with champion_server("oip") as built:
        yield built


@pytest.fixture
def users(server) -> list[str]:
    return server["world"].users["user_id"].iloc[:2].tolist()


@pytest.fixture
def triton(server):
    from tritonclient.http import InferenceServerClient

    client = InferenceServerClient(url=f"127.0.0.1:{server['port']}", network_timeout=30.0)
    yield client
    client.close()


def triton_inputs(users: list[str], k: int, binary: bool = True) -> list:
    """user_id BYTES [n] and k INT32 [1], as binary tensors after the JSON header (the
    client's default) or inline JSON."""
    from tritonclient.http import InferInput

    user_id = InferInput("user_id", [len(users)], "BYTES")
    user_id.set_data_from_numpy(np.array([u.encode() for u in users], dtype=object), binary_data=binary)
    top = InferInput("k", [1], "INT32")
    top.set_data_from_numpy(np.array([k], dtype=np.int32), binary_data=binary)
    return [user_id, top]


# --- errors are {"error": ...} ---------------------------------------------------------

ROUTING = [  # (method, path, status, allowed methods)
    ("GET", "/v1/models/recommender:predict", 405, "POST"),
    ("GET", "/v1/models/recommender:feedback", 405, "POST"),
    ("PUT", "/v1/models/recommender:predict", 405, "POST"),
    ("GET", INFER, 405, "POST"),
    ("DELETE", "/v2/health/live", 405, "GET"),
    ("GET", "/no/such/route", 404, None),
    ("POST", "/v2/models/recommender/infer/extra", 404, None),
]


@pytest.mark.parametrize("method, path, status, allow", ROUTING)
def test_routing_errors_are_error_bodies(server, method, path, status, allow):
    resp = requests.request(method, server["url"] + path, timeout=10)
    assert resp.status_code == status, resp.text
    assert set(resp.json()) == {"error"} and resp.json()["error"], resp.text
    if allow:
        assert allow in resp.headers["allow"]


# --- tritonclient.http ------------------------------------------------------------------

def test_tritonclient_health_and_model_metadata(triton):
    assert triton.is_server_live() and triton.is_server_ready() and triton.is_model_ready("recommender")
    meta = triton.get_model_metadata("recommender")
    assert {t["name"]: t["datatype"] for t in meta["inputs"]} == INPUTS
    assert all(t["shape"] == [-1] for t in meta["inputs"])
    assert {t["name"]: (t["datatype"], t["shape"]) for t in meta["outputs"]} == OUTPUTS


def test_tritonclient_infers_with_binary_tensors_and_no_content_type(triton, users, server):
    result = triton.infer("recommender", triton_inputs(users, 4))
    items = result.as_numpy("item_id")
    assert items.shape == (2, 4) and all(items.reshape(-1))
    assert result.as_numpy("score").dtype == np.float32
    assert {o["name"] for o in result.get_response()["outputs"]} == set(OUTPUTS)
    # no outputs named: the client asked for every output as binary data
    assert all("binary_data_size" in o.get("parameters", {}) for o in result.get_response()["outputs"])
    assert result.get_response()["model_version"] == str(server["version"])


def test_tritonclient_gets_only_the_outputs_it_requests(triton, users):
    from tritonclient.http import InferRequestedOutput

    outputs = [InferRequestedOutput("item_id", binary_data=False), InferRequestedOutput("score", binary_data=True)]
    result = triton.infer("recommender", triton_inputs(users, 3), outputs=outputs)
    tensors = {o["name"]: o for o in result.get_response()["outputs"]}
    assert list(tensors) == ["item_id", "score"]
    assert len(tensors["item_id"]["data"]) == 6 and "binary_data_size" in tensors["score"]["parameters"]
    assert result.as_numpy("score").shape == (2, 3)


def test_tritonclient_json_tensors(triton, users):
    from tritonclient.http import InferRequestedOutput

    result = triton.infer("recommender", triton_inputs(users, 2, binary=False),
                          outputs=[InferRequestedOutput("policy", binary_data=False)])
    assert [o["name"] for o in result.get_response()["outputs"]] == ["policy"]
    assert len(result.as_numpy("policy")) == 2


def test_tritonclient_unknown_output_is_a_400_naming_it(triton, users):
    from tritonclient.http import InferRequestedOutput
    from tritonclient.utils import InferenceServerException

    with pytest.raises(InferenceServerException) as info:
        triton.infer("recommender", triton_inputs(users, 2), outputs=[InferRequestedOutput("colour")])
    assert info.value.status() == "400" and "colour" in info.value.message()


# --- KServe's InferenceRESTClient -------------------------------------------------------

def kserve_call(method: str, *args, **kwargs):
    """One call of KServe's async REST client (v2 protocol), on a fresh client."""
    from kserve import InferenceRESTClient, RESTConfig

    async def call():
        client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
        try:
            return await getattr(client, method)(*args, **kwargs)
        finally:
            await client.close()

    return asyncio.run(call())


def kserve_request(users: list[str], k: int, outputs=None, binary: bool = False):
    from kserve import InferInput, InferRequest

    user_id = InferInput("user_id", [len(users)], "BYTES")
    user_id.set_data_from_numpy(np.array(users, dtype=object), binary_data=binary)
    top = InferInput("k", [1], "INT32")
    top.set_data_from_numpy(np.array([k], dtype=np.int32), binary_data=binary)
    return InferRequest(model_name="recommender", infer_inputs=[user_id, top], request_id="kserve-1",
                        request_outputs=outputs)


@pytest.mark.parametrize("binary", [False, True])
def test_kserve_client_infers(server, users, binary):
    response = kserve_call("infer", server["url"], kserve_request(users, 3, binary=binary), model_name="recommender")
    assert response.id == "kserve-1"  # the client drops model_version (InferResponse.from_bytes reads no such field)
    outputs = {o.name: o for o in response.outputs}
    assert set(outputs) == set(OUTPUTS)
    assert outputs["item_id"].as_numpy().shape == (2, 3)


def test_kserve_client_requested_outputs_and_readiness(server, users):
    from kserve.protocol.infer_type import RequestedOutput

    request = kserve_request(users, 2, outputs=[RequestedOutput("reason"), RequestedOutput("arm")])
    response = kserve_call("infer", server["url"], request, model_name="recommender")
    assert [o.name for o in response.outputs] == ["reason", "arm"]
    assert kserve_call("is_server_ready", server["url"]) and kserve_call("is_model_ready", server["url"], "recommender")


def test_model_metadata_parses_as_kserve_model(server):
    """InferenceRESTClient has no metadata call: the endpoint's body against KServe's own model of it."""
    from kserve.protocol.rest.v2_datamodels import ModelMetadataResponse

    resp = requests.get(f"{server['url']}/v2/models/recommender", timeout=10)
    meta = ModelMetadataResponse.model_validate(resp.json())
    assert [t.name for t in meta.inputs] == list(INPUTS) and [t.name for t in meta.outputs] == list(OUTPUTS)


# --- raw HTTP: content types and the binary extension ------------------------------------

def strings(values: list[str]) -> bytes:
    """A BYTES tensor's binary form: each element's length (4 bytes, little-endian), then its bytes."""
    return b"".join(len(v.encode()).to_bytes(4, "little") + v.encode() for v in values)


def framed(inputs: list[dict], raw: bytes) -> tuple[bytes, str]:
    """A binary-extension body: the JSON header, then the raw tensor bytes; and the header's length."""
    header = json.dumps({"inputs": inputs}).encode()
    return header + raw, str(len(header))


def binary_body(users: list[str], size=None, shape=None, raw=None) -> tuple[bytes, str]:
    """A v2 request with user_id as a binary BYTES tensor (size, shape and bytes overridable)."""
    raw = strings(users) if raw is None else raw
    return framed([{"name": "user_id", "shape": shape or [len(users)], "datatype": "BYTES",
                    "parameters": {"binary_data_size": len(raw) if size is None else size}}], raw)


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded"])
def test_json_infer_without_a_json_content_type(server, users, content_type):
    body = json.dumps({"inputs": [{"name": "user_id", "shape": [2], "datatype": "BYTES", "data": users}]}).encode()
    headers = {"Content-Type": content_type} if content_type else {}
    resp = requests.post(server["url"] + INFER, data=body, headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    assert {o["name"] for o in resp.json()["outputs"]} == set(OUTPUTS)


@pytest.mark.parametrize("content_type", [None, "application/octet-stream", "application/json"])
def test_binary_infer_whatever_the_content_type(server, users, content_type):
    body, length = binary_body(users)
    headers = {"Inference-Header-Content-Length": length, **({"Content-Type": content_type} if content_type else {})}
    resp = requests.post(server["url"] + INFER, data=body, headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["outputs"][0]["data"]) == 20


def malformed() -> list[tuple]:
    """(name, body, header value, text in the error): broken framings of the binary extension."""
    users = ["u0001", "u0002"]
    body, length = binary_body(users)
    return [
        ("not a number", body, "abc", "Inference-Header-Content-Length"),
        ("empty", body, "", "Inference-Header-Content-Length"),
        ("negative", body, "-5", "Inference-Header-Content-Length"),
        ("fractional", body, "12.5", "Inference-Header-Content-Length"),
        ("past the body", body, str(len(body) + 10), "Inference-Header-Content-Length"),
        ("cuts the JSON", body, str(int(length) - 3), "JSON"),
        ("not an object", b"[1, 2]", "6", "inputs"),
        ("input without a name", *framed([{"shape": [1], "datatype": "BYTES", "data": ["u"]}], b""), "name"),
        ("size past the body", *binary_body(users, size=len(strings(users)) + 9), "binary_data_size"),
        ("size not a number", *binary_body(users, size="x"), "binary_data_size"),
        ("negative size", *binary_body(users, size=-1), "binary_data_size"),
        ("body cut short", body[:-3], length, "binary_data_size"),
        ("string overruns", *binary_body(users, raw=(100).to_bytes(4, "little") + b"u0001", shape=[1]), "user_id"),
        ("too few strings", *binary_body(users, shape=[3]), "user_id"),
        ("INT32 bytes for 2 of 3", *framed([{"name": "user_id", "shape": [1], "datatype": "BYTES", "data": ["u"]},
                                      {"name": "k", "shape": [3], "datatype": "INT32",
                                       "parameters": {"binary_data_size": 8}}], bytes(8)), "k"),
    ]


@pytest.mark.parametrize("name, body, value, text", malformed(), ids=[case[0] for case in malformed()])
def test_malformed_binary_extension_is_a_400(server, name, body, value, text):
    resp = requests.post(server["url"] + INFER, data=body, headers={"Inference-Header-Content-Length": value},
                         timeout=30)
    assert resp.status_code == 400, (name, resp.text)
    assert text in resp.json()["error"], (name, resp.text)
    assert server["proc"].poll() is None


def test_binary_bodies_stay_under_the_body_limit(server):
    """The framing check reads a binary body whole: it does so inside the 413 limit."""
    body, length = binary_body(["u" * 1000] * 2000)
    resp = requests.post(server["url"] + INFER, data=body, headers={"Inference-Header-Content-Length": length},
                         timeout=30)
    assert resp.status_code == 413 and "over" in resp.json()["error"]
