from kfp import dsl

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def snapshot_data(home: str, world_dir: str, merge_logged_events: bool, run_id: str) -> str:
    """The data this run learns from. With `merge_logged_events` (the cluster's runs): the
    world plus every event logged since, from the event log and from the offline sink's
    Kafka events (its files, or its PostgreSQL table with HYPERREC_DATABASE_URL;
    hyperrec.training.retrain.snapshot_world, each event_id once), written to
    HYPERREC_HOME/data/snapshots/<run_id>; the Feast offline tables are rewritten from it,
    so the point-in-time training set has features for the new events too. Returns the
    snapshot's folder. Without (`hyperrec retrain` snapshots before it starts the run, and
    `hyperrec pipeline run` trains on the world it is given): returns `world_dir` untouched."""
    if not merge_logged_events:
        return world_dir
    from pathlib import Path

    from rich.console import Console

    from hyperrec.config import load_settings
    from hyperrec.steps import feature_step
    from hyperrec.training.retrain import snapshot_world

    settings = load_settings(home)
    snapshot = snapshot_world(settings, settings.data_dir / "snapshots" / run_id, world_dir=Path(world_dir))
    feature_step(settings, snapshot, Console(), online=False)  # the online store is the stream's
    return str(snapshot)
