"""Load generators for the serving bench, both on loopback.

- `open_loop(rate)`: requests sent on a fixed schedule whatever the server does, latency
  counted from each request's *scheduled* time, so a stalled server cannot hide its queue
  (no coordinated omission). Plain asyncio over keep-alive HTTP/1.1 connections: at a few
  hundred requests/s it costs a small share of one core.
- `wrk(...)`: closed-loop maximum throughput with wrk (C, cheap per request), installed from
  Debian by the project when absent (like redis-server).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class LoadResult:
    sent: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)

    @property
    def non_2xx(self) -> int:
        """Answers outside 2xx, broken connections (599) and requests never answered (0)."""
        return sum(n for s, n in self.statuses.items() if not 200 <= s < 300)

    def summary(self) -> dict:
        lat = np.array(self.latencies_ms) if self.latencies_ms else np.array([np.nan])
        return {"sent": self.sent, "rps": round(len(self.latencies_ms) / self.seconds, 1),
                "p50_ms": round(float(np.percentile(lat, 50)), 2), "p99_ms": round(float(np.percentile(lat, 99)), 2),
                "max_ms": round(float(lat.max()), 2), "non_2xx": self.non_2xx,
                "statuses": {str(k): v for k, v in sorted(self.statuses.items())}}


async def _exchange(reader, writer, request: bytes) -> int:
    writer.write(request)
    await writer.drain()
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("server closed the connection")
    status = int(status_line.split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        if name.strip().lower() == "content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


def http_request(host: str, port: int, path: str, body: bytes, headers: dict[str, str] | None = None) -> bytes:
    extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
    return (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _open_loop(host, port, path, bodies, rate, seconds, max_connections, on_tick, headers):
    result = LoadResult(sent=0, seconds=seconds)
    idle: asyncio.Queue = asyncio.Queue()
    opened = 0
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    bodies = itertools.cycle(bodies)
    pending = set()

    async def one(scheduled: float, request: bytes):
        nonlocal opened
        if idle.empty() and opened < max_connections:
            opened += 1
            conn = await asyncio.open_connection(host, port)
        else:
            conn = await idle.get()
        try:
            status = await _exchange(*conn, request)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, IndexError):
            status = 599  # the connection broke: counted as a failure
            conn[1].close()
            conn = await asyncio.open_connection(host, port)
        result.latencies_ms.append((loop.time() - scheduled) * 1000)
        result.statuses[status] += 1
        idle.put_nowait(conn)

    n = int(rate * seconds)
    for i in range(n):
        scheduled = start + i / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if on_tick is not None:
            on_tick(i / rate)
        task = loop.create_task(one(scheduled, http_request(host, port, path, next(bodies), headers)))
        pending.add(task)
        task.add_done_callback(pending.discard)
        result.sent += 1
    if pending:
        await asyncio.wait(pending, timeout=30)
        result.statuses[0] += len(pending)  # no answer 30 s after the last send: a failure too
    while not idle.empty():
        idle.get_nowait()[1].close()
    return result


def open_loop(host: str, port: int, path: str, bodies: list[bytes], rate: float, seconds: float,
              max_connections: int = 64, on_tick: Callable[[float], None] | None = None,
              headers: dict[str, str] | None = None) -> LoadResult:
    """Send `rate` requests/s for `seconds`, cycling through `bodies`. `on_tick(t)` is called
    before each send with the seconds since start (e.g. to trigger a model swap mid-run);
    `headers` go on every request (e.g. a credential)."""
    return asyncio.run(_open_loop(host, port, path, bodies, rate, seconds, max_connections, on_tick, headers))


WRK_SCRIPT = """
local bodies = {%s}
local i = 0
request = function()
  i = i + 1
  return wrk.format("POST", "%s", {["Content-Type"] = "application/json"}, bodies[(i %% #bodies) + 1])
end
"""


def find_wrk() -> str:
    from hyperrec.services import find_debian_binary

    return find_debian_binary("wrk", "wrk")


def wrk(host: str, port: int, path: str, bodies: list[bytes], connections: int, seconds: int = 10,
        threads: int = 1) -> dict:
    """Closed loop: `connections` clients each sending as soon as the last answer came.
    Returns rps and latency percentiles (wrk's own --latency histogram)."""
    lua = WRK_SCRIPT % (",".join(json.dumps(b.decode()) for b in bodies), path)
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
    try:
        out = subprocess.run([find_wrk(), f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
                              "-s", f.name, f"http://{host}:{port}"], capture_output=True, text=True,
                             timeout=seconds + 60).stdout
    finally:
        Path(f.name).unlink()
    return parse_wrk(out) | {"connections": connections}


_UNITS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(text: str) -> dict:
    def ms(value: str) -> float:
        number, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", value).groups()
        return float(number) * _UNITS[unit]

    pct = dict(re.findall(r"^\s+(50|99)(?:\.000)?%\s+(\S+)", text, re.M))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    if rps is None or not pct:
        raise RuntimeError(f"could not read wrk's output:\n{text[-2000:]}")
    return {"rps": float(rps.group(1)), "p50_ms": round(ms(pct["50"]), 2), "p99_ms": round(ms(pct["99"]), 2),
            "non_2xx": int(errors.group(1)) if errors else 0,
            "socket_errors": sum(map(int, sock.groups())) if sock else 0, "at": time.time()}
