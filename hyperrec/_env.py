"""The one place process environment for the stack is set.

TFRS 0.7.7 only works with tf-keras (Keras 2): `TF_USE_LEGACY_KERAS=1` must be set before
the first `import tensorflow` in every process (CLI, kfp.local task, model server, tests).
Every entry point imports `hyperrec` first, so setting it here covers them all.
"""

import os
import warnings

DEFAULTS = {
    "TF_USE_LEGACY_KERAS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",  # keep TF's C++ banner out of CLI output
    "DO_NOT_TRACK": "true",  # mlflow and the Evidently UI honour it: no telemetry
    "MLFLOW_ENABLE_TELEMETRY": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "FEAST_USAGE": "False",
}


def apply() -> None:
    """Set the defaults unless the caller already chose a value."""
    for key, value in DEFAULTS.items():
        os.environ.setdefault(key, value)
    # ibis (Feast's DuckDB offline store) calls a DuckDB method deprecated in DuckDB 2.0,
    # once per feature view: harmless, and it buried the demo's output
    warnings.filterwarnings("ignore", message=r"fetch_arrow_table\(\) is deprecated", category=DeprecationWarning)
    if os.environ["TF_USE_LEGACY_KERAS"] != "1":
        raise RuntimeError("TF_USE_LEGACY_KERAS must be 1: TFRS needs tf-keras (Keras 2)")
