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
