"""Served traffic as monitoring windows: impressions (what was shown, with the serving-time
features) joined with outcomes (clicks, purchases from the event log), plus the checks
that only served traffic allows: online hit rate, query-embedding drift and the recall of
the serving index against exact search on live queries.

Outcome attribution: an event that names the `request_id` of the list it came from counts
for that list; an event without one counts for the latest list that showed the same item
to the same user within `ATTRIBUTION_S` before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats

from hyperrec.monitor.trigger import FEATURES, Window

ATTRIBUTION_S = 30 * 60
OUTCOME_TYPES = {"click": "clicked", "purchase": "purchased"}


def shown_items(impressions: pd.DataFrame) -> pd.DataFrame:
    """One row per shown item: request_id, ts, user_id, arm, policy, model_version, position,
    interleaved (of the list, `ImpressionLog.read`), item_id, category, score, and team: the
    version that placed the item (`model_version` unless the list was interleaved,
    `hyperrec.experiments.interleave`)."""
    lengths = impressions["items"].map(len).to_numpy()
    flat = [entry for items in impressions["items"] for entry in items]
    meta = impressions[["request_id", "ts", "user_id", "arm", "policy", "model_version", "interleaved"]]
    out = meta.loc[meta.index.repeat(lengths)].reset_index(drop=True)
    out["position"] = np.concatenate([np.arange(n) for n in lengths]) if len(lengths) else np.array([], int)
    out["item_id"] = [e[0] for e in flat]
    out["category"] = [e[1] for e in flat]
    out["score"] = np.array([e[2] for e in flat], float)
    out["team"] = np.array([e[3] if len(e) > 3 else v for e, v in zip(flat, out["model_version"])], np.int64)
    return out


def attribute(shown: pd.DataFrame, events: pd.DataFrame, attribution_s: float = ATTRIBUTION_S) -> pd.DataFrame:
    """`shown` plus 0/1 columns `clicked` and `purchased` (see the module doc), and
    `dwell_s`: the seconds spent after the click (NaN when not clicked or not reported)."""
    out = shown.copy()
    for col in OUTCOME_TYPES.values():
        out[col] = 0
    out["dwell_s"] = np.nan
    if events.empty or out.empty:
        return out
    events = events[events["event_type"].isin(list(OUTCOME_TYPES))].copy()
    events["ts_s"] = pd.to_datetime(events["ts"], utc=True).astype("int64") / 1e9
    has_request = events["request_id"].notna() if "request_id" in events else pd.Series(False, index=events.index)
    slot = pd.Series(out.index, index=pd.MultiIndex.from_arrays([out["request_id"], out["item_id"]]))
    slot = slot[~slot.index.duplicated()]
    for kind, col in OUTCOME_TYPES.items():
        of_kind = events[events["event_type"] == kind]
        exact = of_kind[has_request.loc[of_kind.index]]
        keys = pd.MultiIndex.from_arrays([exact["request_id"], exact["item_id"]])
        found = slot.reindex(keys)
        rows = found.dropna().astype(int).to_numpy()
        out.loc[rows, col] = 1
        if kind == "click" and "dwell_s" in exact:
            out.loc[rows, "dwell_s"] = exact["dwell_s"].to_numpy(float)[found.notna().to_numpy()]
        loose = of_kind[~has_request.loc[of_kind.index]].sort_values("ts_s")
        if loose.empty:
            continue
        left = loose[["user_id", "item_id", "ts_s"]].rename(columns={"ts_s": "ts"})
        right = out[out["user_id"].notna()][["user_id", "item_id", "ts"]].reset_index().sort_values("ts")
        matched = pd.merge_asof(left.astype({"ts": float}), right.astype({"ts": float}), on="ts",
                                by=["user_id", "item_id"], direction="backward", tolerance=float(attribution_s))
        hit = matched["index"].notna().to_numpy()
        out.loc[matched["index"][hit].astype(int).to_numpy(), col] = 1
        if kind == "click" and "dwell_s" in loose:
            out.loc[matched["index"][hit].astype(int).to_numpy(), "dwell_s"] = loose["dwell_s"].to_numpy(float)[hit]
    return out


def window(impressions: pd.DataFrame, events: pd.DataFrame, attribution_s: float = ATTRIBUTION_S
           ) -> tuple[Window, pd.DataFrame]:
    """The trigger's `Window` for a set of served lists, and the per-item outcomes."""
    outcomes = attribute(shown_items(impressions), events, attribution_s)
    features = impressions[list(FEATURES)].astype(float).reset_index(drop=True)
    return Window(features, outcomes[["score", "category", "clicked"]]), outcomes


def hit_rate(outcomes: pd.DataFrame) -> dict:
    """Share of served lists with at least one click (personalized lists and all)."""
    per_list = outcomes.groupby("request_id").agg(hit=("clicked", "max"), policy=("policy", "first"))
    personal = per_list[per_list["policy"] == "personalized"]
    return {"hit_rate": float(per_list["hit"].mean()) if len(per_list) else float("nan"),
            "hit_rate_personalized": float(personal["hit"].mean()) if len(personal) else float("nan"),
            "lists": len(per_list)}


def outcomes_by_arm_and_version(outcomes: pd.DataFrame) -> list[dict]:
    """Per (arm, model version): lists, shown items, CTR, conversion (per shown item), share
    of lists with a click, and mean dwell after a click: what each variant did for users."""
    rows = []
    for (arm, version), group in outcomes.groupby(["arm", "model_version"], sort=True):
        per_list = group.groupby("request_id")["clicked"].max()
        dwell = group.loc[group["clicked"] == 1, "dwell_s"].dropna()
        rows.append({"arm": str(arm), "model_version": int(version), "lists": len(per_list), "shown": len(group),
                     "ctr": float(group["clicked"].mean()), "conversion": float(group["purchased"].mean()),
                     "lists_with_click": float(per_list.mean()),
                     "mean_dwell_s": float(dwell.mean()) if len(dwell) else None})
    return rows


def data_quality(reference: pd.DataFrame, current: pd.DataFrame, columns=FEATURES, max_missing: float = 0.01,
                 max_out_of_range: float = 0.05) -> dict:
    """Per serving-time feature: share of missing (NaN/inf) values and share outside the
    reference's central 99.8% range; `problems` names the columns over the limits. A broken
    feature pipeline shows here first, and it is a page to an engineer, not a retrain."""
    out, problems = {}, []
    for col in columns:
        ref = reference[col].to_numpy(float)
        cur = current[col].to_numpy(float)
        ref = ref[np.isfinite(ref)]
        finite = np.isfinite(cur)
        lo, hi = (np.quantile(ref, [0.001, 0.999]) if len(ref) else (np.nan, np.nan))
        outside = float(np.mean((cur[finite] < lo) | (cur[finite] > hi))) if finite.any() and len(ref) else 0.0
        out[col] = {"missing_share": float(1 - finite.mean()) if len(cur) else 0.0, "out_of_range_share": outside,
                    "reference_range": [float(lo), float(hi)]}
        if out[col]["missing_share"] > max_missing or outside > max_out_of_range:
            problems.append(col)
    return {"columns": out, "problems": problems}


@dataclass(frozen=True)
class EmbeddingDrift:
    """Embeddings of the current window against the reference's (live queries, or the items
    shown), on the reference's top principal components (where they actually vary), and
    their norms."""

    distances: dict[str, float]  # normed Wasserstein per component and for the norm
    p_values: dict[str, float]  # KS
    n_reference: int
    n_current: int

    @property
    def max_distance(self) -> float:
        return max(self.distances.values()) if self.distances else float("nan")


def _queries(frame: pd.DataFrame) -> np.ndarray:
    sampled = [q for q in frame["query"] if q is not None]
    return np.stack(sampled) if sampled else np.zeros((0, 0), np.float32)


def embedding_drift(reference: pd.DataFrame, current: pd.DataFrame, components: int = 3) -> EmbeddingDrift | None:
    """Drift of the sampled query embeddings; None when either side has fewer than 30."""
    return vector_drift(_queries(reference), _queries(current), components)


def served_item_drift(reference: pd.DataFrame, current: pd.DataFrame, item_ids: np.ndarray,
                      item_embeddings: np.ndarray, sample: int = 5_000, seed: int = 0) -> EmbeddingDrift | None:
    """Drift of what is recommended, in the model's own item space: the embeddings of the
    items shown in each window (one per shown slot, up to `sample`), compared like the
    queries. Catches the model steering users to another region of the catalog even when
    the category mix looks the same. None with fewer than 30 shown known items a side."""
    index = {item: i for i, item in enumerate(item_ids)}
    rng = np.random.default_rng(seed)

    def vectors(frame: pd.DataFrame) -> np.ndarray:
        rows = np.array([index[e[0]] for items in frame["items"] for e in items if e[0] in index], np.int64)
        if len(rows) > sample:
            rows = rng.choice(rows, sample, replace=False)
        return item_embeddings[rows] if len(rows) else np.zeros((0, item_embeddings.shape[1]), np.float32)

    return vector_drift(vectors(reference), vectors(current))


def vector_drift(ref: np.ndarray, cur: np.ndarray, components: int = 3) -> EmbeddingDrift | None:
    """Two samples of vectors: per top principal component of `ref` and for the norm, the
    normed Wasserstein distance and the KS p-value. None with fewer than 30 a side."""
    if len(ref) < 30 or len(cur) < 30 or ref.shape[1] != cur.shape[1]:
        return None
    mean = ref.mean(axis=0)
    _, _, vt = np.linalg.svd(ref - mean, full_matrices=False)
    axes = {f"pc{i + 1}": vt[i] for i in range(min(components, len(vt)))}
    project = {name: ((ref - mean) @ axis, (cur - mean) @ axis) for name, axis in axes.items()}
    project["norm"] = (np.linalg.norm(ref, axis=1), np.linalg.norm(cur, axis=1))
    distances, p_values = {}, {}
    for name, (r, c) in project.items():
        distances[name] = float(stats.wasserstein_distance(r, c) / max(float(np.std(r)), 1e-6))
        p_values[name] = float(stats.ks_2samp(r, c)[1])
    return EmbeddingDrift(distances, p_values, len(ref), len(cur))


def index_recall(index, item_embeddings: np.ndarray, queries: np.ndarray, k: int = 50) -> float:
    """Mean share of the exact top-k (inner product over the whole catalog) that the serving
    index returns for the same live queries: 1.0 for an exact index by construction, the
    real number for an approximate one."""
    if len(queries) == 0:
        return float("nan")
    found, _ = index.search(queries.astype(np.float32), k, [np.array([], np.int64)] * len(queries))
    exact = np.argpartition(-(queries @ item_embeddings.T), k - 1, axis=1)[:, :k]
    return float(np.mean([len(set(f[f >= 0]) & set(e)) / k for f, e in zip(found, exact)]))
