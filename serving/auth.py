"""Authentication for the model server: every route but health checks and the event
contract needs a credential with the route's scope (hyperrec.online.access).

The verified caller is put in a context variable (`current_caller`) for the handlers,
which bind what it may touch: a user token only asks for, posts events for and credits
the lists of its own user. Off (`--auth off`, or `auto` on a loopback address) every
request is the all-scopes `LOCAL` caller."""

from __future__ import annotations

import re
from contextvars import ContextVar

from hyperrec.online.access import LOCAL, Authenticator, AuthError, Caller, Forbidden, open_authenticator
from serving.errors import send_error

_CALLER: ContextVar[Caller] = ContextVar("hyperrec_caller", default=LOCAL)

OPEN = [  # (method, path) anyone may reach: kubelet probes, the KServe root, the event contract
    ("GET", re.compile(r"^/$")),
    ("GET", re.compile(r"^/v2/health/(live|ready)$")),
    ("GET", re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/ready$")),
    ("GET", re.compile(r"^/v1/models/[^/:]+$")),  # v1 model readiness
    ("GET", re.compile(r"^/v1/schema/event$")),
]
SCOPED = [  # (method, path, scope); anything else needs admin (/metrics, /docs, listings)
    ("POST", re.compile(r"^/v1/models/[^/]+:predict$"), "recommend"),
    ("POST", re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?/infer$"), "recommend"),
    ("GET", re.compile(r"^/v2/models/[^/]+(/versions/[^/]+)?$"), "recommend"),  # model metadata
    ("POST", re.compile(r"^/v1/events$"), "ingest"),
    ("POST", re.compile(r"^/v1/models/[^/]+:feedback$"), "feedback"),
]


def current_caller() -> Caller:
    return _CALLER.get()


def required_scope(method: str, path: str) -> str | None:
    """None for an open route, else the scope it needs."""
    method = "GET" if method == "HEAD" else method
    if any(m == method and p.match(path) for m, p in OPEN):
        return None
    return next((scope for m, p, scope in SCOPED if m == method and p.match(path)), "admin")


def credential(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            kind, _, token = value.decode("latin-1").partition(" ")
            # ApiKey: a key behind an Istio sidecar, which takes every Bearer value for a JWT
            return token.strip() if kind.lower() in ("bearer", "apikey") else None
        if name == b"x-api-key":
            return value.decode("latin-1").strip()
    return None


class RequireAuth:
    """ASGI middleware: 401 without a valid credential, 403 without the route's scope."""

    def __init__(self, app, authenticator: Authenticator):
        self.app, self.authenticator = app, authenticator

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        needed = required_scope(scope["method"], scope["path"])
        if needed is None:
            return await self.app(scope, receive, send)
        try:
            caller = self.authenticator.caller(credential(scope.get("headers") or []))
            caller.require(needed)
        except AuthError as exc:
            return await send_error(send, 401, str(exc), [(b"www-authenticate", b'Bearer realm="hyperrec"')])
        except Forbidden as exc:
            return await send_error(send, 403, str(exc))
        token = _CALLER.set(caller)
        try:
            await self.app(scope, receive, send)
        finally:
            _CALLER.reset(token)


def forbidden_response(exc: Forbidden):
    from fastapi.responses import JSONResponse

    return JSONResponse(status_code=403, content={"error": str(exc)})


def is_loopback(host: str) -> bool:
    import ipaddress

    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def authenticator_for(host: str, mode: str, home) -> Authenticator | None:
    """The server's authenticator: None when off (`off`, or `auto` on a loopback address).
    On with nothing configured is refused at start: an open server must not look secured."""
    if mode == "off" or (mode == "auto" and is_loopback(host)):
        return None
    authenticator = open_authenticator(home)
    if not authenticator.configured():
        raise SystemExit(f"authentication is on (--auth {mode}, --host {host}) but no API key, token secret or "
                         "identity provider key is configured: run `hyperrec auth create-key NAME --scope recommend` "
                         "(or `hyperrec auth user-token`), set HYPERREC_API_KEYS / HYPERREC_JWT_SECRET / "
                         "HYPERREC_JWT_PUBLIC_KEY, or serve on loopback")
    return authenticator
