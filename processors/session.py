"""The Kafka session of the partition loop: clients, assign/revoke, pause/resume, batches, rejoin.

Runs on its own thread (confluent-kafka blocks). A session is two consumers (the processors' group
over keystate.log, the routers' group over keystate.requests; both cooperative-sticky with static
membership) plus one transactional producer; any failure of one (fencing, a fatal producer error, a
broker restart, a watchdog reset) ends the session and a new one starts with new clients, restoring
the partitions it gets (from each store's checkpoint, on restore threads, off the callbacks).
Only repeated fencing right after joining (`fenced_exit_after` times in a row) — another process with the
same instance id — stops it.
Every call that waits for the broker is bounded for real (`bounded.py`): a call librdkafka never
returns from abandons its client, and the watchdog exits the process after several such setbacks in a row.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from keystate.server.errors import ServerError

from . import metrics
from .backpressure import PauseGate
from .bounded import BoundedCaller
from .errors import CallAbandoned, GroupMoved, InstanceFenced, ProcessorError, TransactionFailed
from .kafka_txn import FENCING, KafkaTransaction, describe, transaction_failed
from .records import InRecord
from .partition import PartitionProcessor
from .restore import ChangelogInfo, RestoreReport, restore_store
from .restorer import Restorer, StoreRegistry
from .early import EarlyRun, split_early
from .linger import Linger
from .runner import Committed, Pipeline, run_batch
from .state_machine import Config
from .step import BatchStep, Effect, StepResult
from .timer_window import TimerWindow
from .watchdog import Watchdog

if TYPE_CHECKING:
    from .worker import ProcessorSettings

__all__ = ["LoopHooks", "Session", "SessionStats"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class LoopHooks:
    """What the loop thread may do on the event loop side; every callable is safe to call from the thread."""

    submit_effects: Callable[[list[Effect]], None]
    # Stops the attempts, timers and effects of the partitions and waits (bounded) until their
    # attempts have ended and their commands are flushed: the new owner starts them only after.
    drop_partitions: Callable[[list[int]], None]
    backlogged_partitions: Callable[[], frozenset[int]]
    is_live: Callable[[str], bool]
    changelog_info: Callable[[], ChangelogInfo]


@dataclass(slots=True)
class SessionStats:
    batches: int = 0
    records: int = 0
    apply_s: float = 0.0
    commit_s: float = 0.0
    max_batch: int = 0
    resets: int = 0
    dead_lettered: int = 0
    dropped_unowned: int = 0
    restores: list[RestoreReport] = field(default_factory=list)


# How long the log's poll waits when there is nothing to do (also how late an idle loop sees a request).
_IDLE_POLL_S = 0.01


class _Reset(ProcessorError):
    """End this session and start a new one (the watchdog asked, or a client failed)."""


class Session:
    """Runs sessions until `stop` is set; raises InstanceFenced when another process holds our id."""

    def __init__(
        self,
        settings: ProcessorSettings,
        step: BatchStep,
        config: Config,
        hooks: LoopHooks,
        watchdog: Watchdog,
        stop: threading.Event,
        stores: StoreRegistry,
    ) -> None:
        self.settings = settings
        self.topics = settings.kafka.topics
        self.step = step
        self.config = config
        self.hooks = hooks
        self.watchdog = watchdog
        self.stop = stop
        self.stats = SessionStats()
        self.reset_requested = threading.Event()
        self.gate = PauseGate(settings.backpressure_max_pause_s, settings.backpressure_min_resume_s)
        self._requests_owned: set[int] = set()
        self.stores = stores
        self.restorer = Restorer(self._restore_partition, settings.parallel_restores)
        self.timers = TimerWindow(settings.timer_horizon_ms)
        # Log partitions assigned to this session: restoring (paused) or owned by the step.
        self._assigned_log: set[int] = set()
        self._changelog: ChangelogInfo | None = None
        # partition -> (monotonic time of the next try, failures in a row) of restores that failed
        self._restore_retries: dict[int, tuple[float, int]] = {}
        self._joined_at: float | None = None
        # The consumer whose rebalance callbacks count; a closing one's late callbacks are ignored.
        self._live_consumer: Consumer | None = None
        self._live_router: Consumer | None = None
        self._next_sweep = time.monotonic() + settings.sweep_interval_s
        self._name = f"processor {settings.instance_id}"
        self._linger = Linger(settings.batch_linger_ms)
        self._pipeline: Pipeline | None = None  # the live session's, when settings.pipeline_commits

    # ---- the rejoin loop ------------------------------------------------------------------------
    def run(self) -> None:
        fenced_soon_after_join = 0
        failures_in_row = 0
        while not self.stop.is_set():
            try:
                self._session()
                return
            except InstanceFenced:
                raise
            except Exception as exc:  # the loop thread never dies of a client error: it rejoins
                if not isinstance(exc, (ProcessorError, ServerError, KafkaException, TimeoutError)):
                    log.exception("%s: unexpected error in the partition loop", self._name)
                self.stats.resets += 1
                if isinstance(exc, (CallAbandoned, _Reset)):
                    self.watchdog.setback(exc.operation if isinstance(exc, CallAbandoned) else "no progress with work pending")
                fenced = isinstance(exc, TransactionFailed) and exc.fenced
                joined = self._joined_at
                if fenced and joined is not None and time.monotonic() - joined < self.settings.fenced_window_s:
                    fenced_soon_after_join += 1
                else:
                    fenced_soon_after_join = 0
                if fenced_soon_after_join >= self.settings.fenced_exit_after:
                    raise InstanceFenced(
                        f"{self._name} was fenced {fenced_soon_after_join} times in a row right after joining: "
                        "another process runs with "
                        f"--instance-id {self.settings.instance_id}. Give every processor process its own "
                        "--instance-id (e.g. 0, 1, 2, ... or $KEYSTATE_INSTANCE_ID) and restart this one"
                    ) from exc
                # Back off while rejoining keeps failing (the broker is down); a session that ran a while starts over.
                lasted = joined is not None and time.monotonic() - joined > 60.0
                failures_in_row = 1 if lasted else failures_in_row + 1
                log.error("%s: %s; rejoining with new clients and restoring", self._name, exc)
                self.stop.wait(0.5 if fenced else min(5.0, 0.2 * 2 ** min(failures_in_row, 5)))

    def _session(self) -> None:
        self._joined_at = None
        self.reset_requested.clear()
        bound = self.settings.op_timeout_s
        producer = self._producer()
        caller = BoundedCaller(f"{self._name} transactional producer", self.settings.call_grace_s)
        consumer: Consumer | None = None
        router: Consumer | None = None
        committer: ThreadPoolExecutor | None = None
        try:
            self._changelog = self.hooks.changelog_info()
            self.step.changelog_id = self._changelog.topic_id
            with self.watchdog.calling("init_transactions", bound):
                try:
                    caller.call("init_transactions", bound, partial(producer.init_transactions, bound))
                except KafkaException as exc:
                    raise transaction_failed("init_transactions", exc) from exc
            consumer = self._live_consumer = self._consumer()
            router = self._live_router = self._router()
            self._joined_at = time.monotonic()
            self.watchdog.progress()
            consumers = {self.topics.log: consumer, self.topics.requests: router}
            if self.settings.pipeline_commits:
                # The commit runs on its own thread while the loop applies the next batch: it must not
                # overwrite the loop's current call in the watchdog. Its calls are bounded by `caller`
                # anyway, and the loop waits for it inside `calling` (the Pipeline's `waiting`).
                txn = KafkaTransaction(producer, consumers, _unwatched(self.settings), bound, caller)
                committer = ThreadPoolExecutor(1, thread_name_prefix=f"{self._name}-commit")
                # The loop waits for the whole transaction: one bounded call per consumer group's offsets
                # and the commit, each up to bound + grace (a broker restart can take most of both).
                whole = (len(consumers) + 1) * (bound + self.settings.call_grace_s)
                self._pipeline = Pipeline(
                    self.step, txn, committer.submit, self._release, self._start_early, self._gap, time.perf_counter,
                    partial(self.watchdog.calling, "the pipelined transaction", whole),
                )  # fmt: skip
            else:
                txn = KafkaTransaction(producer, consumers, self.watchdog, bound, caller)
            while not self.stop.is_set():
                if self.reset_requested.is_set():
                    raise _Reset("the watchdog saw no progress with work pending")
                self._adopt_restored(consumer)
                self._batch(consumer, router, txn)
                self._refill_timers()
                self._sweep()
                self._backpressure(consumer)
                metrics.sample_lag((consumer, router))
        finally:
            self._end_pipeline()
            if committer is not None:
                committer.shutdown(wait=False, cancel_futures=True)
            self._live_consumer = None
            self._live_router = None
            self._release_all()
            self._close(router, None, None)
            self._close(consumer, producer, caller)

    def _producer(self) -> Producer:
        s = self.settings
        return Producer(
            s.kafka.producer_config(
                **{
                    "transactional.id": f"keystate-processor-{s.instance_id}",
                    "transaction.timeout.ms": s.transaction_timeout_ms,
                    "client.id": f"keystate-processor-{s.instance_id}",
                    "partitioner": "murmur2_random",
                    "retry.backoff.ms": 5,
                    # The batch is produced at once and committed right away: waiting for more is pointless.
                    "linger.ms": 0,
                    # A reply topic deleted after validation fails fast instead of at the transaction timeout.
                    "topic.metadata.propagation.max.ms": 5000,
                }
            )
        )

    def _consumer(self) -> Consumer:
        """The member of the processors' group over keystate.log."""
        consumer = self._group_member(self.settings.group_id, f"keystate-processor-{self.settings.instance_id}")
        consumer.subscribe([self.topics.log], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke)
        return consumer

    def _router(self) -> Consumer:
        """The member of the routers' group over keystate.requests.

        A group of its own: the sticky assignor balances partition counts, not topics, so one
        group over both topics gave a joining processor every log partition and left the other
        with the requests. Its offsets commit in the same transaction (one call per group).
        """
        router = self._group_member(f"{self.settings.group_id}.router", f"keystate-router-{self.settings.instance_id}")
        router.subscribe(
            [self.topics.requests], on_assign=self._on_assign_router, on_revoke=self._on_revoke_router, on_lost=self._on_revoke_router
        )
        return router

    def _group_member(self, group_id: str, member: str) -> Consumer:
        s = self.settings
        return Consumer(
            s.kafka.consumer_config(
                **{
                    "group.id": group_id,
                    "auto.offset.reset": "earliest",
                    "client.id": member,
                    "max.poll.interval.ms": s.max_poll_interval_ms,
                    "session.timeout.ms": s.session_timeout_ms,
                    "heartbeat.interval.ms": max(500, s.session_timeout_ms // 5),
                    # Static membership: a restarted process with the same id gets its partitions
                    # back at once instead of after a rebalance through the session timeout.
                    "group.instance.id": member,
                    # Incremental rebalancing: only partitions that move are revoked; the others keep
                    # their stores and running attempts. Every processor of a group must use it.
                    "partition.assignment.strategy": "cooperative-sticky",
                }
            )
        )

    def _close(self, consumer: Consumer | None, producer: Producer | None, caller: BoundedCaller | None) -> None:
        """Close the clients, each bounded; their errors (a fenced producer's flush) must not replace why we reset.

        An abandoned producer is left alone: purge, flush and close could block like the stuck call,
        or free what it still uses; its helper thread keeps it alive (see `bounded.py`).
        """
        bound = self.settings.close_timeout_s
        if consumer is not None:
            # Its own helper thread: the producer's may be stuck. close() runs the revoke callback
            # there, which `_live_consumer` makes a no-op (the partitions were released above).
            closer = BoundedCaller(f"{self._name} consumer", self.settings.call_grace_s)
            try:
                with self.watchdog.calling("consumer.close", bound):
                    closer.call("consumer.close", bound, consumer.close)
            except Exception as exc:
                log.warning("%s: closing the consumer: %s", self._name, exc)
            closer.close()
        if producer is None or caller is None:
            return
        if caller.abandoned is not None:
            log.warning("%s: leaving the transactional producer stuck in %s to its helper thread", self._name, caller.abandoned)
            return
        try:
            with self.watchdog.calling("producer.close", bound):
                caller.call("producer.close", bound, partial(_close_producer, producer))
        except Exception as exc:
            log.warning("%s: closing the transactional producer: %s", self._name, exc)
        caller.close()

    # ---- rebalance ------------------------------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Incremental: `partitions` are the ones added. Log partitions stay paused until restored."""
        if consumer is not self._live_consumer:
            return  # a closing consumer of an ended session
        consumer.incremental_assign(partitions)
        log_tps = [tp for tp in partitions if tp.topic == self.topics.log]
        if log_tps:
            consumer.pause(log_tps)
        for tp in log_tps:
            self._assigned_log.add(tp.partition)
            self.restorer.start(tp.partition)
        if log_tps:
            log.info("%s: assigned log partitions %s; restoring them", self._name, sorted(tp.partition for tp in log_tps))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """Incremental: only the partitions that move. Their attempts stop before the new owner gets them."""
        if consumer is not self._live_consumer:
            return  # a closing consumer of an ended session: `_release_all` dropped everything already
        moved = {tp.partition for tp in partitions if tp.topic == self.topics.log}
        self._drain()  # the committing batch may have written to them: it ends before they go
        self._assigned_log -= moved
        for p in moved:
            self.restorer.cancel(p)  # a cancelled job closes its own store
        dropped = [p for p in sorted(moved) if p in self.step.partitions]
        self._drop(dropped)
        if moved:
            log.info("%s: log partitions %s revoked", self._name, sorted(moved))

    def _on_assign_router(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is not self._live_router:
            return
        consumer.incremental_assign(partitions)
        self._requests_owned |= {tp.partition for tp in partitions}

    def _on_revoke_router(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if consumer is not self._live_router:
            return
        self._requests_owned -= {tp.partition for tp in partitions}

    def _drop(self, partitions: list[int]) -> None:
        if not partitions:
            return
        self.step.forget_partitions(set(partitions))
        self.gate.forget(set(partitions))
        self.timers.forget(partitions)
        self.hooks.drop_partitions(partitions)
        for p in partitions:
            self.stores.close(p)

    def _release_all(self) -> None:
        self.restorer.cancel_all(wait_s=self.settings.close_timeout_s)
        self._assigned_log.clear()
        self._restore_retries.clear()
        self._drop(list(self.step.partitions))
        self.step.pending.clear()
        self._requests_owned.clear()

    def _restore_partition(self, partition: int, cancelled: threading.Event) -> RestoreReport:
        """On a restore thread: bring the partition's store up to the end of its changelog."""
        info = self._changelog
        assert info is not None
        store = self.stores.open(partition)
        try:
            return restore_store(store, partition, info, self.settings.kafka, cancelled)
        except BaseException:
            self.stores.close(partition)
            raise

    def _adopt_restored(self, consumer: Consumer) -> None:
        """Hand restored partitions to the step and resume them; retry failed restores with backoff."""
        now_s = time.monotonic()
        for partition, (due, _) in list(self._restore_retries.items()):
            if partition not in self._assigned_log:
                del self._restore_retries[partition]
            elif now_s >= due:
                self.restorer.start(partition)
        finished = self.restorer.finished()
        if finished:
            self._drain()  # an adopted store gets no overlay of the committing batch
        for partition, outcome in finished:
            if partition not in self._assigned_log:
                self.stores.close(partition)  # revoked while it restored
                continue
            if isinstance(outcome, BaseException):
                failures = self._restore_retries.get(partition, (0.0, 0))[1] + 1
                wait = min(30.0, 0.5 * 2 ** min(failures, 6))
                self._restore_retries[partition] = (now_s + wait, failures)
                self.stores.drop(partition)  # whatever state the failure left it in, the retry reopens it
                log.error(
                    "%s: restore of partition %d failed (%d in a row): %s; retrying in %.1f s",
                    self._name, partition, failures, outcome, wait,
                )  # fmt: skip
                continue
            self._restore_retries.pop(partition, None)
            now = int(time.time() * 1000)
            proc = PartitionProcessor(partition, self.config, self.stores.open(partition))
            resumed = self.step.adopt(proc, now)
            timers = self.timers.load(proc, now)
            self.hooks.submit_effects(timers)
            consumer.resume([TopicPartition(self.topics.log, partition)])
            self.stats.restores.append(outcome)
            metrics.restored(outcome)
            log.info("%s, resuming %d invocations, %d timers", outcome.describe(), resumed, len(timers))

    def _refill_timers(self) -> None:
        effects = self.timers.refill(self.step.partitions.values(), int(time.time() * 1000))
        if effects:
            self.hooks.submit_effects(effects)

    # ---- one batch ------------------------------------------------------------------------------
    def _batch(self, consumer: Consumer, router: Consumer, txn: KafkaTransaction) -> None:
        s = self.settings
        with self.watchdog.calling("poll", s.op_timeout_s):
            # Two consumers: only the log's poll waits (a log record wakes it at once); the router's
            # never does, so a request waits at most one idle poll of the log (_IDLE_POLL_S).
            messages: list[Message] = router.consume(s.batch_max_records, 0)
            in_flight = self._pipeline is not None and self._pipeline.busy
            # While a transaction commits, take what is here: the commit is this batch's linger.
            first = consumer.poll(0 if messages or in_flight else _IDLE_POLL_S)
            if first is not None:
                messages.append(first)
                if s.batch_max_records > 1:
                    messages.extend(consumer.consume(s.batch_max_records - 1, 0))  # what is already here
                    room = s.batch_max_records - len(messages)
                    wait = self._linger.wait_s() if room > 0 and not in_flight else 0.0
                    if wait > 0:
                        more = consumer.consume(room, wait)
                        messages.extend(more)
                        self._linger.gained(len(more))
                    gap = self._linger.gap_left_s(time.monotonic())
                    room = s.batch_max_records - len(messages)
                    if gap > 0 and room > 0 and not in_flight:
                        # Too soon after the last commit: gather what arrives meanwhile (see Linger.gap_left_s).
                        messages.extend(consumer.consume(room, gap))
        records = self._records(messages)
        if self._pipeline is not None:
            self._pipelined(self._pipeline, consumer, router, records)
            return
        if not records and not self.step.pending:
            self.watchdog.progress()
            return
        self.watchdog.work_seen()
        started, committing = time.perf_counter(), txn.commit_s
        try:
            result, _ = run_batch(self.step, records, int(time.time() * 1000), txn, self._release, self._start_early)
        except GroupMoved as exc:
            # A rebalance moved the group on mid-batch. Kafka Streams treats this as "task migrated"
            # and rejoins; here the session stays (a static member rejoining under the same id did
            # not get the second cooperative round, and partitions stayed unowned): the transaction is
            # aborted, the stores dropped the batch, and the records are read again where still ours.
            log.info("%s: %s; the batch of %d records is aborted and read again", self._name, exc, len(records))
            self._rewind(consumer, router, records)
            return
        self.watchdog.committed()
        if result.produced:  # a transaction committed (a batch that writes nothing commits none)
            self._linger.committed(time.monotonic())
        stats = self.stats
        stats.batches += 1
        stats.records += len(records)
        stats.max_batch = max(stats.max_batch, len(records))
        stats.commit_s += txn.commit_s - committing
        stats.apply_s += time.perf_counter() - started - (txn.commit_s - committing)
        stats.dead_lettered += result.dead_lettered
        stats.dropped_unowned += result.dropped_unowned
        metrics.batch_committed(len(records), txn.commit_s - committing, result)

    # ---- pipelined commit (settings.pipeline_commits) -----------------------------------------
    def _pipelined(self, pipeline: Pipeline, consumer: Consumer, router: Consumer, records: list[InRecord]) -> None:
        if not records and not self.step.unheld_pending():
            self._drain()
            self.watchdog.progress()
            return
        self.watchdog.work_seen()
        started = time.perf_counter()
        try:
            done = pipeline.run(records, int(time.time() * 1000))
        except GroupMoved as exc:
            # As in `_batch`; here the committing batch's records are read again too.
            log.info("%s: %s; %d records are aborted and read again", self._name, exc, len(pipeline.unwritten))
            self._rewind(consumer, router, pipeline.unwritten)
            return
        self.stats.apply_s += time.perf_counter() - started
        self._count(done)

    def _drain(self) -> None:
        """Wait for the committing transaction, if any, and settle it."""
        if self._pipeline is None or not self._pipeline.busy:
            return
        self._count(self._pipeline.drain())

    def _end_pipeline(self) -> None:
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is None or not pipeline.busy:
            return
        try:
            done = pipeline.drain()
        except Exception as exc:  # the session ends anyway; the next one restores from the changelog
            log.warning("%s: the last transaction of the session did not commit: %s", self._name, exc)
            return
        self._count(done)

    def _gap(self) -> None:
        """Before a pipelined transaction begins: not sooner than the gap after the last commit (Linger.gap_left_s)."""
        gap = self._linger.gap_left_s(time.monotonic())
        if gap > 0:
            time.sleep(gap)

    def _count(self, done: list[Committed]) -> None:
        stats = self.stats
        for batch in done:
            result = batch.result
            self.watchdog.committed()
            if result.produced:
                self._linger.committed(time.monotonic())
            stats.batches += 1
            stats.records += batch.records
            stats.max_batch = max(stats.max_batch, batch.records)
            stats.commit_s += batch.commit_s
            stats.dead_lettered += result.dead_lettered
            stats.dropped_unowned += result.dropped_unowned
            metrics.batch_committed(batch.records, batch.commit_s, result)

    def _start_early(self, result: StepResult) -> EarlyRun | None:
        """Start the batch's new attempts now, their log writes gated on the commit (see keystate.processors.early)."""
        early, rest = split_early(result.effects)
        if not early:
            return None
        result.effects = rest  # `_release` must not start them again
        return EarlyRun(early, self.hooks.submit_effects, self.settings.fold_window_ms / 1000)

    def _release(self, result: StepResult) -> None:
        """The batch committed: its effects go to the event loop (before the stores write its rows)."""
        effects = self.timers.admit(result.effects)
        if effects:
            self.hooks.submit_effects(effects)

    def _rewind(self, consumer: Consumer, router: Consumer, records: list[InRecord]) -> None:
        """Seek each still-owned partition of `records` back to its first record of the batch."""
        starts: dict[tuple[str, int], int] = {}
        for r in records:
            key = (r.topic, r.partition)
            starts[key] = min(starts.get(key, r.offset), r.offset)
        for (topic, partition), offset in starts.items():
            if topic == self.topics.log and partition in self._assigned_log:
                consumer.seek(TopicPartition(topic, partition, offset))
            elif topic == self.topics.requests and partition in self._requests_owned:
                router.seek(TopicPartition(topic, partition, offset))

    def _records(self, messages: list[Message]) -> list[InRecord]:
        records = []
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.fatal() or err.code() in FENCING or err.code() == KafkaError._FATAL:
                    fenced = err.code() in FENCING or "fenced" in err.str().lower()
                    raise TransactionFailed(f"consumer failed: {describe(err)}", fatal=True, fenced=fenced)
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("%s: consumer: %s", self._name, describe(err))
                continue
            topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
            assert topic is not None and partition is not None and offset is not None  # set on every record
            if topic == self.topics.requests and partition not in self._requests_owned:
                continue  # revoked since it was fetched: the new owner reads it again
            headers = msg.headers() if topic == self.topics.requests else None  # a request's correlation headers
            records.append(InRecord(topic, partition, offset, msg.key(), msg.value(), msg.timestamp()[1], headers))
        return records

    # ---- sweep and back-pressure ----------------------------------------------------------------
    def _sweep(self) -> None:
        if time.monotonic() < self._next_sweep:
            return
        self._next_sweep = time.monotonic() + self.settings.sweep_interval_s
        restarted = self.step.sweep(int(time.time() * 1000), int(self.settings.sweep_grace_s * 1000), self.hooks.is_live)
        if restarted:
            log.warning("%s: sweep restarts %d invocations that were INVOKED without a live attempt", self._name, restarted)

    def _backpressure(self, consumer: Consumer) -> None:
        pause, resume = self.gate.decide(self.hooks.backlogged_partitions(), set(self.step.partitions))
        if pause:
            consumer.pause([TopicPartition(self.topics.log, p) for p in sorted(pause)])
            log.info("%s: pausing log partitions %s: their attempts wait for an invoker slot", self._name, sorted(pause))
        if resume:
            consumer.resume([TopicPartition(self.topics.log, p) for p in sorted(resume)])
            log.info("%s: resuming log partitions %s", self._name, sorted(resume))


def _close_producer(producer: Producer) -> None:
    """Drop what is queued, then close (its flush has nothing left to wait for); destroys the client here.

    close() destroys the client even when it then raises the producer's pending fatal error.
    """
    try:
        producer.purge()
    finally:
        producer.close()


def _unwatched(settings: ProcessorSettings) -> Watchdog:
    """A watchdog nobody checks: for calls made off the partition loop's thread."""
    return Watchdog(settings.watchdog_stall_s, settings.watchdog_stuck_grace_s, settings.watchdog_max_setbacks)
