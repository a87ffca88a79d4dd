"""How an ASGI middleware answers a refusal: `{"error": ...}` as JSON, the body every
handler of the server gives (a client reads one error shape whichever layer refused)."""

from __future__ import annotations

import json


async def send_error(send, status: int, message: str, headers=()) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *headers]})
    await send({"type": "http.response.body", "body": body})
