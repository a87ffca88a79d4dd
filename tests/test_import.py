"""Bring your own data: a log in a layout no loader knows, described by a mapping file,
becomes a world the platform trains and serves from; bad rows are dead-lettered and counted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import requests
import yaml

from hyperrec.data.importer import ImportFailed, import_world
from hyperrec.data.mapping import MappingError, load_mapping
from hyperrec.data.world import load_world

RAW_TYPES = {"view": "seen", "click": "tapped", "add_to_cart": "basket", "purchase": "bought", "rating": "stars",
             "faved": "faved"}
MAPPING = {
    "name": "shop-export",
    "events": {"path": "log/events.jsonl",
               "columns": {"user_id": "uid", "item_id": "sku", "ts": "when", "event_type": "action",
                           "dwell_s": "secs", "rating": "score"},
               "ts_unit": "s",
               "event_types": {**{v: k for k, v in RAW_TYPES.items()}, "faved": {"weight": 0.5}}},
    "items": {"path": "catalog.csv", "columns": {"item_id": "id", "title": "name", "category": "genre"}},
    "users": {"path": "crm.tsv", "columns": {"user_id": "id", "region": "area"}},
    "consent": {"default": "granted"},
}


def with_favourites(events: pd.DataFrame, n: int = 50) -> pd.DataFrame:
    """The world's events plus a `faved` (a type of the shop's own) one second after each of
    the first `n` clicks."""
    faved = events[events["event_type"] == "click"].head(n).assign(
        event_type="faved", dwell_s=float("nan"), ts=lambda d: d["ts"] + pd.Timedelta(seconds=1))
    return pd.concat([events, faved], ignore_index=True)


def write_foreign(world, folder: Path, bad_rows: bool = True) -> Path:
    """The world's tables as another shop would export them: JSON Lines with its own column
    and type names (one of them, `faved`, declared with a weight) and unix seconds, a CSV
    catalog, a TSV of profiles without consent."""
    (folder / "log").mkdir(parents=True)
    ev = with_favourites(world.events)
    raw = pd.DataFrame({"uid": ev["user_id"], "sku": ev["item_id"], "when": ev["ts"].astype("int64") // 10**9,
                        "action": ev["event_type"].map(RAW_TYPES), "secs": ev["dwell_s"], "score": ev["rating"]})
    if bad_rows:
        bad = pd.DataFrame({"uid": ["u-x", "u-y", "u-z", None], "sku": ["i1", "i2", "i3", "i4"],
                            "when": [1_700_000_000, "yesterday", -62_135_596_800, 1_700_000_000],
                            "action": ["wishlisted", "seen", "seen", "seen"],
                            "secs": [None] * 4, "score": [None] * 4})
        raw = pd.concat([raw.astype(object), bad, raw.iloc[:3].astype(object)], ignore_index=True)  # + 3 replays
    raw.to_json(folder / "log" / "events.jsonl", orient="records", lines=True)
    world.items.rename(columns={"item_id": "id", "title": "name", "category": "genre"})[
        ["id", "name", "genre"]].to_csv(folder / "catalog.csv", index=False)
    world.users.rename(columns={"user_id": "id", "region": "area"})[["id", "area"]].to_csv(
        folder / "crm.tsv", sep="\t", index=False)
    (folder / "mapping.yaml").write_text(yaml.safe_dump(MAPPING))
    return folder / "mapping.yaml"


def hyperrec(*args: str, home: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hyperrec.cli", *args, "--home", str(home)],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    from hyperrec.data.generate import WorldConfig, generate_world

    return generate_world(WorldConfig(users=60, items=40, days=5, events=3_000, seed=3))


def test_a_foreign_log_imports_with_bad_rows_counted_and_nothing_twice(small_world, tmp_path):
    mapping = write_foreign(small_world, tmp_path / "export")
    out = tmp_path / "world"
    done = hyperrec("data", "import", "--mapping", str(mapping), "--out", str(out), home=tmp_path / "home")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "import_report.json").read_text())
    expected = with_favourites(small_world.events)
    n = len(expected)
    assert report["events"]["rows_read"] == n + 7
    assert report["events"]["dead_letters"] == {"unknown event type": 1, "unparseable ts": 1,
                                                "ts out of range": 1, "invalid user_id": 1}
    assert report["events"]["sample_rows"]["unparseable ts"] == [n + 2]  # 1-based data row
    assert report["events"]["duplicates"] == 3 and report["events"]["rows_kept"] == n
    dead = [json.loads(line) for line in (out / "dead_letters.jsonl").read_text().splitlines()]
    assert {d["raw"]["uid"] for d in dead} == {"u-x", "u-y", "u-z", None}  # raw values kept
    assert "4 dead-lettered" in done.stdout and "unknown event type" in done.stdout

    world = load_world(out)  # validates every table against the schemas
    key = ["ts", "user_id", "item_id", "event_type"]
    got = world.events[key].sort_values(key).reset_index(drop=True)
    want = expected[key].assign(ts=expected["ts"].dt.floor("s")).sort_values(key)
    pd.testing.assert_frame_equal(got, want.reset_index(drop=True), check_dtype=False)  # unix seconds: whole seconds
    assert set(world.items["item_id"]) >= set(small_world.items["item_id"])
    assert world.meta["event_types"] == {"faved": 0.5} and (world.events["event_type"] == "faved").sum() == 50
    assert world.users.set_index("user_id").loc[small_world.users["user_id"].iloc[0], "consent_personalization"]

    again = hyperrec("data", "import", "--mapping", str(mapping), "--out", str(out), home=tmp_path / "home")
    assert again.returncode == 0, again.stdout + again.stderr
    report = json.loads((out / "import_report.json").read_text())
    assert report["events"]["already_present"] == n and report["events"]["rows_kept"] == 0
    assert len(load_world(out).events) == n
    checked = hyperrec("data", "validate", "--world", str(out), home=tmp_path / "home")
    assert checked.returncode == 0 and "ok:" in checked.stdout


def test_a_missing_column_or_unreadable_file_stops_with_its_name(small_world, tmp_path):
    mapping = write_foreign(small_world, tmp_path / "export", bad_rows=False)
    spec = yaml.safe_load(mapping.read_text())
    spec["events"]["columns"]["ts"] = "timestamp"
    mapping.write_text(yaml.safe_dump(spec))
    done = hyperrec("data", "import", "--mapping", str(mapping), "--out", str(tmp_path / "w"), home=tmp_path / "h")
    assert done.returncode == 2
    assert "['timestamp']" in done.stdout and "columns found: ['uid', 'sku', 'when'" in done.stdout
    (tmp_path / "export" / "log" / "events.jsonl").write_bytes(b"\x00\xff{{not json")
    spec["events"]["columns"]["ts"] = "when"
    mapping.write_text(yaml.safe_dump(spec))
    done = hyperrec("data", "import", "--mapping", str(mapping), "--out", str(tmp_path / "w"), home=tmp_path / "h")
    assert done.returncode == 2 and "cannot read" in done.stdout and not (tmp_path / "w" / "events.parquet").exists()


def test_the_mapping_is_checked_before_any_file_is_read(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text(yaml.safe_dump({"events": {"path": "e.csv", "columns": {"user_id": "u", "item_id": "i"}}}))
    with pytest.raises(MappingError, match=r"map \['event_type', 'ts'\]"):
        load_mapping(path)
    path.write_text(yaml.safe_dump({"events": {"path": "e.csv", "columns": {"user": "u"}}}))
    with pytest.raises(MappingError, match="not fields of Event"):
        load_mapping(path)
    path.write_text(yaml.safe_dump({"events": {"path": "e.csv", "event_types": {"fav": "like"}}}))
    with pytest.raises(MappingError, match="unknown types"):
        load_mapping(path)


@pytest.mark.parametrize("fmt", ["parquet", "tsv.gz", "csv"])
def test_every_format_gives_the_same_events(fmt, tmp_path):
    frame = pd.DataFrame({"who": ["007", "007", "42"], "what": ["a", "b", "a"],
                          "at": ["2026-01-01T10:00:00Z", "2026-01-01T11:00:00+01:00", "2026-01-02T00:00:00Z"],
                          "kind": ["open", "buy", "open"]})
    path = tmp_path / f"events.{fmt}"
    if fmt == "parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, sep="\t" if fmt.startswith("tsv") else ",", index=False)
    mapping = load_mapping_dict({"events": {"path": path.name, "columns": {"user_id": "who", "item_id": "what",
                                                                           "ts": "at", "event_type": "kind"},
                                            "event_types": {"open": "click", "buy": "purchase"}}}, tmp_path)
    imported = import_world(mapping, tmp_path)
    world, report = imported.world(), imported.report
    assert list(world.events["user_id"]) == ["007", "007", "42"]  # ids keep their leading zeros
    assert list(world.events["event_type"]) == ["click", "purchase", "click"]
    assert world.events["ts"].iloc[1] == pd.Timestamp("2026-01-01T10:00:00Z")  # offsets honoured
    assert world.events["dwell_s"].iloc[0] == 0.0  # a click without dwell gets the documented default
    assert report["items_from_events_only"] == 2 and report["users_from_events_only"] == 2


def test_a_user_whose_profile_row_is_unreadable_is_not_granted_consent_by_default(tmp_path):
    (tmp_path / "e.csv").write_text("u,i,t,k\na,x,2026-01-01T00:00:00Z,click\nb,x,2026-01-01T00:00:01Z,click\n"
                                    "c,x,2026-01-01T00:00:02Z,click\n")
    (tmp_path / "p.csv").write_text("id,opt_in\na,no way\nb,false\n")  # a's answer is unreadable; c has none
    mapping = load_mapping_dict({"events": {"path": "e.csv", "columns": {"user_id": "u", "item_id": "i", "ts": "t",
                                                                         "event_type": "k"}},
                                 "users": {"path": "p.csv", "columns": {"user_id": "id",
                                                                        "consent_personalization": "opt_in"}},
                                 "consent": {"default": "granted"}}, tmp_path)
    imported = import_world(mapping, tmp_path)
    consent = imported.users.set_index("user_id")["consent_personalization"]
    assert consent.to_dict() == {"a": False, "b": False, "c": True}
    assert imported.report["users"]["dead_letters"] == {"invalid consent_personalization": 1}


def test_nothing_usable_is_an_error_with_the_report(tmp_path):
    (tmp_path / "e.csv").write_text("u,i,t,k\na,b,notatime,view\n")
    mapping = load_mapping_dict({"events": {"path": "e.csv", "columns": {"user_id": "u", "item_id": "i", "ts": "t",
                                                                         "event_type": "k"}}}, tmp_path)
    with pytest.raises(ImportFailed, match="no usable events") as err:
        import_world(mapping, tmp_path)
    assert err.value.report["events"]["dead_letters"] == {"unparseable ts": 1}


def load_mapping_dict(spec: dict, folder: Path):
    path = folder / "mapping.yaml"
    path.write_text(yaml.safe_dump(spec))
    return load_mapping(path)


@pytest.mark.slow
def test_a_foreign_log_trains_and_serves(make_workspace, tmp_path):
    """The data guide's commands: import -> features build -> pipeline run --summary -> a real
    server answering an imported user with items of the imported catalog."""
    from hyperrec.services import free_port
    from serving.launch import start_server, stop_server, wait_ready

    with make_workspace("import-e2e", users=300, items=150, days=10, events=25_000, seed=11) as (settings, world):
        mapping = write_foreign(world, tmp_path / "export")
        out, summary = tmp_path / "imported", tmp_path / "summary.json"
        for args in (("data", "import", "--mapping", str(mapping), "--out", str(out)),
                     ("features", "build", "--world", str(out)),
                     ("pipeline", "run", "--world", str(out), "--epochs", "2", "--summary", str(summary))):
            done = hyperrec(*args, home=settings.home)
            assert done.returncode == 0, f"{args}: {done.stdout}{done.stderr}"
        result = json.loads(summary.read_text())
        assert set(result) == {"version", "blessed", "ndcg@10", "popularity_ndcg@10", "recall@20"}
        assert result["version"] >= 1 and 0 < result["ndcg@10"] <= 1 and 0 < result["recall@20"] <= 1
        port, log_path = free_port(), settings.home / "server.log"
        proc = start_server(settings, port, log_path, as_of=world.events["ts"].max().to_pydatetime())
        try:
            wait_ready(proc, port, log_path=log_path)
            user = world.events["user_id"].value_counts().index[0]
            resp = requests.post(f"http://127.0.0.1:{port}/v1/models/recommender:predict",
                                 json={"instances": [{"user_id": user, "k": 5}]}, timeout=30)
            assert resp.status_code == 200, resp.text
            items = resp.json()["predictions"][0]["items"]
            assert len(items) == 5
            assert {i["item_id"] if isinstance(i, dict) else i for i in items} <= set(world.items["item_id"])
            # the workspace took the world's own type: the door accepts it, and refuses an undeclared one
            at = world.events["ts"].max().isoformat()
            body = [{"event_id": "live-1", "user_id": user, "item_id": items[0]["item_id"], "event_type": "faved",
                     "ts": at}, {"event_id": "live-2", "user_id": user, "item_id": items[0]["item_id"],
                                 "event_type": "wishlisted", "ts": at}]
            answer = requests.post(f"http://127.0.0.1:{port}/v1/events", json=body, timeout=30).json()
            assert answer["stored"] == 1 and answer["dead_lettered"] == 1, answer
            schema = requests.get(f"http://127.0.0.1:{port}/v1/schema/event", timeout=30).json()
            assert "faved" in schema["properties"]["event_type"]["enum"]
        finally:
            stop_server(proc)


def test_the_import_bench_runs_the_command_and_counts_its_bad_rows():
    from hyperrec.bench.data_import import bench_import

    result = bench_import(events=5_000)
    assert result["stored"] + result["dead_lettered"] + result["duplicates"] == 5_000
    assert 0 < result["dead_lettered"] < 50 and result["events_per_s"] > 0  # ~0.1% bad rows, all counted
    assert result["peak_rss_mib"] >= result["peak_rss_mib_at_a_tenth"] > 0
