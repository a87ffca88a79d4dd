"""Slow and idle clients must not hold the server's connections.

uvicorn closes a kept-alive connection that idles between requests (`timeout_keep_alive`),
but waits forever for a new connection's first bytes and for a request's headers: a
client that opens connections and trickles a header line now and then (slowloris) keeps
each one, and the file descriptors, for as long as it likes. `with_header_deadline` gives
uvicorn's HTTP protocol a deadline from the connection's opening, and from each request's
first byte, to its last header: past it the client gets 408 and the connection is closed.
A body that trickles is the body limit's to stop (serving/app.py: `BODY_TIMEOUT_S`).
"""

from __future__ import annotations

import asyncio

HEADER_TIMEOUT_S = 10.0

_BODY = b'{"error": "request headers not received in time"}'
_TIMEOUT = (b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/json\r\nconnection: close\r\n"
            b"content-length: " + str(len(_BODY)).encode() + b"\r\n\r\n" + _BODY)


def with_header_deadline(base: type[asyncio.Protocol], timeout_s: float = HEADER_TIMEOUT_S) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol class `base`, closing connections whose headers are late."""

    class HeaderDeadline(base):  # type: ignore[misc, valid-type]
        _deadline: asyncio.TimerHandle | None = None

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(timeout_s, self._late)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _late(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.write(_TIMEOUT)
                self.transport.close()

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm()  # until the first request's headers

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()  # a kept-alive connection's next request

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc) -> None:
            self._disarm()
            super().connection_lost(exc)

    return HeaderDeadline
