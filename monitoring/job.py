"""`hyperrec monitor`: one pass of the monitoring job over served traffic.

Reference: the lists the current champion served in its first `reference_s` (a whole day
by default, so that daily cycles such as hour_of_day compare like with like; the same
serving-time feature computation as the window it is compared with, whereas training rows
are stamped at event times, not request times, and would differ by construction).
Current: the champion's lists of the last full `window_s` after the reference, ending
`attribution_s` before the newest impression so that every list in it has had time to
collect its clicks. On a cluster (`Settings.kafka_bootstrap`), the pass first copies the
impression topic into its own impression log (`hyperrec.data.kafka_impressions`). Then:

0. when a challenger is on trial, its interleaved (or A/B) test against the champion
   (`hyperrec.experiments.canary`): promote, retire or keep collecting -> a line in `<home>/monitoring/trials.jsonl`;
1. `RetrainTrigger.decide` (significance and size, minimum sample, cooldown, one run in
   flight, dedupe) -> a decision line in `<home>/monitoring/decisions.jsonl`; when it
   fires, the submitter starts the retraining run (embedded: `hyperrec retrain`; cluster:
   the KFP pipeline);
2. the checks only served traffic allows: online hit rate; CTR, conversion and dwell per
   arm and model version; drift of the query embeddings and of the shown items' embeddings
   (what is recommended, in the model's item space); the serving index's recall against
   exact search on the window's sampled live queries; data quality of the serving-time
   features (missing and out-of-range shares);
3. one Evidently snapshot for the dashboard (`make ui`), and a line in `reports.jsonl`.
"""

from __future__ import annotations

import functools
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from hyperrec.config import Settings
from hyperrec.data.eventlog import EventLog
from hyperrec.data.impressions import ImpressionLog
from hyperrec.data.kafka_impressions import drain_impressions
from hyperrec.experiments.canary import (
    CONTINUE,
    PROMOTE,
    CanaryConfig,
    judge,
    judge_interleaved,
    lists_with_outcomes,
    team_lists,
)
from hyperrec.monitor.traffic import (
    ATTRIBUTION_S,
    attribute,
    data_quality,
    embedding_drift,
    hit_rate,
    index_recall,
    outcomes_by_arm_and_version,
    served_item_drift,
    shown_items,
    window,
)
from hyperrec.monitor.trigger import FEATURES, RetrainTrigger, TriggerConfig
from hyperrec.registry.model_registry import champion_version

DAY = 86_400.0


def paths(settings: Settings) -> dict[str, Path]:
    root = settings.monitoring_dir
    return {"decisions": root / "decisions.jsonl", "reports": root / "reports.jsonl", "workspace": root / "evidently",
            "trials": root / "trials.jsonl"}


class _Decoded:
    """An append-only log's rows as decoded by this process's earlier passes: a pass decodes
    only the rows logged since. The demo's loop and `hyperrec monitor --loop` pass every few
    hours over days of traffic, and decoding all of it again cost about a second a pass at
    30k lists. A row deleted since (a user's erasure) changes the fingerprint, and the log
    is read again from the start."""

    def __init__(self):
        self.last, self.mark, self.frame = 0, None, pd.DataFrame()

    def update(self, read_after, fingerprint, order_by: str | None = None) -> pd.DataFrame:
        if self.last and fingerprint(self.last) != self.mark:
            self.__init__()
        last, new = read_after(self.last)
        if not new.empty or self.frame.columns.empty:  # keep the reader's columns even with no rows yet
            frame = pd.concat([self.frame, new], ignore_index=True) if len(self.frame) else new
            self.frame = frame.sort_values(order_by, kind="stable", ignore_index=True) if order_by else frame
            self.last, self.mark = last, fingerprint(last)
        return self.frame


_DECODED: dict[tuple[str, Path], _Decoded] = {}


def _served(settings: Settings) -> pd.DataFrame:
    """Every logged impression, ordered by time."""
    if not settings.impression_log.exists():
        return pd.DataFrame(columns=["request_id", "ts", "user_id", "model_version", "items"])
    log = ImpressionLog(settings.impression_log)
    try:
        cache = _DECODED.setdefault(("impressions", settings.impression_log), _Decoded())
        return cache.update(log.read_after, log.fingerprint, order_by="ts")
    finally:
        log.close()


def _events(settings: Settings) -> pd.DataFrame:
    """Every logged event, in logging order."""
    log = EventLog(settings.event_log)
    cache = _DECODED.setdefault(("events", settings.event_log), _Decoded())
    return cache.update(lambda after: log.read(after, limit=2**62), log.count_upto)


def trial_items(served: pd.DataFrame, champion: int) -> pd.DataFrame:
    """The shown items (`shown_items`) of the lists `served` since this pairing began: since
    the first list the champion took part in, on its own or as a team of an interleaved list.
    A holdback's challenger is the older version and served long before this trial, as
    champion or in an earlier trial's interleaved lists, which say nothing about this champion."""
    shown = shown_items(served)
    paired = shown.loc[(shown["model_version"] == champion) | (shown["team"] == champion), "ts"]
    return shown[shown["ts"] >= paired.min()] if len(paired) else shown.iloc[0:0]


def judge_trial(settings: Settings, served: pd.DataFrame, champion: int | None, events: Callable[[], pd.DataFrame],
                attribution_s: float = ATTRIBUTION_S, config: CanaryConfig = CanaryConfig()) -> dict | None:
    """The challenger's trial over the lists served since both versions first served
    (`trial_items`), each with `attribution_s` to collect its clicks; promote or retire it
    in the registry when decided. None when no challenger is on trial. `events()`: the event log, read once per pass."""
    from hyperrec.registry.model_registry import challenger_version, end_challenger

    challenger = challenger_version(settings)
    if challenger is None or champion is None or challenger == champion:
        return None
    own = served[served["model_version"] == challenger]
    if own.empty:
        return {"action": CONTINUE, "reason": "the challenger has not served yet", "challenger": challenger,
                "champion": champion}
    end = float(served["ts"].max()) - attribution_s
    shown = trial_items(served[(served["ts"] >= float(own["ts"].min())) & (served["ts"] <= end)], champion)
    outcomes = attribute(shown, events(), attribution_s) if len(shown) else pd.DataFrame(
        columns=["request_id", "ts", "user_id", "model_version", "clicked", "purchased", "interleaved", "team"])
    if outcomes["interleaved"].astype(bool).any():  # the servers interleave: judge those lists, by team
        verdict = judge_interleaved(team_lists(outcomes, champion, challenger), champion, challenger, config)
    else:
        verdict = judge(lists_with_outcomes(outcomes), champion, challenger, config)
    verdict = verdict.to_dict()
    if verdict["action"] != CONTINUE:
        end_challenger(settings, "promoted" if verdict["action"] == PROMOTE else "retired", verdict["reason"])
    verdict["ts"] = end
    _append(paths(settings)["trials"], verdict)
    return verdict


def _champion_traffic(settings: Settings, served: pd.DataFrame, version: int | None) -> tuple[int | None, pd.DataFrame]:
    """The lists `version` (default: the champion) served on its own: not interleaved ones."""
    version = champion_version(settings) if version is None else version
    if version is None or served.empty:
        return version, served.iloc[0:0]
    # not interleaved: a promoted challenger's trial lists were half the old champion's
    own = (served["model_version"] == version) & ~served["interleaved"].astype(bool)
    return version, served[own].reset_index(drop=True)


def _model_dir(settings: Settings, version: int) -> Path:
    """The version's exported files, downloaded once per version and redaction for every later
    pass (the servers' download-once mechanism, in the monitor's own folder): a version an
    erasure redacted since is fetched again, so the monitor's copy forgets the user too."""
    from hyperrec.online.hotswap import load_shared
    from hyperrec.registry.model_registry import model_version_dir, redactions

    return load_shared(settings.monitoring_dir / "models", version,
                       lambda folder: model_version_dir(settings, version, folder), lambda model_dir: model_dir,
                       redactions=redactions(settings, version))


def _item_drift(settings: Settings, version: int, reference: pd.DataFrame, current: pd.DataFrame) -> dict | None:
    import mlflow

    try:
        with np.load(_model_dir(settings, version) / "candidates.npz", allow_pickle=False) as z:
            drift = served_item_drift(reference, current, z["item_ids"].astype(str), z["embeddings"])
    except (mlflow.exceptions.MlflowException, OSError) as exc:  # the decision is made; report, do not fail
        return {"error": f"v{version}'s item embeddings unavailable: {exc}"[:300]}
    return None if drift is None else {"max_distance": drift.max_distance, "distances": drift.distances,
                                       "p_values": drift.p_values, "n_reference": drift.n_reference,
                                       "n_current": drift.n_current}


def _probe_index(settings: Settings, version: int, current: pd.DataFrame, k: int = 50) -> dict:
    """The served index's recall@k against exact search on its own candidate embeddings, for
    live queries. Needs the index and the embeddings only, not the towers (no TensorFlow)."""
    from hyperrec.models.index import load_index

    queries = [q for q in current["query"] if q is not None][:500]
    if not queries:
        return {}
    model_dir = _model_dir(settings, version)
    index = load_index(model_dir / "index")
    with np.load(model_dir / "candidates.npz", allow_pickle=False) as z:
        embeddings = z["embeddings"].astype(np.float32)
    k = min(k, len(embeddings))
    recall = index_recall(index, embeddings, np.stack(queries), k)
    return {"index_kind": type(index).__name__, "index_recall_at_k": recall,
            "index_probe_queries": len(queries), "index_probe_k": k}


SHORT_WINDOW_S = 6 * 3600.0


def same_time_of_day(reference: pd.DataFrame, start: float, end: float) -> pd.DataFrame:
    """The lists of `reference` served at the times of day (UTC) of (start, end]: what a
    short window is compared with, so that hour_of_day, and any daily cycle, compare like with
    like."""
    tod = reference["ts"].to_numpy(float) % DAY
    a, b = start % DAY, end % DAY
    keep = ((tod > a) & (tod <= b)) if a < b else ((tod > a) | (tod <= b))
    return reference[keep]


def _short_window(settings: Settings, reference: pd.DataFrame, served: pd.DataFrame, end: float, short_s: float,
                  events: Callable[[], pd.DataFrame], attribution_s: float, config: TriggerConfig, submitter,
                  version: int, on_trial: bool) -> dict:
    """The short window's decision (`TriggerConfig.short`): the champion's lists of the last
    `short_s` before `end` against the reference's lists at the same times of day; logged in
    decisions.jsonl beside the day's, under the same safeguards (one run in flight,
    cooldown, dedupe), since both read and write the same log."""
    start = end - short_s
    if start < float(reference["ts"].max()):
        return {"status": "window_not_ready", "window_s": short_s}
    current = served[(served["ts"] > start) & (served["ts"] <= end)]
    matched = same_time_of_day(reference, start, end)
    if current.empty:
        return {"status": "no_current_window", "window_s": short_s}
    if len(matched) < config.short().min_requests:
        # a reference day mostly spent in an online trial holds few of the champion's own lists
        # (its interleaved ones are left out): 47 at those hours once, against 633, and the
        # category mix and scores of what little it held "drifted"
        return {"status": "reference_too_small", "window_s": short_s,
                "window": {"lists": len(current), "reference_lists": len(matched), "from": start, "to": end}}
    ref_window, _ = window(matched, events(), attribution_s)
    cur_window, _ = window(current, events(), attribution_s)
    trigger = RetrainTrigger(paths(settings)["decisions"], config.short(),
                             submit=submitter.submit if submitter else None,
                             is_running=submitter.is_running if submitter else None)
    decision = trigger.decide(ref_window, cur_window, reference_id=f"champion-v{version}", now=end, on_trial=on_trial)
    return {"status": decision.status, "retrain": decision.retrain, "reasons": decision.reasons,
            "blocked_by": decision.blocked_by, "run_id": decision.run_id, "window_s": short_s,
            "window": {"lists": len(current), "reference_lists": len(matched), "from": start, "to": end}}


def run_once(settings: Settings, submitter=None, *, window_s: float = DAY, reference_s: float = DAY,
             attribution_s: float = ATTRIBUTION_S, config: TriggerConfig = TriggerConfig(), dashboard: bool = True,
             probe_index: bool = True, champion: int | None = None, short_window_s: float = SHORT_WINDOW_S) -> dict:
    """One monitoring pass; returns its report (also appended to reports.jsonl). `champion`:
    the version whose traffic to judge (default: the registry's @champion). `short_window_s`
    (0: none): when the day's window is not ready yet or finds no drift, the last
    `short_window_s` of the champion's lists are also judged against the reference's lists at
    the same times of day (`TriggerConfig.short`), so a drift can fire within hours of its
    start; its decision is the report's `short_window`, and when it fires, the pass's."""
    out = paths(settings)
    drained = None
    if settings.kafka_bootstrap:  # a cluster: the server's lists are on the impression topic, not in a shared file
        drained = drain_impressions(settings).as_dict()
    everything = _served(settings)
    events = functools.cache(lambda: _events(settings))
    trial = judge_trial(settings, everything, champion or champion_version(settings), events, attribution_s)
    version, served = _champion_traffic(settings, everything, champion)
    report: dict = {"ran_at": time.time(), "champion": version}
    if drained is not None:
        report["impressions_drained"] = drained
    if trial is not None:
        report["trial"] = trial
    span = float(served["ts"].max() - served["ts"].min()) if len(served) else 0.0
    if version is None or span < reference_s or len(served) < config.min_requests:
        report |= {"status": "reference_not_ready",
                   "detail": f"the champion served {len(served)} lists over {span / 3600:.1f} h; the reference needs "
                             f"{reference_s / 3600:.0f} h and >= {config.min_requests} lists"}
        return _append(out["reports"], report)
    reference = served[served["ts"] < float(served["ts"].min()) + reference_s]
    end = float(served["ts"].max()) - attribution_s
    start = end - window_s
    on_trial = trial is not None and trial["action"] == CONTINUE

    def short_window() -> dict:
        short = _short_window(settings, reference, served, end, short_window_s, events, attribution_s, config,
                              submitter, version, on_trial)
        report["short_window"] = short
        if short.get("retrain"):
            report.update({k: short[k] for k in ("status", "retrain", "reasons", "blocked_by", "run_id")})
        return short

    if start < float(reference["ts"].max()):  # a part of a day would "drift" in hour_of_day alone
        report |= {"status": "window_not_ready", "detail": f"{(end - float(reference['ts'].max())) / 3600:.1f} h "
                                                           f"served after the reference; the window needs "
                                                           f"{window_s / 3600:.0f} h"}
        if short_window_s:
            short_window()
        return _append(out["reports"], report)
    current = served[(served["ts"] > start) & (served["ts"] <= end)]
    ref_window, _ = window(reference, events(), attribution_s)
    cur_window, cur_outcomes = window(current, events(), attribution_s) if len(current) else (None, None)
    report |= {"reference": {"lists": len(reference), "from": float(reference["ts"].min()),
                             "to": float(reference["ts"].max())},
               "window": {"lists": len(current), "from": start, "to": end}}
    if cur_window is None:
        report["status"] = "no_current_window"
        return _append(out["reports"], report)

    trigger = RetrainTrigger(out["decisions"], config, submit=submitter.submit if submitter else None,
                             is_running=submitter.is_running if submitter else None)
    decision = trigger.decide(ref_window, cur_window, reference_id=f"champion-v{version}", now=end, on_trial=on_trial)
    report |= {"status": decision.status, "retrain": decision.retrain, "reasons": decision.reasons,
               "blocked_by": decision.blocked_by, "run_id": decision.run_id}
    if short_window_s and decision.status in ("no_drift", "too_few_samples"):
        short_window()
    report |= hit_rate(cur_outcomes)
    report["outcomes"] = outcomes_by_arm_and_version(cur_outcomes)
    report["data_quality"] = data_quality(reference, current)
    drift = embedding_drift(reference, current)
    report["embedding_drift"] = None if drift is None else {
        "max_distance": drift.max_distance, "distances": drift.distances, "p_values": drift.p_values,
        "n_reference": drift.n_reference, "n_current": drift.n_current}
    report["item_embedding_drift"] = _item_drift(settings, version, reference, current)
    if probe_index:
        report |= _probe_index(settings, version, current)
    if dashboard:
        from monitoring.dashboard import record_window, retrains_between

        freshness = current["recency_s"].to_numpy(float)
        report["snapshot_id"] = record_window(
            out["workspace"], reference=ref_window.features, current=cur_window.features, numerical=list(FEATURES),
            categorical=[], outcomes=cur_outcomes, freshness_s=freshness[freshness >= 0],
            retrains=retrains_between(trigger.records(), start, end + 1), timestamp=datetime.fromtimestamp(end, UTC),
            metadata={"champion": str(version), "status": decision.status})
    return _append(out["reports"], report)


def _append(path: Path, report: dict) -> dict:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(report, default=float) + "\n")
    return report
