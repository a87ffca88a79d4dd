"""The cluster's retrain submitter (hyperrec.training.retrain.KfpRetrain) through the real kfp.Client
against a stand-in for the Kubeflow Pipelines v2beta1 REST API.

No KFP API server can run here (it needs Kubernetes, Argo and MySQL), so the server side is
a recorder that answers like the API; everything on our side is real: the pipeline is
compiled from this code, kfp.Client builds the requests. What is checked is the contract:
the experiment, the run with the compiled spec and our parameters, and the run state the
trigger's in-flight safeguard reads."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from hyperrec.training.retrain import KfpRetrain


class KfpApi(BaseHTTPRequestHandler):
    requests: list = []
    state = "RUNNING"

    def _answer(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.requests.append(("GET", self.path, None))
        if self.path.startswith("/apis/v2beta1/runs/"):
            self._answer({"run_id": self.path.rsplit("/", 1)[1], "state": type(self).state})
        else:
            self._answer({})  # healthz; no experiment of that name yet

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["content-length"])) or b"{}")
        self.requests.append(("POST", self.path, body))
        if self.path == "/apis/v2beta1/experiments":
            self._answer({"experiment_id": "exp-1", "display_name": body["display_name"]})
        else:
            self._answer({"run_id": "run-1", "display_name": body.get("display_name"), "state": "PENDING"})

    def log_message(self, *_):
        pass


@pytest.fixture
def kfp_api():
    KfpApi.requests, KfpApi.state = [], "RUNNING"
    server = HTTPServer(("127.0.0.1", 0), KfpApi)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()


def test_a_firing_submits_the_compiled_pipeline_and_the_trigger_can_follow_the_run(kfp_api):
    submitter = KfpRetrain(kfp_api, None, home="/var/lib/hyperrec", world_dir="/var/lib/hyperrec/data/world")
    run_id = submitter.submit({"reasons": ["outcome:ctr"]})
    assert run_id == "run-1"
    posts = {path: body for method, path, body in KfpApi.requests if method == "POST"}
    assert posts["/apis/v2beta1/experiments"] == {"display_name": "hyperrec"}
    run = posts["/apis/v2beta1/runs"]
    assert run["experiment_id"] == "exp-1" and run["display_name"].startswith("hyperrec-training-")
    spec = run["pipeline_spec"]["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == "hyperrec-training"
    steps = {"validate-data", "train-retrieval", "train-ranking", "gate-model", "register-model", "deploy"}
    assert {f"comp-{s}" for s in steps} <= set(spec["components"])
    parameters = run["runtime_config"]["parameters"]
    assert parameters.pop("run_tag")  # each run its own tag for MLflow
    assert parameters.pop("merge_logged_events") is True  # learns from the events logged since the world
    assert parameters == {"home": "/var/lib/hyperrec", "world_dir": "/var/lib/hyperrec/data/world"}
    assert submitter.is_running(run_id)  # the in-flight safeguard holds while KFP says RUNNING
    KfpApi.state = "SUCCEEDED"
    assert not submitter.is_running(run_id)
    assert ("GET", "/apis/v2beta1/runs/run-1", None) in KfpApi.requests
