"""Erasure from trained models. An exported model folder keeps every training user's id in
its user tower: the id vocabulary (a StringLookup inside the SavedModel, and the warm-start
copy beside it) and the id's embedding row. Such folders live in the MLflow artifact store
(one per registered version), in the server's downloads (HOME/serving/versions) and as
copies (data/model, kfp.local outputs). With a tracking server (`mlflow server
--serve-artifacts`), the versions' files are reached only through it: a version holding the
user is downloaded, redacted, and its changed files are uploaded back over the old ones.

Registered versions and their copies are redacted in place: the user tower is rebuilt with
the same layers and every weight copied, embedding rows matched by vocabulary entry, minus
the erased id and its row. Every other user embeds exactly as before (checked against the
old tower before anything is replaced) and the erased one as a stranger, so the serving
version goes on serving and no retraining is needed; retiring the versions instead would
leave a server with nothing to serve until one finished. A version's tag
`erasure_redactions` counts the redactions it went through. The server's downloads under
this home are deleted (under its locks). Every running server, on this node or another,
reads the count with the alias it polls and treats a grown count as a new version
(hyperrec.online.hotswap): its stale download is replaced by the redacted files, loaded and
swapped in, and the old unit released, one poll interval (`--poll_s`) and one load later.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np
import pandas as pd

from hyperrec.config import Settings

USER_VOCAB = Path("warm_start") / "user_tower.vocab.json"  # hyperrec.models.two_tower.WARM_START_DIR
log = logging.getLogger(__name__)
REDACTIONS_TAG = "erasure_redactions"
REDACTING_TAG = "hyperrec.redacting"  # while an erasure rewrites the version's files: when it began


class RedactionError(RuntimeError):
    """A model folder that could not be redacted safely (nothing in it was replaced)."""


def holds_user(model_dir: Path, user_id: str) -> bool:
    """Whether an exported model folder's user tower knows the id (its warm-start vocabulary
    lists every vocabulary of the SavedModel: answered without TensorFlow)."""
    vocab = model_dir / USER_VOCAB
    return vocab.exists() and user_id in json.loads(vocab.read_text()).get("user_id_lookup", [])


def erase_from_models(settings: Settings, user_id: str, erased: Callable[[], set[str]]) -> dict[str, int]:
    """Redact the user from every registered version and every other model folder under home
    and the artifact store (Settings.data_roots), and delete the server's downloads that hold
    them. `erased()`: every user erased so far (for `_finish_stopped`). Counts: versions
    redacted, other folders redacted, downloads deleted."""
    redact = _Redactor(user_id)
    with tempfile.TemporaryDirectory(prefix="hyperrec-erase-") as scratch:
        versions = registered_versions(settings, user_id, Path(scratch))
        touched = [v for v in versions if holds_user(v.model_dir, user_id)]
        for version in touched:
            with _redacting(settings, version.number):
                redact(version.model_dir)
                if version.store is not None:
                    _write_back(version)
                _tag(settings, version.number)
        _finish_stopped(settings, [v for v in versions if v not in touched], erased)
        downloads = _drop_downloads(settings.home / "serving" / "versions", user_id)
        skip = {v.model_dir.resolve() for v in versions}
        copies = [d for root in settings.data_roots for d in _model_dirs(root) if d.resolve() not in skip
                  and not d.is_relative_to(settings.home / "serving" / "versions") and holds_user(d, user_id)]
        for model_dir in copies:  # within the scratch folder's life: a copy may be redacted from a download
            redact(model_dir)
    return {"models.versions": len(touched), "models.copies": len(copies), "models.serving_cache": downloads}


@dataclass
class RegisteredVersion:
    """A registered version's exported model folder: `model_dir` is the folder in the artifact
    store itself (a local store), or a download of it (`store`: the version's artifact
    repository on a tracking server, `path`: the folder's path in it)."""

    number: int
    model_dir: Path
    store: Any = None
    path: str = ""
    redacting: bool = False  # tagged REDACTING_TAG when listed: an erasure is rewriting it, or stopped doing so


def registered_versions(settings: Settings, user_id: str, scratch: Path) -> list[RegisteredVersion]:
    """Every registered version of the model whose files still exist. A local artifact store's
    folders are used where they are. Through a tracking server (`mlflow server
    --serve-artifacts`), each version's user vocabulary is downloaded into `scratch`, and the
    whole exported folder only for the versions that hold `user_id`."""
    if settings.tracking_uri.startswith("sqlite:///") and not Path(settings.tracking_uri[len("sqlite:///"):]).exists():
        return []  # no registry yet (and none created by asking)
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    found = []
    for mv in client.search_model_versions(f"name = '{settings.model_name}'"):
        uri = client.get_model_version_download_uri(settings.model_name, mv.version)
        if urlparse(uri).scheme in ("", "file"):
            root = _local_path(uri)
            if (root / "MLmodel").exists():  # else its files are gone: nothing left to redact
                found.append(RegisteredVersion(int(mv.version), root / _model_dir_path(root / "MLmodel")))
        elif (version := _download_version(settings, uri, int(mv.version), user_id, scratch)) is not None:
            found.append(version)
        if found and found[-1].number == int(mv.version):
            found[-1].redacting = REDACTING_TAG in mv.tags
    return found


def _model_dir_path(mlmodel: Path) -> str:
    """Where a version's exported folder is inside the version (its pyfunc artifact `model_dir`)."""
    import mlflow

    return mlflow.models.Model.load(str(mlmodel)).flavors["python_function"]["artifacts"]["model_dir"]["path"]


def _download_version(settings: Settings, uri: str, number: int, user_id: str,
                      scratch: Path) -> RegisteredVersion | None:
    from mlflow.exceptions import MlflowException
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    store = get_artifact_repository(uri, tracking_uri=settings.tracking_uri)
    local = scratch / str(number)
    local.mkdir(parents=True, exist_ok=True)
    try:
        path = _model_dir_path(Path(store.download_artifacts("MLmodel", str(local))))
        store.download_artifacts(f"{path}/{USER_VOCAB.as_posix()}", str(local))
    except (MlflowException, OSError):  # its files are gone: nothing left to redact
        return None
    if holds_user(local / path, user_id):
        store.download_artifacts(path, str(local))
    return RegisteredVersion(number, local / path, store, path)


def _write_back(version: RegisteredVersion) -> None:
    """Upload a redacted download's user tower and warm-start files over the version's own,
    through the tracking server, in the order `_install` swaps them locally (the tower's files,
    then stale ones deleted, then the warm-start files). Not atomic: a server that downloads
    this version during the upload (seconds) could get a mix of old and new files, so the
    upload runs inside `_redacting`."""
    store, path, model_dir = version.store, version.path, version.model_dir
    tower = model_dir / "user_tower"
    new = {f.relative_to(tower).as_posix() for f in tower.rglob("*") if f.is_file()}
    store.log_artifacts(str(tower), f"{path}/user_tower")
    for stale in sorted(_remote_files(store, f"{path}/user_tower") - new):
        store.delete_artifacts(f"{path}/user_tower/{stale}")
    for name in _WARM_FILES:
        store.log_artifact(str(model_dir / "warm_start" / name), f"{path}/warm_start")


def _remote_files(store, folder: str) -> set[str]:
    """Paths (relative to `folder`) of every file under `folder` in an artifact repository."""
    out, todo = set(), [folder]
    while todo:
        for info in store.list_artifacts(todo.pop()):
            if info.is_dir:
                todo.append(info.path)
            else:
                out.add(info.path[len(folder) + 1:])
    return out


def _local_path(uri: str) -> Path:
    parsed = urlparse(uri)
    if parsed.scheme in ("", "file"):
        return Path(url2pathname(parsed.path) if parsed.scheme else uri)
    raise NotImplementedError(f"erasure from model artifacts in a {parsed.scheme!r} store")


@contextmanager
def _redacting(settings: Settings, version: int):
    """Tag the version REDACTING_TAG while its files are rewritten (they are, file by file, in
    the artifact store or through the tracking server): a download meanwhile would mix old
    and new files, so hyperrec.registry.model_registry.model_version_dir waits it out. The
    tag goes after the redaction count has grown, and when the redaction fails."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    client.set_model_version_tag(settings.model_name, str(version), REDACTING_TAG,
                                 datetime.now(UTC).isoformat(timespec="seconds"))
    try:
        yield
    finally:
        client.delete_model_version_tag(settings.model_name, str(version), REDACTING_TAG)


def _finish_stopped(settings: Settings, versions: list[RegisteredVersion], erased: Callable[[], set[str]]) -> None:
    """Clear the REDACTING_TAG an erasure that stopped half way left (erasures run one at a
    time, hyperrec.privacy.PrivacyDB.erasing: any tag found now is left over). A version that
    holds no erased user had every file written: its redaction is counted, so servers fetch
    it again, and the tag goes. One that still holds one keeps the tag (downloads of a mix
    stay refused) until that user's erasure runs again."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    gone = None  # read once, and only when a tag is found
    for version in (v for v in versions if v.redacting):
        gone = erased() if gone is None else gone
        vocab = version.model_dir / USER_VOCAB
        if vocab.exists() and gone & set(json.loads(vocab.read_text()).get("user_id_lookup", [])):
            log.warning("v%s was left half redacted by an erasure that stopped: run that erasure again",
                        version.number)
            continue
        _tag(settings, version.number)
        client.delete_model_version_tag(settings.model_name, str(version.number), REDACTING_TAG)


def _tag(settings: Settings, version: int) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=settings.tracking_uri)
    done = int(client.get_model_version(settings.model_name, str(version)).tags.get(REDACTIONS_TAG, 0))
    client.set_model_version_tag(settings.model_name, str(version), REDACTIONS_TAG, str(done + 1))
    client.set_model_version_tag(settings.model_name, str(version), "erasure_redacted_at",
                                 datetime.now(UTC).isoformat(timespec="seconds"))


def _model_dirs(root: Path) -> list[Path]:
    """Exported model folders under `root` (recognised by their warm-start user vocabulary)."""
    return sorted(vocab.parent.parent for vocab in root.rglob(USER_VOCAB.name) if vocab.parent.name == "warm_start")


def _drop_downloads(root: Path, user_id: str) -> int:
    """Delete the server's downloaded versions that hold the user, each under the locks
    hyperrec.online.hotswap.load_shared takes (no worker is downloading or loading it):
    a worker that needs it again downloads the redacted version."""
    from hyperrec.online.hotswap import _locked

    dropped = 0
    for folder in sorted(root.iterdir()) if root.exists() else []:
        if not (folder.is_dir() and folder.name.isdigit()):
            continue
        if any(holds_user(d, user_id) for d in _model_dirs(folder)):
            with _locked(root / f"{folder.name}.download.lock"), _locked(root / f"{folder.name}.lock"):
                shutil.rmtree(folder)
            dropped += 1
    return dropped


class _Redactor:
    """Redacts model folders for one user; a folder identical to one already redacted (the
    same training run's copies) gets that result copied instead of a second rebuild."""

    def __init__(self, user_id: str):
        self.user_id = user_id
        self.done: dict[str, Path] = {}

    def __call__(self, model_dir: Path) -> None:
        key = _digest(model_dir)
        if key in self.done:
            source = self.done[key]
            _install(model_dir, lambda staged: shutil.copytree(source / "user_tower", staged),
                     {name: (source / "warm_start" / name).read_bytes() for name in _WARM_FILES})
        else:
            redact(model_dir, self.user_id)
            self.done[key] = model_dir


_WARM_FILES = ("user_tower.npz", "user_tower.vocab.json")


def _digest(model_dir: Path) -> str:
    digest = hashlib.sha256()
    for name in (*(f"warm_start/{f}" for f in _WARM_FILES), "config.json"):
        digest.update((model_dir / name).read_bytes())
    return digest.hexdigest()


def redact(model_dir: Path, user_id: str) -> None:
    """Rebuild the folder's user tower without `user_id` and replace user_tower/ and its
    warm-start weights and vocabularies. Raises RedactionError, replacing nothing, if the
    weights do not all carry over or any other user's embedding would change."""
    from hyperrec.models.two_tower import load_tower_weights, save_tower_weights

    vocab = json.loads((model_dir / USER_VOCAB).read_text())
    tower = _rebuilt_tower(vocab, user_id, _config(model_dir))
    copied = load_tower_weights(tower, model_dir / "warm_start")
    with np.load(model_dir / "warm_start" / "user_tower.npz") as old:
        if copied["skipped"] or copied["tensors"] != len(old.files) or len(old.files) != len(tower.trainable_weights):
            raise RedactionError(f"{model_dir}: the rebuilt user tower does not match the trained one ({copied})")
    _check_unchanged(model_dir, tower, vocab, user_id)

    def weights() -> dict[str, bytes]:
        staged = model_dir / ".warm_start.redacting"
        save_tower_weights(tower, staged)
        out = {name: (staged / name).read_bytes() for name in _WARM_FILES}
        shutil.rmtree(staged)
        return out

    _install(model_dir, lambda staged: tower.save(staged, save_format="tf"), weights())


def _config(model_dir: Path):
    """The folder's TwoTowerConfig (config.json holds every field as a JSON number)."""
    from hyperrec.models.two_tower import TwoTowerConfig

    raw, default = json.loads((model_dir / "config.json").read_text()), TwoTowerConfig()
    return replace(default, **{f.name: type(getattr(default, f.name))(raw[f.name]) for f in fields(default)
                               if f.name in raw})


def _rebuilt_tower(vocab: dict[str, list[str]], user_id: str, cfg):
    """A user tower built as training builds it (hyperrec.models.two_tower.build_towers),
    from frames whose values are exactly the old vocabularies minus the user. The item
    tower built alongside is thrown away: its inputs are placeholders."""
    from hyperrec.models.two_tower import USER_INPUTS, build_towers

    strings = {col for col, kind in USER_INPUTS.items() if kind == "string"}
    lookups = {name.removesuffix("_lookup"): tokens[1:] for name, tokens in vocab.items() if name != "item_id_lookup"}
    if set(lookups) != strings:
        raise RedactionError(f"user tower vocabularies {sorted(lookups)} are not its inputs {sorted(strings)}")
    lookups["user_id"] = [u for u in lookups["user_id"] if u != user_id]
    if not all(lookups.values()):
        raise RedactionError("the erased user was the only one the model knew: retire the version instead")
    rows = max(map(len, lookups.values()))
    train = pd.DataFrame({col: tokens + [tokens[0]] * (rows - len(tokens)) for col, tokens in lookups.items()})
    items = pd.DataFrame({"item_id": vocab["item_id_lookup"][1:]}).assign(category="x", brand="x", description="x")
    user_tower, _ = build_towers(train, items, cfg)
    return user_tower


def _check_unchanged(model_dir: Path, tower, vocab: dict[str, list[str]], user_id: str) -> None:
    """Compare the rebuilt tower with the saved one on up to 64 other users (the same
    embeddings) and on the erased user (now the embedding of a user the model never saw)."""
    import tensorflow as tf

    from hyperrec.models.two_tower import NEW_USER, USER_INPUTS, embed

    others = [u for u in vocab["user_id_lookup"][1:] if u != user_id][:64]
    probe = pd.DataFrame({"user_id": [user_id, *others]})
    for col, kind in USER_INPUTS.items():
        if col != "user_id":
            probe[col] = ([vocab[f"{col}_lookup"][1]] if kind == "string" else
                          [vocab["item_id_lookup"][1:3]] if kind == "string_list" else [1.0]) * len(probe)
    old = tf.keras.models.load_model(model_dir / "user_tower", compile=False)
    before, after = embed(old, probe, USER_INPUTS), embed(tower, probe, USER_INPUTS)
    stranger = embed(old, probe.iloc[:1].assign(user_id=NEW_USER), USER_INPUTS)
    if not (np.allclose(after[1:], before[1:], atol=1e-5) and np.allclose(after[0], stranger[0], atol=1e-5)):
        raise RedactionError(f"{model_dir}: the rebuilt user tower embeds other users differently")


def _install(model_dir: Path, write_tower, warm: dict[str, bytes]) -> None:
    """Replace user_tower/ with the one `write_tower(folder)` writes, then the warm-start
    files: each swapped in by rename, the old tower removed only once the new one is there."""
    staged, old = model_dir / ".user_tower.redacting", model_dir / ".user_tower.old"
    for leftover in (staged, old):
        shutil.rmtree(leftover, ignore_errors=True)
    write_tower(staged)
    os.replace(model_dir / "user_tower", old)
    os.replace(staged, model_dir / "user_tower")
    shutil.rmtree(old)
    for name, data in warm.items():
        tmp = model_dir / "warm_start" / f".{name}.redacting"
        tmp.write_bytes(data)
        os.replace(tmp, model_dir / "warm_start" / name)
