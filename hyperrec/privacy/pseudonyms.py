"""Keyed pseudonyms for PII: HMAC-SHA256 tokens "<key id>:<hex>" under a key read from the
environment or a mounted file, never from code or parameters; a previous key still matches
during a rotation (docs/privacy.md)."""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from hyperrec.config import Settings

KEY_ENV = "HYPERREC_PII_KEY"  # + "_FILE" (mounted secret), "_ID" (token prefix, default k1)
PREVIOUS_KEY_ENV = "HYPERREC_PII_KEY_PREVIOUS"  # same three forms; "_ID" required with it
MIN_KEY_BYTES = 32
PII_FIELDS = ("email", "name", "phone")
KEY_ID = re.compile(r"[a-z0-9][a-z0-9_-]{0,15}")
TOKEN = re.compile(r"([a-z0-9][a-z0-9_-]{0,15}):([0-9a-f]{64})")


class PIIKeyError(RuntimeError):
    """The pseudonymization key is missing or unusable (the message never contains it)."""


class _Secret:
    """Key bytes that never print or pickle."""

    __slots__ = ("value",)

    def __init__(self, value: bytes):
        self.value = value

    def __repr__(self) -> str:
        return "<secret>"

    def __reduce_ex__(self, protocol):
        raise TypeError("PII keys cannot be pickled: each process reads its own from the environment")


def _read_key(var: str) -> _Secret | None:
    inline, path = os.environ.get(var), os.environ.get(var + "_FILE")
    if inline and path:
        raise PIIKeyError(f"set either {var} or {var}_FILE, not both")
    if path:
        return _key_from_file(Path(path), f"{var}_FILE")
    return _key_from_text(inline, var) if inline else None


def _key_from_file(path: Path, label: str) -> _Secret:
    try:
        return _key_from_text(path.read_text(), label)
    except OSError as exc:
        raise PIIKeyError(f"{label}: cannot read the key file ({exc.strerror})") from None


def _key_from_text(text: str, label: str) -> _Secret:
    key = text.strip().encode()
    if len(key) < MIN_KEY_BYTES:
        raise PIIKeyError(f"{label}: the key is {len(key)} bytes, at least {MIN_KEY_BYTES} are needed; generate one "
                          "with: python -c 'import secrets; print(secrets.token_hex(32))'")
    return _Secret(key)


def workspace_key_file(settings: Settings) -> Path:
    """Embedded mode's key when the environment has none: `<home>/secrets/pii.key`, created
    once with a random 256-bit key, readable by its owner only. Never in the repository,
    in code or in parameters; a cluster mounts its Secret instead (HYPERREC_PII_KEY_FILE)."""
    path = settings.home / "secrets" / "pii.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
    return path


def _key_id(var: str, default: str | None) -> str:
    kid = os.environ.get(var + "_ID") or default
    if kid is None:
        raise PIIKeyError(f"{var}_ID is required with {var}: the id its tokens carry (e.g. k1)")
    if not KEY_ID.fullmatch(kid):
        raise PIIKeyError(f"{var}_ID must match {KEY_ID.pattern} (it prefixes every token)")
    return kid


def normalize(field: str, value: str) -> str:
    """Canonical form before hashing, so "A@X.com " and "a@x.com" give one token."""
    if not isinstance(value, str):
        raise TypeError(f"{field}: expected a string, got {type(value).__name__}")
    text = unicodedata.normalize("NFKC", value).strip()
    if field == "email":
        return text.casefold()
    if field == "name":
        return " ".join(text.split()).casefold()
    if field == "phone":
        return ("+" if text.startswith("+") else "") + re.sub(r"\D", "", text)
    return text


class Pseudonymizer:
    """Keyed HMAC-SHA256 pseudonyms: `token(value, field)` -> "<key id>:<64 hex>".

    Deterministic per key (joins and lookups work on tokens), unlinkable without the key,
    domain-separated by field. The key comes only from the environment (see module doc).
    """

    __slots__ = ("key_id", "previous_key_id", "_keys")

    def __init__(self, key_file: Path | None = None):
        """The key from the environment; else from `key_file` (see `for_workspace`)."""
        current = _read_key(KEY_ENV)
        if current is None and key_file is not None:
            current = _key_from_file(key_file, str(key_file))
        if current is None:
            raise PIIKeyError(f"no pseudonymization key: set {KEY_ENV} or mount a secret file and set "
                              f"{KEY_ENV}_FILE (keys never come from code or parameters)")
        self.key_id = _key_id(KEY_ENV, "k1")
        self._keys = {self.key_id: current}
        self.previous_key_id = None
        previous = _read_key(PREVIOUS_KEY_ENV)
        if previous is not None:
            self.previous_key_id = _key_id(PREVIOUS_KEY_ENV, None)
            if self.previous_key_id == self.key_id or hmac.compare_digest(previous.value, current.value):
                raise PIIKeyError(f"{PREVIOUS_KEY_ENV} must be a different key with a different id")
            self._keys[self.previous_key_id] = previous

    @classmethod
    def for_workspace(cls, settings: Settings) -> Pseudonymizer:
        """The environment's key when set (a cluster's mounted Secret), else the workspace's
        own key file (`workspace_key_file`): embedded mode needs no setup."""
        if os.environ.get(KEY_ENV) or os.environ.get(KEY_ENV + "_FILE"):
            return cls()
        return cls(key_file=workspace_key_file(settings))

    def _digest(self, key_id: str, value: str, field: str) -> str:
        message = f"{field}\x1f{normalize(field, value)}".encode()
        return hmac.new(self._keys[key_id].value, message, hashlib.sha256).hexdigest()

    def token(self, value: str, field: str = "id") -> str:
        """The token of `value` under the current key."""
        return f"{self.key_id}:{self._digest(self.key_id, value, field)}"

    def candidates(self, value: str, field: str = "id") -> list[str]:
        """Its tokens under every loaded key, current first: look stored tokens up with `IN`."""
        return [f"{kid}:{self._digest(kid, value, field)}" for kid in self._keys]

    def matches(self, token: str, value: str, field: str = "id") -> bool:
        """Whether `token` is `value`'s, under the current or the previous key."""
        m = TOKEN.fullmatch(token)
        return bool(m and m[1] in self._keys and hmac.compare_digest(m[2], self._digest(m[1], value, field)))

    def is_current(self, token: str) -> bool:
        """False for a token under the previous (or an unknown) key: re-derive it from the source."""
        return token.startswith(self.key_id + ":")

    def is_token(self, value) -> bool:
        m = isinstance(value, str) and TOKEN.fullmatch(value)
        return bool(m and m[1] in self._keys)

    def __repr__(self) -> str:
        return f"Pseudonymizer(key_id={self.key_id!r}, previous_key_id={self.previous_key_id!r})"

    def __reduce_ex__(self, protocol):
        raise TypeError("a Pseudonymizer cannot be pickled or passed as a parameter; build one per process")


def _blank(value) -> bool:
    return value == "" if isinstance(value, str) else value is None or bool(pd.isna(value))


def scrub_user_record(record: Mapping, pseudonymizer: Pseudonymizer | None = None,
                      fields: Sequence[str] = PII_FIELDS) -> dict:
    """A copy of a raw user/profile record with its PII fields (email, name, phone) replaced
    by tokens. Missing or empty values stay as they are; existing tokens are kept (idempotent)."""
    pz = pseudonymizer or Pseudonymizer()
    out = dict(record)
    for field in fields:
        value = out.get(field)
        if _blank(value) or pz.is_token(value):
            continue
        out[field] = pz.token(value, field)
    return out


def scrub_user_frame(users: pd.DataFrame, pseudonymizer: Pseudonymizer | None = None,
                     fields: Sequence[str] = PII_FIELDS) -> pd.DataFrame:
    """`scrub_user_record` for a whole table (e.g. a CRM export or a world's users)."""
    pz = pseudonymizer or Pseudonymizer()
    out = users.copy()
    for field in (f for f in fields if f in out):
        out[field] = [v if _blank(v) or pz.is_token(v) else pz.token(v, field) for v in out[field]]
    return out
