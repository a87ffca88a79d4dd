"""Start and stop the model server as a child process (used by the CLI, demo and tests)."""

from __future__ import annotations

import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import requests

from hyperrec.config import Settings, export_env


def start_server(settings: Settings, port: int, log_path: Path | None = None,
                 as_of: datetime | None = None, extra_args: tuple[str, ...] = ()) -> subprocess.Popen:
    """Launch `python -m serving` on 127.0.0.1:`port`; output goes to `log_path` if given;
    `as_of` sets the clock feature freshness is judged by (default: wall clock);
    `extra_args` go to the server (e.g. "--poll_s", "0.5")."""
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115 (the child owns it)
    cmd = [sys.executable, "-m", "serving", "--home", str(settings.home), "--http_port", str(port)]
    if as_of is not None:
        cmd += ["--as_of", as_of.isoformat()]
    cmd += list(extra_args)
    return subprocess.Popen(cmd, env=export_env(settings), stdout=log, stderr=subprocess.STDOUT)


def wait_ready(proc: subprocess.Popen, port: int, timeout_s: float = 180.0, log_path: Path | None = None) -> float:
    """Block until /v2/health/ready answers 200; return seconds waited. Fails fast if the
    process dies (a broken model must not look like a slow one), quoting the end of its
    log if `log_path` is given (a CI run keeps no other trace of why)."""
    started = time.monotonic()
    url = f"http://127.0.0.1:{port}/v2/health/ready"
    while time.monotonic() - started < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(f"model server exited with code {proc.returncode} before ready"
                               + _log_tail(log_path))
        try:
            resp = requests.get(url, timeout=1)
        except requests.ConnectionError:
            resp = None
        if resp is not None and resp.status_code == 200:
            if _answered_by(proc, resp):
                return time.monotonic() - started
            raise RuntimeError(f"another server answers on port {port} (process "
                               f"{resp.headers.get('x-hyperrec-worker')}, not {proc.pid} or its workers)"
                               + _log_tail(log_path))
        time.sleep(0.5)
    raise TimeoutError(f"model server not ready after {timeout_s:.0f}s" + _log_tail(log_path))


def _answered_by(proc: subprocess.Popen, resp: requests.Response) -> bool:
    """Whether `proc` (a server, or a supervisor of workers) gave `resp`: our server names
    the answering process in every response (serving/app.py WorkerHeader). Two runs on one
    port must not mix: the second's server fails to bind while the first's answers its
    health checks, then its traffic. (The naive KServe anchor of `bench serving` names none
    and is taken as is.)"""
    from hyperrec.services import child_pids

    pid = resp.headers.get("x-hyperrec-worker")
    if pid is None:
        return True
    return pid.isdigit() and (int(pid) == proc.pid or int(pid) in child_pids(proc.pid))


def _log_tail(log_path: Path | None, lines: int = 60) -> str:
    if log_path is None or not log_path.exists():
        return ""
    tail = log_path.read_text(errors="replace").splitlines()[-lines:]
    return f"; the last {len(tail)} lines of {log_path}:\n" + "\n".join(tail)


def stop_server(proc: subprocess.Popen, timeout_s: float = 20.0) -> None:
    proc.terminate()
    try:
        proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def recommend(port: int, user_ids: list[str], k: int = 10) -> list[dict]:
    """Ask the running server for recommendations over the v1 protocol."""
    body = {"instances": [{"user_id": u, "k": k} for u in user_ids]}
    resp = requests.post(f"http://127.0.0.1:{port}/v1/models/recommender:predict", json=body, timeout=30)
    resp.raise_for_status()
    return resp.json()["predictions"]
