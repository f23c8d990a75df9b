"""A processor process: one consumer-group member over keystate.log and keystate.requests.

Three parts, as Kafka Streams splits StreamThread / TaskManager / RecordCollector:
the session (`session.py`, its own thread: clients, transaction, assign/revoke, pause/resume),
the pure batch step (`step.py`: records in -> records out + effects) and the executor of effects
(`effects.py`, on the event loop: the invoker and the timers). This module wires them, answers the
lookups (registered services, topics) and watches the loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaException, TopicCollection
from confluent_kafka.admin import AdminClient, ConfigResource

from keystate.schemas._codec import codec
from keystate.schemas.headers import redact_headers
from keystate.schemas.limits import kafka_sizes
from keystate.server.kafka import AsyncProducer, KafkaSettings, kafka_error
from keystate.server.meta import MetaView
from keystate.server.state_dir import default_state_dir

from . import metrics
from .effects import EffectExecutor
from .errors import LoopStuck
from .invoker import Invoker, InvokerSettings
from .memory import limit_malloc_arenas, tune_gc
from .restore import ChangelogInfo
from .restorer import StoreRegistry
from .session import LoopHooks, Session, SessionStats
from .state_machine import Config, RetryPolicy
from .step import BatchStep, Effect, StepLookups, StepSettings
from .store import StoreSettings
from .timers import TimerService
from .topic_cache import TopicCache
from .watchdog import GiveUp, Stalled, Stuck, Watchdog

__all__ = ["ProcessorSettings", "Worker"]

log = logging.getLogger(__name__)

# Exit status when the partition loop is stuck inside a client call (EX_SOFTWARE).
STUCK_EXIT_STATUS = 70


@dataclass(frozen=True, slots=True)
class ProcessorSettings:
    """How a processor process batches, commits, invokes and protects itself."""

    kafka: KafkaSettings
    # Stable per process slot: a restarted process with the same id fences its dead predecessor
    # and aborts its open transaction at once instead of after transaction_timeout_ms.
    instance_id: str = "0"
    group_id: str = "keystate-processors"
    batch_max_records: int = 500
    # 2 ms measured better than 0 under load (bench/README.md): a transaction begun right after a
    # commit is refused with CONCURRENT_TRANSACTIONS and retried after retry.backoff.ms. Only batches
    # whose lingers bring records linger (processors/linger.py): alone, a call would wait it out twice.
    batch_linger_ms: float = 2.0
    # Attempts a batch starts run while it commits; the batch first waits up to this long for them to
    # journal what they can without an ack (a short handler: its output), and writes and applies that in
    # its own transaction: one transaction per invocation instead of two. 0: no waiting, no folding.
    fold_window_ms: float = 5.0
    # Apply the next batch (and start its attempts) while a transaction commits, its transaction
    # begun once that one ended (pipelined group commit, processors/runner.py Pipeline). Off by
    # default until a processor that stalled in one fault test (bench/README.md) is explained.
    pipeline_commits: bool = False
    transaction_timeout_ms: int = 10_000
    # How soon the group notices a dead processor and moves its partitions to the others.
    session_timeout_ms: int = 10_000
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    completion_retention_ms: int = 24 * 3600 * 1000
    # Results of HTTP calls also go to keystate.results; False: only to the waiting ingress's reply
    # topic, one partition less in the completing transaction (see Config.publish_ingress_results).
    publish_ingress_results: bool = True
    # A completed invocation's journal stays readable this long (like Restate's default, a day); 0 deletes
    # it at completion. The status row is kept at least as long. A service's journalRetention overrides both.
    journal_retention_ms: int = 24 * 3600 * 1000
    invoker: InvokerSettings = field(default_factory=InvokerSettings)
    # Largest record the processor writes (key + value + headers); None: derived from the payload
    # limit (`kafka.max_payload_bytes` + envelope headroom, see keystate.schemas.limits). A row or
    # command over it fails its invocation (or dead-letters its request) instead of the transaction.
    max_record_bytes: int | None = None
    # Bound of each transactional call (init, send_offsets, commit, abort) and of a flush.
    op_timeout_s: float = 30.0
    # A call still running this long past its bound is abandoned with its client (librdkafka can
    # ignore a call's timeout, confluentinc/librdkafka#5456); the session rejoins with new clients.
    call_grace_s: float = 5.0
    # Bound of closing a session's consumer and producer.
    close_timeout_s: float = 10.0
    # Where the partition stores live: <state_dir>/<topic prefix><group id>/<instance id>/p<partition>.
    # None: `keystate.server.state_dir.default_state_dir()`. The changelog stays the truth: a
    # lost directory only costs a longer restore.
    state_dir: Path | None = None
    # Decoded rows kept in memory per partition (the rest is read from RocksDB when needed).
    store_cache_rows: int = 2_000
    # RocksDB block cache shared by the partitions of this process, and each partition's memtable.
    store_block_cache_bytes: int = 32 << 20
    store_write_buffer_bytes: int = 4 << 20
    # Partitions restored at once (each on its own thread with its own consumer).
    parallel_restores: int = 2
    # Timers due within this window are in memory; later ones wait in the stores (see timer_window.py).
    timer_horizon_ms: int = 60_000
    # On revoke: how long to wait for the moved partitions' attempts to end and their commands to flush.
    handover_timeout_s: float = 10.0
    # No commit for this long while records wait: drop the session and rejoin with new clients.
    watchdog_stall_s: float = 120.0
    # Inside one client call this long past its own bound: log CRITICAL and exit the process.
    watchdog_stuck_grace_s: float = 30.0
    # Abandoned calls and stall resets in a row (no commit between them) before the process exits
    # for a supervisor to restart it. One per broker restart is normal and cured by new clients; a
    # third in a row means new clients do not help (>= 3 x 35 s without a commit), and each
    # abandoned call keeps a client alive on a helper thread, so this also bounds that leak.
    watchdog_max_setbacks: int = 3
    # Fenced this many times in a row, each within `fenced_window_s` after joining: another process
    # has our instance id. Not 2: a broker restart can fence a fresh session once (seen in the
    # broker-restart fault test); a live twin fences every session we start.
    fenced_window_s: float = 60.0
    fenced_exit_after: int = 3
    # How often to look for INVOKED invocations without a live attempt, and how old they must be.
    sweep_interval_s: float = 30.0
    sweep_grace_s: float = 60.0
    # A log partition whose attempts wait for an invoker slot is paused at most this long at a time.
    backpressure_max_pause_s: float = 5.0
    backpressure_min_resume_s: float = 1.0
    # How long the list of existing topics (to validate reply topics) is trusted.
    topic_cache_ttl_s: float = 60.0
    # Also the group's rebalance timeout: how long a rebalance waits for a member that does not rejoin.
    max_poll_interval_ms: int = 300_000
    # Secret headers dropped from keystate.requests (keystate.schemas.headers; $KEYSTATE_REDACT_HEADERS).
    redact_headers: frozenset[str] = field(default_factory=redact_headers)

    def store_root(self) -> Path:
        """The directory of this instance's partition stores."""
        base = self.state_dir or default_state_dir()
        return Path(base) / f"{self.kafka.topics.prefix}{self.group_id}" / self.instance_id

    @property
    def record_limit(self) -> int:
        """The record size limit in force."""
        if self.max_record_bytes is not None:
            return self.max_record_bytes
        return kafka_sizes(self.kafka.max_payload_bytes).record_bytes


class Worker:
    """Runs the partition loop thread plus the invoker, timers and executor on the calling event loop."""

    def __init__(self, settings: ProcessorSettings) -> None:
        self.settings = settings
        self.topics = settings.kafka.topics
        self.meta = MetaView(settings.kafka)
        self._codec = codec()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failure: BaseException | None = None
        self._exit: Callable[[int], Any] = os._exit
        self.watchdog = Watchdog(settings.watchdog_stall_s, settings.watchdog_stuck_grace_s, settings.watchdog_max_setbacks)
        self.session: Session | None = None
        self.log_partitions = 0

    @property
    def stats(self) -> SessionStats:
        return self.session.stats if self.session is not None else SessionStats()

    @property
    def batches(self) -> int:
        return self.stats.batches

    @property
    def records(self) -> int:
        return self.stats.records

    # ---- event-loop side ------------------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Process until `stop` is set (or the partition loop fails, which is raised)."""
        self._loop = asyncio.get_running_loop()
        limit_malloc_arenas()  # before the restore, client and RocksDB threads start
        tune_gc()
        await self.meta.start()
        self._producer = AsyncProducer(self.settings.kafka, **{"client.id": f"keystate-invoker-{self.settings.instance_id}"})
        self.log_partitions = self._producer.partitions(self.topics.log)
        self.invoker = Invoker(
            self._producer, self.topics.log, self.log_partitions, self._resolve_uri, self.settings.invoker, self._timeouts_for
        )
        await self.invoker.start()
        invoker = self.invoker
        metrics.watch_invoker(
            lambda: invoker.live() - invoker.queued(), invoker.queued, self.settings.invoker.max_concurrent_attempts_per_deployment
        )
        self.timers = TimerService(self._producer, self.topics.log, partitions=self.log_partitions)
        self.executor = EffectExecutor(self.invoker, self.timers, self.log_partitions)
        config = Config(
            retry_policy=self.settings.retry_policy,
            completion_retention_ms=self.settings.completion_retention_ms,
            publish_ingress_results=self.settings.publish_ingress_results,
            journal_retention_ms=self.settings.journal_retention_ms,
            deployment_for=self._deployment_for,
            deployment_removed=lambda deployment_id: deployment_id in self.meta.state.removed,
            service_retry_policy=self._retry_policy_for,
            service_retention_ms=self._retention_for,
            service_journal_retention_ms=self._journal_retention_for,
            handler_target=self._handler_target,
        )
        kafka = self.settings.kafka
        self._admin = AdminClient(kafka.admin_config())
        topic_cache = TopicCache(self._list_topics, ttl_s=self.settings.topic_cache_ttl_s)
        step = BatchStep(
            StepSettings(self.topics, self.log_partitions, self.settings.record_limit, self.settings.redact_headers),
            StepLookups(meta=lambda: self.meta.state, topic_exists=topic_cache.exists),
            self._codec,
        )
        s = self.settings
        self.stores = StoreRegistry(
            s.store_root(), StoreSettings(s.store_cache_rows, s.store_block_cache_bytes, s.store_write_buffer_bytes)
        )
        self.session = Session(self.settings, step, config, self._hooks(), self.watchdog, self._stop, self.stores)
        self._thread = threading.Thread(target=self._thread_main, name="keystate-partition-loop", daemon=True)
        self._thread.start()
        # Its own thread: it must see a stuck loop even when the event loop is stalled too.
        threading.Thread(target=self._watch, name="keystate-watchdog", daemon=True).start()
        stop = stop or asyncio.Event()
        try:
            while not stop.is_set() and self._thread.is_alive():
                try:
                    await asyncio.wait_for(stop.wait(), 0.2)
                except TimeoutError:
                    pass
        finally:
            self._stop.set()
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 30.0)
            await self.invoker.close()
            await asyncio.to_thread(self._producer.close)  # it waits for deliveries: not on the loop
            self.meta.stop()
            if not self._thread.is_alive():
                self.stores.close_all()
        if self._failure is not None:
            raise self._failure

    def _hooks(self) -> LoopHooks:
        return LoopHooks(
            submit_effects=self._submit,
            drop_partitions=self._drop,
            backlogged_partitions=self.invoker.backlogged_partitions,
            is_live=self.invoker.is_live,
            changelog_info=self._changelog_info,
        )

    def _watch(self) -> None:
        while not self._stop.wait(0.5):
            self._check_watchdog()

    def _check_watchdog(self) -> None:
        verdict = self.watchdog.check()
        if isinstance(verdict, Stalled) and self.session is not None and not self.session.reset_requested.is_set():
            log.error(
                "processor %s: no batch committed for %.0f s while records wait; resetting the session",
                self.settings.instance_id,
                verdict.seconds,
            )
            self.session.reset_requested.set()
        elif isinstance(verdict, (Stuck, GiveUp)):
            if isinstance(verdict, Stuck):
                why = f"the partition loop is stuck in {verdict.operation} for {verdict.seconds:.0f} s (its bound is {verdict.bound_s:g} s)"
            else:
                why = (
                    f"the partition loop reset {verdict.times} times in a row without a commit, the last time "
                    f"because of {verdict.operation}; new clients did not help"
                )
            self._failure = LoopStuck(why)
            log.critical(
                "processor %s: %s; exiting with status %d so a supervisor restarts the process",
                self.settings.instance_id,
                self._failure,
                STUCK_EXIT_STATUS,
            )
            logging.shutdown()
            self._exit(STUCK_EXIT_STATUS)

    def _list_topics(self) -> set[str]:
        """Every topic of the cluster (blocking; the topic cache calls it at most every few seconds)."""
        with self.watchdog.calling("list_topics", 10.0):
            try:
                return set(self._admin.list_topics(timeout=10.0).topics)
            except KafkaException as exc:
                raise kafka_error("list topics", exc) from exc

    def _resolve_uri(self, deployment_id: str | None, service: str) -> tuple[str, list[str]] | None:
        """The uri and transports of the deployment an attempt runs on (its pinned one if known)."""
        state = self.meta.state
        if deployment_id is None or deployment_id not in state.deployments:
            entry = state.service(service)
            if entry is None:
                return None
            deployment_id = entry.deployment_id
        record = state.deployments[deployment_id]
        return str(record["uri"]), list(record["transports"])

    def _deployment_for(self, service: str) -> str | None:
        entry = self.meta.state.service(service)
        return None if entry is None else entry.deployment_id

    def _retry_policy_for(self, service: str, handler: str) -> RetryPolicy | None:
        entry = self.meta.state.service(service)
        if entry is None:
            return None
        for h in entry.metadata["handlers"]:
            if h["name"] == handler and h.get("retry_policy"):
                return RetryPolicy.from_record(h["retry_policy"])
        return RetryPolicy.from_record(entry.metadata.get("retry_policy"))

    def _handler_target(self, service: str, handler: str) -> tuple[str, str] | None:
        """(service type, handler kind) of a registered handler, for calls that only name it."""
        entry = self.meta.state.service(service)
        if entry is None:
            return None
        for h in entry.metadata["handlers"]:
            if h["name"] == handler:
                return str(entry.metadata["service_type"]), str(h["kind"])
        return None

    def _retention_for(self, service: str) -> int | None:
        """The service's idempotency (workflow: completion) retention, declared or set with PATCH /services."""
        entry = self.meta.state.service(service)
        return None if entry is None else entry.completion_retention_ms()

    def _journal_retention_for(self, service: str) -> int | None:
        entry = self.meta.state.service(service)
        return None if entry is None else entry.journal_retention_ms()

    def _timeouts_for(self, service: str) -> tuple[float | None, float | None]:
        """(inactivity, abort) timeout in seconds of the service's attempts; None: the invoker's setting."""
        entry = self.meta.state.service(service)
        if entry is None:
            return None, None
        inactivity, abort = entry.metadata.get("inactivity_timeout_ms"), entry.metadata.get("abort_timeout_ms")
        return (None if inactivity is None else inactivity / 1000), (None if abort is None else abort / 1000)

    def _submit(self, effects: list[Effect]) -> None:
        if effects:
            self._to_loop(self.executor.submit, effects)

    def _drop(self, partitions: list[int]) -> None:
        """On the partition-loop thread: stop the partitions' attempts and wait until they ended (bounded)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        bound = self.settings.handover_timeout_s
        future = asyncio.run_coroutine_threadsafe(self.executor.hand_over(partitions, bound), loop)
        try:
            running, unflushed = future.result(bound + 5.0)
        except (concurrent.futures.TimeoutError, concurrent.futures.CancelledError, RuntimeError) as exc:
            log.warning("processor %s: handing over partitions %s: %r", self.settings.instance_id, partitions, exc)
            return
        if running or unflushed:
            log.warning(
                "processor %s: handing over partitions %s: %d attempts still running and %d commands not "
                "flushed after %g s; their new owner may repeat a step they did not journal",
                self.settings.instance_id,
                partitions,
                running,
                unflushed,
                bound,
            )

    def _changelog_info(self) -> ChangelogInfo:
        """The changelog topic's id and tombstone retention (blocking; once per session)."""
        topic = self.topics.changelog_topic
        # A client of its own per session: librdkafka sends describe_configs to the controller its
        # metadata names, and a long-lived client kept naming a killed node (3-node cluster test:
        # every rejoin timed out for 8 minutes).
        admin = AdminClient(self.settings.kafka.admin_config())
        with self.watchdog.calling("describe changelog", 30.0):
            try:
                described = admin.describe_topics(TopicCollection([topic]), request_timeout=20.0)[topic].result()
                resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
                configs = admin.describe_configs([resource], request_timeout=20.0)[resource].result()
            except KafkaException as exc:
                raise kafka_error(f"describe {topic} (create keystate's topics with `keystate topics create`)", exc) from exc
        retention = configs.get("delete.retention.ms")
        return ChangelogInfo(topic, str(described.topic_id), int(retention.value) if retention is not None else 86_400_000)

    def _to_loop(self, fn: Any, *args: Any) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(fn, *args)

    # ---- partition-loop thread --------------------------------------------------------------
    def _thread_main(self) -> None:
        assert self.session is not None
        try:
            self.session.run()
        except BaseException as exc:  # the loop thread must report, not vanish
            log.critical("processor %s stopped: %s", self.settings.instance_id, exc, exc_info=True)
            self._failure = exc
