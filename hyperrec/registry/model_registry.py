"""MLflow: log a training run, register the model, move aliases, load the champion.

The registered artifact is an MLflow pyfunc wrapping the exported two-tower folder, so any
MLflow tool can load it, and the model server loads it through the same API. It carries its
own code, pinned requirements, signature and input example (hyperrec.registry.pyfunc), and
the name of the Feast FeatureService it reads (tag FEATURE_SERVICE_TAG).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import mlflow
from mlflow import MlflowClient

from hyperrec.config import Settings
from hyperrec.online.hotswap import Target
from hyperrec.registry import pyfunc
from hyperrec.registry.pyfunc import RetrievalPyfunc  # noqa: F401  (versions logged before pyfunc.py import it here)
from hyperrec.training.feature_service import FEATURE_SERVICE_TAG, feature_service_name

CHAMPION = "champion"
CHALLENGER = "challenger"  # a version on trial: served to a share of users until the A/B test decides
HISTORY_TAG = "champion_history"
LOAD_ERROR_TAG = "hyperrec.load_error"  # on a model version: why it failed to load or its checks
EXPERIMENT = "hyperrec-training"
log = logging.getLogger(__name__)


class RefusedVersion(ValueError):
    """A version `champion` must not point at; the message names it and says why."""


def tracking_server(settings: Settings) -> bool:
    """Whether the tracking URI is an MLflow server (http/https), which owns where artifacts
    go (`--serve-artifacts`: clients upload and download through it), rather than a database
    this process opens itself, whose artifacts go under HYPERREC_HOME."""
    return settings.tracking_uri.split(":", 1)[0].lower() in ("http", "https")


def configure(settings: Settings) -> MlflowClient:
    """Point MLflow at the settings' tracking URI and the experiment, creating it if absent:
    its artifact location under HYPERREC_HOME for an embedded store, the server's own
    (`mlflow-artifacts:/...`) for a tracking server."""
    location = None if tracking_server(settings) else (settings.mlflow_dir / "artifacts").as_uri()
    if location is not None:
        settings.mlflow_dir.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.tracking_uri)
    if mlflow.get_experiment_by_name(EXPERIMENT) is None:
        try:
            mlflow.create_experiment(EXPERIMENT, artifact_location=location)
        except mlflow.exceptions.MlflowException:
            if mlflow.get_experiment_by_name(EXPERIMENT) is None:  # not a concurrent create: a real error
                raise
    mlflow.set_experiment(EXPERIMENT)
    return MlflowClient()


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def fingerprint(paths: list[Path]) -> str:
    """sha256 over the files' bytes: which exact data a model was trained on."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


@contextmanager
def training_run(settings: Settings) -> Iterator[tuple[str, Callable[[dict[str, float], int], None]]]:
    """An MLflow run for a training step, open while it trains: yields (run id, log), where
    `log(metrics, step)` logs at once (e.g. fit_retrieval's `epoch_metrics`, step = epoch, read
    back with MlflowClient().get_metric_history). Give the run id to `register_model`, and the
    version's run holds the per-epoch curves next to its evaluation."""
    configure(settings)
    with mlflow.start_run(run_name="train-two-stage") as run:
        yield run.info.run_id, metrics_logger(settings, run.info.run_id)


def metrics_logger(settings: Settings, run_id: str) -> Callable[[dict[str, float], int], None]:
    """`log(metrics, step)` into run `run_id` at once, also after the run ended: the ranker's
    step logs its epochs into the run `training_run` opened for the towers."""
    client = configure(settings)

    def log_metrics(metrics: dict[str, float], step: int) -> None:
        stamp = int(datetime.now(UTC).timestamp() * 1000)
        client.log_batch(run_id, metrics=[mlflow.entities.Metric(k, float(v), stamp, step)
                                          for k, v in metrics.items()], synchronous=True)
    return log_metrics


def register_model(settings: Settings, model_dir: Path, params: dict, metrics: dict, gate: dict,
                   artifacts: dict[str, str] | None = None, tags: dict | None = None,
                   run_id: str | None = None) -> int:
    """Log one MLflow run (params, metrics, the gate's decision, text artifacts, git commit)
    and register the model as a new version, tagged with its Feast feature service. `run_id`:
    the training's run (`training_run`, which logged the per-epoch metrics) to log into
    instead of a new one. A blessed version becomes `champion` (the
    previous one is remembered for rollback, and with the gate's `holdback` it becomes
    `challenger`: the online trial of the new against the old); one the gate sends to an
    online trial becomes `challenger`; a rejected one is registered with the reasons and no
    alias moves."""
    client = configure(settings)
    blessed = bool(gate["blessed"])
    outcome = "blessed" if blessed else ("canary" if gate.get("canary") else "rejected")
    service = feature_service_name(settings.model_name)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else "train-two-stage") as run:
        mlflow.log_params(params)
        mlflow.log_metrics(metrics)
        mlflow.set_tags({"git_commit": _git_commit(), "gate": outcome, FEATURE_SERVICE_TAG: service, **(tags or {})})
        info = pyfunc.log_model(model_dir, settings.model_name)
        mlflow.log_text(json.dumps(metrics, indent=2), "evaluation.json")
        mlflow.log_text(json.dumps(gate, indent=2), "gate.json")
        for name, text in (artifacts or {}).items():
            mlflow.log_text(text, name)
    version = str(info.registered_model_version)
    client.set_model_version_tag(settings.model_name, version, "run_id", run.info.run_id)
    client.set_model_version_tag(settings.model_name, version, "gate", outcome)
    client.set_model_version_tag(settings.model_name, version, FEATURE_SERVICE_TAG, service)
    if blessed:
        replaced = champion_version(settings)
        move_alias(settings, int(version), "passed the model gate")
        if gate.get("holdback") and replaced is not None and replaced != int(version):
            start_challenger(settings, replaced, f"holdback: replaced by v{version}, which passed the model gate "
                                                 "offline; the online trial measures the new against the old and "
                                                 "promoting the old is the rollback")
    else:
        client.set_model_version_tag(settings.model_name, version, "rejected_because", "; ".join(gate["reasons"]))
        if gate.get("canary"):
            start_challenger(settings, int(version), "offline: " + "; ".join(gate["reasons"]))
    return int(version)


def alias_version(settings: Settings, alias: str) -> int | None:
    client = configure(settings)
    try:
        return int(client.get_model_version_by_alias(settings.model_name, alias).version)
    except mlflow.exceptions.MlflowException:
        return None


def champion_version(settings: Settings) -> int | None:
    return alias_version(settings, CHAMPION)


def challenger_version(settings: Settings) -> int | None:
    return alias_version(settings, CHALLENGER)


def start_challenger(settings: Settings, version: int, reason: str) -> None:
    """Put `version` on trial: servers give it to their canary share of users (a newer
    challenger replaces an older one, which is recorded as retired)."""
    client = configure(settings)
    previous = challenger_version(settings)
    if previous is not None and previous != version:
        end_challenger(settings, "retired", f"replaced by v{version}")
    client.set_registered_model_alias(settings.model_name, CHALLENGER, str(version))
    tag_version(settings, version, {"canary_started_at": datetime.now(UTC).isoformat(timespec="seconds"),
                                    "canary_reason": reason})


def end_challenger(settings: Settings, outcome: str, reason: str) -> int | None:
    """End the trial: "promoted" moves `champion` to the challenger, "retired" drops it.
    Either way the challenger alias goes and the outcome is tagged on the version."""
    if outcome not in ("promoted", "retired"):
        raise ValueError(f"outcome must be 'promoted' or 'retired', got {outcome!r}")
    version = challenger_version(settings)
    if version is None:
        return None
    if outcome == "promoted":
        move_alias(settings, version, f"won its online trial: {reason}")
    configure(settings).delete_registered_model_alias(settings.model_name, CHALLENGER)
    tag_version(settings, version, {"canary_outcome": outcome, "canary_outcome_reason": reason,
                                    "canary_ended_at": datetime.now(UTC).isoformat(timespec="seconds")})
    return version


def alias_target(settings: Settings, alias: str) -> Target | None:
    """The alias's version and its erasure redaction count (tag REDACTIONS_TAG), from the
    one registry call that finds the version: a server reloads a version redacted since."""
    from hyperrec.privacy.models import REDACTIONS_TAG

    client = configure(settings)
    try:
        found = client.get_model_version_by_alias(settings.model_name, alias)
    except mlflow.exceptions.MlflowException:
        return None
    return Target(int(found.version), int(found.tags.get(REDACTIONS_TAG, 0)))


def redactions(settings: Settings, version: int) -> int:
    """How many erasures redacted the version in place (its REDACTIONS_TAG): a download made
    before the last one still holds the erased user."""
    from hyperrec.privacy.models import REDACTIONS_TAG

    tags = configure(settings).get_model_version(settings.model_name, str(version)).tags
    return int(tags.get(REDACTIONS_TAG, 0))


def alias_watcher(settings: Settings, alias: str = CHAMPION) -> Callable[[], Target | None]:
    """`alias_target` for a poller. Asking MLflow holds the GIL for ~18 ms (SQLAlchemy
    session, entity building), a stall every serving request in flight waits out. With a
    SQLite tracking store the answer can only change when the database files do (an alias
    moved, or a version tagged redacted), so their modification times are checked first
    (microseconds) and MLflow is asked only then. Other stores (an MLflow server) are asked
    every time: that wait is I/O, not the GIL."""
    if not settings.tracking_uri.startswith("sqlite:///"):
        return lambda: alias_target(settings, alias)
    db = Path(settings.tracking_uri.removeprefix("sqlite:///"))
    files = [db, db.with_name(db.name + "-wal")]
    last: dict = {"stamp": None, "target": None}

    def current() -> Target | None:
        stamp = tuple((f.stat().st_mtime_ns, f.stat().st_size) if f.exists() else None for f in files)
        if stamp != last["stamp"]:
            last["target"] = alias_target(settings, alias)
            last["stamp"] = stamp
        return last["target"]
    return current


def _history(client: MlflowClient, settings: Settings) -> list[dict]:
    try:
        tags = client.get_registered_model(settings.model_name).tags
    except mlflow.exceptions.MlflowException:
        return []
    return json.loads(tags.get(HISTORY_TAG, "[]"))


def move_alias(settings: Settings, version: int, reason: str) -> dict:
    """Point `champion` at `version` and append who/when/why to the model's alias history
    (a registered-model tag: the record promote and rollback read). A version known not to
    load (LOAD_ERROR_TAG) is refused with RefusedVersion."""
    client = configure(settings)
    found = client.get_model_version(settings.model_name, str(version))  # raises for an unknown version
    if LOAD_ERROR_TAG in found.tags:
        raise RefusedVersion(f"v{version} failed to load: {found.tags[LOAD_ERROR_TAG]}")
    entry = {"version": version, "previous": champion_version(settings), "reason": reason,
             "at": datetime.now(UTC).isoformat(timespec="seconds")}
    client.set_registered_model_alias(settings.model_name, CHAMPION, str(version))
    history = _history(client, settings) + [entry]
    client.set_registered_model_tag(settings.model_name, HISTORY_TAG, json.dumps(history[-50:]))
    return entry


def rollback(settings: Settings, reason: str, load_check: bool = True) -> dict:
    """Move `champion` back to the version it pointed at before the latest move, unless that
    version is known not to load or, with `load_check`, fails `check_version` now."""
    client = configure(settings)
    history = _history(client, settings)
    current = champion_version(settings)
    previous = next((h["previous"] for h in reversed(history) if h["version"] == current and h["previous"]), None)
    if previous is None:
        raise ValueError(f"no earlier champion to roll back to (current: {current})")
    return promote(settings, previous, f"rollback: {reason}", load_check)


def promote(settings: Settings, version: int, reason: str, load_check: bool = True) -> dict:
    """`move_alias`, after making sure `version` can serve: refused (RefusedVersion) when it
    is known not to load or, with `load_check`, fails `check_version` now."""
    if (why := load_error(settings, version)) is not None:
        raise RefusedVersion(f"v{version} failed to load: {why}")
    if load_check:
        check_version(settings, version)
    return move_alias(settings, version, reason)


def check_version(settings: Settings, version: int) -> None:
    """Load `version` from its registered files and run the check the model server runs
    before serving a version (hyperrec.online.sanity). A failure is recorded on the version
    (LOAD_ERROR_TAG) and raised as RefusedVersion; a failed download raises as it is (it
    says nothing about the version)."""
    from hyperrec.online.sanity import check_model_dir

    configure(settings)
    with tempfile.TemporaryDirectory(prefix=f"hyperrec-v{version}-") as folder:
        model_dir = model_version_dir(settings, version, Path(folder))
        try:
            check_model_dir(model_dir, version)
        except Exception as exc:  # noqa: BLE001 (whatever stops it loading is the reason to refuse it)
            reason = f"{type(exc).__name__}: {exc}"
            record_load_error(settings, version, reason)
            raise RefusedVersion(f"v{version} failed to load: {reason}") from exc


def load_error(settings: Settings, version: int) -> str | None:
    """Why `version` failed to load where it was last tried (a server or `check_version`), or None."""
    return configure(settings).get_model_version(settings.model_name, str(version)).tags.get(LOAD_ERROR_TAG)


def record_load_error(settings: Settings, version: int, reason: str) -> None:
    """Tag `version` with why it failed to load, for rollback and promote to refuse it.
    Never raises: a registry that cannot be written must not stop the caller (a server
    that keeps serving its old version)."""
    try:
        tag_version(settings, version, {LOAD_ERROR_TAG: reason[:1000]})
    except Exception as exc:  # noqa: BLE001
        log.warning("could not record on version %s that it failed to load (%s): %s", version, reason, exc)


def alias_history(settings: Settings) -> list[dict]:
    return _history(configure(settings), settings)


def champion_artifact(settings: Settings, name: str) -> str | None:
    """A text artifact (e.g. data_profile.json) of the champion's training run, or None."""
    version = champion_version(settings)
    if version is None:
        return None
    run_id = configure(settings).get_model_version(settings.model_name, str(version)).tags.get("run_id")
    try:
        return mlflow.artifacts.load_text(f"runs:/{run_id}/{name}")
    except (mlflow.exceptions.MlflowException, OSError):
        return None


def champion_model_dir(settings: Settings) -> Path | None:
    """Local folder of the champion's exported model (downloaded by MLflow), or None."""
    version = champion_version(settings)
    return None if version is None else model_version_dir(settings, version)


def model_version_dir(settings: Settings, version: int, dst: Path | None = None, patience_s: float = 600.0,
                      wait_s: float = 1.0) -> Path:
    """Download one registered version's files (into `dst`, default a temporary folder) and
    return its exported model folder. Files only: loading the pyfunc would build the whole
    TF model just to find its folder.

    An erasure rewrites a version's files in place, file by file (hyperrec.privacy.models), so
    a download is taken only outside one: never while the version is tagged REDACTING_TAG,
    and fetched again when the tag or the redaction count differs after the download from
    before it (the files may mix two redactions). Raises TimeoutError after `patience_s` of
    redactions (a tag a crashed erasure left: run the erasure again)."""
    client = configure(settings)
    deadline, mixed = time.monotonic() + patience_s, None  # mixed: where a download a redaction overlapped is
    while True:
        before = _redaction_state(client, settings, version)
        if before[0] is None:
            if mixed is not None:  # no file of the mixed download stays
                shutil.rmtree(mixed, ignore_errors=True)
                if dst is not None:
                    dst.mkdir(parents=True, exist_ok=True)
            local = Path(mlflow.artifacts.download_artifacts(f"models:/{settings.model_name}/{version}",
                                                             dst_path=str(dst) if dst else None))
            if _redaction_state(client, settings, version) == before:
                flavor = mlflow.models.Model.load(local / "MLmodel").flavors["python_function"]
                return local / flavor["artifacts"]["model_dir"]["path"]
            log.info("v%s was redacted during its download: fetching it again", version)
            mixed = local
        if time.monotonic() > deadline:
            raise TimeoutError(f"v{version} is being redacted by an erasure since {before[0]} ({patience_s:g} s): "
                               "if none is running, one stopped half way; run `hyperrec privacy erase` again")
        time.sleep(wait_s)


def _redaction_state(client: MlflowClient, settings: Settings, version: int) -> tuple[str | None, str]:
    """(when the erasure now rewriting the version started, or None; its redaction count)."""
    from hyperrec.privacy.models import REDACTING_TAG, REDACTIONS_TAG

    tags = client.get_model_version(settings.model_name, str(version)).tags
    return tags.get(REDACTING_TAG), tags.get(REDACTIONS_TAG, "0")


def load_champion(settings: Settings, alias: str = CHAMPION):
    """(Recommender, version) for the model version the alias points at."""
    client = configure(settings)
    version = client.get_model_version_by_alias(settings.model_name, alias)
    model = mlflow.pyfunc.load_model(f"models:/{settings.model_name}@{alias}")
    return model.unwrap_python_model().recommender, int(version.version)


def tag_version(settings: Settings, version: int, tags: dict) -> None:
    """Set tags on one registered model version (e.g. the deploy step's outcome)."""
    client = configure(settings)
    for key, value in tags.items():
        client.set_model_version_tag(settings.model_name, str(version), key, str(value))
