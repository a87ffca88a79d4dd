"""`python -m serving --workers N`: N server processes on one port.

One process tops out near one core: the HTTP stack and the batch code take turns on its
GIL. So a supervisor (this module's `supervise`: no TensorFlow, no model) starts N
workers, each a full `python -m serving` with its own RecommenderModel (its own download
folder, its own champion polling and hot swap) serving KServe's REST app with uvicorn on
its own SO_REUSEPORT socket: the kernel spreads new connections over the listening
workers by a hash of the connection. (Measured against one socket bound by the supervisor
and inherited by all: there asyncio's accept loop takes a whole burst of new connections
in whichever worker wakes first, so wrk's 8 or 16 connections all landed on one worker
and the other idled; with SO_REUSEPORT both got half, every time.) The supervisor keeps
the port bound (not listening, so it never gets connections): taken by another program,
it fails at once instead of after every worker has loaded.

- Readiness: a worker listens only once every worker has loaded and probed its model (it
  reports "ready" on a pipe, the supervisor answers "go" to all at once), so the port
  refuses connections, rather than answering slowly or from half the workers, until all
  of them can serve. A replacement worker listens once it is loaded itself.
- A worker that dies is restarted (same slot, same folder); the connections it held or
  had not yet accepted are lost, the others keep serving. One that dies before it is
  ready again `MAX_START_FAILURES` times in a row makes the supervisor stop everything and
  exit non-zero, as does any worker failing during the first start (no champion, broken
  artifact): a broken model must not look like a slow one.
- SIGTERM/SIGINT to the supervisor stops the workers (SIGTERM, then SIGKILL after
  `GRACE_S`). A worker whose supervisor is gone (its stdin closes) stops itself.
- Shared state lives in files: the bandit and pending feedback in `hyperrec.online.bandit_store`
  (or in Redis, `Settings.bandit_redis`),
  events and impressions in their SQLite logs (WAL, busy timeouts), Prometheus samples in
  `<home>/serving/prometheus` (emptied at start; /metrics from any worker covers all).

KServe 0.21's own `--workers` (RESTServerMultiProcess) was not used: it pickles the
ModelServer's model repository into `spawn` children (our model holds threads, locks,
TensorFlow graphs and SQLite connections), requires the parent to have loaded the model
first, rebuilds the FastAPI app in each child by re-importing it (our routes and
middleware would be missing), and its 5 s ping would kill a child still loading.
"""

from __future__ import annotations

import asyncio
import logging
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("hyperrec.workers")

GRACE_S = 15.0  # a stopping worker's time to finish its requests before it is killed
MAX_START_FAILURES = 5  # consecutive failed (re)starts of one slot before the supervisor gives up
BACKLOG = 2048  # uvicorn's default


# --- the supervisor ----------------------------------------------------------------------

@dataclass
class _Worker:
    slot: int
    proc: subprocess.Popen
    status: int  # read end of the pipe the worker reports "ready" on
    ready: bool = False


def _worker_argv(argv: list[str]) -> list[str]:
    """The supervisor's arguments without --workers (a worker serves alone)."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--workers":
            skip = True
        elif not arg.startswith("--workers="):
            out.append(arg)
    return out


class Supervisor:
    def __init__(self, n: int, port: int, argv: list[str], metrics_dir: Path | None = None, host: str = "127.0.0.1"):
        """`metrics_dir`: emptied, then where every worker writes its Prometheus samples."""
        self.n, self.port, self.host, self.argv = n, port, host, _worker_argv(argv)
        self.metrics_dir = metrics_dir
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            metrics_dir.mkdir(parents=True)
        self.sock: socket.socket | None = None
        self.workers: dict[int, _Worker] = {}
        self.failures = dict.fromkeys(range(n), 0)
        self.listening = False
        self.stopping = threading.Event()

    def _start(self, slot: int) -> None:
        read, write = os.pipe()
        cmd = [sys.executable, "-m", "serving", *self.argv, "--worker_slot", str(slot), "--status_fd", str(write)]
        env = {**os.environ, "HYPERREC_METRICS_DIR": str(self.metrics_dir)} if self.metrics_dir else None
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, pass_fds=[write], env=env)
        os.close(write)
        self.workers[slot] = _Worker(slot, proc, read)
        log.info("worker %s starting (pid %s)", slot, proc.pid)

    def _go(self, worker: _Worker) -> None:
        try:
            worker.proc.stdin.write(b"go\n")
            worker.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # it died meanwhile: the loop restarts it

    def _read_status(self, timeout: float) -> None:
        waiting = {w.status: w for w in self.workers.values() if not w.ready}
        if not waiting:
            self.stopping.wait(timeout)
            return
        readable, _, _ = select.select(list(waiting), [], [], timeout)
        for fd in readable:
            worker = waiting[fd]
            if os.read(fd, 64).startswith(b"ready"):
                worker.ready = True
                self.failures[worker.slot] = 0
                log.info("worker %s ready (pid %s)", worker.slot, worker.proc.pid)
                if self.listening:
                    self._go(worker)

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT (0), or a worker cannot start (non-zero)."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stopping.set())
        self.sock = _bind(self.host, self.port)  # reserved, never listening: it gets no connections
        for slot in range(self.n):
            self._start(slot)
        try:
            return self._loop()
        finally:
            self._stop_all()

    def _loop(self) -> int:
        restart_at: dict[int, float] = {}
        while not self.stopping.is_set():
            self._read_status(0.2)
            if not self.listening and all(w.ready for w in self.workers.values()):
                self.listening = True
                for worker in self.workers.values():
                    self._go(worker)
                log.info("all %s workers ready, serving on port %s", self.n, self.port)
            for slot, worker in list(self.workers.items()):
                if worker.proc.poll() is None or self.stopping.is_set():
                    continue
                code = worker.proc.returncode
                os.close(worker.status)
                del self.workers[slot]
                self._forget_metrics(worker.proc.pid)
                if not self.listening:
                    log.error("worker %s exited with code %s before the server was ready: stopping", slot, code)
                    return code or 1
                if not worker.ready:
                    self.failures[slot] += 1
                    if self.failures[slot] >= MAX_START_FAILURES:
                        log.error("worker %s failed to start %s times in a row: stopping", slot, self.failures[slot])
                        return code or 1
                delay = min(30.0, 2.0 ** self.failures[slot]) if self.failures[slot] else 0.5
                log.warning("worker %s (pid %s) exited with code %s: restarting in %.1f s",
                            slot, worker.proc.pid, code, delay)
                restart_at[slot] = time.monotonic() + delay
            for slot, at in list(restart_at.items()):
                if time.monotonic() >= at and not self.stopping.is_set():
                    del restart_at[slot]
                    self._start(slot)
        return 0

    def _forget_metrics(self, pid: int) -> None:
        """A dead worker's live gauges go; its counters stay in the sums."""
        if self.metrics_dir is not None:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, str(self.metrics_dir))

    def _stop_all(self) -> None:
        for worker in self.workers.values():
            if worker.proc.poll() is None:
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + GRACE_S
        for worker in self.workers.values():
            try:
                worker.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("worker %s did not stop within %.0f s: killed", worker.slot, GRACE_S)
                worker.proc.kill()
                worker.proc.wait()
            if worker.proc.stdin is not None:
                worker.proc.stdin.close()
            os.close(worker.status)
        self.workers.clear()
        if self.sock is not None:
            self.sock.close()
        log.info("all workers stopped")


def supervise(args, argv: list[str]) -> int:
    from hyperrec.config import load_settings
    from hyperrec.online.bandit_store import init_bandit_state
    from hyperrec.online.rerank import EXPLORATION_DIM
    from serving.auth import authenticator_for

    logging.basicConfig(level=logging.INFO, format="%(asctime)s supervisor %(levelname)s %(message)s")
    settings = load_settings(args.home)
    home = settings.home
    authenticator_for(args.host, args.auth, home)  # refused here, before N workers load
    # the shared bandit store exists before any worker opens it (no first-writer race)
    init_bandit_state(settings, EXPLORATION_DIM)
    return Supervisor(args.workers, args.http_port, argv, metrics_dir=home / "serving" / "prometheus",
                      host=args.host).run()


# --- a worker ----------------------------------------------------------------------------

def serve(server, model, args) -> None:
    """Serve `model` with KServe's REST server on a socket of our own, as `ModelServer.start`
    would (KServe 0.21; see `_rest_server_class` for the one difference). The only process
    binds the port as uvicorn would; a worker reports ready, waits for the supervisor's go
    (every worker is ready), then listens on its own SO_REUSEPORT socket."""
    if args.worker_slot is not None:
        os.write(args.status_fd, b"ready\n")
        os.close(args.status_fd)
        if _read_line(0) != b"go":  # the supervisor is gone
            model.stop()
            return
        threading.Thread(target=_stop_with_supervisor, name="supervisor-watch", daemon=True).start()
    sock = _bind(args.host, args.http_port, reuse_port=args.worker_slot is not None)
    sock.listen(BACKLOG)
    for sig in (signal.SIGTERM, signal.SIGINT):  # uvicorn takes them while serving and raises them again after
        signal.signal(sig, _exit)
    try:
        asyncio.run(_serve(server, model, sock, timing=args.request_logs, header_timeout_s=args.header_timeout_s))
    except SystemExit:
        pass
    finally:
        model.stop()


def _bind(host: str, port: int, reuse_port: bool = True) -> socket.socket:
    """A TCP socket bound to `host`:`port`, not yet listening; with
    SO_REUSEPORT for the supervisor and its workers (a lone server keeps uvicorn's "address
    in use"). The protocol is named: asyncio sets TCP_NODELAY only on connections accepted
    from an IPPROTO_TCP socket, and without it responses wait out delayed ACKs (~40 ms)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


async def _serve(server, model, sock: socket.socket, timing: bool, header_timeout_s: float) -> None:
    from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING

    # what ModelServer.start does for one process (KServe 0.21), with our socket
    server._register_and_check_atleast_one_model_is_ready([model])
    rest = _rest_server_class()(FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension,
                                server.http_port, access_log_format=server.access_log_format, workers=1,
                                grace_period=server.grace_period, event_loop=server.event_loop,
                                timeout_keep_alive=server.timeout_keep_alive)
    rest.timing = timing
    rest.config.http = _http_protocol(header_timeout_s)
    rest.create_application()
    server.setup_event_loop()
    await rest._server.serve(sockets=[sock])


def _rest_server_class():
    from kserve.protocol.rest.server import RESTServer

    class Server(RESTServer):
        """KServe's REST server, without its timing middleware unless its lines are logged
        (--request_logs): per request it matches the route a second time, calls getrusage
        twice and formats two log lines that `kserve.trace` at WARNING then drops. Measured
        on one process, 100k-item catalog: a third of the GIL-holding samples at 200 req/s
        (py-spy --gil); without it +10-49% req/s in closed loop and half the open-loop p50
        at 300 req/s (~200 -> ~105 ms), two A/B runs in either order."""

        timing = True

        def _add_middlewares(self, app):
            if self.timing or self.access_log_format:
                super()._add_middlewares(app)

    return Server


def _http_protocol(timeout_s: float):
    """uvicorn's HTTP protocol with a deadline for request headers (serving/timeouts.py)."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from serving.timeouts import with_header_deadline

    if AutoHTTPProtocol is not HttpToolsProtocol:  # no httptools: h11 has other callbacks
        return "auto"
    return with_header_deadline(HttpToolsProtocol, timeout_s)


def _exit(*_) -> None:
    raise SystemExit(0)


def _read_line(fd: int) -> bytes:
    """One line from a pipe, unbuffered (a daemon thread blocked in a buffered stdin read
    aborts the interpreter at exit)."""
    line = b""
    while (c := os.read(fd, 1)) and c != b"\n":
        line += c
    return line


def _stop_with_supervisor() -> None:
    while os.read(0, 64):
        pass
    log.warning("supervisor gone: stopping")
    os.kill(os.getpid(), signal.SIGTERM)
