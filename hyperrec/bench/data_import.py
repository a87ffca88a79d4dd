"""Import bench (`hyperrec bench import`): `hyperrec data import` on a generated event log
written as CSV the way a shop would export it (its own column and type names, unix seconds,
0.1% bad rows), run as the command a user runs, in a child process, so its wall time and
peak memory are the command's own."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import numpy as np
import pandas as pd
import yaml
from rich.console import Console

from hyperrec.bench.report import target_table, write_json

RAW_TYPES = {"seen": "view", "tapped": "click", "basket": "add_to_cart", "bought": "purchase"}
BAD_SHARE = 0.001


def write_export(folder: Path, events: int, users: int = 50_000, items: int = 20_000, seed: int = 0) -> Path:
    """A shop's export: events.csv (uid, sku, when, action, secs) and a mapping for it."""
    rng = np.random.default_rng(seed)
    actions = rng.choice(list(RAW_TYPES), size=events, p=[0.8, 0.14, 0.04, 0.02])
    frame = pd.DataFrame({
        "uid": np.char.add("u", rng.integers(0, users, events).astype(str)),
        "sku": np.char.add("sku-", rng.zipf(1.3, events).clip(max=items).astype(str)),
        "when": np.sort(rng.integers(1_760_000_000, 1_765_000_000, events)),
        "action": actions,
        "secs": np.where(actions == "tapped", rng.exponential(30.0, events).round(1), np.nan),
    })
    bad = rng.random(events) < BAD_SHARE
    frame.loc[bad, "action"] = "wishlisted"  # a type the mapping does not know: dead-lettered
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "events.csv", index=False)
    mapping = {"name": "bench-export",
               "events": {"path": "events.csv", "ts_unit": "s", "event_types": RAW_TYPES,
                          "columns": {"user_id": "uid", "item_id": "sku", "ts": "when", "event_type": "action",
                                      "dwell_s": "secs"}}}
    (folder / "mapping.yaml").write_text(yaml.safe_dump(mapping))
    return folder / "mapping.yaml"


def _run_import(tmp: Path, events: int, console: Console) -> dict:
    """One export of `events` rows, imported by the command in a child process of its own."""
    folder = tmp / f"n{events}"
    mapping = write_export(folder / "export", events)
    size = (folder / "export" / "events.csv").stat().st_size
    console.log(f"wrote {events:,} events as CSV ({size / 2**20:.0f} MiB)")
    script = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
              "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)")
    t = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script, sys.executable, "-m", "hyperrec.cli", "data", "import",
                           "--mapping", str(mapping), "--out", str(folder / "world"), "--home", str(folder / "home")],
                          capture_output=True, text=True)
    wall = time.perf_counter() - t
    if done.returncode != 0:
        raise RuntimeError(f"import failed: {done.stdout}{done.stderr}")
    report = json.loads((folder / "world" / "import_report.json").read_text())
    ev = report["events"]
    return {"events": events, "csv_mib": round(size / 2**20, 1), "wall_s": round(wall, 2),
            "import_s": report["seconds"], "events_per_s": round(events / report["seconds"]),
            "peak_rss_mib": round(int(done.stdout.split()[-1]) / 1024), "stored": ev["rows_kept"],
            "dead_lettered": ev["dead_lettered"], "duplicates": ev["duplicates"]}


def bench_import(events: int = 1_000_000, console: Console | None = None) -> dict:
    """The import of `events` rows, and of a tenth of them for the memory slope."""
    console = console or Console()
    with TemporaryDirectory() as tmp:
        small = _run_import(Path(tmp), events // 10, console)
        result = _run_import(Path(tmp), events, console)
    extra = result["peak_rss_mib"] - small["peak_rss_mib"]
    result["peak_rss_mib_at_a_tenth"] = small["peak_rss_mib"]
    result["bytes_per_event_of_peak_rss"] = round(extra * 2**20 / (events - events // 10))
    return result


def print_import_table(result: dict, console: Console) -> None:
    rows = [("events imported from CSV", f"{result['events']:,} ({result['csv_mib']} MiB)", ""),
            ("events/s (import, in the command)", f"{result['events_per_s']:,}", ""),
            ("wall time of the command, s", f"{result['wall_s']:.1f}", "< 60"),
            ("peak memory of the command, MiB", f"{result['peak_rss_mib']:,}", ""),
            ("the same at a tenth of the events, MiB", f"{result['peak_rss_mib_at_a_tenth']:,}", ""),
            ("peak memory per extra event, bytes", f"{result['bytes_per_event_of_peak_rss']:,}", ""),
            ("stored / dead-lettered / duplicates",
             f"{result['stored']:,} / {result['dead_lettered']:,} / {result['duplicates']:,}", "")]
    console.print(target_table("hyperrec data import", rows))


def main(out: Path | None = None, events: int = 1_000_000) -> dict:
    console = Console()
    result = bench_import(events, console)
    print_import_table(result, console)
    write_json(out, result)
    return result
