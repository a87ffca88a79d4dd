"""Hot swap: follow the registry's champion alias and replace the serving unit atomically.

A new version is downloaded, loaded and warmed next to the one serving; only when it
answers a probe is the reference swapped (one assignment, so every batch sees either the
old unit or the new one, never a mix). A version that fails to load (corrupt or
incompatible artifact) is recorded and skipped; the old one keeps serving. This is the
TF Serving / Triton reload semantics the fault list asks for. The failed target is tried
again after a backoff (1 minute, doubling up to 30): a bad artifact costs a load every half
hour, while a download that failed because the registry or the store was briefly down
(a redacted version's, which must replace the one still holding an erased user) is
picked up within minutes instead of waiting for the next change.

An optional slot (the challenger on trial) may also become empty: when its alias goes,
the unit is dropped and its traffic returns to the champion.

What a slot serves is a Target: a version and how many erasures redacted it in place
(hyperrec.privacy.models). A higher count under the same version is a new model like any
other: downloaded again, loaded, warmed and swapped in, so the erased user leaves a running
server's memory and disk on every node, not only where the erasure ran.
"""

from __future__ import annotations

import fcntl
import logging
import shutil
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)


class Target(NamedTuple):
    """A registry version to serve, and its erasure redaction count (the version's
    `erasure_redactions` tag): the same number redacted again holds different files."""

    version: int
    redactions: int = 0


@dataclass
class SwapEvents:
    """What happened, for metrics and tests."""

    swaps: int = 0
    failures: dict[object, str] = field(default_factory=dict)  # target -> why it last failed to load


class ModelSlot:
    """Holds the live unit. `resolve()` -> the target to serve (a Target, or any value that
    names one model, e.g. a version number; None: nothing); `load(target)` -> a ready unit
    with a `.version` (raises if the artifact is bad); `probe(unit)` runs one request
    through it (warms the TF graphs; raises if the unit cannot serve). A target differing
    from the one loaded is loaded; one that failed is tried again only after `retry_after_s`,
    doubling with each failure up to `retry_max_s` (`clock`: seconds, monotonic)."""

    def __init__(self, resolve: Callable[[], object], load: Callable[[object], object],
                 probe: Callable[[object], None], on_swap: Callable[[object], None] | None = None,
                 on_failure: Callable[[object, str], None] | None = None, optional: bool = False,
                 retry_after_s: float = 60.0, retry_max_s: float = 1800.0,
                 clock: Callable[[], float] = time.monotonic):
        self._resolve, self._load, self._probe = resolve, load, probe
        self._retry_after_s, self._retry_max_s, self._clock = retry_after_s, retry_max_s, clock
        self._retry_at: dict[object, tuple[float, float]] = {}  # failed target -> (next try, backoff)
        self.optional = optional  # True: no version to serve empties the slot (else: keep serving)
        self._on_swap, self._on_failure = on_swap, on_failure
        # (target, unit): read without a lock, a single reference replaced in one step
        self.serving: tuple[object, object] = (None, None)
        self.events = SwapEvents()
        self._lock = threading.Lock()  # one refresh at a time
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def unit(self):
        return self.serving[1]

    @property
    def target(self):
        """What `unit` was loaded as (read `serving` for both at once)."""
        return self.serving[0]

    @property
    def version(self) -> int | None:
        unit = self.unit
        return None if unit is None else unit.version

    def refresh(self) -> bool:
        """Load and swap in the resolved target if it is new and not known to be bad.
        Returns True when a swap happened. A failed load raises only when nothing is
        serving yet (a server with no model must not report ready)."""
        with self._lock:
            target = self._resolve()
            if target is None and self.optional and self.unit is not None:
                log.info("no longer serving version %s: its alias is gone", self.version)
                self.serving = (None, None)
                return True
            if target is None or target == self.target:
                return False
            if target in self._retry_at and self._clock() < self._retry_at[target][0]:
                return False
            try:
                unit = self._load(target)
                self._probe(unit)
            except Exception as exc:  # noqa: BLE001 (any load failure keeps the old unit)
                backoff = (min(2 * self._retry_at[target][1], self._retry_max_s) if target in self._retry_at
                           else self._retry_after_s)
                self._retry_at[target] = (self._clock() + backoff, backoff)
                self.events.failures[target] = f"{type(exc).__name__}: {exc}"[:500]
                log.error("model %s failed to load, still serving %s (next try in %.0f s): %s", target,
                          self.target, backoff, exc)
                if self._on_failure is not None:
                    self._on_failure(target, self.events.failures[target])
                if self.unit is None and not self.optional:
                    raise
                return False
            self._retry_at.pop(target, None)
            previous, self.serving = self.target, (target, unit)
            self.events.swaps += 1
            log.info("now serving model %s (was %s)", target, previous)
            if self._on_swap is not None:
                self._on_swap(unit)
            return True

    def watch(self, every_s: float) -> None:
        """Poll in a daemon thread until stop()."""
        def loop():
            while not self._stop.wait(every_s):
                try:
                    self.refresh()
                except Exception as exc:  # noqa: BLE001 (the registry may be briefly unreachable)
                    log.warning("champion check failed: %s", exc)

        self._thread = threading.Thread(target=loop, name="champion-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()


@contextmanager
def _locked(path: Path, blocking: bool = True, shared: bool = False):
    """An flock on `path` (created): exclusive, or shared (many readers, no writer); yields
    False when not blocking and taken."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        try:
            fcntl.flock(handle, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def load_shared(root: Path, version: int, download: Callable[[Path], Path], load: Callable[[Path], object],
                redactions: int = 0):
    """Download `version` into `root/<version>` once for every process sharing `root` (the
    workers of one server), then load it. The download holds the version's download lock (a
    second worker waits for the download only, then reuses the files); loading holds the
    version's lock shared, so the workers load side by side and no cleanup removes the files
    mid-load. Two locks, because a worker waiting to download under the load lock would wait
    out the other's whole load. `download(folder) -> model dir` fetches the files;
    `load(model dir)` builds the unit.

    The `.complete` marker records the model dir and the `redactions` its files were fetched
    for; a download older than asked for (the version was redacted since) is deleted under
    both locks, as erasure deletes one (hyperrec.privacy.models), and fetched again."""
    folder, done = root / str(version), root / str(version) / ".complete"
    for _ in range(2):  # a cleanup may remove the files between the download and the load: fetch again
        if _downloaded(done, redactions) is None:
            with _locked(root / f"{version}.download.lock"):
                if _downloaded(done, redactions) is None:
                    with _locked(root / f"{version}.lock"):  # stale or half-downloaded: nobody loads it now
                        shutil.rmtree(folder, ignore_errors=True)
                    model_dir = download(folder)
                    done.write_text(f"{model_dir}\n{redactions}\n")
        with _locked(root / f"{version}.lock", shared=True):
            if (model_dir := _downloaded(done, redactions)) is not None:
                return load(model_dir)
    raise RuntimeError(f"version {version}'s files in {folder} kept disappearing before they could be loaded")


def _downloaded(done: Path, redactions: int) -> Path | None:
    """The model dir a complete download's marker names, if its files are redacted at least
    `redactions` times (counts only grow: a newer download serves an older ask too)."""
    try:
        lines = done.read_text().splitlines()
    except FileNotFoundError:
        return None
    fetched = int(lines[1]) if len(lines) > 1 else 0  # a marker from before redaction counts: 0
    return Path(lines[0]) if fetched >= redactions else None


def versions_dir_cleanup(root: Path, keep: set[int]) -> None:
    """Remove downloaded versions older than every one in `keep` (this process's serving
    version, its predecessor, which in-flight batches may still hold, and a challenger).
    Newer ones may be what another worker is about to load; one being downloaded or loaded
    is locked and skipped."""
    if not root.exists() or not keep:
        return
    for child in root.iterdir():
        if child.is_dir() and child.name.isdigit() and int(child.name) < min(keep):
            with _locked(root / f"{child.name}.lock", blocking=False) as not_loading, \
                    _locked(root / f"{child.name}.download.lock", blocking=False) as not_downloading:
                if not_loading and not_downloading:
                    shutil.rmtree(child, ignore_errors=True)
