"""The monitoring dashboard: an Evidently 0.7 project in a local workspace whose panels
plot one snapshot per serving window over time (`python -m monitoring.ui` serves it).

- `ensure_project`: creates the project (idempotent) and writes its dashboard: drift share,
  per-feature drift, CTR and conversion per experiment arm, feature freshness, retrain events.
- `record_window`: ONE `Report` per window computes every number the panels read and adds
  the snapshot, stamped with the window's time, to the project (1.3-1.5 s for 2k requests and
  10k impressions against a 10k-row reference; up to 3 s on a busy 2-core machine).
- `seed_demo`: synthetic days with a taste shift partway, judged by the real
  `hyperrec.monitor.trigger.RetrainTrigger`; `make ui` shows it when the workspace is empty.

How the window fits one report: Evidently runs a report on one (current, reference) pair of
tables, but a window is four things of different lengths (a row per request, a row per
impression, a freshness sample, a retrain count). They are laid side by side in one table,
each padded with NaN to the longest (`window_frame`); every metric used drops NaN (drift
tests, means, quantiles, sums, and `GroupBy`, whose labels skip NaN), and the reference has
the same columns, all NaN beyond the features. A test holds each number equal to the one
computed from the separate frames.

Drift is measured with fixed methods (normed Wasserstein for numbers, Jensen-Shannon for
categories, Evidently's threshold 0.1 on both) so the per-feature lines are one comparable
distance over time; Evidently's automatic choice would switch between a p-value and a
distance with the window size. These verdicts are for the dashboard; the retraining
decision is `hyperrec.monitor.trigger` (p-value AND distance, see there).

How the panels find their numbers (0.7's local storage, `get_data_series`): a panel series
is a metric type plus labels that must all equal the stored metric's parameters (as
strings), and a legend that may template any parameter (`{{column}}`, `{{label}}`). So a
series without labels catches every metric of its type: per-feature drift needs no list of
features and CTR per arm no list of arms. `GroupBy` results carry their inner metric as a
nested parameter, matched here by its string form (`_group_by_labels`). Every series also
requires the tag `WINDOW_TAG`, so other snapshots in the project never leak into a panel.
"""

from __future__ import annotations

import json
import tempfile
import uuid
import warnings
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.legacy.core import new_id
from evidently.metrics import DriftedColumnsCount, GroupBy, MeanValue, QuantileValue, SumValue, ValueDrift
from evidently.sdk.models import DashboardModel, DashboardPanelPlot, DashboardTabModel, PanelMetric, ProjectModel
from evidently.ui.storage.local.base import LocalState

PROJECT = "hyperrec"
WINDOW_TAG = "hyperrec-window"
TAB = "Monitoring"
ARMS = ("control", "diverse-explore")  # hyperrec.online.serving_path.Experiment's arms (demo data only)
NUM_METHOD, CAT_METHOD = "wasserstein", "jensenshannon"  # Evidently's threshold: 0.1 for both
QUANTILES = {"p50": 0.5, "p99": 0.99}  # freshness quantiles plotted
# columns `window_frame` adds next to the features (a feature may not use these names)
ARM, CLICKED, PURCHASED, FRESHNESS, RETRAINS = "arm", "clicked", "purchased", "freshness_s", "retrains"
RESERVED = (ARM, CLICKED, PURCHASED, FRESHNESS, RETRAINS)
_IDS = uuid.UUID("6d1c4a7e-2f0b-4c55-9d1e-8a3b5f7c9e01")  # namespace for stable panel/tab ids


def _group_by_labels(column: str) -> dict[str, str]:
    """Labels matching `GroupBy(MeanValue(column), ARM)` results: the storage keeps the inner
    metric as the `str` of its config (`MetricCalculation.to_metric_config`, exclude_none)."""
    return {"column_name": ARM, "metric": str(MeanValue(column=column).dict(exclude_none=True))}


def _series(metric: str, legend: str, labels: dict[str, str] | None = None) -> PanelMetric:
    return PanelMetric(metric=metric, legend=legend, metric_labels=labels or {}, tags=[WINDOW_TAG])


def _panel(title: str, subtitle: str, values: list[PanelMetric], plot_type: str = "line", size: str = "half",
           **params) -> DashboardPanelPlot:
    return DashboardPanelPlot(id=uuid.uuid5(_IDS, title), title=title, subtitle=subtitle, size=size, values=values,
                              plot_params={"plot_type": plot_type, **params})


def dashboard_panels() -> list[DashboardPanelPlot]:
    """The panels, in display order (ids derived from the titles, so rewriting is idempotent)."""
    share = _series("DriftedColumnsCount", "share of drifted features", {"value_type": "share"})
    retrains = _series("SumValue", "retrains", {"column": RETRAINS})
    ctr = _series("GroupByMetric", "{{label}}", _group_by_labels(CLICKED))
    # counters: Evidently 0.7.23's counter shows 0 as "no value", so none counts what is usually 0
    return [
        _panel("CTR per arm (latest window)", "clicked impressions / impressions", [ctr],
               plot_type="counter", aggregation="last"),
        _panel("Retrain events (all windows)", "retraining decisions that fired", [retrains],
               plot_type="counter", aggregation="sum"),
        _panel("Drift share over time", "per window: share of features drifted (distance >= 0.1)", [share]),
        _panel("Per-feature drift", "normed Wasserstein (numbers) / Jensen-Shannon (categories) vs the "
               "training reference; drift at 0.1", [_series("ValueDrift", "{{column}}")]),
        _panel("CTR per arm", "clicked impressions / impressions", [ctr]),
        _panel("Conversion per arm", "purchased impressions / impressions",
               [_series("GroupByMetric", "{{label}}", _group_by_labels(PURCHASED))]),
        _panel("Feature freshness", "seconds since the user's last online-feature update, per request",
               [_series("QuantileValue", name, {"column": FRESHNESS, "quantile": str(q)})
                for name, q in QUANTILES.items()]),
        _panel("Retrain events", "retraining decisions that fired (runs submitted) per window", [retrains],
               plot_type="bar", is_stacked=False),
    ]


def dashboard_model() -> DashboardModel:
    panels = dashboard_panels()
    tab = DashboardTabModel(id=uuid.uuid5(_IDS, TAB), title=TAB, panels=[p.id for p in panels])
    return DashboardModel(tabs=[tab], panels=panels)


def _state(workspace_dir: str | Path) -> LocalState:
    """The workspace's files, as `Workspace` itself reads and writes them. Not `Workspace`:
    constructing one parses every snapshot in the workspace (0.2 s for three windows, and
    growing with the history), where this touches only the files it needs."""
    Path(workspace_dir).mkdir(parents=True, exist_ok=True)
    return LocalState(str(workspace_dir))


def find_project(workspace_dir: str | Path, name: str = PROJECT) -> str | None:
    """The id of the project named `name` in the workspace, or None."""
    state = _state(workspace_dir)
    for project_id in sorted(state.list_projects(), key=str):
        try:
            if state.read_project(project_id).name == name:
                return str(project_id)
        except FileNotFoundError:  # a folder without metadata.json is not a project
            continue
    return None


def ensure_project(workspace_dir: str | Path, name: str = PROJECT) -> str:
    """Create the project `name` in the local workspace (once) and (re)write its dashboard
    when it differs from `dashboard_model()`. Returns the project id."""
    state = _state(workspace_dir)
    project_id = find_project(workspace_dir, name)
    if project_id is None:
        project_id = str(state.write_project(ProjectModel(
            name=name, description="hyperrec serving windows: drift, CTR/conversion per arm, feature freshness, "
                                   "retrain events")).id)
    wanted = dashboard_model()
    if json.loads(state.read_dashboard(project_id).json()) != json.loads(wanted.json()):
        state.write_dashboard(project_id, wanted)
    return project_id


def window_frame(current: pd.DataFrame, columns: list[str], outcomes: pd.DataFrame,
                 freshness_s: np.ndarray | list, retrains: int) -> pd.DataFrame:
    """One table for one report: the feature rows, the impression rows (`arm`, `clicked`,
    `purchased`), the freshness sample and the retrain count side by side, NaN-padded."""
    clash = sorted(set(columns) & set(RESERVED))
    if clash:
        raise ValueError(f"feature columns {clash} clash with the dashboard's own columns {list(RESERVED)}")
    missing = sorted({ARM, CLICKED, PURCHASED} - set(outcomes.columns))
    if missing:
        raise ValueError(f"outcomes lacks columns {missing} (needs arm, clicked, purchased)")
    fresh = np.asarray(freshness_s, dtype=float)
    parts = [current[columns].reset_index(drop=True),
             pd.DataFrame({ARM: outcomes[ARM].astype(str).to_numpy(),
                           CLICKED: outcomes[CLICKED].astype(float).to_numpy(),
                           PURCHASED: outcomes[PURCHASED].astype(float).to_numpy()}),
             pd.DataFrame({FRESHNESS: fresh[np.isfinite(fresh)]}),
             pd.DataFrame({RETRAINS: [float(retrains)]})]
    return pd.concat(parts, axis=1)


def window_report(numerical: list[str], categorical: list[str], has_outcomes: bool = True,
                  has_freshness: bool = True) -> Report:
    """The report `record_window` runs: every metric the panels read, and only those.
    `DriftedColumnsCount` + one `ValueDrift` per column is what `DataDriftPreset` holds,
    without the preset's drift table widget (3x faster: 1.3 s instead of 3.7 s for 7
    columns, 2k current and 10k reference rows)."""
    metrics = [DriftedColumnsCount(columns=[*numerical, *categorical], num_method=NUM_METHOD, cat_method=CAT_METHOD),
               *(ValueDrift(column=c, method=NUM_METHOD) for c in numerical),
               *(ValueDrift(column=c, method=CAT_METHOD) for c in categorical),
               SumValue(column=RETRAINS)]
    # a mean or quantile of nothing is NaN (GroupBy even invents a "nan" arm): leave them out
    if has_outcomes:
        metrics += [GroupBy(MeanValue(column=CLICKED), ARM), GroupBy(MeanValue(column=PURCHASED), ARM)]
    if has_freshness:
        metrics += [QuantileValue(column=FRESHNESS, quantile=q) for q in QUANTILES.values()]
    return Report(metrics, include_tests=False)


def record_window(workspace_dir: str | Path, *, reference: pd.DataFrame, current: pd.DataFrame, numerical: list[str],
                  categorical: list[str], outcomes: pd.DataFrame, freshness_s: np.ndarray | list, retrains: int,
                  timestamp: datetime, project: str = PROJECT, metadata: dict[str, str] | None = None) -> str:
    """Run one report for one serving window and add its snapshot, stamped `timestamp`, to
    the project (created with its dashboard if missing). Returns the snapshot id.

    reference/current: a row per request with the `numerical` and `categorical` features
    (reference = the champion's training window); outcomes: a row per impression with
    `arm`, `clicked` (0/1), `purchased` (0/1) (other columns are ignored); freshness_s:
    seconds since the user's last online-feature update, per request; retrains: retraining
    decisions that fired in the window (see `retrains_between`)."""
    columns = [*numerical, *categorical]
    cur = window_frame(current, columns, outcomes, freshness_s, retrains)
    ref = reference[columns].reset_index(drop=True).reindex(columns=cur.columns)
    ref[ARM] = ref[ARM].astype(object)
    definition = DataDefinition(numerical_columns=[*numerical, CLICKED, PURCHASED, FRESHNESS, RETRAINS],
                                categorical_columns=[*categorical, ARM])
    report = window_report(numerical, categorical, has_outcomes=len(outcomes) > 0,
                           has_freshness=bool(cur[FRESHNESS].notna().any()))
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        # NaN padding: Evidently's widgets warn about empty reference columns and empty concat
        warnings.simplefilter("ignore", category=RuntimeWarning)
        warnings.simplefilter("ignore", category=FutureWarning)
        snapshot = report.run(Dataset.from_pandas(cur, data_definition=definition),
                              Dataset.from_pandas(ref, data_definition=definition),
                              timestamp=timestamp, tags=[WINDOW_TAG], metadata=dict(metadata or {}))
    project_id = ensure_project(workspace_dir, project)
    snapshot_id = new_id()
    _state(workspace_dir).write_snapshot(project_id, snapshot_id, snapshot.to_snapshot_model())
    return str(snapshot_id)


def window_values(workspace_dir: str | Path, snapshot_id: str, project: str = PROJECT) -> dict:
    """The numbers a stored window holds, as the panels read them: drift share and count,
    distance per feature, CTR and conversion per arm, freshness quantiles, retrains."""
    model = _state(workspace_dir).read_snapshot(find_project(workspace_dir, project), snapshot_id)
    out: dict = {"timestamp": model.timestamp, "drift": {}, "ctr": {}, "conversion": {}, "freshness": {}}
    for result in model.metric_results.values():
        params = result.metric_value_location.metric.params
        kind = params["type"].rsplit(":", 1)[-1]
        if kind == "DriftedColumnsCount":
            out["drifted_share"], out["drifted_count"] = float(result.share.value), int(result.count.value)
        elif kind == "ValueDrift":
            out["drift"][params["column"]] = float(result.value)
        elif kind == "GroupByMetric":
            key = {CLICKED: "ctr", PURCHASED: "conversion"}[params["metric"]["column"]]
            out[key][str(params["label"])] = float(result.value)
        elif kind == "QuantileValue":
            out["freshness"][float(params["quantile"])] = float(result.value)
        elif kind == "SumValue":
            out["retrains"] = int(result.value)
    return out


def retrains_between(records: Iterable[dict], start: float, end: float) -> int:
    """Retraining decisions that fired in [start, end) (unix seconds), from the records of a
    `hyperrec.monitor.trigger.RetrainTrigger` decision log (`trigger.records()`)."""
    return sum(1 for r in records if r.get("event") == "decision" and r.get("retrain") and start <= r["ts"] < end)


# ---------------------------------------------------------------- demo data

def _demo_window(rng: np.random.Generator, n: int, taste: float, gap: float, freshness_scale: float = 1.0,
                 k: int = 5) -> dict:
    """Synthetic requests and impressions. `taste` (0..1): how far users' tastes moved (device
    mix and dwell follow it); `gap` (0..1): how far the serving model lags behind them (CTR,
    clicks and conversion fall with it)."""
    from hyperrec.data.generate import CATEGORIES

    fav_ctr, base_ctr = 0.20 - 0.16 * gap, 0.05
    views = rng.poisson(50, n)
    ctr_user = (4 * fav_ctr + (len(CATEGORIES) - 4) * base_ctr) / len(CATEGORIES)
    clicks = rng.binomial(views, ctr_user)
    features = pd.DataFrame({
        "views_7d": views, "clicks_7d": clicks, "ctr_7d": clicks / np.maximum(views, 1),
        "mean_dwell_7d": rng.gamma(4, 7.5 * (1 - 0.25 * taste), n), "recency_s": rng.exponential(1e5, n),
        "hour_of_day": rng.integers(0, 24, n),
        "device": rng.choice(["mobile", "desktop", "tablet"], n, p=[0.6 + 0.25 * taste, 0.3 - 0.2 * taste,
                                                                    0.1 - 0.05 * taste])})
    arm = np.repeat(rng.choice(ARMS, n), k)  # a user's list is served by one arm
    category = rng.choice(CATEGORIES, n * k)
    lift = np.where(arm == "diverse-explore", 1.12, 1.0)
    clicked = rng.random(n * k) < np.where(np.isin(category, CATEGORIES[:4]), fav_ctr, base_ctr) * lift
    purchased = clicked & (rng.random(n * k) < 0.12 * (1 - 0.3 * gap))
    outcomes = pd.DataFrame({"arm": arm, "clicked": clicked.astype(int), "purchased": purchased.astype(int),
                             "score": rng.beta(1, 12, n * k), "category": category})
    freshness = rng.lognormal(np.log(0.8), 0.6, n) * freshness_scale
    return {"features": features, "outcomes": outcomes, "freshness_s": freshness}


def seed_demo(workspace_dir: str | Path, days: int = 14, drift_day: int | None = None, requests: int = 2000,
              seed: int = 0, start: datetime | None = None, project: str = PROJECT) -> list[str]:
    """`days` synthetic daily windows: users' tastes start moving on `drift_day` (default two
    thirds in), the real `RetrainTrigger` (numpy drift twin) judges each day against the
    current reference, and a fired retrain catches the model up the next day (a new
    reference, CTR recovers). One day has a stream-processor lag (freshness x20).
    Returns the snapshot ids, oldest first."""
    from hyperrec.monitor.trigger import FEATURES, RetrainTrigger, Window

    rng = np.random.default_rng(seed)
    drift_day = days * 2 // 3 if drift_day is None else drift_day
    start = start or datetime(2025, 1, 1, tzinfo=UTC)
    ensure_project(workspace_dir, project)
    log_dir = tempfile.TemporaryDirectory(prefix="hyperrec-demo-")
    trigger = RetrainTrigger(Path(log_dir.name) / "decisions.jsonl")
    model_taste, ref_id = 0.0, "demo-model-1"
    reference = _demo_window(rng, 10_000, taste=0.0, gap=0.0)
    ids = []
    for day in range(days):
        taste = min((day - drift_day + 1) / 2, 1.0) if day >= drift_day else 0.0  # moves over two days
        window = _demo_window(rng, requests, taste, gap=max(taste - model_taste, 0.0),
                              freshness_scale=20.0 if day == days // 3 else 1.0)
        ts = start + timedelta(days=day)
        decision = trigger.decide(Window(reference["features"], reference["outcomes"]),
                                  Window(window["features"], window["outcomes"]), ref_id, now=ts.timestamp())
        ids.append(record_window(workspace_dir, reference=reference["features"], current=window["features"],
                                 numerical=list(FEATURES), categorical=["device"], outcomes=window["outcomes"],
                                 freshness_s=window["freshness_s"], retrains=int(decision.retrain), timestamp=ts,
                                 project=project, metadata={"reference_id": ref_id, "decision": decision.status}))
        if decision.retrain:  # the retrained model serves from the next day: it knows today's tastes
            trigger.run_finished(decision.run_id, now=ts.timestamp() + 3600)
            model_taste, ref_id = taste, f"demo-model-{len(ids) + 1}"
            reference = _demo_window(rng, 10_000, taste=taste, gap=0.0)
    log_dir.cleanup()
    return ids


def list_windows(workspace_dir: str | Path, project: str = PROJECT) -> list[str]:
    """Snapshot ids stored in the project (none if it does not exist)."""
    project_id = find_project(workspace_dir, project)
    return [] if project_id is None else [str(s) for s in _state(workspace_dir).list_snapshots(project_id)]
