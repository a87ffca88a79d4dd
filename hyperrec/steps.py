"""The platform's setup steps with progress shown: shared by the CLI verbs and the demo."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from hyperrec.config import Settings, export_env
from hyperrec.data.event_types import FILE_NAME as EVENT_TYPES_FILE
from hyperrec.data.event_types import EventTypes
from hyperrec.data.generate import WorldConfig, generate_world
from hyperrec.data.world import World, save_world

TRAINING_TASKS = ["validate-data", "build-training-set", "train-retrieval", "train-ranking", "build-index",
                  "evaluate-model", "gate-model", "register-model", "deploy"]


def _progress(console: Console) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), console=console)


def generate_step(settings: Settings, out: Path, console: Console, **sizes) -> World:
    cfg = WorldConfig(**sizes)
    with _progress(console) as bar:
        task = bar.add_task("generate world (impressions)", total=None)
        world = generate_world(cfg, progress=lambda done, total: bar.update(task, completed=done, total=total))
    world = pseudonymized(settings, world)
    save_world(world, out)
    return world


def pseudonymized(settings: Settings, world: World) -> World:
    """The CRM's PII (email, name, phone) as keyed tokens before anything is stored: raw
    PII never reaches the data folder, features, logs or models."""
    from hyperrec.privacy import Pseudonymizer, scrub_user_frame

    return dataclasses.replace(world, users=scrub_user_frame(world.users, Pseudonymizer.for_workspace(settings)))


def feature_step(settings: Settings, world_dir: Path | str, console: Console, online: bool = True) -> dict[str, int]:
    """Offline tables -> `feast apply` -> backfill the online store over the whole history.

    Always a backfill: the offline tables were just rewritten, so "since the last
    materialization" would miss every older row of the new history. Appended data is
    loaded with `hyperrec features materialize` (materialize-incremental).
    `online=False` (a retrain): the offline tables and the registry only. Training reads
    the offline store; the online store is the stream processor's to keep current (a
    backfill from a snapshot writes no newer value than it already holds)."""
    from hyperrec.data.world_db import read_world
    from hyperrec.features.store import apply_repo, materialize, write_offline_tables
    from hyperrec.privacy import world_without_erased

    world = world_without_erased(read_world(settings, world_dir), settings)  # a world from before an erasure
    # the world's event types become the workspace's: ingestion, the stream and training read them
    EventTypes.of_world(world.meta).save(settings.home / EVENT_TYPES_FILE)
    with console.status("feast: writing offline tables"):
        counts = write_offline_tables(world, settings)
    with console.status("feast apply"):
        apply_repo(settings)
    end = pd.Timestamp(world.events["ts"].max()).to_pydatetime()
    start = pd.Timestamp(min(world.users["signup_ts"].min(), world.items["created_ts"].min())).to_pydatetime()
    if online:
        with console.status(f"feast materialize -> {settings.online_store} online store"):
            materialize(settings, start, end)
    console.print("feast: " + ", ".join(f"{k} {v:,} rows" for k, v in counts.items()))
    record_consents(settings, world.users)
    return counts


def record_consents(settings: Settings, users: pd.DataFrame) -> int:
    """The CRM's per-purpose consent, into the ledger serving and training consult."""
    from hyperrec.privacy import ConsentLedger

    ledger = ConsentLedger.open(settings)
    try:
        return ledger.record_profiles(users, source="crm")
    finally:
        ledger.close()


def training_step(settings: Settings, world_dir: Path, console: Console, epochs: int) -> tuple[int, bool]:
    """Run the kfp.local pipeline in a child process, its log to a file, progress per task.
    Returns (registered version, blessed)."""
    log_path = settings.home / "logs" / f"pipeline-{time.strftime('%Y%m%d-%H%M%S')}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    cmd = [str(Path(sys.executable).with_name("hyperrec")), "pipeline", "run", "--home", str(settings.home),
           "--world", str(world_dir), "--epochs", str(epochs)]
    finished = re.compile(r"Task .*?'([a-z-]+)'.*? finished with status .*?(SUCCESS|FAILURE)")
    with open(log_path, "w") as log, _progress(console) as bar:
        proc = subprocess.Popen(cmd, env=export_env(settings), stdout=log, stderr=subprocess.STDOUT)
        task = bar.add_task(f"kfp.local pipeline: {TRAINING_TASKS[0]}", total=len(TRAINING_TASKS))
        while proc.poll() is None:
            time.sleep(0.5)
            done = [m.group(1) for m in finished.finditer(log_path.read_text(errors="replace"))]
            remaining = [t for t in TRAINING_TASKS if t not in done]
            label = remaining[0] if remaining else "done"
            bar.update(task, completed=len(TRAINING_TASKS) - len(remaining),
                       description=f"kfp.local pipeline: {label}")
    if proc.returncode != 0:
        raise RuntimeError(f"training pipeline failed or stopped at the data gate (exit {proc.returncode}); "
                           f"log: {log_path}")
    version, verdict = re.findall(r"registered version (\d+) \((\w+)", log_path.read_text())[-1]
    return int(version), verdict == "blessed"
