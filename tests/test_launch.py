"""A model server that dies before it is ready fails `wait_ready` at once, quoting the end
of its log: a CI run keeps no other trace of why."""

import subprocess
import sys

import pytest

from serving.launch import wait_ready


def test_a_server_that_exits_before_ready_is_reported_with_its_log(tmp_path, free_port):
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-c", "print('sqlite3.OperationalError: database is locked'); "
                                 "raise SystemExit(1)"], stdout=log, stderr=subprocess.STDOUT)
    proc.wait(30)
    with pytest.raises(RuntimeError, match="exited with code 1 before ready") as failure:
        wait_ready(proc, free_port, timeout_s=10, log_path=log_path)
    assert "database is locked" in str(failure.value)


def test_another_runs_server_on_the_port_is_not_taken_for_ours(free_port):
    """Two runs on one port: the second's server fails to bind while the first's answers
    its health checks; the second must not go on talking to the first's server."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Other(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (the handler's name is http.server's)
            self.send_response(200)
            self.send_header("x-hyperrec-worker", "1")  # not our process
            self.end_headers()

        def log_message(self, *_):
            pass

    other = ThreadingHTTPServer(("127.0.0.1", free_port), Other)
    threading.Thread(target=other.serve_forever, daemon=True).start()
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        with pytest.raises(RuntimeError, match="another server answers"):
            wait_ready(ours, free_port, timeout_s=10)
    finally:
        ours.kill()
        other.shutdown()
