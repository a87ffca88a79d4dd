"""Roles of a cluster run as processes on one machine, each in its own private directory,
and a watch on which files they open (`hyperrec bench cluster`).

A `Role` is what a Deployment's pod is on a cluster: one command, its own HYPERREC_HOME
and TMPDIR under the run's root, the shared state reachable only through servers (the
environment names them). `OpenFiles` samples every role's process tree (/proc/PID/fd and
the files it maps) and reports each path more than one role held: a file two pods would
need on one volume. Code and system files (the venv, the project's sources, /usr) are not
state and are left out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from hyperrec.config import PROJECT_ROOT
from hyperrec.services import child_pids

CODE_DIRS = ("hyperrec", "serving", "components", "pipelines", "monitoring", "feature_repo", ".venv")
SYSTEM_PREFIXES = ("/usr/", "/lib/", "/lib64/", "/etc/", "/proc/", "/sys/", "/dev/", "/run/", "/var/lib/",
                   "/var/cache/", "/root/.pyenv/", "/opt/")


class Role:
    """One role's process: `argv` run with HYPERREC_HOME=root/roles/<name> (created), its own
    TMPDIR, and `env` (the servers' addresses); stdout and stderr to <home>/role.log."""

    def __init__(self, name: str, root: Path, argv: list[str], env: dict[str, str]):
        self.name, self.argv = name, argv
        self.home = Path(root) / "roles" / name
        (self.home / "tmp").mkdir(parents=True, exist_ok=True)
        self.env = {**env, "HYPERREC_HOME": str(self.home), "TMPDIR": str(self.home / "tmp")}
        self.log_path = self.home / "role.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> Role:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, env=self.env, cwd=self.home, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        self.starts += 1
        return self

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def pids(self) -> list[int]:
        """The role's process and all its descendants (a server's workers, a pipeline's tasks)."""
        if not self.running:
            return []
        out, todo = [], [self.proc.pid]
        while todo:
            pid = todo.pop()
            out.append(pid)
            todo.extend(child_pids(pid))
        return out

    def kill(self) -> None:
        """kill -9 the whole process group: a node lost under the pod, nothing flushed."""
        if self.running:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)

    def stop(self, grace_s: float = 20.0) -> None:
        if self.running:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.kill()

    def wait(self, timeout_s: float) -> int:
        return self.proc.wait(timeout_s)

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""


def _is_state(path: str, code_roots: tuple[str, ...]) -> bool:
    if not path.startswith("/") or path.startswith(SYSTEM_PREFIXES) or path.startswith(code_roots):
        return False
    return os.path.isfile(path)


def open_paths(pid: int) -> set[str]:
    """Regular files `pid` holds open or has mapped (empty once it is gone)."""
    found: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    try:
        for fd in fd_dir.iterdir():
            try:
                found.add(os.readlink(fd))
            except OSError:
                continue
        for line in Path(f"/proc/{pid}/maps").read_text().splitlines():
            parts = line.split(None, 5)
            if len(parts) == 6 and parts[5].startswith("/"):
                found.add(parts[5].removesuffix(" (deleted)"))
    except OSError:
        pass
    return found


class OpenFiles:
    """Samples the roles' open files every `interval_s` in a thread; `shared()` lists the state
    files (not code, not system) that two or more roles held, with the roles."""

    def __init__(self, roles: Iterable[Role], interval_s: float = 0.2):
        """`roles`: iterated at every sample, so a live view (a dict's values) follows roles
        that start or restart later."""
        self.roles, self.interval_s = roles, interval_s
        self.held: dict[str, set[str]] = defaultdict(set)
        self.samples = 0
        venv = str(Path(sys.prefix).resolve()) + "/"
        self._code = (venv, *(str(PROJECT_ROOT / d) + "/" for d in CODE_DIRS))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="open-files", daemon=True)

    def sample(self) -> None:
        for role in list(self.roles):
            for pid in role.pids():
                for path in open_paths(pid):
                    if role.name not in self.held.get(path, ()) and _is_state(path, self._code):
                        self.held[path].add(role.name)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.sample()
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - started)))

    def __enter__(self) -> OpenFiles:
        self._thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self._thread.join(10)

    def shared(self) -> dict[str, list[str]]:
        return {path: sorted(names) for path, names in sorted(self.held.items()) if len(names) > 1}
