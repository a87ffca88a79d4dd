"""The recommendation Model on KServe: parse (v1 or v2) -> micro-batch -> online user
features (Feast's online store, read directly: hyperrec.features.online_reader) -> retrieval ->
ranking -> re-ranking, from the serving unit the champion alias
names (hot-swapped in the background).

Online trial: while the registry names a `challenger`, a stable hash of the request key
picks `canary_share` of users for the trial (both units loaded side by side). By default
their lists interleave the champion's and the challenger's by team draft
(`hyperrec.experiments.interleave`; each item logged with the version that placed it); with
`trial="ab"` they get the challenger's lists. The monitoring job judges the trial from the
impression log and promotes or retires it (`hyperrec.experiments.canary`). This splits model versions
inside each process; KServe's canaryTrafficPercent splits revisions (new images or
configs) across pods, and the two compose."""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import kserve
import numpy as np
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferRequest

from hyperrec.config import Settings
from hyperrec.data.impressions import ImpressionLog, ImpressionRecorder
from hyperrec.data.kafka_impressions import KafkaImpressionWriter
from hyperrec.experiments.interleave import interleave
from hyperrec.features.online_reader import UNAVAILABLE, Columns, OnlineUserReader
from hyperrec.features.views import REQUEST_TS, SERVING_USER_VIEWS
from hyperrec.models.two_tower import NEW_USER, USER_INPUTS
from hyperrec.monitor.trigger import FEATURES as MONITORED_FEATURES
from hyperrec.online import sanity
from hyperrec.online.access import LOCAL, Caller, Forbidden, without_details
from hyperrec.online.bandit import LinUCB
from hyperrec.online.bandit_store import Credit, open_bandit_store, owner_of
from hyperrec.online.batching import MicroBatcher
from hyperrec.online.feedback import FEEDBACK_INPUTS, FeedbackConfig
from hyperrec.online.hotswap import ModelSlot, Target, load_shared, versions_dir_cleanup
from hyperrec.online.recs_cache import RecsCache
from hyperrec.online.rerank import EXPLORATION_DIM
from hyperrec.online.serving_path import (
    PERSONALIZED,
    Experiment,
    Recommended,
    Request,
    ServingUnit,
    StageTimer,
    apply_request,
    recommend_batch,
    stable_fraction,
    take,
)
from hyperrec.privacy import ConsentLedger, ErasureWatch, PrivacyUnavailable
from hyperrec.registry.model_registry import CHALLENGER, alias_watcher, model_version_dir, record_load_error
from serving import metrics
from serving.auth import current_caller
from serving.protocol import (
    parse_v1,
    parse_v2,
    requested_outputs,
    v1_response,
    v2_input_types,
    v2_output_types,
    v2_response,
)

log = logging.getLogger("hyperrec.serving")
CANARY_SALT = "hyperrec-canary-1"
TRIAL_DESIGNS = ("interleave", "ab")
DEGRADED_HEADER = "x-hyperrec-degraded"  # what a list was made without (an outage), comma-separated
PROBE_HEADER = "x-hyperrec-probe"  # a deploy or health check: answered like any request, not logged as traffic


def cache_scope(prefix: str, champion: Target | int, trial: Target | int | None) -> str:
    """The list cache's scope for lists made by these targets: a version redacted by an
    erasure since (a grown count, `hyperrec.online.hotswap.Target`) is a new scope, so no
    list the unredacted unit made is served after the reload."""
    def label(target) -> str:
        if target is None:
            return "0"
        version, redactions = target if isinstance(target, tuple) else (target, 0)
        return f"{version}r{redactions}"
    return f"{prefix}|v{label(champion)}|t{label(trial)}"


@dataclass(frozen=True)
class ServerConfig:
    max_batch: int = 64
    max_wait_ms: float = 2.0  # only while another batch runs (max_in_flight >= 2)
    # One batch at a time per process: the numpy model path holds the GIL, so a second batch
    # in flight only splits the CPU, and requests that queue meanwhile leave as one larger
    # batch (cheaper per request: 2.5 ms alone, 0.9 ms each in a batch of 8). At 500 req/s
    # with 2 workers on 2 cores, p50 30-67 ms and median p99 ~125 ms in 10 runs, against
    # p50 62-125 and median p99 ~177 in 6 with 2 in flight (2026-11-30, commit bdf3b2a; docs/serving.md).
    max_in_flight: int = 1
    poll_s: float = 5.0  # how often the champion alias is checked
    pending_feedback: int = 100_000  # exploration contexts kept for feedback (oldest dropped), all workers together
    feedback_wait_s: float = 1.0  # how long feedback for an unknown request waits for another worker to record it
    worker: int | None = None  # this process's slot in a multi-process server (None: the only process)
    canary_share: float = 0.2  # users in the trial while a challenger is on one (0: never load one)
    trial: str = "interleave"  # the trial share's lists: "interleave" (both versions, by team) or "ab" (challenger)
    backend: str = "numpy"  # the query tower and ranker: numpy forward passes or "tf" (hyperrec.models.recommender)
    recs_cache_ttl_s: float = 120.0  # longest a cached list is served (with Settings.recs_cache set)
    feedback: bool = True  # move each query by the user's recent reactions (hyperrec.online.feedback)

    def __post_init__(self):
        if self.trial not in TRIAL_DESIGNS:
            raise ValueError(f"trial must be one of {TRIAL_DESIGNS}, got {self.trial!r}")


class RecommenderModel(kserve.Model):
    def __init__(self, name: str, settings: Settings, as_of: datetime | None = None,
                 config: ServerConfig = ServerConfig(), experiment: Experiment = Experiment(),
                 log_impressions: bool = True):
        """`as_of` fixes the clock feature TTLs are judged by (a simulated world's "now");
        None means the wall clock. Served lists go to the impression log (monitoring)."""
        super().__init__(name, return_response_headers=True)  # a degraded answer says so in a header
        self.settings, self.as_of, self.config, self.experiment = settings, as_of, config, experiment
        # the bandit's state and the pending exploration contexts live in a file every worker
        # process shares (in Redis with Settings.bandit_redis, for replicas on several nodes):
        # feedback may reach another process than the one that served the list
        self.bandit = LinUCB(EXPLORATION_DIM)
        self.bandit_store = open_bandit_store(settings, self.bandit, limit=config.pending_feedback)
        metrics.track(metrics.BANDIT_UPDATES, lambda: self.bandit.updates)
        # only what the model reads, plus the purchases re-ranking filters out
        self.features = OnlineUserReader(settings, SERVING_USER_VIEWS, features=[
            *USER_INPUTS, "purchased_items", *(FEEDBACK_INPUTS if config.feedback else ())])
        self._feedback = FeedbackConfig() if config.feedback else None
        self.consent = ConsentLedger.open(settings)
        self._timer = StageTimer(lambda stage, s: metrics.STAGE_SECONDS.labels(stage).observe(s))
        self.slot = ModelSlot(resolve=alias_watcher(settings), load=self._load_champion, probe=self._probe,
                              on_swap=self._swapped, on_failure=lambda *_: metrics.LOAD_FAILURES.inc())
        trial = alias_watcher(settings, CHALLENGER) if config.canary_share > 0 else (lambda: None)
        self.canary = ModelSlot(resolve=trial, load=self._load_unit, probe=self._probe, on_swap=self._swapped,
                                on_failure=lambda *_: metrics.LOAD_FAILURES.inc(), optional=True)
        metrics.track(metrics.CANARY_VERSION, lambda: self.canary.version or 0)
        self.batcher: MicroBatcher | None = None
        self._champion_version: int | None = None  # the last champion swapped in, and the one before it
        self._predecessor: int | None = None
        self.impressions: ImpressionRecorder | KafkaImpressionWriter | None = None
        if log_impressions and settings.kafka_bootstrap:  # a cluster: to the topic the monitoring job drains
            self.impressions = KafkaImpressionWriter(
                settings.kafka_bootstrap, suppress=ErasureWatch(settings, unavailable="suppress"),
                on_drop=lambda reason, n: metrics.IMPRESSIONS_DROPPED.labels(reason).inc(n))
        elif log_impressions:  # an erased user's lists are never logged
            served = ImpressionLog(settings.impression_log, suppress=ErasureWatch(settings, unavailable="suppress"))
            self.impressions = ImpressionRecorder(served)
        self.cache = RecsCache(settings.recs_cache, ttl_s=config.recs_cache_ttl_s,
                               on_outcome=lambda outcome, n: metrics.CACHE.labels(outcome).inc(n)) \
            if settings.recs_cache else None
        # what else a cached list depends on (besides versions and request): the arms and the trial design
        self._cache_scope = f"{experiment.salt}|{config.trial}|{config.canary_share}"
        self._rng = np.random.default_rng()  # the team draft's coin flips
        # what else readiness depends on: each returns the problem, or None (e.g. the event log's file is gone)
        self.health_checks: list[Callable[[], str | None]] = []

    # --- model lifecycle -------------------------------------------------------------
    def load(self) -> bool:
        """Ready only once the champion is loaded and has answered a probe (TF graphs traced)."""
        self.slot.refresh()
        if self.slot.unit is None:
            raise RuntimeError(f"no '{self.settings.model_name}@champion' in the registry: train and register first")
        self.features.check()
        self.batcher = MicroBatcher(self._run_batch, self.config.max_batch, self.config.max_wait_ms,
                                    self.config.max_in_flight,
                                    on_batch=lambda size, _: metrics.BATCH_SIZE.observe(size))
        self.canary.refresh()
        self.slot.watch(self.config.poll_s)
        self.canary.watch(self.config.poll_s)
        self.ready = True
        return True

    async def healthy(self) -> bool:
        """KServe's readiness: the champion loaded, and every health check passes (a server
        whose event log vanished must be taken out of rotation, not acknowledge into nothing)."""
        problems = [p for check in self.health_checks if (p := check())]
        for problem in problems:
            log.error("not ready: %s", problem)
        return self.ready and not problems

    def _load_champion(self, target: Target) -> ServingUnit:
        """A promoted challenger is already loaded and warm: the champion takes that unit."""
        loaded, trial = self.canary.serving
        return trial if trial is not None and loaded == target else self._load_unit(target)

    def _load_unit(self, target: Target) -> ServingUnit:
        """The target's files (downloaded again when the version was redacted since its
        download: hyperrec.online.hotswap.load_shared), loaded."""
        def download(folder):
            return model_version_dir(self.settings, target.version, folder)

        def load(model_dir):
            return ServingUnit(model_dir, target.version, self.config.backend)

        return load_shared(self._versions_dir, target.version, download, load, redactions=target.redactions)

    def _probe(self, unit: ServingUnit) -> None:
        """One personalized and one popular request through the new unit before it serves,
        and the unit's tables and lists checked (hyperrec.online.sanity). A unit that fails
        the checks is recorded on its registry version, which rollback and promote then
        refuse, and raises (the old unit keeps serving)."""
        try:
            sanity.probe(unit, self._recommend)
        except sanity.UnfitModel as exc:
            record_load_error(self.settings, unit.version, f"{type(exc).__name__}: {exc}")
            raise

    def _swapped(self, unit: ServingUnit) -> None:
        # A unit is millions of long-lived objects (id maps, vocabularies): freeze them out of
        # the collector, or every full collection walks them all while requests wait.
        gc.collect()
        gc.freeze()
        if unit is self.slot.unit:  # a new champion (else a challenger was loaded)
            metrics.MODEL_VERSION.set(unit.version)
            metrics.SWAPS.inc()
            self._predecessor, self._champion_version = self._champion_version, unit.version
        # keep the predecessor's files (batches that started before the swap may still read
        # them) and the challenger's
        keep = {v for v in (self.slot.version, self._predecessor, self.canary.version) if v is not None}
        versions_dir_cleanup(self._versions_dir, keep)

    @property
    def _versions_dir(self):
        """Where versions are downloaded: one folder for all workers of a multi-process
        server, each version fetched once (hyperrec.online.hotswap.load_shared)."""
        return self.settings.home / "serving" / "versions"

    def stop(self) -> None:
        self.slot.stop()
        self.canary.stop()
        if self.batcher is not None:
            self.batcher.close()
        if self.impressions is not None:
            self.impressions.close()
        if self.cache is not None:
            self.cache.close()
        self.bandit_store.close()

    # --- the request path -------------------------------------------------------------
    def _recommend(self, unit: ServingUnit, requests: list[Request]) -> list[Recommended]:
        requests = self._with_consent(requests)
        return self._serve(unit, requests, self._inputs(requests))

    def _inputs(self, requests: list[Request]) -> Columns:
        """The requests' model inputs (online user features plus the request's own): read
        once per batch, whichever units serve it."""
        with self._timer("feature_fetch"):
            features = self.features.read([r.user_id or NEW_USER for r in requests], now=self.as_of)
        return apply_request(features, requests)

    def _serve(self, unit: ServingUnit, requests: list[Request], rows: Columns) -> list[Recommended]:
        results = recommend_batch(unit, rows, requests, self.experiment, self.bandit, self._timer, self._feedback)
        monitored = {name: rows[name].tolist() for name in (*MONITORED_FEATURES, REQUEST_TS)}
        unavailable = rows[UNAVAILABLE]
        return [replace(rec, monitored={name: values[i] for name, values in monitored.items()},
                        degraded=("online-features",) if unavailable[i] else ())
                for i, rec in enumerate(results)]

    def _with_consent(self, requests: list[Request]) -> list[Request]:
        """A user who has not consented to personalization (now, per the ledger) gets the
        popular-in-context policy: their history is not used for what they see. While the
        ledger cannot answer (its PostgreSQL down), nobody is personalized: fail closed."""
        users = [r.user_id for r in requests if r.user_id is not None]
        try:
            allowed = dict(zip(users, self.consent.consented(users, "personalization", self.as_of))) if users else {}
        except PrivacyUnavailable as exc:
            metrics.ERRORS.labels(exc.kind).inc()
            log.warning("consent unknown, serving %d users unpersonalized: %s", len(users), exc)
            allowed = dict.fromkeys(users, False)
        return [replace(r, personalization=False) if r.user_id is not None and not allowed[r.user_id] else r
                for r in requests]

    def _run_batch(self, requests: list[Request]) -> list[Recommended]:
        # one unit per request for the whole batch; each read with the target it was loaded as
        (champion_target, champion), (trial_target, trial) = self.slot.serving, self.canary.serving
        if trial is not None and trial.version == champion.version:
            trial = None
        requests = self._with_consent(requests)  # before the cache: a withdrawal counts from the next request
        if self.cache is None:
            return self._lists(champion, trial, requests)
        scope = cache_scope(self._cache_scope, champion_target, trial_target if trial is not None else None)
        results = self.cache.serve(requests, scope, self._now_ts(), lambda todo: self._lists(champion, trial, todo))
        if self.cache.available:
            return results
        return [replace(rec, degraded=(*rec.degraded, "recs-cache")) for rec in results]

    def _now_ts(self) -> int:
        """The request time the feature reader stamps (REQUEST_TS): `as_of`, else the clock."""
        return int((self.as_of or datetime.now(UTC)).timestamp())

    def _lists(self, champion: ServingUnit, trial: ServingUnit | None, requests: list[Request]) -> list[Recommended]:
        """The champion's lists, or with a trial on, the trial share's interleaved or challenger lists."""
        if trial is None:
            return self._serve(champion, requests, self._inputs(requests))
        on_trial = [self._in_canary(r.key) for r in requests]
        rows = self._inputs(requests)

        def serve(unit: ServingUnit, picked: list[int]) -> list[Recommended]:
            return self._serve(unit, [requests[i] for i in picked], take(rows, np.array(picked, np.int64)))

        if self.config.trial == "interleave":
            out = self._serve(champion, requests, rows)
            picked = [i for i, t in enumerate(on_trial) if t and out[i].policy == PERSONALIZED]
            for i, rec in zip(picked, serve(trial, picked) if picked else []):
                if rec.policy == PERSONALIZED:
                    out[i] = interleave(out[i], rec, requests[i].k, self._rng)
            return out
        out: list[Recommended | None] = [None] * len(requests)
        for unit, flag in ((champion, False), (trial, True)):
            picked = [i for i, t in enumerate(on_trial) if t == flag]
            if picked:
                for i, rec in zip(picked, serve(unit, picked)):
                    out[i] = rec
        return out

    def _in_canary(self, key: str) -> bool:
        """Stable per user; independent of the re-ranking experiment's assignment."""
        return stable_fraction(CANARY_SALT, key) < self.config.canary_share

    def get_input_types(self) -> list[dict]:
        """The v2 model metadata's inputs (GET /v2/models/{name})."""
        return v2_input_types()

    def get_output_types(self) -> list[dict]:
        """The v2 model metadata's outputs."""
        return v2_output_types()

    async def predict(self, payload, headers=None, response_headers=None):
        v2 = isinstance(payload, InferRequest)
        try:
            requests = parse_v2(payload) if v2 else parse_v1(payload)
            outputs = requested_outputs(payload) if v2 else None
        except InvalidInput:
            metrics.ERRORS.labels("bad_request").inc()
            raise
        caller = current_caller()
        if others := [i for i, r in enumerate(requests) if not caller.acts_for(r.user_id)]:
            metrics.ERRORS.labels("forbidden").inc()
            raise Forbidden(f"requests {others[:20]} ask for another user than the token's")
        try:
            results = await asyncio.gather(*(self.batcher.submit(r) for r in requests))
        except Exception:
            metrics.ERRORS.labels("internal").inc()
            raise
        ids = [uuid.uuid4().hex for _ in results]
        probe = bool((headers or {}).get(PROBE_HEADER)) and caller.may("admin")
        if self.impressions is not None and not probe:
            self.impressions.add(ids, [r.user_id for r in requests], results, [rec.monitored for rec in results],
                                 [rec.monitored[REQUEST_TS] for rec in results])
        for rid, req, rec in zip(ids, requests, results):
            metrics.REQUESTS.labels(rec.policy, rec.arm).inc()
            if rec.explored_item is not None:
                self.bandit_store.remember(rid, rec.explored_item, rec.explored_x, owner_of(rid, req.user_id))
        results = [rec if caller.sees_details_of(req.user_id) else without_details(rec)
                   for req, rec in zip(requests, results)]
        if degraded := sorted({part for rec in results for part in rec.degraded}):
            for part in degraded:
                metrics.DEGRADED.labels(part).inc()
            if response_headers is not None:
                response_headers[DEGRADED_HEADER] = ",".join(degraded)
        if v2:
            response = v2_response(self.name, payload.id or uuid.uuid4().hex, results, ids, outputs,
                                   payload.use_binary_outputs)
            if degraded:  # KServe's v2 route sends no model headers: the response's parameters say it
                response.parameters = {**(response.parameters or {}), "degraded": ",".join(degraded)}
            return response
        return v1_response(requests, results, ids)

    # --- bandit feedback --------------------------------------------------------------
    async def feedback(self, request_id: str, item_id: str, reward: float, caller: Caller = LOCAL) -> bool:
        """Credit the exploration slot of an earlier response: True if it was one (and, for
        a user token, a list served to that user). The list
        may have been served by another worker that has not written its pending contexts
        yet (it does every 50 ms): in a multi-process server, or with replicas sharing the
        state in Redis, an unknown request is looked up again for up to `feedback_wait_s`
        before it is refused."""
        loop = asyncio.get_running_loop()
        shared = self.config.worker is not None or self.settings.bandit_redis is not None
        deadline = loop.time() + (self.config.feedback_wait_s if shared else 0.0)
        owner = None if caller.user_id is None else owner_of(request_id, caller.user_id)
        while True:
            outcome = await loop.run_in_executor(None, self.bandit_store.credit, request_id, item_id, reward, owner)
            if outcome is not Credit.UNKNOWN or loop.time() >= deadline:
                break
            await asyncio.sleep(0.05)
        if outcome is not Credit.CREDITED:
            metrics.FEEDBACK.labels("unknown").inc()
            return False
        metrics.FEEDBACK.labels("clicked" if reward > 0 else "ignored").inc()
        return True
