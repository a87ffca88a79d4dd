"""The monitoring dashboard: the numbers one window's snapshot holds, the panels that read
them, and (slow) the project page rendered by Evidently's UI in headless Chromium."""

import asyncio
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from hyperrec.monitor.trigger import column_drift
from monitoring import dashboard as dash

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "var" / "test-artifacts"
NUM, CAT = ["x", "y", "z"], ["device"]
T0 = datetime(2025, 3, 1, tzinfo=UTC)


def _features(rng, n: int, shift: float = 0.0, mix=(0.6, 0.3, 0.1)) -> pd.DataFrame:
    return pd.DataFrame({"x": rng.normal(shift, 1.0, n), "y": rng.normal(0.0, 1.0, n),
                         "z": rng.integers(0, 24, n), "device": rng.choice(["mobile", "desktop", "tablet"], n, p=mix)})


def _outcomes(rng, n: int) -> pd.DataFrame:
    arm = rng.choice(["control", "diverse-explore", "third"], n, p=[0.5, 0.3, 0.2])
    clicked = rng.random(n) < np.select([arm == "control", arm == "diverse-explore"], [0.08, 0.12], 0.05)
    return pd.DataFrame({"arm": arm, "clicked": clicked.astype(int),
                         "purchased": (clicked & (rng.random(n) < 0.2)).astype(int),
                         "score": rng.random(n)})  # extra columns are ignored


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Two windows against one reference: one from the same distribution, one with `x`
    shifted by one std and the device mix moved. Frames of different lengths (1,500
    requests, 4,000 impressions, 700 freshness values with NaN/inf) exercise the padding."""
    ws = tmp_path_factory.mktemp("evidently-ws")
    rng = np.random.default_rng(3)
    ref = _features(rng, 5000)
    windows = []
    for i, cur in enumerate([_features(rng, 1500), _features(rng, 1500, shift=1.0, mix=(0.3, 0.3, 0.4))]):
        outcomes, fresh = _outcomes(rng, 4000), rng.exponential(2.0, 700)
        fresh[:5] = [np.nan, np.inf, np.nan, -np.inf, np.nan]
        started = time.perf_counter()
        sid = dash.record_window(ws, reference=ref, current=cur, numerical=NUM, categorical=CAT, outcomes=outcomes,
                                 freshness_s=fresh, retrains=i, timestamp=T0 + timedelta(days=i))
        windows.append({"id": sid, "current": cur, "outcomes": outcomes, "freshness": fresh, "retrains": i,
                        "seconds": time.perf_counter() - started})
    return ws, ref, windows


def test_record_window_holds_the_frames_numbers(recorded):
    ws, ref, windows = recorded
    for i, w in enumerate(windows):
        got = dash.window_values(ws, w["id"])
        assert got["timestamp"] == T0 + timedelta(days=i)
        twin = column_drift(ref, w["current"], NUM, CAT)  # the numpy twin, on the unpadded frames
        assert got["drift"] == pytest.approx({c: twin[c]["distance"] for c in NUM + CAT}, rel=1e-6, abs=1e-9)
        o = w["outcomes"]
        assert got["ctr"] == pytest.approx(o.groupby("arm")["clicked"].mean().to_dict(), rel=1e-12)
        assert got["conversion"] == pytest.approx(o.groupby("arm")["purchased"].mean().to_dict(), rel=1e-12)
        fresh = w["freshness"][np.isfinite(w["freshness"])]
        assert got["freshness"] == pytest.approx({q: np.quantile(fresh, q) for q in (0.5, 0.99)}, rel=1e-12)
        assert got["retrains"] == w["retrains"]
    same, drifted = (dash.window_values(ws, w["id"]) for w in windows)
    assert (same["drifted_count"], same["drifted_share"]) == (0, 0.0)
    assert max(same["drift"].values()) < 0.1
    assert {c for c, d in drifted["drift"].items() if d >= 0.1} == {"x", "device"}
    assert (drifted["drifted_count"], drifted["drifted_share"]) == (2, 0.5)
    assert windows[1]["seconds"] < 10, f"record_window took {windows[1]['seconds']:.1f} s"


def _panel_series(ws: Path, project_id: str) -> dict[str, list]:
    """Each panel's series as the UI server computes them (its storage, its filter logic)."""
    from evidently.ui.service.base import SeriesFilter
    from evidently.ui.service.storage.local.base import InMemoryDataStorage

    storage = InMemoryDataStorage(path=str(ws))
    out = {}
    for panel in dash.dashboard_panels():
        filters = [SeriesFilter(tags=v.tags, metadata=v.metadata, metric=v.metric, metric_labels=v.metric_labels)
                   for v in panel.values]
        out[panel.title] = asyncio.run(storage.get_data_series(uuid.UUID(project_id), filters, None, None)).series
    return out


def test_every_panel_reads_the_recorded_windows(recorded):
    ws, _, windows = recorded
    project_id = dash.find_project(ws)
    values = [dash.window_values(ws, w["id"]) for w in windows]
    series = _panel_series(ws, project_id)
    assert set(series) == {p.title for p in dash.dashboard_panels()}
    for title, found in series.items():
        assert found, f"panel {title!r} matches no recorded metric"
        assert all(len(s.values) == len(windows) for s in found), title
    by_param = {t: {s.params.get("quantile") or s.params.get("label") or s.params.get("column"): s.values
                    for s in found} for t, found in series.items()}
    assert by_param["Per-feature drift"] == {c: [v["drift"][c] for v in values] for c in NUM + CAT}
    for title, key in (("CTR per arm", "ctr"), ("Conversion per arm", "conversion")):
        assert by_param[title] == {arm: [v[key][arm] for v in values] for arm in values[0][key]}
        assert set(values[0][key]) == {"control", "diverse-explore", "third"}
    assert by_param["Feature freshness"] == {str(q): [v["freshness"][q] for v in values] for q in (0.5, 0.99)}
    assert [s.values for s in series["Drift share over time"]] == [[v["drifted_share"] for v in values]]
    assert [s.values for s in series["Retrain events"]] == [[0, 1]]


def test_ensure_project_is_idempotent(tmp_path):
    first = dash.ensure_project(tmp_path)
    dashboard_file = tmp_path / first / "dashboard.json"
    written = dashboard_file.read_text()
    mtime = dashboard_file.stat().st_mtime_ns
    assert dash.ensure_project(tmp_path) == first
    assert dashboard_file.stat().st_mtime_ns == mtime  # unchanged: not even rewritten
    assert dash.find_project(tmp_path, "other") is None
    assert [d.name for d in tmp_path.iterdir() if d.is_dir() and d.name != "datasets"] == [first]
    panels = json.loads(written)["panels"]
    assert [p["title"] for p in panels] == [p.title for p in dash.dashboard_panels()]
    dashboard_file.write_text(json.dumps({"tabs": [], "panels": []}))  # a stale dashboard is rewritten
    assert dash.ensure_project(tmp_path) == first
    assert json.loads(dashboard_file.read_text()) == json.loads(written)


def test_record_window_rejects_bad_input(tmp_path):
    rng = np.random.default_rng(0)
    frame = _features(rng, 10)
    kw = dict(reference=frame, current=frame, numerical=NUM, categorical=CAT, freshness_s=[1.0], retrains=0,
              timestamp=T0)
    with pytest.raises(ValueError, match="clash"):
        dash.record_window(tmp_path, **{**kw, "numerical": [*NUM, "clicked"]},
                           outcomes=_outcomes(rng, 10).assign(clicked=0))
    with pytest.raises(ValueError, match="purchased"):
        dash.record_window(tmp_path, **kw, outcomes=_outcomes(rng, 10).drop(columns=["purchased"]))


def test_a_window_without_impressions_or_freshness_records_no_nan(tmp_path):
    frame = _features(np.random.default_rng(1), 300)
    sid = dash.record_window(tmp_path, reference=frame, current=frame, numerical=NUM, categorical=CAT,
                             outcomes=pd.DataFrame(columns=["arm", "clicked", "purchased"]), freshness_s=[],
                             retrains=0, timestamp=T0)
    got = dash.window_values(tmp_path, sid)
    assert (got["ctr"], got["conversion"], got["freshness"], got["retrains"]) == ({}, {}, {}, 0)
    assert got["drifted_share"] == 0.0


def test_retrains_between_counts_fired_decisions():
    records = [{"event": "decision", "retrain": True, "ts": 10.0}, {"event": "decision", "retrain": False, "ts": 11.0},
               {"event": "run_finished", "run_id": "r", "ts": 12.0}, {"event": "decision", "retrain": True, "ts": 20.0}]
    assert dash.retrains_between(records, 0, 20) == 1
    assert dash.retrains_between(records, 0, 21) == 2


# ---------------------------------------------------------------- the page in a browser

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  # without these Chromium phones home at start, and this closed network refuses it
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--hide-scrollbars", "--window-size=1400,2000"]


def _run_group(cmd: list[str], timeout: float, **kw) -> subprocess.CompletedProcess:
    """Run `cmd` in its own process group and end the whole group (Chromium forks helpers)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            start_new_session=True, **kw)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # leftover helpers, if any
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def _chromium(binary: str, url: str, *args: str, budget_ms: int = 20_000) -> subprocess.CompletedProcess:
    with tempfile.TemporaryDirectory(prefix="hyperrec-chromium-") as profile:
        return _run_group([binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}",
                           *args, url], timeout=120, text=True)


def _panel_sections(dom: str, titles: list[str]) -> dict[str, str]:
    """The DOM of each panel card: from its title to the next panel's title."""
    starts = {}
    for title in titles:
        found = re.search(r">\s*" + re.escape(title) + r"\s*</h\d>", dom)
        assert found, f"panel {title!r} is not on the page"
        starts[title] = found.start()
    order = sorted(titles, key=starts.get)
    ends = [starts[t] for t in order[1:]] + [len(dom)]
    return {t: dom[starts[t]:end] for t, end in zip(order, ends, strict=True)}


def _legend(section: str) -> set[str]:
    return set(re.findall(r'MuiChartsLegend-label">([^<]+)<', section))


@pytest.fixture
def ui_server(tmp_path, free_port):
    """`python -m monitoring.ui` over a workspace of six demo days (taste shift on day 3),
    recorded while the server starts (its import takes most of the time), then reloaded."""
    ws = tmp_path / "workspace"
    project_id = dash.ensure_project(ws)  # before the server starts: one process creates the project
    env = dict(os.environ, DO_NOT_TRACK="true")
    log_path = tmp_path / "ui.log"
    log = log_path.open("w")
    proc = subprocess.Popen([sys.executable, "-m", "monitoring.ui", "--workspace", str(ws), "--port", str(free_port),
                             "--demo-days", "0"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{free_port}"
    try:
        ids = dash.seed_demo(ws, days=6, drift_day=3, requests=1600)
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, f"UI exited with {proc.returncode}:\n{log_path.read_text()}"
            try:
                with urllib.request.urlopen(f"{base}/api/version", timeout=1) as answer:
                    assert json.load(answer)["application"] == "Evidently UI"
                    break
            except OSError:
                assert time.monotonic() < deadline, f"the UI did not answer within 120 s:\n{log_path.read_text()}"
                time.sleep(0.2)
        # the server watches the folder; a reload makes sure no window written during its start is missed
        urllib.request.urlopen(f"{base}/api/projects/{project_id}/reload", timeout=30).close()
        printed = re.search(r"http://\S+/projects/(\S+)", log_path.read_text())
        assert printed and printed.group(1) == project_id, log_path.read_text()
        yield ws, ids, f"{base}/projects/{project_id}"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.mark.slow
def test_dashboard_renders_in_headless_chromium(ui_server):
    from PIL import Image

    from hyperrec.services import find_debian_binary

    ws, ids, url = ui_server
    chromium = find_debian_binary("chromium", "chromium")
    windows = [dash.window_values(ws, i) for i in ids]
    titles = [p.title for p in dash.dashboard_panels()]
    features = set(windows[0]["drift"])
    marks = {"Drift share over time": 1, "Per-feature drift": len(features), "CTR per arm": 2,
             "Conversion per arm": 2, "Feature freshness": 2}  # line series per panel
    for budget in (20_000, 40_000):  # a loaded machine may need more virtual time for the data calls
        dom = _chromium(chromium, url, "--dump-dom", budget_ms=budget).stdout
        if dom.count("MuiMarkElement-root") >= len(ids) * sum(marks.values()):
            break
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "dashboard.html").write_text(dom)
    sections = _panel_sections(dom, titles)
    for title, n_series in marks.items():  # one point per window and series: the panels hold data
        assert sections[title].count("MuiMarkElement-root") == n_series * len(ids), title
    assert _legend(sections["Per-feature drift"]) == features
    assert _legend(sections["CTR per arm"]) == _legend(sections["Conversion per arm"]) == set(dash.ARMS)
    assert _legend(sections["Feature freshness"]) == set(dash.QUANTILES)
    assert sections["Retrain events"].count("MuiBarElement-root") == len(ids)
    total = sum(w["retrains"] for w in windows)
    assert total >= 1, "the demo's taste shift should fire the trigger"
    assert re.search(rf">{total}</h2>\s*<pre[^>]*>retrains<", sections["Retrain events (all windows)"])
    counters = re.findall(r">([0-9.]+)</h2>\s*<pre[^>]*>([^<]+)<", sections["CTR per arm (latest window)"])
    assert {arm for _, arm in counters} == set(dash.ARMS)

    shot = ARTIFACTS / "dashboard.png"
    least = {(0x02, 0xB2, 0xAF): 2000, (0x2E, 0x96, 0xFF): 1000}  # pixels of the first two series colours
    # The DOM above already holds every point; the screenshot is a separate browser run, and
    # on a loaded machine its budget can end before the lines are drawn (CI caught axes with
    # no lines once): a longer budget, never a lower bar
    for shot_budget in (budget, 2 * budget, 4 * budget):
        shot.unlink(missing_ok=True)
        result = _chromium(chromium, url, f"--screenshot={shot}", budget_ms=shot_budget)
        assert shot.exists(), result.stderr[-2000:]
        pixels = np.asarray(Image.open(shot).convert("RGB")).astype(int)
        assert pixels.shape == (2000, 1400, 3)
        drawn = {colour: int((np.abs(pixels - colour).sum(axis=2) < 30).sum()) for colour in least}
        if all(drawn[c] >= n for c, n in least.items()):
            break
    for colour, n in least.items():
        assert drawn[colour] >= n, f"only {drawn[colour]} pixels of series colour {colour}: are the plots empty?"
