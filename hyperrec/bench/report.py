"""What every bench ends with: a measure / value / target table and the JSON file."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

from rich.table import Table


def target_table(title: str, rows: Iterable[tuple[str, str, str]]) -> Table:
    """One row per measure: (what, the measured value, the target or "")."""
    table = Table(title=title)
    for col in ("measure", "value", "target"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    return table


def write_json(out: Path | None, result: dict) -> None:
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str))
