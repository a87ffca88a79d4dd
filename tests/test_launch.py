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
