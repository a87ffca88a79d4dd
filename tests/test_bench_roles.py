"""The cluster bench's roles and its watch on shared files, with real processes."""

from __future__ import annotations

import os
import sys
import time

from hyperrec.bench.roles import OpenFiles, Role

HOLD = "import sys, time; f = open(sys.argv[1], 'a'); time.sleep(60)"


def _holding(name, root, path):
    return Role(name, root, [sys.executable, "-c", HOLD, str(path)], dict(os.environ))


def _sampled(open_files: OpenFiles, expected: dict[str, set[str]]) -> None:
    """Sample until every expected path was seen held by its roles (the children need a moment
    to start and open them), or 20 s."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and any(open_files.held.get(p, set()) != r for p, r in expected.items()):
        open_files.sample()
        time.sleep(0.05)


def test_a_file_two_roles_hold_is_shared_and_private_ones_are_not(tmp_path):
    common = tmp_path / "common.db"
    roles = [_holding("a", tmp_path, common).start(), _holding("b", tmp_path, common).start()]
    own = Role("c", tmp_path, [sys.executable, "-c", HOLD, str(tmp_path / "roles" / "c" / "own.db")],
               dict(os.environ)).start()
    watch = OpenFiles([*roles, own])
    try:
        _sampled(watch, {str(common): {"a", "b"}, str(own.home / "own.db"): {"c"}})
        shared = watch.shared()
        assert shared == {str(common): ["a", "b"]}, shared
        assert watch.held[str(own.home / "own.db")] == {"c"}
        assert not any("site-packages" in p or p.startswith("/usr/") for p in watch.held)  # code is not state
    finally:
        for role in [*roles, own]:
            role.kill()
    assert not roles[0].running and roles[0].pids() == []
    assert roles[0].env["HYPERREC_HOME"] == str(tmp_path / "roles" / "a")
