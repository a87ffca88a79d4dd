from kfp import dsl

from components.image import BASE_IMAGE


@dsl.component(base_image=BASE_IMAGE, install_kfp_package=False)
def snapshot_data(home: str, world_dir: str, merge_logged_events: bool, run_id: str) -> str:
    """The data this run learns from, as a folder the later tasks read. With
    `merge_logged_events` (the cluster's runs): the world plus every event logged since,
    from the event log and from the offline sink's Kafka events (its files, or its
    PostgreSQL table with HYPERREC_DATABASE_URL; hyperrec.training.retrain.snapshot_world,
    each event_id once). A world in the database (`db:world`, hyperrec.data.world_db) is
    snapshotted too. The snapshot goes to the settings' snapshots_dir/<run_id> (beside the
    runs' outputs, where an erasure reaches it) and the Feast offline tables are rewritten
    from it, so the point-in-time training set has features for the new events too. Returns
    the snapshot's folder. Otherwise (`hyperrec retrain` snapshots before it starts the
    run, and `hyperrec pipeline run` trains on the folder it is given): `world_dir` untouched."""
    from hyperrec.data.world_db import is_database_world

    if not merge_logged_events and not is_database_world(world_dir):
        return world_dir
    from rich.console import Console

    from hyperrec.config import load_settings
    from hyperrec.steps import feature_step
    from hyperrec.training.retrain import snapshot_world

    settings = load_settings(home)
    snapshot = snapshot_world(settings, settings.snapshots_dir / run_id, world_dir=world_dir,
                              merge_logged=merge_logged_events)
    if merge_logged_events:  # else the database's world as it is, whose features were built from it
        feature_step(settings, snapshot, Console(), online=False)  # the online store is the stream's
    return str(snapshot)
