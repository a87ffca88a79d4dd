"""The data gate: checks a world (events, users, items) before anything trains on it.

Each check has a value, a threshold and a verdict; the report renders as Markdown for the
KFP UI and as a dict for MLflow. The profile it computes (row counts, categories) is
stored with the registered model, so the next run compares itself with the data the
current champion was trained on.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from hyperrec.data.event_types import CANONICAL, EventTypes
from hyperrec.data.schemas import Event, Item, User, check_frame
from hyperrec.data.world import read_meta


@dataclass(frozen=True)
class DataGateConfig:
    min_events: int = 1_000
    max_invalid_rate: float = 0.0  # rows failing the schema (types, ranges, required fields)
    max_missing_rate: float = 0.01  # per required column
    max_duplicate_rate: float = 0.01  # identical (user, item, type, ts) events
    max_orphan_rate: float = 0.01  # events whose user or item is not in the tables
    min_row_ratio: float = 0.5  # events now / events in the champion's training data
    max_row_ratio: float = 10.0
    max_new_category_share: float = 0.2  # items in categories the champion's data never had


@dataclass
class Check:
    name: str
    passed: bool
    value: float
    threshold: str
    detail: str = ""


@dataclass
class DataReport:
    checks: list[Check]
    profile: dict
    created_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict:
        return {"passed": self.passed, "created_at": self.created_at, "profile": self.profile,
                "checks": [asdict(c) for c in self.checks]}

    def to_markdown(self) -> str:
        verdict = "PASSED" if self.passed else f"FAILED ({len(self.failures)} of {len(self.checks)} checks)"
        lines = [f"# Data gate: {verdict}", "",
                 f"{self.profile['events']:,} events, {self.profile['users']:,} users, "
                 f"{self.profile['items']:,} items; checked {self.created_at}", "",
                 "| check | result | value | threshold | detail |", "|---|---|---|---|---|"]
        for c in self.checks:
            lines.append(f"| {c.name} | {'pass' if c.passed else '**FAIL**'} | {c.value:.4g} | {c.threshold} | "
                         f"{c.detail} |")
        return "\n".join(lines) + "\n"


def profile(events: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame) -> dict:
    return {"events": len(events), "users": len(users), "items": len(items),
            "categories": sorted(items["category"].dropna().astype(str).unique().tolist())}


def _rate(n: int, total: int) -> float:
    return n / total if total else 0.0


def _schema_checks(name: str, frame: pd.DataFrame, model, cfg: DataGateConfig,
                   choices: dict[str, tuple] | None = None) -> list[Check]:
    _, errors = check_frame(frame, model, choices)
    bad_rows = {e.row for e in errors if e.row is not None}
    table_errors = [e for e in errors if e.row is None]
    rate = 1.0 if table_errors else _rate(len(bad_rows), len(frame))
    by_field: dict[str, tuple[int, str]] = {}
    for e in errors:
        count, message = by_field.get(e.field, (0, e.message))
        by_field[e.field] = (count + 1, message)
    sample = "; ".join(f"{f}: {n} rows ({m})" if n > 1 else f"{f}: {m}" for f, (n, m) in by_field.items())
    checks = [Check(f"{name}: schema", rate <= cfg.max_invalid_rate, rate, f"invalid rows <= {cfg.max_invalid_rate}",
                    sample)]
    required = [f for f, info in model.model_fields.items() if info.is_required() and f in frame]
    worst = max(required, key=lambda f: frame[f].isna().mean(), default=None)
    if worst is not None:
        missing = float(frame[worst].isna().mean())
        checks.append(Check(f"{name}: missing values", missing <= cfg.max_missing_rate, missing,
                            f"<= {cfg.max_missing_rate} per column", f"worst column: {worst}"))
    return checks


def check_world(events: pd.DataFrame, users: pd.DataFrame, items: pd.DataFrame,
                previous: dict | None = None, cfg: DataGateConfig = DataGateConfig(),
                event_types: EventTypes = CANONICAL) -> DataReport:
    """Every check, on raw tables (nothing coerced or dropped first); `event_types`: the
    world's own types, valid besides the canonical ones."""
    checks = [Check("events: row count", len(events) >= cfg.min_events, len(events), f">= {cfg.min_events}")]
    choices = {"event_type": event_types.known}
    for name, frame, model in (("events", events, Event), ("users", users, User), ("items", items, Item)):
        checks += _schema_checks(name, frame, model, cfg, choices if model is Event else None)
    keys = [c for c in ("user_id", "item_id", "event_type", "ts") if c in events]
    dup = _rate(int(events.duplicated(keys).sum()), len(events))
    checks.append(Check("events: duplicates", dup <= cfg.max_duplicate_rate, dup, f"<= {cfg.max_duplicate_rate}",
                        "same user, item, type and time"))
    if {"user_id", "item_id"} <= set(events):
        orphans = ~events["user_id"].isin(set(users["user_id"])) | ~events["item_id"].isin(set(items["item_id"]))
        rate = _rate(int(orphans.sum()), len(events))
        checks.append(Check("events: unknown users or items", rate <= cfg.max_orphan_rate, rate,
                            f"<= {cfg.max_orphan_rate}"))
    now = profile(events, users, items)
    if previous:
        ratio = _rate(len(events), previous["events"])
        checks.append(Check("events: rows vs champion's data", cfg.min_row_ratio <= ratio <= cfg.max_row_ratio, ratio,
                            f"{cfg.min_row_ratio}..{cfg.max_row_ratio}", f"previous {previous['events']:,}"))
        new = set(now["categories"]) - set(previous.get("categories", []))
        share = _rate(int(items["category"].astype(str).isin(new).sum()), len(items))
        checks.append(Check("items: new categories", share <= cfg.max_new_category_share, share,
                            f"<= {cfg.max_new_category_share} of items", ", ".join(sorted(new)[:5])))
    return DataReport(checks, now)


def check_world_dir(world_dir: Path, previous: dict | None = None, cfg: DataGateConfig = DataGateConfig()):
    """check_world on a saved world's raw parquet tables."""
    world_dir = Path(world_dir)
    tables = {name: pd.read_parquet(world_dir / f"{name}.parquet") for name in ("events", "users", "items")}
    return check_world(tables["events"], tables["users"], tables["items"], previous, cfg,
                       EventTypes.of_world(read_meta(world_dir)))
