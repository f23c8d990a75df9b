"""A processor process: one consumer-group member over keystate.log and keystate.requests.

The partition loop runs on its own thread (confluent-kafka blocks): it applies a batch of
commands to the partition processors and commits, in one Kafka transaction, the changelog
writes, the commands for other partitions, the results and the consumed offsets. Only then
are the batch's effects (start an attempt, push a completion, schedule a timer) handed to the
event loop, where the invoker and the timer service run.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from keystate.schemas._codec import codec
from keystate.schemas.errors import ContractError
from keystate.schemas.ids import InvocationId
from keystate.server.kafka import AsyncProducer, KafkaSettings, kafka_error
from keystate.server.meta import MetaView

from . import changelog
from .errors import InvariantViolation
from .invoker import Invoker, InvokerSettings, log_key
from .partition import PartitionProcessor
from .router import Invalid, route_request
from .state_machine import (
    Action,
    Config,
    Invoke,
    NotifyCompletion,
    Publish,
    RegisterTimer,
    RetryPolicy,
    SendToPartition,
    StopInvocation,
)
from .timers import TimerService

__all__ = ["ProcessorSettings", "Worker"]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ProcessorSettings:
    """How a processor process batches, commits and invokes."""

    kafka: KafkaSettings
    # Stable per process slot: a restarted process with the same id fences its dead predecessor
    # and aborts its open transaction at once instead of after transaction_timeout_ms.
    instance_id: str = "0"
    group_id: str = "keystate-processors"
    batch_max_records: int = 500
    # 2 ms measured better than 0 under load (bench/README.md): a transaction begun right after a
    # commit is refused with CONCURRENT_TRANSACTIONS and retried after retry.backoff.ms.
    batch_linger_ms: float = 2.0
    transaction_timeout_ms: int = 10_000
    # How soon the group notices a dead processor and moves its partitions to the others.
    session_timeout_ms: int = 10_000
    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    completion_retention_ms: int = 24 * 3600 * 1000
    invoker: InvokerSettings = field(default_factory=InvokerSettings)


class _Reset(Exception):
    """The transaction failed: drop every partition and rejoin, restoring from the changelogs."""


Effect = tuple[int, Action]


class Worker:
    """Runs the partition loop thread plus the invoker and timers on the calling event loop."""

    def __init__(self, settings: ProcessorSettings) -> None:
        self.settings = settings
        self.topics = settings.kafka.topics
        self.meta = MetaView(settings.kafka)
        self._codec = codec()
        self._partitions: dict[int, PartitionProcessor] = {}
        self._pending: list[tuple[int, bytes, str, dict[str, Any]]] = []  # appended in the next transaction
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failure: BaseException | None = None
        self.log_partitions = 0
        self.batches = 0
        self.records = 0

    # ---- event-loop side ------------------------------------------------------------------
    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Process until `stop` is set (or the partition loop fails, which is raised)."""
        self._loop = asyncio.get_running_loop()
        await self.meta.start()
        self._producer = AsyncProducer(self.settings.kafka, **{"client.id": f"keystate-invoker-{self.settings.instance_id}"})
        self.log_partitions = self._producer.partitions(self.topics.log)
        self.invoker = Invoker(self._producer, self.topics.log, self.log_partitions, self._resolve_uri, self.settings.invoker)
        await self.invoker.start()
        self.timers = TimerService(self._producer, self.topics.log)
        self._config = Config(
            retry_policy=self.settings.retry_policy,
            completion_retention_ms=self.settings.completion_retention_ms,
            deployment_for=self._deployment_for,
            service_retry_policy=self._retry_policy_for,
            service_retention_ms=self._retention_for,
        )
        self._thread = threading.Thread(target=self._thread_main, name="keystate-partition-loop", daemon=True)
        self._thread.start()
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
            self._producer.close()
            self.meta.stop()
        if self._failure is not None:
            raise self._failure

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

    def _retention_for(self, service: str) -> int | None:
        entry = self.meta.state.service(service)
        return None if entry is None else entry.metadata.get("retention_ms")

    def _run_effects(self, effects: list[Effect]) -> None:
        for partition, action in effects:
            if isinstance(action, Invoke):
                self.invoker.invoke(action)
            elif isinstance(action, NotifyCompletion):
                self.invoker.notify(action.invocation_id, action.attempt, action.index, action.result)
            elif isinstance(action, StopInvocation):
                self.invoker.stop(action.invocation_id)
            elif isinstance(action, RegisterTimer):
                self.timers.schedule(partition, action.key, action.record)

    def _drop_partitions(self, partitions: list[int]) -> None:
        n = self.log_partitions
        wanted = set(partitions)
        self.invoker.stop_where(lambda iid: InvocationId.parse(iid).partition(n) in wanted)
        for p in partitions:
            self.timers.cancel_partition(p)

    def _to_loop(self, fn: Any, *args: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(fn, *args)

    # ---- partition-loop thread --------------------------------------------------------------
    def _thread_main(self) -> None:
        try:
            while not self._stop.is_set():
                try:
                    self._session()
                except _Reset as exc:
                    log.error("processor %s: %s; rejoining and restoring", self.settings.instance_id, exc)
        except BaseException as exc:  # the loop thread must report, not vanish
            log.critical("processor %s stopped: %s", self.settings.instance_id, exc, exc_info=True)
            self._failure = exc

    def _session(self) -> None:
        kafka = self.settings.kafka
        producer = Producer(
            kafka.producer_config(
                **{
                    "transactional.id": f"keystate-processor-{self.settings.instance_id}",
                    "transaction.timeout.ms": self.settings.transaction_timeout_ms,
                    "client.id": f"keystate-processor-{self.settings.instance_id}",
                    "partitioner": "murmur2_random",
                    "retry.backoff.ms": 5,
                }
            )
        )
        try:
            producer.init_transactions(60.0)
        except KafkaException as exc:
            raise kafka_error("init_transactions", exc) from exc
        consumer = Consumer(
            kafka.consumer_config(
                **{
                    "group.id": self.settings.group_id,
                    "auto.offset.reset": "earliest",
                    "client.id": f"keystate-processor-{self.settings.instance_id}",
                    "max.poll.interval.ms": 600_000,
                    "session.timeout.ms": self.settings.session_timeout_ms,
                    "heartbeat.interval.ms": max(500, self.settings.session_timeout_ms // 5),
                    # Static membership: a restarted process with the same id gets its partitions
                    # back at once instead of after a rebalance through the session timeout.
                    "group.instance.id": f"keystate-processor-{self.settings.instance_id}",
                }
            )
        )
        consumer.subscribe([self.topics.log, self.topics.requests], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_revoke)
        try:
            while not self._stop.is_set():
                self._batch(consumer, producer)
        finally:
            self._release_all()
            consumer.close()
            producer.flush(5.0)

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        now = int(time.time() * 1000)
        for tp in partitions:
            if tp.topic != self.topics.log:
                continue
            started = time.monotonic()
            proc = PartitionProcessor(tp.partition, self._config)
            restored = proc.restore(self.settings.kafka)
            self._partitions[tp.partition] = proc
            resumed = 0
            for iid, status in proc.unfinished():
                # Through the log, so it lands after whatever the previous owner's attempt appended.
                self._pending.append(
                    (
                        tp.partition,
                        log_key(status["target"], iid),
                        "keystate.TimerFiredCommand",
                        {"invocation_id": iid, "timer_kind": "RETRY", "entry_index": None, "attempt": status["attempt"], "fire_at_ms": now},
                    )
                )
                resumed += 1
            effects: list[Effect] = [(tp.partition, RegisterTimer(k, r["fire_at_ms"], r)) for k, r in proc.timers()]
            self._to_loop(self._run_effects, effects)
            log.info(
                "partition %d: restored %d changelog records in %.2f s, resuming %d invocations, %d timers",
                tp.partition,
                restored,
                time.monotonic() - started,
                resumed,
                len(effects),
            )

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        dropped = [tp.partition for tp in partitions if tp.topic == self.topics.log and tp.partition in self._partitions]
        for p in dropped:
            self._partitions.pop(p).close()
        self._pending = [item for item in self._pending if item[0] not in dropped]
        if dropped:
            self._to_loop(self._drop_partitions, dropped)
            log.info("partitions %s revoked", dropped)

    def _release_all(self) -> None:
        dropped = list(self._partitions)
        for p in dropped:
            self._partitions.pop(p).close()
        self._pending.clear()
        if dropped and self._loop is not None and not self._loop.is_closed():
            self._to_loop(self._drop_partitions, dropped)

    def _batch(self, consumer: Consumer, producer: Producer) -> None:
        first = consumer.poll(0.1)
        messages: list[Message] = [] if first is None else [first]
        if first is not None and self.settings.batch_max_records > 1:
            messages.extend(consumer.consume(self.settings.batch_max_records - 1, self.settings.batch_linger_ms / 1000))
        if not messages and not self._pending:
            return
        try:
            producer.begin_transaction()
            effects, offsets = self._apply_batch(messages, producer)
            if offsets:
                producer.send_offsets_to_transaction(offsets, consumer.consumer_group_metadata(), 30.0)
            producer.commit_transaction(30.0)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            try:
                producer.abort_transaction(10.0)
            except KafkaException:
                pass
            fatal = getattr(error, "fatal", lambda: False)()
            raise _Reset(f"transaction failed{' (fatal)' if fatal else ''}: {exc}") from exc
        self.batches += 1
        self.records += len(messages)
        if effects:
            self._to_loop(self._run_effects, effects)

    def _apply_batch(self, messages: list[Message], producer: Producer) -> tuple[list[Effect], list[TopicPartition]]:
        effects: list[Effect] = []
        offsets: dict[tuple[str, int], int] = {}
        for partition, key, name, record in self._pending:
            self._produce_command(producer, partition, key, name, record)
        self._pending.clear()
        for msg in messages:
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    log.warning("consumer: %s", err)
                continue
            # A record consumed without an error has its topic, partition and offset.
            topic, partition, offset = cast(str, msg.topic()), cast(int, msg.partition()), cast(int, msg.offset())
            offsets[(topic, partition)] = offset + 1
            if topic == self.topics.requests:
                self._route(msg, producer)
                continue
            proc = self._partitions.get(partition)
            if proc is None:
                raise InvariantViolation(f"record at {msg.topic()}[{msg.partition()}]@{msg.offset()} for an unassigned partition")
            try:
                command = self._codec.decode(cast(bytes, msg.value()))  # a null value fails as not bytes
            except ContractError as exc:
                # Only keystate writes the log; skipping one bad record beats wedging the partition.
                log.error("skipping undecodable record at %s[%d]@%d: %s", msg.topic(), msg.partition(), msg.offset(), exc)
                continue
            now = msg.timestamp()[1]
            try:
                actions = proc.apply(command, now)
            except Exception as exc:
                iid = command[1].get("invocation_id")
                raise InvariantViolation(
                    f"applying {command[0]} for {iid} at {msg.topic()}[{msg.partition()}]@{msg.offset()} failed: {exc!r}"
                ) from exc
            for action in actions:
                if isinstance(action, SendToPartition):
                    target = InvocationId.parse(action.invocation_id)
                    self._produce_command(producer, target.partition(self.log_partitions), action.key, action.name, action.record)
                elif isinstance(action, Publish):
                    producer_produce(
                        producer,
                        action.topic or self.topics.results,
                        self._codec.encode(action.name, action.record),
                        action.key,
                        None,
                        [("type", action.name.encode())],
                    )
                else:
                    effects.append((partition, action))
        for p, proc in self._partitions.items():
            for table, row_key, value in proc.drain():
                producer_produce(
                    producer,
                    self.topics.changelog(table),
                    changelog.encode_value(table, value),
                    changelog.encode_key(row_key),
                    p,
                    None,
                )
        return effects, [TopicPartition(t, p, o) for (t, p), o in offsets.items()]

    def _produce_command(self, producer: Producer, partition: int, key: bytes, name: str, record: dict[str, Any]) -> None:
        iid = record.get("invocation_id", "")
        producer_produce(
            producer,
            self.topics.log,
            self._codec.encode(name, record),
            key,
            partition,
            [("type", name.encode()), ("invocation_id", iid.encode())],
        )

    def _route(self, msg: Message, producer: Producer) -> None:
        now = int(time.time() * 1000)
        source = f"kafka:{msg.topic()}/{msg.partition()}/{msg.offset()}"
        routed = route_request(self._codec, msg.value(), self.meta.state, now, source)
        if isinstance(routed, Invalid):
            log.warning("dead-lettering %s: %s", source, routed.reason)
            letter = {
                "reason": routed.reason,
                "topic": msg.topic(),
                "partition": msg.partition(),
                "offset": msg.offset(),
                "key": msg.key(),
                "value": msg.value(),
                "failed_at_ms": now,
            }
            producer_produce(
                producer,
                self.topics.requests_dlq,
                self._codec.encode("keystate.DeadLetter", letter),
                msg.key(),
                None,
                [("type", b"keystate.DeadLetter"), ("reason", routed.reason.encode()[:1000])],
            )
            return
        target = routed.record["target"]
        self._produce_command(
            producer,
            routed.invocation_id.partition(self.log_partitions),
            log_key(target, str(routed.invocation_id)),
            "keystate.InvokeCommand",
            routed.record,
        )


def producer_produce(
    producer: Producer,
    topic: str,
    value: bytes | None,
    key: bytes | None,
    partition: int | None,
    headers: list[tuple[str, bytes]] | None,
) -> None:
    """Produce inside the open transaction, waiting for queue space instead of failing."""
    kwargs: dict[str, Any] = {"key": key, "headers": headers}
    if partition is not None:
        kwargs["partition"] = partition
    while True:
        try:
            producer.produce(topic, value, **kwargs)
            return
        except BufferError:
            producer.poll(0.05)
