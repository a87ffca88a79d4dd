"""Privacy by design: keyed pseudonyms for PII, a per-purpose consent ledger, and erasure of
one user from every store the platform writes, with an append-only audit.

- `Pseudonymizer`: HMAC-SHA256 tokens "<key id>:<hex>" under a key read from the environment
  (`HYPERREC_PII_KEY` or a mounted file `HYPERREC_PII_KEY_FILE`), never from code or
  parameters; a previous key (`HYPERREC_PII_KEY_PREVIOUS[_FILE]`) still matches during rotation.
- `ConsentLedger`: per user and purpose, the latest grant or withdrawal at a given time.
- `erase_user`: Feast online store (SQLite or Redis), event log and its dead letters, impression
  log, Feast offline parquet and every other data file under home, the recommendation cache,
  the consent rows, the trained models (`hyperrec.privacy.models`); the user joins the erasure
  list that training, the event log and the impression log honour.

Consent, the erasure list and the audit live in `<home>/privacy.db` (WAL, secure_delete), or
in PostgreSQL when `Settings.database_url` is set (a cluster: hyperrec.privacy.db). See docs/privacy.md.
"""

from hyperrec.privacy.db import PrivacyUnavailable, privacy_location
from hyperrec.privacy.erasure import (
    ErasureReport,
    ErasureWatch,
    _entity_key,
    drop_erased,
    erase_user,
    erased_users,
    erasure_audit,
    event_log_paths,
    needles_in_file,
    world_without_erased,
)
from hyperrec.privacy.ledger import DEFAULT_CONSENT, PRIVACY_DB, PURPOSES, ConsentLedger, Purpose, privacy_db
from hyperrec.privacy.pseudonyms import (
    KEY_ENV,
    PII_FIELDS,
    PREVIOUS_KEY_ENV,
    TOKEN,
    PIIKeyError,
    Pseudonymizer,
    scrub_user_frame,
    scrub_user_record,
    workspace_key_file,
)

__all__ = [
    "DEFAULT_CONSENT", "KEY_ENV", "PII_FIELDS", "PREVIOUS_KEY_ENV", "PRIVACY_DB", "PURPOSES",
    "TOKEN", "ConsentLedger", "ErasureReport", "ErasureWatch", "PIIKeyError", "PrivacyUnavailable", "Pseudonymizer",
    "Purpose", "_entity_key", "drop_erased", "erase_user", "erased_users", "erasure_audit", "event_log_paths",
    "privacy_db", "privacy_location", "scrub_user_frame", "scrub_user_record", "workspace_key_file",
    "needles_in_file", "world_without_erased",
]
