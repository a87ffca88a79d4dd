import socket

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
