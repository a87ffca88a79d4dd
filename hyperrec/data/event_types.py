"""Event types and their weights: which interactions count as positive, and how strongly.

The five canonical types keep their meaning everywhere (a view is an impression, a click
has dwell, a purchase feeds the bought-items filter, a rating is positive from a threshold).
A workspace may declare types of its own (`favourite`, `share`) with a weight, and may
re-weight the canonical ones (a purchase worth two clicks). A type with weight > 0 counts
as positive: in the training set (each user-item pair weighted by its strongest event), in
the recent engaged items the stream keeps, and so in the feedback stages that read them.
Weight 0 keeps a type on record without making it a positive.

The declaration travels with the data: `hyperrec data import` writes it into the world's
meta.json, and training and the feature views read it from the world they are given. The
roles that take events (the server's ingestion, the stream processor, the Kafka consumers,
the offline sink) read it once, at start, with `hyperrec.data.world_db.role_event_types`:
- on a cluster (a database_url with a world published there, `hyperrec data publish`): from
  the published world's meta (table world.meta), so no pod needs a file of its own; restart
  the roles after publishing a world with new event types;
- embedded (no database_url, or no world published in it): from the workspace's copy,
  HOME/event_types.json, which `features build` writes from the world.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from hyperrec.data.schemas import EVENT_TYPES

CANONICAL_WEIGHTS: dict[str, float] = {"view": 0.0, "click": 1.0, "add_to_cart": 1.0, "purchase": 1.0,
                                       "rating": 1.0}
TYPE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
FILE_NAME = "event_types.json"


@dataclass(frozen=True)
class EventTypes:
    """Every known type and its weight; `declared` is what differs from the canonical set."""

    declared: Mapping[str, float] = field(default_factory=dict)

    def __post_init__(self):
        for name, weight in self.declared.items():
            if not TYPE_NAME.match(name):
                raise ValueError(f"event type {name!r}: use lowercase letters, digits and _ (at most 32)")
            if not 0 <= float(weight) <= 100:
                raise ValueError(f"event type {name!r}: weight {weight} is not within [0, 100]")
        if self.declared.get("view", 0.0) != 0.0:
            raise ValueError("view is an impression: its weight stays 0")

    @property
    def weights(self) -> dict[str, float]:
        return {**CANONICAL_WEIGHTS, **{k: float(v) for k, v in self.declared.items()}}

    @property
    def known(self) -> tuple[str, ...]:
        return (*EVENT_TYPES, *sorted(set(self.declared) - set(EVENT_TYPES)))

    @property
    def custom(self) -> tuple[str, ...]:
        return tuple(t for t in self.known if t not in EVENT_TYPES)

    @property
    def positive(self) -> tuple[str, ...]:
        """Types that count as positive by their kind alone (ratings count from a threshold)."""
        return tuple(t for t, w in self.weights.items() if w > 0 and t != "rating")

    @property
    def engaged(self) -> tuple[str, ...]:
        """What the stream keeps as a user's recent engaged items."""
        return (*self.positive, *(("rating",) if self.weights["rating"] > 0 else ()))

    def to_json(self) -> dict[str, float]:
        return dict(sorted(self.declared.items()))

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> EventTypes:
        """The declaration at `path`; the canonical set when there is none."""
        return cls(json.loads(path.read_text())) if path.exists() else cls()

    @classmethod
    def for_workspace(cls, home: Path) -> EventTypes:
        return cls.load(Path(home) / FILE_NAME)

    @classmethod
    def of_world(cls, meta: dict) -> EventTypes:
        return cls(meta.get("event_types") or {})


CANONICAL = EventTypes()
