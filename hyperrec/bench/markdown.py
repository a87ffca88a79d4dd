"""`hyperrec bench report`: BENCHMARKS.md from the JSON files `make bench` wrote: the
machine, the date, and per bench its headline measures next to their target or anchor.
Only numbers found in the files are printed; a bench that did not run says so."""

from __future__ import annotations

import contextlib
import json
import os
import platform
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

Row = tuple[str, Callable[[dict], object], str]  # label, value from the bench's JSON, target or anchor


def _get(*path: str) -> Callable[[dict], object]:
    def read(data: dict):
        for key in path:
            data = data[key]
        return data
    return read


def _quality_rows() -> list[Row]:
    def model(name: str, metric: str):
        return lambda d: next(r[metric] for r in d["rows"] if r["model"] == name)

    return [("hyperrec NDCG@10", model("hyperrec", "ndcg@10"), "above the best baseline"),
            ("best baseline", _get("best_baseline"), ""),
            ("best baseline NDCG@10", lambda d: model(d["best_baseline"], "ndcg@10")(d), ""),
            ("popularity NDCG@10", model("popularity", "ndcg@10"), "anchor")]


def _index_rows() -> list[Row]:
    def row(items: int, kind: str, key: str):
        return lambda d: next(r[key] for r in d["rows"] if r["items"] == items and r["index"] == kind)

    def recall(items: int, kind: str):
        return lambda d: next(v for r in d["rows"] if r["items"] == items and r["index"] == kind
                              for k, v in r.items() if k.startswith("recall@"))

    return [("1M items, IVF recall@100 vs exact", recall(1_000_000, "ivf"), ""),
            ("1M items, IVF p99 per query, ms", row(1_000_000, "ivf", "p99_ms"), ""),
            ("1M items, exact p99 per query, ms", row(1_000_000, "brute", "p99_ms"), "anchor"),
            ("100k items, IVF p99 per query, ms", row(100_000, "ivf", "p99_ms"), ""),
            ("100k items, exact p99 per query, ms", row(100_000, "brute", "p99_ms"), "anchor")]


def _trial_sizes(trial: dict) -> str:
    lists = trial["lists"]
    if trial.get("design") == "interleaved":
        return f"{lists['interleaved']:,} interleaved (clicks counted per version's items)"
    return f"{lists['champion']:,} champion, {lists['challenger']:,} challenger"


def _interval(d: dict) -> str:
    return f"{d['difference']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]"


def _closed_loop_rows(data: dict) -> list[Row]:
    """Rows that depend on what the run did (its CTR turns, its trial, its arms)."""
    rows: list[Row] = [("`make demo`, world to summary, s", _get("seconds_total"), "< 600 after setup")]
    rows += [(label, _get("ctr", label), "") for label in data.get("ctr", {})]
    if "recovered" in data:
        rows.append((f"share of the drift's CTR drop won back, {data['recovered']['phase']}",
                     lambda d: f"{d['recovered']['share_of_drop']:.0%}", "(last - trough) / (before - trough)"))
    rows += [(label, _get(key), target) for key, label, target in (
        ("ctr_trough_ratio", "lowest 6-hour CTR after the drift / CTR before it", ">= 0.85"),
        ("drifted_pclick_trough_ratio", "the same for the drifted users' hidden P(click) of the top 5 shown", ">= 0.6"),
        ("hours_drift_to_first_retrain", "simulated hours from the drift to the first retrain", "<= 12"))
        if data.get(key) is not None]
    rows += [(f"hidden P(click) of the top 5 shown, {group}, {phase}", _get("hidden_p_click", phase, group),
              "simulator's truth") for phase, groups in data.get("hidden_p_click", {}).items() for group in groups]
    for i in range(len(data.get("retrains", []))):
        rows.append((f"retrain {i + 1}: wall time, s", lambda d, i=i: d["retrains"][i]["wall_s"], ""))
    for i in range(len(data.get("trials", []))):
        rows += [(f"online trial {i + 1}: outcome",
                  lambda d, i=i: d["trials"][i]["action"] + (" (holdback: the replaced champion was the challenger)"
                                                             if d["trials"][i].get("holdback") else ""), ""),
                 (f"online trial {i + 1}: lists", lambda d, i=i: _trial_sizes(d["trials"][i]), ""),
                 (f"online trial {i + 1}: clicks per list, champion -> challenger",
                  lambda d, i=i: "{champion:.4f} -> {challenger:.4f}".format(**d["trials"][i]["metric"]["means"]), ""),
                 (f"online trial {i + 1}: the retrain's lift over keeping the model it replaces (clicks per list, "
                  "same lists)",
                  lambda d, i=i: _interval(d["trials"][i].get("retrain_lift") or d["trials"][i]["metric"]), "95% CI"),
                 (f"online trial {i + 1}: always-valid p",
                  lambda d, i=i: d["trials"][i]["metric"]["p_always_valid"], "< 0.05")]
    for arm in data.get("lifts", {}):
        rows.append((f"lift of the mechanism `{arm}` switches off (lists with a click)",
                     lambda d, arm=arm: f"{d['lifts'][arm]['lift']:+.4f} [{d['lifts'][arm]['low']:+.4f}, "
                                        f"{d['lifts'][arm]['high']:+.4f}], p {d['lifts'][arm]['p_holm']:.2g}",
                     "95% CI, Holm p"))
    return rows


BENCHES: dict[str, tuple[str, list[Row] | Callable[[dict], list[Row]]]] = {
    "serving": ("Serving (100k-item catalog, wrk on loopback, naive KServe path in the same run)", [
        ("p99 at 500 req/s (open loop), ms", _get("p99_ms_at_500rps"), "<= 25"),
        ("the same with TensorFlow graphs, not numpy, for the towers and ranker, ms",
         _get("p99_ms_at_500rps_tf_backend"), "same run"),
        ("max req/s at p99 <= 50 ms", _get("max_rps_at_p99_50ms"), ">= 3x naive"),
        ("naive: max req/s at p99 <= 50 ms", _get("naive_max_rps_at_p99_50ms"), "anchor"),
        ("ratio to naive", _get("throughput_ratio_vs_naive"), ">= 3"),
        ("non-2xx during a model swap", _get("swap_non2xx"), "0"),
        ("p99 during the swap, ms", _get("swap", "p99_ms"), ""),
        ("p99 at 500 req/s without the feedback stages, ms", _get("p99_ms_at_500rps_no_feedback"), "same run"),
        ("req/s at the sweep's most connections, with the feedback stages", _get("rps_at_max_connections"), ""),
        ("the same without it", _get("rps_no_feedback_at_max_connections"), "same run"),
        ("p99 at 500 req/s with the Redis recommendation cache, ms", _get("p99_ms_at_500rps_cached"), "same run"),
        ("cache hit rate in that run (each user asked about twice)", _get("cache_hit_rate_at_500rps"), ""),
        ("max req/s at p99 <= 50 ms, every list cached", _get("max_rps_at_p99_50ms_all_cached"), ""),
    ]),
    "freshness": ("Real-time loop (event POSTed -> changed recommendations)", [
        ("event -> recs p50, ms", _get("event_to_recs_p50_ms"), ""),
        ("event -> recs p99, ms", _get("event_to_recs_p99_ms"), "< 1000"),
        ("durable ingestion, events/s", _get("ingest_events_per_s"), ""),
    ]),
    "features": ("Feature store lookups (SQLite vs Redis online store)", [
        ("user lookup p99 SQLite, ms", _get("user_lookup_p99_ms_sqlite"), ""),
        ("user lookup p99 Redis, ms", _get("user_lookup_p99_ms_redis"), ""),
        ("event -> online p99, ms", _get("freshness_p99_ms"), ""),
    ]),
    "index": ("Candidate index (generated 64-d catalogs, one query at a time)", _index_rows()),
    "detection": ("Drift trigger on the taste simulator", [
        ("false-alarm rate", _get("false_alarm_rate"), "< 1%"),
        ("same-distribution windows", _get("windows"), "200"),
        ("requests to detect a taste shift (median)", _get("detection_delay_events"), "stated"),
        ("any-p<0.05 rule on the same windows", _get("baseline_false_alarm_rates", "p_lt_0.05_any"), "anchor"),
        ("short (6 h) windows: false-alarm rate", _get("short_window", "false_alarm_rate"), ""),
        ("days with an alarm, day's and short windows", _get("false_alarm_rate_per_day_with_short"), "< 1%"),
    ]),
    "import": ("Importing your data (`hyperrec data import`, 1M generated events as CSV)", [
        ("events/s (the import itself)", _get("events_per_s"), ""),
        ("wall time of the command, s", _get("wall_s"), "< 60"),
        ("peak memory of the command, MiB", _get("peak_rss_mib"), ""),
        ("the same at a tenth of the events, MiB", _get("peak_rss_mib_at_a_tenth"), ""),
        ("peak memory per extra event, bytes", _get("bytes_per_event_of_peak_rss"), "grows with events stored"),
        ("CSV size, MiB", _get("csv_mib"), ""),
        ("dead-lettered (0.1% bad rows written)", _get("dead_lettered"), "counted"),
    ]),
    "faults": ("Hostile client against a live server (auth on) and stream processor (`hyperrec bench faults`)", [
        ("probes", _get("probes"), "stated"),
        ("failed", _get("failed"), "0"),
        ("5xx answers no probe asked for", _get("server_5xx"), "0"),
        ("acknowledged events lost or never folded", _get("events_lost"), "0"),
        ("events acknowledged (background load + probes)", _get("events_acknowledged"), ""),
        ("stream processor crashes (a kill -9 is a probe)", _get("stream_crashes"), "0"),
        ("impersonation or spying accepted", _get("impersonation_accepted"), "0"),
    ]),
    "cluster": ("A cluster in a box: every role its own process and folder (`hyperrec bench cluster`)", [
        ("model servers", _get("servers"), ">= 2"),
        ("stream consumers in one group", _get("consumers"), ">= 2"),
        ("state files two roles held open", _get("shared_paths"), "0"),
        ("events sent (one consumer and one server killed -9 on the way)", _get("events_sent"), ""),
        ("acknowledged events not stored offline or never folded", _get("events_lost"), "0"),
        ("events folded twice into one state", _get("duplicates_applied"), "0"),
        ("a retrain learned items only the new events named", _get("retrain_saw_new_items"), "True"),
        ("places still naming an erased user", _get("erasure_remnants"), "0"),
        ("predict p99 at 200 req/s over both servers, ms", _get("p99_ms_at_200rps"), ""),
        ("the run, s", _get("seconds"), ""),
    ]),
    "quality": ("Model quality on MovieLens (ml-latest-small, temporal split)", _quality_rows()),
    "closed_loop": ("Closed loop (`make demo`: drift, detection, retrain, online trial, ablation arms)",
                    _closed_loop_rows),
}


def _machine() -> str:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError, StopIteration):
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    try:
        mem_kb = int(next(line.split()[1] for line in Path("/proc/meminfo").read_text().splitlines()
                          if line.startswith("MemTotal")))
        mem = f"{mem_kb / 2**20:.0f} GiB"
    except (OSError, StopIteration):
        mem = "unknown memory"
    return (f"{cpu}, {os.cpu_count()} cores, {mem}; {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}")


def _fmt(value) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:,.4f}" if abs(value) < 1 else f"{value:,.1f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def render(bench_dir: Path) -> str:
    lines = ["# Benchmarks", "",
             f"Written by `make bench` ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC) from `{bench_dir}/*.json`.",
             f"Machine: {_machine()}.", "",
             "Each table: the measure, what this run measured, and the target or the anchor it is judged "
             "against (anchors are measured in the same run).", ""]
    for name, (title, rows) in BENCHES.items():
        path = bench_dir / f"{name}.json"
        lines += [f"## {title}", ""]
        if not path.exists():
            lines += [f"Not run (no `{path}`).", ""]
            continue
        data = json.loads(path.read_text())
        stamp = datetime.fromtimestamp(path.stat().st_mtime, UTC)
        lines += [f"`{path.name}`, written {stamp:%Y-%m-%d %H:%M} UTC.", "", "| measure | value | target / anchor |",
                  "|---|---|---|"]
        for label, read, target in (rows(data) if callable(rows) else rows):
            try:
                value = _fmt(read(data))
            except (KeyError, StopIteration, TypeError):
                value = "(missing)"
            lines.append(f"| {label} | {value} | {target} |")
        lines.append("")
    return "\n".join(lines)


def write(bench_dir: Path, out: Path) -> Path:
    out.write_text(render(bench_dir))
    return out
