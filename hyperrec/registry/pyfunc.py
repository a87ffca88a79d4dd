"""The registered model's MLflow pyfunc, packaged to load outside this project.

A version carries what `mlflow.pyfunc.load_model` needs anywhere: the exported two-stage
folder (artifact `model_dir`), the `hyperrec` modules its predict imports (MLflow
`code_paths`: found by following imports from this module, `code_modules`), pinned PyPI
requirements for their third-party imports (`pip_requirements`: the versions installed
here, i.e. requirements.lock's), a signature (request fields in; `item_ids` and `scores`
out; parameter `k`) and an input example. Nothing here imports TensorFlow or the rest of
hyperrec at import time: the server and the registry import this module too.
"""

from __future__ import annotations

import ast
import importlib.metadata
import shutil
import sys
import tempfile
import types
from functools import lru_cache
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

PACKAGE_ROOT = Path(__file__).resolve().parents[1]  # the hyperrec package folder
ENTRY = "hyperrec.registry.pyfunc"
# needed without being imported by name: TFRS runs on tf-keras (TF_USE_LEGACY_KERAS, set by hyperrec._env)
EXTRA_DISTRIBUTIONS = ("tf-keras",)
DISTRIBUTIONS = {"faiss": "faiss-cpu"}  # import name -> PyPI distribution, where they differ


class RetrievalPyfunc(mlflow.pyfunc.PythonModel):
    """pyfunc face of a two-stage model: rows of request fields in (`request_fields`), the
    top-k item ids and their scores out, one row per request row."""

    def load_context(self, context):
        from hyperrec.models.recommender import Recommender

        self.recommender = Recommender(Path(context.artifacts["model_dir"]))

    def predict(self, context, model_input: pd.DataFrame, params=None):
        k = int((params or {}).get("k", 10))
        users = model_input.reset_index(drop=True)
        users["recent_items"] = [[] if r is None else list(r) for r in users["recent_items"]]
        ranked, scores = self.recommender.recommend(users, k=k)
        return pd.DataFrame({"item_ids": ranked, "scores": [s.astype(float).tolist() for s in scores]})


def request_fields() -> dict[str, str]:
    """What predict reads from each row: the query tower's inputs (two_tower.USER_INPUTS)
    and the request time (unix seconds), by the feature schema's kinds. TensorFlow-free."""
    from hyperrec.features.views import REQUEST_TS
    from hyperrec.training.feature_service import user_inputs

    return {**user_inputs(), REQUEST_TS: "int"}


def signature(fields: dict[str, str]) -> mlflow.models.ModelSignature:
    from mlflow.types.schema import Array, ColSpec, DataType, ParamSchema, ParamSpec, Schema

    kinds = {"string": DataType.string, "int": DataType.long, "float": DataType.double,
             "string_list": Array(DataType.string)}
    inputs = Schema([ColSpec(kinds[kind], name) for name, kind in fields.items()])
    outputs = Schema([ColSpec(Array(DataType.string), "item_ids"), ColSpec(Array(DataType.double), "scores")])
    return mlflow.models.ModelSignature(inputs, outputs, ParamSchema([ParamSpec("k", DataType.long, 10)]))


def input_example(model_dir: Path, fields: dict[str, str]) -> pd.DataFrame:
    """Two requests nobody made: a user the model never saw with three catalog items as
    recent engagement, and one with nothing. No real user's id goes into a model version."""
    from hyperrec.features.views import MISSING, REQUEST_TS

    items = pd.read_parquet(model_dir / "items.parquet", columns=["item_id", "created_ts"])
    now = int(pd.to_datetime(items["created_ts"], utc=True).max().timestamp()) + 86_400
    rows = []
    for recent in (items["item_id"].astype(str).head(3).tolist(), []):
        row = {name: MISSING[kind] for name, kind in fields.items()}
        row |= {"user_id": "example-user", "hour_of_day": 12, "day_of_week": 2, REQUEST_TS: now,
                "recent_items": recent}
        rows.append(row)
    frame = pd.DataFrame(rows, columns=list(fields))
    for name, kind in fields.items():
        if kind in ("int", "float"):
            frame[name] = frame[name].astype(np.int64 if kind == "int" else np.float64)
    return frame


def log_model(model_dir: Path, registered_model_name: str) -> mlflow.models.model.ModelInfo:
    """mlflow.pyfunc.log_model of the exported folder, with its code, requirements, signature
    and input example, into the active run. Through Model.log with
    `validate_serving_input=False` (the switch mlflow.transformers uses for the same reason):
    MLflow would otherwise load the model and predict in this process at every registration,
    importing TensorFlow (~6 s in a fresh pipeline task); the example is still checked
    against the signature, and tests load and predict the logged model outside the project."""
    fields = request_fields()
    flavor = types.SimpleNamespace(__name__="mlflow.pyfunc", save_model=_save_model)
    with tempfile.TemporaryDirectory(prefix="hyperrec-code-") as code:
        return mlflow.models.Model.log(
            artifact_path=None, name="model", flavor=flavor, flavor_name="pyfunc.ModelFromCode",
            validate_serving_input=False,
            registered_model_name=registered_model_name,
            python_model=str(Path(__file__).with_name("mlflow_model.py")), artifacts={"model_dir": str(model_dir)},
            code_paths=[str(copy_code(Path(code)))], pip_requirements=list(pip_requirements()),
            signature=signature(fields), input_example=input_example(Path(model_dir), fields))


def _save_model(path, mlflow_model, validate_serving_input: bool = True, **kwargs):
    """mlflow.pyfunc.save_model, taking the switch Model.log reads (and pyfunc's would refuse)."""
    return mlflow.pyfunc.save_model(path=path, mlflow_model=mlflow_model, **kwargs)


def _imports(path: Path, module: str) -> set[str]:
    """Absolute module names a file imports, at any depth (function-level imports too)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this module's package
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                name = f"{base}.{node.module}" if node.module else base
            else:
                name = node.module
            out.add(name)
            out |= {f"{name}.{alias.name}" for alias in node.names}  # `from pkg import module`
    return out


def _module_file(name: str) -> Path | None:
    rel = Path(*name.split(".")[1:])
    for candidate in (PACKAGE_ROOT / rel / "__init__.py", (PACKAGE_ROOT / rel).with_suffix(".py")):
        if candidate.is_file():
            return candidate
    return None


@lru_cache(maxsize=1)
def code_modules() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(hyperrec modules, third-party top-level modules) this module's imports reach,
    parent packages included."""
    todo, seen, external = [ENTRY], set(), set()
    while todo:
        name = todo.pop()
        parts = name.split(".")
        for i in range(1, len(parts) + 1):  # a module's packages are imported first
            prefix = ".".join(parts[:i])
            path = _module_file(prefix)
            if path is None or prefix in seen:
                continue
            seen.add(prefix)
            for imported in _imports(path, prefix):
                top = imported.split(".")[0]
                if top == "hyperrec":
                    todo.append(imported)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    external.add(top)
    return tuple(sorted(seen)), tuple(sorted(external))


def copy_code(dst: Path) -> Path:
    """Copy the modules of `code_modules` into dst/hyperrec (package layout kept); returns
    that folder, for `code_paths`."""
    modules, _ = code_modules()
    for name in modules:
        src = _module_file(name)
        target = dst / src.relative_to(PACKAGE_ROOT.parent)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, target)
    return dst / "hyperrec"


@lru_cache(maxsize=1)
def pip_requirements() -> tuple[str, ...]:
    """Pinned distributions for the third-party modules `code_modules` imports (and tf-keras):
    the versions installed here, which `make` installs from requirements.lock. A module whose
    distribution is not its name with "-" for "_" is listed in DISTRIBUTIONS (an unknown one
    fails here, at registration: importlib.metadata.PackageNotFoundError)."""
    _, external = code_modules()
    dists = {DISTRIBUTIONS.get(top, top.replace("_", "-")) for top in external} | set(EXTRA_DISTRIBUTIONS)
    return tuple(sorted(f"{d}=={importlib.metadata.version(d)}" for d in dists))
