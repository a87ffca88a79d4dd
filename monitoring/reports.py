"""Thin wrappers over Evidently 0.7 (`evidently.Report`, `DataDriftPreset`, `ValueDrift`,
`DataDefinition`/`Dataset`, local `evidently.ui.workspace.Workspace`): pandas frames in,
plain dicts of numbers out, so callers never hold Evidently objects.

- `drift_report`: Evidently's own drift preset (its per-column method choice and
  thresholds), for dashboards. Its verdicts are NOT what the retraining trigger uses: the
  default method switches with reference size (KS/chi-square p < 0.05 up to 1000 reference
  rows, normed Wasserstein / Jensen-Shannon >= 0.1 above), and either half is
  mis-calibrated somewhere (see `hyperrec.monitor.trigger`).
- `column_drift`: the numbers the trigger needs (a p-value AND a distance per column) in
  the shape of `hyperrec.monitor.trigger.column_drift`; inject it to have every decision's
  numbers land in the workspace too:
  `RetrainTrigger(log, drift_fn=functools.partial(column_drift, workspace=ws_dir))`.
  1-2.5 s per call here (each `ValueDrift` renders its widget), so the bench uses the
  numpy twin, which a test holds equal to this.

Traps in 0.7.23: a `ValueDrift` value is ONE number, a p-value or a distance depending on
the method (hence two metrics per column); an auto-resolved method is reported by display
name ("Wasserstein distance (normed)"); per-column verdicts exist only as tests
(`include_tests=True`); `chisquare` uses the reference counts as expected counts (not a
two-sample test) and gives p = 0 for a value absent from the reference.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from evidently import DataDefinition, Dataset, Report
from evidently.metrics import ValueDrift
from evidently.presets import DataDriftPreset
from evidently.ui.workspace import Workspace

PROJECT = "hyperrec-drift"
# methods run by `column_drift`, by column kind: (p-value test, distance)
METHODS = {"numerical": ("ks", "wasserstein"), "categorical": ("chisquare", "jensenshannon")}


def _datasets(reference: pd.DataFrame, current: pd.DataFrame, numerical: list[str], categorical: list[str]):
    definition = DataDefinition(numerical_columns=list(numerical), categorical_columns=list(categorical))
    cols = [*numerical, *categorical]
    return (Dataset.from_pandas(reference[cols], data_definition=definition),
            Dataset.from_pandas(current[cols], data_definition=definition))


def save_snapshot(snapshot, workspace: Path, project: str = PROJECT) -> str:
    """Add a run to the project named `project` in the local workspace at `workspace`
    (created if missing; `evidently ui --workspace <dir>` serves it). Returns the run id."""
    ws = Workspace.create(str(workspace))
    found = ws.search_project(project)
    proj = found[0] if found else ws.create_project(project, description="hyperrec serving vs training drift")
    return str(ws.add_run(proj.id, snapshot, include_data=False).id)


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, numerical: list[str], categorical: list[str] = (),
                 workspace: Path | None = None, project: str = PROJECT, name: str | None = None,
                 **preset) -> dict:
    """`DataDriftPreset` over the given columns (`preset` kwargs pass through: method,
    threshold, drift_share, ...). Per column: Evidently's resolved method, score, threshold
    and verdict; plus the drifted count and share, and the snapshot id if saved."""
    ref, cur = _datasets(reference, current, numerical, categorical)
    snapshot = Report([DataDriftPreset(**preset)], include_tests=True).run(cur, ref, name=name)
    result = snapshot.dict()
    verdicts = {t["metric_config"]["params"]["column"]: t["status"] == "FAIL" for t in result["tests"]
                if t["metric_config"]["params"].get("type", "").endswith("ValueDrift")}
    out = {"columns": {}, "snapshot_id": None}
    for metric in result["metrics"]:
        cfg = metric["config"]
        if cfg["type"].endswith("DriftedColumnsCount"):
            out |= {"drifted_count": int(metric["value"]["count"]), "drifted_share": float(metric["value"]["share"]),
                    "dataset_drift": metric["value"]["share"] >= cfg.get("drift_share", 0.5)}
        elif cfg["type"].endswith("ValueDrift"):
            out["columns"][cfg["column"]] = {"method": cfg["method"], "score": float(metric["value"]),
                                             "threshold": cfg["threshold"], "drifted": verdicts[cfg["column"]]}
    if workspace is not None:
        out["snapshot_id"] = save_snapshot(snapshot, workspace, project)
    return out


def column_drift(reference: pd.DataFrame, current: pd.DataFrame, numerical: list[str], categorical: list[str],
                 workspace: Path | None = None, project: str = PROJECT, name: str | None = None) -> dict[str, dict]:
    """Per column a p-value (KS / chi-square) and a distance (normed Wasserstein /
    Jensen-Shannon) from Evidently's `ValueDrift`; same keys as `hyperrec.monitor.trigger.column_drift`.
    With `workspace`, the report is saved there and `snapshot_id` added to every column."""
    kinds = {c: "numerical" for c in numerical} | {c: "categorical" for c in categorical}
    metrics = [ValueDrift(column=c, method=m) for c, kind in kinds.items() for m in METHODS[kind]]
    ref, cur = _datasets(reference, current, numerical, categorical)
    snapshot = Report(metrics).run(cur, ref, name=name)
    values = {(m["config"]["column"], m["config"]["method"]): float(m["value"]) for m in snapshot.dict()["metrics"]}
    snapshot_id = save_snapshot(snapshot, workspace, project) if workspace is not None else None
    out = {}
    for col, kind in kinds.items():
        p_method, d_method = METHODS[kind]
        out[col] = {"kind": kind, "p_value": values[col, p_method], "p_method": p_method,
                    "distance": values[col, d_method], "distance_method": d_method,
                    "n_reference": int(reference[col].notna().sum()), "n_current": int(current[col].notna().sum())}
        if workspace is not None:
            out[col]["snapshot_id"] = snapshot_id
    return out
