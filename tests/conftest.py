import socket
from contextlib import contextmanager

import pytest

import hyperrec  # noqa: F401  (TF_USE_LEGACY_KERAS before anything imports TensorFlow)
from hyperrec.config import load_settings


@pytest.fixture
def settings(tmp_path, monkeypatch):
    """A workspace of its own per test: nothing leaks between tests or into ./var."""
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setenv("HYPERREC_HOME", str(tmp_path / "home"))
    return load_settings(tmp_path / "home")


def read_topic(bootstrap: str, topic: str) -> list:
    """Every record of partition 0 of `topic`, read from the start without a group."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False)
    try:
        consumer.assign([TopicPartition(topic, 0)])
        out: list = []
        for _ in range(8):
            got = [r for batch in consumer.poll(timeout_ms=500).values() for r in batch]
            out += got
            if not got and out:
                break
        return out
    finally:
        consumer.close()


@pytest.fixture
def topic_records():
    """`read_topic(bootstrap, topic)`: a topic's records as a consumer outside any group sees them."""
    return read_topic


@pytest.fixture
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def make_workspace(tmp_path_factory):
    """A factory for a workspace with a generated world already in Feast (offline tables,
    apply, materialize), its environment set for the duration of the `with` block."""
    from rich.console import Console

    from hyperrec.steps import feature_step, generate_step

    @contextmanager
    def build(name: str, **sizes):
        home = tmp_path_factory.mktemp(name)
        mp = pytest.MonkeyPatch()
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("HYPERREC_HOME", str(home))
        try:
            settings = load_settings(home)
            world_dir = settings.data_dir / "world"
            world = generate_step(settings, world_dir, Console(quiet=True), **sizes)
            feature_step(settings, world_dir, Console(quiet=True))
            yield settings, world
        finally:
            mp.undo()

    return build


@pytest.fixture(scope="session")
def champion_server(make_workspace, tmp_path_factory):
    """A factory: a small world, one quickly trained model registered as champion (the
    pipeline and its gates are tested elsewhere), and a real server on it, started with
    `extra_args`; yields what the serving tests need. Every server's world is the same
    seeded one, so its training set is too: the model is fit once and copied into each
    workspace (the fit was about 20 s of each server's 38 s setup)."""
    import shutil

    from hyperrec.models.two_tower import TwoTowerConfig
    from hyperrec.registry.model_registry import register_model
    from hyperrec.services import free_port as any_free_port
    from hyperrec.training.dataset import build_training_set
    from hyperrec.training.fit import fit_models
    from serving.launch import start_server, stop_server, wait_ready

    fitted = tmp_path_factory.mktemp("champion-fit") / "model"

    @contextmanager
    def build(name: str, extra_args: tuple[str, ...] = (), before_start=None):
        """`before_start(settings)` runs once the model is registered (e.g. to create API keys)."""
        with make_workspace(name, users=300, items=150, days=10, events=25_000, seed=7) as (settings, world):
            data_dir, model_dir = settings.data_dir / "training_set", settings.data_dir / "model"
            build_training_set(settings, settings.data_dir / "world", data_dir)
            if fitted.exists():
                shutil.copytree(fitted, model_dir)
            else:
                fit_models(data_dir, model_dir, TwoTowerConfig(epochs=2), log=lambda *_: None)
                shutil.copytree(model_dir, fitted)
            version = register_model(settings, model_dir, {}, {}, {"blessed": True, "reasons": []})
            if before_start is not None:
                before_start(settings)
            port = any_free_port()
            log_path = settings.home / "server.log"
            proc = start_server(settings, port, log_path,
                                as_of=world.events["ts"].max().to_pydatetime(), extra_args=extra_args)
            try:
                wait_ready(proc, port, log_path=log_path)
                yield {"settings": settings, "world": world, "model_dir": model_dir, "version": version,
                       "url": f"http://127.0.0.1:{port}", "port": port, "proc": proc}
            finally:
                stop_server(proc)

    return build
