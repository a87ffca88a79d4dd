"""Retraining runs the monitor starts, and how it learns that they ended.

- Embedded (`LocalRetrain`): a detached `hyperrec retrain` process. It snapshots the world
  plus every event the platform has logged since (`snapshot_world`), rewrites the feature
  store's offline tables from that snapshot (the online store is the stream processor's)
  and runs the training pipeline through kfp.local; its status
  file says when it ended. The model gate decides what reaches `@champion`, so a retrain
  on bad data deploys nothing and cannot loop.
- Cluster (`KfpRetrain`): the compiled pipeline submitted to the KFP API; the run's state
  says when it ended.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd

from hyperrec.config import Settings

STATUS_DONE = ("succeeded", "failed")


def snapshot_world(settings: Settings, out: Path, world_dir: Path | str | None = None,
                   merge_logged: bool = True) -> Path:
    """The world's tables, erased users left out, with the logged events appended
    (deduplicated on event_id, erased users' events already gone from the log): the event
    log's (SQLite) and the offline sink's (Kafka events in parquet, or with a database_url in
    PostgreSQL: hyperrec.data.offline_sink read_sunk_events). The data a retrain learns from. The
    logged events keep their request_id: it tells a view of a served list from a view of an
    item the user found alone (hyperrec.features.windows.listed). `world_dir`: a folder or
    the database's world (hyperrec.data.world_db); `merge_logged=False`: the world alone."""
    from hyperrec.data.eventlog import EventLog
    from hyperrec.data.offline_sink import read_sunk_events
    from hyperrec.data.world import World, save_world
    from hyperrec.data.world_db import read_world
    from hyperrec.privacy import world_without_erased

    source = world_dir or settings.data_dir / "world"  # a folder, or the database's world (db:world)
    world = world_without_erased(read_world(settings, source, validate=False), settings)
    logged = EventLog(settings.event_log).read(0, limit=2**62)[1] if merge_logged else pd.DataFrame()
    sunk = read_sunk_events(settings) if merge_logged else pd.DataFrame()
    if not sunk.empty:
        logged = sunk if logged.empty else pd.concat([logged, sunk], ignore_index=True)
    events = world.events
    if not logged.empty:
        logged = logged[[c for c in dict.fromkeys([*events.columns, "request_id"]) if c in logged.columns]]
        logged = logged.dropna(axis=1, how="all")  # all-empty optional fields (the concat leaves them empty)
        events = pd.concat([events, logged], ignore_index=True).drop_duplicates("event_id", keep="first")
        events = events.sort_values("ts", kind="stable").reset_index(drop=True)
    meta = {**world.meta, "snapshot_of": str(source), "logged_events": len(logged)}
    saved = save_world(World(world.users, world.items, events, None, meta), out)
    prune_snapshots(out.parent, keep=SNAPSHOTS_KEPT)
    return saved


SNAPSHOTS_KEPT = 3  # runs learn from one at a time (one in flight); the last few stay to look into


def prune_snapshots(folder: Path, keep: int) -> list[Path]:
    """Delete all but the `keep` newest snapshots in `folder` (each a full copy of the world
    and its logged events: left alone they pile up, one per run). Returns what went."""
    import shutil

    snapshots = sorted((p for p in folder.iterdir() if (p / "events.parquet").exists()),
                       key=lambda p: (p / "events.parquet").stat().st_mtime)
    gone = snapshots[:-keep] if keep > 0 else snapshots
    for path in gone:
        shutil.rmtree(path, ignore_errors=True)
    return gone


def run(settings: Settings, run_id: str, epochs: int = 6, console=None) -> dict:
    """The body of `hyperrec retrain`: snapshot -> features -> pipeline; writes its status."""
    from rich.console import Console

    from hyperrec.steps import feature_step
    from pipelines.run import run_local

    console = console or Console()
    status = _status_path(settings, run_id)
    _write(status, {"run_id": run_id, "state": "running", "pid": os.getpid(), "started": time.time()})
    try:
        world = snapshot_world(settings, settings.snapshots_dir / run_id)
        feature_step(settings, world, console, online=False)
        result = run_local(settings, world, epochs=epochs)
        outcome = {"state": "succeeded", "version": result.version, "blessed": result.blessed,
                   "stopped_at_data_gate": result.stopped_at_data_gate, "deploy_status": result.deploy_status}
    except Exception as exc:
        outcome = {"state": "failed", "error": f"{type(exc).__name__}: {exc}"[:2000]}
        raise
    finally:
        _write(status, {"run_id": run_id, "pid": os.getpid(), "ended": time.time(), **outcome})
    return outcome


def _status_path(settings: Settings, run_id: str) -> Path:
    return settings.monitoring_dir / "runs" / f"{run_id}.json"


def _write(path: Path, record: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, default=str))
    tmp.replace(path)  # atomic: a reader sees the old or the new status, never half


def run_status(settings: Settings, run_id: str) -> dict | None:
    path = _status_path(settings, run_id)
    return json.loads(path.read_text()) if path.exists() else None


class LocalRetrain:
    """`submit` starts a detached `hyperrec retrain` (it outlives a one-shot monitor);
    `is_running` reads its status file, and a process that died without one counts as ended."""

    def __init__(self, settings: Settings, command: list[str] | None = None, epochs: int = 6):
        self.settings = settings
        self.command = command or [sys.executable, "-m", "hyperrec.cli", "retrain", "--epochs", str(epochs)]

    def submit(self, decision: dict) -> str:
        from hyperrec.config import export_env

        run_id = f"retrain-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"
        log = _status_path(self.settings, run_id).with_suffix(".log")
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen([*self.command, "--run-id", run_id, "--home", str(self.settings.home)],
                                    env=export_env(self.settings), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        _write(_status_path(self.settings, run_id), {"run_id": run_id, "state": "starting", "pid": proc.pid,
                                                     "reasons": decision.get("reasons", [])})
        return run_id

    def is_running(self, run_id: str) -> bool:
        status = run_status(self.settings, run_id)
        if status is None or status.get("state") in STATUS_DONE:
            return False
        return _alive(status.get("pid"))


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (our own exited child, not yet reaped) is not running
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


class KfpRetrain:
    """The cluster's submitter: one KFP run of the compiled pipeline per firing."""

    def __init__(self, host: str, package: Path | None, home: str, world_dir: str, namespace: str | None = None):
        """`package`: the compiled pipeline; None compiles this code's pipeline at submit time."""
        self.host, self.package, self.home, self.world_dir, self.namespace = host, package, home, world_dir, namespace

    def submit(self, decision: dict) -> str:
        import tempfile

        from pipelines.run import compile_pipeline, submit

        with tempfile.TemporaryDirectory() as tmp:
            package = self.package or compile_pipeline(Path(tmp) / "hyperrec-training.yaml")
            return submit(self.host, package, self.home, self.world_dir, namespace=self.namespace)["run_id"]

    def is_running(self, run_id: str) -> bool:
        import kfp

        state = kfp.Client(host=self.host, namespace=self.namespace).get_run(run_id).state
        return state in ("PENDING", "RUNNING", "PAUSED", "CANCELING")
