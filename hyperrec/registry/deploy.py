"""Deploy: after register, make sure the registered version is (or is not) what serves.

The model servers follow the registry on their own: each polls the `champion` alias and
hot-swaps to the version it points at (`hyperrec/online/hotswap.py`). Registering a blessed
version already moved the alias, so deploying is verifying: with an endpoint, ask the
server until its answers carry the new version (or fail visibly after a timeout); without
one there is nothing to ask. The outcome is recorded as tags on the model version.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import requests

from hyperrec.config import Settings
from hyperrec.registry.model_registry import challenger_version, tag_version

SERVED_NAME = "recommender"  # the KServe model name in the v1 predict path
PROBE = {"instances": [{"user_id": "deploy-probe", "k": 1}]}
PROBE_HEADERS = {"x-hyperrec-probe": "deploy"}  # the server answers but does not log it as traffic
CONFIRMATIONS = 10  # answers in a row: a multi-process server's workers swap one by one


def serving_version(endpoint: str, timeout_s: float = 5.0) -> int | None:
    """The model version a server's v1 predict answers with, or None (unreachable, error,
    unexpected body)."""
    url = f"{endpoint.rstrip('/')}/v1/models/{SERVED_NAME}:predict"
    try:
        resp = requests.post(url, json=PROBE, headers=PROBE_HEADERS, timeout=timeout_s)
        resp.raise_for_status()
        return int(resp.json()["predictions"][0]["model_version"])
    except (requests.RequestException, ValueError, KeyError, IndexError, TypeError):
        return None


def deploy(settings: Settings, model_name: str, version: int, blessed: bool, endpoint: str | None,
           timeout_s: float = 120) -> dict:
    """Verify the roll-out of `version` of registered model `model_name`:
    rejected -> "skipped" (or "canary": the gate sent it to an online trial);
    no endpoint -> "alias-moved" (servers pick it up themselves);
    else poll the endpoint until it serves `version` in CONFIRMATIONS answers in a row (each
    worker process of the server, or replica behind it, swaps on its own) -> "serving", or raise RuntimeError
    after `timeout_s`. Every outcome is tagged on the version (deploy_status, ...)."""
    settings = settings.model_copy(update={"model_name": model_name})
    at = datetime.now(UTC).isoformat(timespec="seconds")
    if not blessed and challenger_version(settings) == version:
        out = {"status": "canary", "reason": "on online trial: servers give it to their canary share of users and "
                                             "the monitoring job's A/B test promotes or retires it"}
    elif not blessed:
        out = {"status": "skipped", "reason": "rejected by the model gate: the champion alias did not move"}
    elif not endpoint:
        out = {"status": "alias-moved",
               "reason": "no endpoint to verify: servers follow the champion alias and swap on their own"}
    else:
        t0, seen, in_a_row = time.monotonic(), None, 0
        while True:
            seen = serving_version(endpoint, timeout_s=min(5.0, timeout_s))
            seconds = round(time.monotonic() - t0, 1)
            in_a_row = in_a_row + 1 if seen == version else 0
            if in_a_row >= CONFIRMATIONS:
                out = {"status": "serving", "endpoint": endpoint, "seconds": seconds}
                break
            if seen == version:
                continue  # confirm at once: only a changed answer needs waiting for
            if seconds >= timeout_s:
                reason = (f"{endpoint} still serves version {seen} after {seconds:.0f} s, not {version}"
                          if seen is not None else f"{endpoint} gave no usable answer for {seconds:.0f} s")
                tag_version(settings, version, {"deploy_status": "failed", "deploy_reason": reason,
                                                "deploy_endpoint": endpoint, "deploy_at": at})
                raise RuntimeError(f"deploy of {model_name} version {version} not confirmed: {reason}")
            time.sleep(1.0)
    tag_version(settings, version, {"deploy_status": out["status"], "deploy_at": at,
                                    **{f"deploy_{k}": v for k, v in out.items() if k != "status"}})
    return out
