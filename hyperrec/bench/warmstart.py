"""`hyperrec bench warm-start`: retraining from the champion's weights vs from scratch,
measured on the same split in one run.

Protocol (no leakage in the warm start's favour): the champion is trained on the world up
to T1 (80% of the period). The retrains see the world up to the end T2. Every model is
evaluated on test interactions *after T1* only — the champion's weights never saw them —
with the shared protocol (per-user temporal split, training items excluded).

Rows: the champion itself (how stale a model gets); retrain from scratch (up to
`epochs`, early-stopped); warm start on all data (up to `fine_tune_epochs`); warm start
fine-tuned on the recent data only (events after T1: the cheapest retrain).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pandas as pd
from rich.console import Console
from rich.table import Table

from hyperrec.config import Settings


def _only_after(data_dir: Path, out: Path, t1: pd.Timestamp) -> int:
    """A copy of a training-set folder whose test split keeps interactions after t1 only."""
    shutil.copytree(data_dir, out, dirs_exist_ok=True)
    test = pd.read_parquet(data_dir / "test.parquet")
    test = test[pd.to_datetime(test["ts"], utc=True) > t1]
    test.to_parquet(out / "test.parquet", index=False)
    queries = pd.read_parquet(data_dir / "test_queries.parquet")
    queries[queries["user_id"].isin(set(test["user_id"]))].to_parquet(out / "test_queries.parquet", index=False)
    return int(test["user_id"].nunique())


def _recent_only(data_dir: Path, out: Path, t1: pd.Timestamp) -> int:
    """A copy whose training rows are the ones after t1 (fine-tuning on recent data)."""
    shutil.copytree(data_dir, out, dirs_exist_ok=True)
    train = pd.read_parquet(data_dir / "train.parquet")
    recent = train[pd.to_datetime(train["event_timestamp"], utc=True) > t1]
    recent.to_parquet(out / "train.parquet", index=False)
    return len(recent)


def bench_warm_start(settings: Settings, console: Console, out: Path | None = None, users: int = 2_000,
                     items: int = 1_000, days: int = 30, events: int = 200_000, epochs: int = 6,
                     fine_tune_epochs: int = 2) -> dict:
    from hyperrec.data.world import World, save_world
    from hyperrec.models.two_tower import TwoTowerConfig
    from hyperrec.steps import feature_step, generate_step
    from hyperrec.training.dataset import build_training_set
    from hyperrec.training.fit import evaluate_model, fit_models

    root = settings.home / "warm-start"
    shutil.rmtree(root, ignore_errors=True)
    world = generate_step(settings, root / "world", console, users=users, items=items, days=days, events=events)
    feature_step(settings, root / "world", Console(quiet=True))  # the whole history; joins are point-in-time
    ts = pd.to_datetime(world.events["ts"], utc=True)
    t1 = ts.quantile(0.8)
    early = save_world(World(world.users, world.items[pd.to_datetime(world.items["created_ts"], utc=True) <= t1],
                             world.events[ts <= t1].reset_index(drop=True), meta=world.meta), root / "world-t1")
    with console.status("training sets (Feast point-in-time) up to T1 and up to T2"):
        build_training_set(settings, early, root / "data-t1")
        build_training_set(settings, root / "world", root / "data-t2")
    eval_users = _only_after(root / "data-t2", root / "eval", t1)
    recent_rows = _recent_only(root / "data-t2", root / "data-recent", t1)

    rows = []

    def train(name: str, data_dir: Path, max_epochs: int, warm: Path | None):
        t = time.perf_counter()
        with console.status(f"training: {name}"):
            report = fit_models(data_dir, root / name, TwoTowerConfig(epochs=max_epochs), log=lambda *_: None,
                                warm_start=warm)
        seconds = time.perf_counter() - t
        rows.append(_row(name, root / name, root / "eval", evaluate_model) |
                    {"train_seconds": round(seconds, 1), "epochs": report["epochs"],
                     "train_rows": report["train_rows"]})
        console.print(rows[-1])

    train("champion@T1", root / "data-t1", epochs, None)
    rows[-1]["train_seconds"] = None  # trained earlier in a real deployment: not a retrain cost
    champion = root / "champion@T1"
    train("scratch", root / "data-t2", epochs, None)
    train("warm-all", root / "data-t2", fine_tune_epochs, champion)
    train("warm-recent", root / "data-recent", fine_tune_epochs, champion)
    result = {"t1": t1.isoformat(), "eval_users_after_t1": eval_users, "recent_train_rows": recent_rows,
              "rows": rows}
    _table(console, result)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str))
    return result


def _row(name: str, model_dir: Path, eval_dir: Path, evaluate) -> dict:
    m = evaluate(model_dir, eval_dir, k=20)
    return {"model": name, "recall@20": round(m["recall_at_20"], 4), "ndcg@10": round(m["ndcg_at_10"], 4),
            "popularity_ndcg@10": round(m["popularity_ndcg_at_10"], 4)}


def _table(console: Console, result: dict) -> None:
    table = Table(title=f"warm start vs scratch (test: interactions after T1 = {result['t1'][:16]}, "
                        f"{result['eval_users_after_t1']} users)")
    for col in ("model", "Recall@20", "NDCG@10", "epochs", "train rows", "train s"):
        table.add_column(col)
    for r in result["rows"]:
        table.add_row(r["model"], f"{r['recall@20']:.4f}", f"{r['ndcg@10']:.4f}", str(r["epochs"]),
                      f"{r['train_rows']:,}", "-" if r["train_seconds"] is None else f"{r['train_seconds']:.0f}")
    console.print(table)
