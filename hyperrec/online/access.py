"""Who is calling, and what they may do: API keys for services, signed tokens for users.

Two kinds of credential, sent as `Authorization: Bearer <credential>` (or `x-api-key`):

- an **API key** (`hr_<name>_<secret>`), for a service: the site's backend asking lists for
  any user, a collector posting any user's events, Prometheus scraping /metrics. Only
  its SHA-256 is stored (`HOME/auth/keys.json`, or `$HYPERREC_API_KEYS`), with its scopes.
- a **user token**, a JWT whose `sub` is the user: HS256 with the workspace's secret
  (`hyperrec auth user-token`, or the site's login service holding the same secret), or
  RS256 from an identity provider whose public key is at `$HYPERREC_JWT_PUBLIC_KEY`.
  A user token acts only as its user: their lists, their events, their feedback.

Scopes: `recommend` (lists), `ingest` (events), `feedback` (bandit credit), `admin`
(everything, plus /metrics and probe traffic that monitoring does not count). Reasons and
policy in a list (they name items the user engaged with, and reveal consent) are shown
only to the user themself or an admin.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

SCOPES = ("recommend", "ingest", "feedback", "admin")
USER_SCOPES = ("recommend", "ingest", "feedback")  # what a user token carries by default
KEY_PREFIX = "hr_"
ISSUER = "hyperrec"


class AuthError(Exception):
    """No credential, or one that does not verify (HTTP 401)."""


class Forbidden(Exception):
    """A verified caller asking for what its credential does not allow (HTTP 403)."""


@dataclass(frozen=True)
class Caller:
    name: str  # the key's name, or "user:<id>"
    scopes: frozenset[str]
    user_id: str | None = None  # set for a user token: the only user it acts as

    def may(self, scope: str) -> bool:
        return "admin" in self.scopes or scope in self.scopes

    def require(self, scope: str) -> None:
        if not self.may(scope):
            raise Forbidden(f"credential {self.name!r} lacks the {scope!r} scope")

    def acts_for(self, user_id: str | None) -> bool:
        """A service key may act for any user; a user token only for its own (or nobody)."""
        return self.user_id is None or user_id is None or user_id == self.user_id

    def sees_details_of(self, user_id: str | None) -> bool:
        """Reasons and policy: the user themself (or an anonymous session's own caller), or an admin."""
        return "admin" in self.scopes or user_id is None or user_id == self.user_id


LOCAL = Caller("local", frozenset(SCOPES))  # authentication off (loopback only, by default)


def without_details(rec):
    """A served list (hyperrec.online.serving_path.Recommended) as a caller other than the
    user sees it: no reasons (they name items the user engaged with), no policy (it tells
    whether the user consented to personalization)."""
    return replace(rec, reasons=[""] * len(rec.reasons), policy="")


@dataclass
class KeyRing:
    """API keys: name -> (sha256 of the secret, scopes), in a JSON file re-read when it changes
    (so `hyperrec auth create-key` / `revoke` take effect on a running server within a second)."""

    path: Path
    _by_hash: dict[str, Caller] = field(default_factory=dict)
    _stamp: tuple | None = None
    _checked: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def create(self, name: str, scopes: list[str]) -> str:
        """A new key's secret (shown once; only its hash is kept)."""
        unknown = set(scopes) - set(SCOPES)
        if unknown or not scopes:
            raise ValueError(f"scopes must be some of {SCOPES}, got {scopes}")
        if not name.replace("-", "").isalnum():
            raise ValueError(f"key name must be letters, digits and '-', got {name!r}")
        secret = f"{KEY_PREFIX}{name}_{secrets.token_urlsafe(32)}"
        entries = self._entries()
        entries[name] = {"sha256": _sha256(secret), "scopes": sorted(set(scopes)), "created": int(time.time())}
        self._write(entries)
        return secret

    def revoke(self, name: str) -> bool:
        entries = self._entries()
        if entries.pop(name, None) is None:
            return False
        self._write(entries)
        return True

    def names(self) -> dict[str, list[str]]:
        return {name: entry["scopes"] for name, entry in self._entries().items()}

    def verify(self, secret: str) -> Caller | None:
        self._reload()
        return self._by_hash.get(_sha256(secret))  # a dict lookup on a hash: no timing leak of the secret

    def _entries(self) -> dict:
        return json.loads(self.path.read_text()) if self.path.exists() else {}

    def _write(self, entries: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(entries, indent=1))
        os.chmod(tmp, 0o600)
        os.replace(tmp, self.path)

    def _reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < 1.0:
            return
        with self._lock:
            self._checked = now
            try:
                st = self.path.stat()
                stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
            except FileNotFoundError:
                stamp = None
            if stamp == self._stamp:
                return
            self._stamp = stamp
            self._by_hash = {entry["sha256"]: Caller(name, frozenset(entry["scopes"]))
                             for name, entry in self._entries().items()}


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class UserTokens:
    """User tokens (JWT): HS256 signed with `secret`, and/or RS256 verified with an identity
    provider's `public_key` (PEM). `audience` is checked when set."""

    secret: bytes | None = None
    public_key: str | None = None
    audience: str | None = None

    def issue(self, user_id: str, scopes: tuple[str, ...] = USER_SCOPES, ttl_s: int = 3600) -> str:
        import jwt

        if self.secret is None:
            raise ValueError("no token secret in this workspace: tokens come from the identity provider")
        if set(scopes) - set(USER_SCOPES):
            raise ValueError(f"a user token's scopes are some of {USER_SCOPES}")
        now = int(time.time())
        claims = {"sub": user_id, "scope": " ".join(scopes), "iat": now, "exp": now + ttl_s, "iss": ISSUER}
        if self.audience:
            claims["aud"] = self.audience
        return jwt.encode(claims, self.secret, algorithm="HS256")

    def verify(self, token: str) -> Caller:
        import jwt

        keys = [(k, alg) for k, alg in ((self.secret, "HS256"), (self.public_key, "RS256")) if k is not None]
        if not keys:
            raise AuthError("user tokens are not accepted here (no secret or public key configured)")
        try:
            alg = jwt.get_unverified_header(token).get("alg")
        except jwt.PyJWTError as exc:
            raise AuthError(f"malformed token: {exc}") from None
        key = next((k for k, a in keys if a == alg), None)
        if key is None:
            raise AuthError(f"token algorithm {alg!r} is not accepted")
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=self.audience,
                                options={"require": ["sub", "exp"], "verify_aud": self.audience is not None})
        except jwt.PyJWTError as exc:
            raise AuthError(f"token rejected: {exc}") from None
        scopes = frozenset(str(claims.get("scope", " ".join(USER_SCOPES))).split()) & set(USER_SCOPES)
        return Caller(f"user:{claims['sub']}", scopes, user_id=str(claims["sub"]))


@dataclass
class Authenticator:
    keys: KeyRing
    tokens: UserTokens

    def caller(self, credential: str | None) -> Caller:
        """The verified caller behind a bearer credential, or AuthError saying why not."""
        if not credential:
            raise AuthError("no credential: send 'Authorization: Bearer <API key or user token>'")
        if credential.startswith(KEY_PREFIX):
            caller = self.keys.verify(credential)
            if caller is None:
                raise AuthError("unknown or revoked API key")
            return caller
        if credential.count(".") == 2:
            return self.tokens.verify(credential)
        raise AuthError("credential is neither an API key (hr_...) nor a token")

    def configured(self) -> bool:
        return bool(self.keys.names()) or self.tokens.secret is not None or self.tokens.public_key is not None


def auth_dir(home: Path) -> Path:
    return home / "auth"


def open_authenticator(home: Path, create_secret: bool = False) -> Authenticator:
    """Keys from `$HYPERREC_API_KEYS` or HOME/auth/keys.json; the HS256 secret from
    `$HYPERREC_JWT_SECRET` or HOME/auth/jwt.secret (made with `create_secret`); an identity
    provider's RS256 public key from the PEM file at `$HYPERREC_JWT_PUBLIC_KEY`; the
    audience from `$HYPERREC_JWT_AUDIENCE`."""
    folder = auth_dir(home)
    keys = KeyRing(Path(os.environ.get("HYPERREC_API_KEYS") or folder / "keys.json"))
    secret = os.environ.get("HYPERREC_JWT_SECRET", "").encode() or None
    secret_file = folder / "jwt.secret"
    if secret is None and create_secret and not secret_file.exists():
        folder.mkdir(parents=True, exist_ok=True)
        secret_file.write_bytes(secrets.token_bytes(32))
        os.chmod(secret_file, 0o600)
    if secret is None and secret_file.exists():
        secret = secret_file.read_bytes()
    pem = os.environ.get("HYPERREC_JWT_PUBLIC_KEY")
    public_key = (Path(pem).read_text().strip() or None) if pem and Path(pem).is_file() else None
    return Authenticator(keys, UserTokens(secret, public_key, os.environ.get("HYPERREC_JWT_AUDIENCE") or None))
