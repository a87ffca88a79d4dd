"""On-disk format of a world: users, items and events as parquet, plus optional truth."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from hyperrec.data.event_types import EventTypes
from hyperrec.data.schemas import Event, Item, User, validate_frame
from hyperrec.data.truth import Truth


@dataclass
class World:
    users: pd.DataFrame
    items: pd.DataFrame
    events: pd.DataFrame
    truth: Truth | None = None  # only synthetic worlds know the tastes behind the events
    meta: dict = field(default_factory=dict)


def save_world(world: World, directory: Path) -> Path:
    return save_tables(directory, world.users, world.items, world.events, world.meta, world.truth)


def save_tables(directory: Path, users: pd.DataFrame, items: pd.DataFrame, events: pd.DataFrame | pa.Table,
                meta: dict, truth: Truth | None = None) -> Path:
    """Write a world's files; `events` may be an Arrow table (the importer keeps them so)."""
    directory.mkdir(parents=True, exist_ok=True)
    users.to_parquet(directory / "users.parquet", index=False)
    items.to_parquet(directory / "items.parquet", index=False)
    if isinstance(events, pa.Table):
        pq.write_table(events, directory / "events.parquet")
    else:
        events.to_parquet(directory / "events.parquet", index=False)
    if truth is not None:
        truth.save(directory / "truth.npz")
    (directory / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    return directory


def read_meta(directory: Path) -> dict:
    """A world's meta.json (its source, its own event types); {} when it has none."""
    path = directory / "meta.json"
    return json.loads(path.read_text()) if path.exists() else {}


def load_world(directory: Path, validate: bool = True) -> World:
    """Read a world; with `validate` every table is checked against its schema."""
    if not (directory / "events.parquet").exists():
        raise FileNotFoundError(f"no world at {directory} (run `hyperrec data generate` first)")
    users = pd.read_parquet(directory / "users.parquet")
    items = pd.read_parquet(directory / "items.parquet")
    events = pd.read_parquet(directory / "events.parquet")
    meta = read_meta(directory)
    if validate:
        users = validate_frame(users, User, "users")
        items = validate_frame(items, Item, "items")
        known = EventTypes.of_world(meta).known  # the canonical types and the world's own
        events = validate_frame(events, Event, "events", {"event_type": known})
    truth_path = directory / "truth.npz"
    truth = Truth.load(truth_path) if truth_path.exists() else None
    return World(users, items, events, truth, meta)
