"""`hyperrec bench quality`: the platform's model against popularity, item-kNN, EASE and iALS on
a MovieLens folder, under one evaluation protocol."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from hyperrec.config import Settings
from hyperrec.steps import feature_step


def _hyperrec_rows(settings: Settings, world, console: Console, epochs: int, cold_start: bool) -> list[dict]:
    """The platform's own path on the same data: Feast point-in-time training set ->
    two-tower retrieval -> DCN ranker -> the shared evaluation (every rating an
    interaction). Rows for the full model and for retrieval alone; the full row also
    carries coverage, diversity, training speed and the cold-start slices."""
    from hyperrec.data.world import save_world
    from hyperrec.evaluation.coldstart import evaluate_cold_start
    from hyperrec.models.two_tower import TwoTowerConfig
    from hyperrec.training.dataset import build_training_set
    from hyperrec.training.fit import evaluate_model, fit_models

    t = time.perf_counter()
    world_dir = save_world(world, settings.data_dir / "quality-world")
    with console.status("hyperrec: windowed features, Feast apply + materialize"):
        feature_step(settings, world_dir, Console(quiet=True))
    data_dir, model_dir = settings.home / "quality-data", settings.home / "quality-model"
    with console.status("hyperrec: Feast point-in-time training set"):
        sizes = build_training_set(settings, world_dir, data_dir, min_rating=0.5)
    with console.status("hyperrec: two-tower retrieval + ranker"):
        report = fit_models(data_dir, model_dir, TwoTowerConfig(epochs=epochs), log=console.log)
        m = evaluate_model(model_dir, data_dir, k=20)
    seconds = time.perf_counter() - t
    full = {"model": "hyperrec", "recall@20": m["recall_at_20"], "ndcg@10": m["ndcg_at_10"], "seconds": seconds,
            "coverage@10": m["coverage_at_10"], "diversity@10": m["diversity_at_10"],
            "train_seconds": report["seconds"], "examples_per_s": report["examples_per_s"],
            "epochs": report["epochs"], "feast_join_s": sizes["feast_join_s"]}
    if cold_start:
        with console.status("hyperrec: cold-start run (10% of test items and users held out)"):
            full["cold_start"] = evaluate_cold_start(data_dir, settings.home / "quality-cold",
                                                     TwoTowerConfig(epochs=epochs))
    retrieval = {"model": "hyperrec-retrieval", "recall@20": m["retrieval_recall_at_20"],
                 "ndcg@10": m["retrieval_ndcg_at_10"], "seconds": seconds}
    return [retrieval, full]


BASELINES = ("popularity", "item-knn", "ease", "ials")


def bench_quality(path: Path, console: Console, fmt: str | None = None, settings: Settings | None = None,
                  epochs: int = 6, cold_start: bool = True) -> dict:
    """The baselines and, given a workspace, the hyperrec two-tower on a MovieLens folder
    under the evaluation protocol: per-user temporal split (latest 20% test), full-catalog
    ranking with train items excluded, every rating an interaction."""
    from hyperrec.data.interactions import positives, temporal_split
    from hyperrec.data.movielens import detect_format, load_movielens
    from hyperrec.models.baselines import evaluate_baselines

    found = detect_format(path)
    if fmt and fmt.replace("ml-", "") != found:
        raise ValueError(f"{path} holds the {found} format, not {fmt}")
    world = load_movielens(path)
    train, test = temporal_split(positives(world.events, min_rating=0.5))
    with console.status("training and scoring the baselines"):
        rows = evaluate_baselines(train, test)
    if settings is not None:
        rows += _hyperrec_rows(settings, world, console, epochs, cold_start)
    table = Table(title=f"quality on {path.name}: {train['user_id'].nunique():,} users, "
                        f"{len(train):,} train / {len(test):,} test interactions")
    best = max((r for r in rows if r["model"] in BASELINES), key=lambda r: r["ndcg@10"])
    for col in ("model", "recall@20", "ndcg@10", "× best baseline NDCG", "seconds"):
        table.add_column(col)
    for r in rows:
        r["ndcg_ratio_to_best_baseline"] = r["ndcg@10"] / best["ndcg@10"]
        table.add_row(r["model"], f"{r['recall@20']:.4f}", f"{r['ndcg@10']:.4f}",
                      f"{r['ndcg_ratio_to_best_baseline']:.3f}", f"{r['seconds']:.1f}")
    console.print(table)
    full = next((r for r in rows if r["model"] == "hyperrec"), None)
    if full and "cold_start" in full:
        c = full["cold_start"]
        console.print(f"cold items ({c['cold_items']:.0f}, ranked among themselves): recall@20 "
                      f"{c['cold_item_recall_at_20']:.4f} vs chance {c['cold_item_chance_recall_at_20']:.4f}; "
                      f"cold users ({c['cold_users']:.0f}, {c['onboarding_items']:.0f} onboarding items): "
                      f"recall@20 {c['cold_user_recall_at_20']:.4f} (retrieval alone "
                      f"{c['cold_user_retrieval_recall_at_20']:.4f}) vs popularity "
                      f"{c['cold_user_popularity_recall_at_20']:.4f}")
    if full:
        console.print(f"hyperrec: coverage@10 {full['coverage@10']:.3f}, diversity@10 {full['diversity@10']:.3f}, "
                      f"training {full['train_seconds']:.0f} s ({full['examples_per_s']:,} examples/s), "
                      f"best baseline {best['model']}")
    return {"dataset": str(path), "format": found, "train": len(train), "test": len(test), "rows": rows,
            "best_baseline": best["model"], "measured_at": datetime.now(UTC).isoformat(timespec="seconds")}
