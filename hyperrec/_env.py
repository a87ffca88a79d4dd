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
    quiet_known_warnings()
    if os.environ["TF_USE_LEGACY_KERAS"] != "1":
        raise RuntimeError("TF_USE_LEGACY_KERAS must be 1: TFRS needs tf-keras (Keras 2)")


# Harmless warnings that buried the demo's output, each from a dependency's own code
KNOWN_WARNINGS = (
    # ibis (Feast's DuckDB offline store) calls a method DuckDB 2.0 deprecated, once per view
    (r"fetch_arrow_table\(\) is deprecated", DeprecationWarning),
    # MLflow's SQLAlchemy tracking store, on SQLAlchemy 2.1
    (r"The ``noload`` loader strategy is deprecated", DeprecationWarning),
    # importing Evidently: its legacy test utilities and the litestar its UI is built on
    (r"numpy\.core is deprecated", DeprecationWarning),
    (r"Call to deprecated function 'Dependency'", Warning),
    (r"Use of deprecated class 'DependencyKwarg'", Warning),
    # Evidently's drift tests on windows of a few thousand rows
    (r"ks_2samp: Exact calculation unsuccessful", RuntimeWarning),
)


def quiet_known_warnings() -> None:
    """(Re)install the filters for KNOWN_WARNINGS in front: importing feast puts its own
    `simplefilter("once", DeprecationWarning)` ahead of everything, so modules that import
    feast call this again afterwards."""
    for message, category in KNOWN_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
