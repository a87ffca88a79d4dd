"""On-disk format of a world: users, items and events as parquet, plus optional truth."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

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
    directory.mkdir(parents=True, exist_ok=True)
    world.users.to_parquet(directory / "users.parquet", index=False)
    world.items.to_parquet(directory / "items.parquet", index=False)
    world.events.to_parquet(directory / "events.parquet", index=False)
    if world.truth is not None:
        world.truth.save(directory / "truth.npz")
    (directory / "meta.json").write_text(json.dumps(world.meta, indent=2, default=str))
    return directory


def load_world(directory: Path, validate: bool = True) -> World:
    """Read a world; with `validate` every table is checked against its schema."""
    if not (directory / "events.parquet").exists():
        raise FileNotFoundError(f"no world at {directory} (run `hyperrec data generate` first)")
    users = pd.read_parquet(directory / "users.parquet")
    items = pd.read_parquet(directory / "items.parquet")
    events = pd.read_parquet(directory / "events.parquet")
    meta_path = directory / "meta.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if validate:
        users = validate_frame(users, User, "users")
        items = validate_frame(items, Item, "items")
        known = EventTypes.of_world(meta).known  # the canonical types and the world's own
        events = validate_frame(events, Event, "events", {"event_type": known})
    truth_path = directory / "truth.npz"
    truth = Truth.load(truth_path) if truth_path.exists() else None
    return World(users, items, events, truth, meta)
