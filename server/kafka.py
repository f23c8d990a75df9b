"""confluent-kafka clients bridged into asyncio; Kafka errors become `KafkaUnavailable` here."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from keystate.schemas.limits import kafka_sizes, max_payload_bytes
from keystate.schemas.topics import Topics

from .errors import KafkaUnavailable
from .kafka_security import AuthWatch, KafkaSecurity, auth_error, list_topics

__all__ = ["AsyncProducer", "KafkaSecurity", "KafkaSettings", "TopicFollower", "kafka_error", "watermarks"]

log = logging.getLogger(__name__)

_DRAIN_BATCH = 1000


@dataclass(frozen=True, slots=True)
class KafkaSettings:
    """Where Kafka is and how keystate's clients talk to it.

    `max_payload_bytes` (default `$KEYSTATE_MAX_PAYLOAD_BYTES` or 8 MiB, see `keystate.schemas.limits`)
    sizes the producers and consumers so that every record keystate writes fits.
    """

    bootstrap: str
    topics: Topics = field(default_factory=Topics)
    client_id: str = "keystate"
    extra: Mapping[str, Any] = field(default_factory=dict)
    max_payload_bytes: int = field(default_factory=max_payload_bytes)
    # SASL/TLS for every client built from these settings (default: the KAFKA_* environment, else PLAINTEXT).
    security: KafkaSecurity = field(default_factory=KafkaSecurity.from_env)
    # Every client's error_cb: remembers refusals of the credentials so errors can name them.
    watch: AuthWatch = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        max_payload_bytes(self.max_payload_bytes)  # raises PayloadLimitError out of range
        object.__setattr__(self, "watch", AuthWatch(self.security))

    def _client(self) -> dict[str, Any]:
        return {
            "bootstrap.servers": self.bootstrap,
            "client.id": self.client_id,
            **self.security.client_config(),
            "error_cb": self.watch,
        }

    def admin_config(self, **overrides: Any) -> dict[str, Any]:
        """An AdminClient's config: bootstrap, client id, security, `extra`, then `overrides`."""
        return {**self._client(), **self.extra, **overrides}

    def producer_config(self, **overrides: Any) -> dict[str, Any]:
        sizes = kafka_sizes(self.max_payload_bytes)
        return {
            **self._client(),
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": 1,
            "compression.type": "lz4",
            "message.max.bytes": sizes.producer_message_max_bytes,
            "batch.size": sizes.producer_batch_size,
            **self.extra,
            **overrides,
        }

    def consumer_config(self, **overrides: Any) -> dict[str, Any]:
        sizes = kafka_sizes(self.max_payload_bytes)
        return {
            **self._client(),
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 10,
            "fetch.max.bytes": sizes.consumer_fetch_max_bytes,
            "max.partition.fetch.bytes": sizes.consumer_max_partition_fetch_bytes,
            "receive.message.max.bytes": sizes.consumer_receive_message_max_bytes,
            **self.extra,
            **overrides,
        }


def kafka_error(
    operation: str, exc: BaseException | KafkaError, settings: KafkaSettings | None = None, client: Any = None
) -> KafkaUnavailable:
    """The keystate error for a confluent-kafka failure during `operation`.

    `KafkaAuthenticationFailed` when Kafka refused the credentials: given the `settings` the failed
    `client` was built from, a refusal its error events reported counts too.
    """
    refused = auth_error(operation, exc, settings.watch if settings is not None else None, client)
    if refused is not None:
        return refused
    detail = exc.args[0] if isinstance(exc, KafkaException) and exc.args else exc
    return KafkaUnavailable(f"{operation} failed: {detail}")


# Errors that pass on their own, e.g. a partition without a leader right after topic creation.
_TRANSIENT = {
    KafkaError.NOT_LEADER_FOR_PARTITION,
    KafkaError.LEADER_NOT_AVAILABLE,
    KafkaError.UNKNOWN_TOPIC_OR_PART,
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
}


def watermarks(consumer: Consumer, tp: TopicPartition, timeout: float = 30.0) -> tuple[int, int]:
    """(low, high) offsets of a partition, retrying transient errors until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=min(10.0, timeout))
            return int(low), int(high)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            transient = isinstance(error, KafkaError) and (error.retriable() or error.code() in _TRANSIENT)
            if not transient or time.monotonic() > deadline:
                raise
            log.info("watermarks of %s[%d]: %s; retrying", tp.topic, tp.partition, error)
            time.sleep(0.2)


class AsyncProducer:
    """An idempotent acks=all producer whose deliveries resolve asyncio futures.

    No call on the event loop blocks on Kafka: one background thread polls for delivery reports,
    and when librdkafka's local queue is full, records wait in an overflow queue (in order) that
    the same thread hands to librdkafka as room frees up.
    """

    # Records that may wait for room in librdkafka's queue before produce() raises; settable per instance.
    max_overflow: int = 100_000

    def __init__(self, settings: KafkaSettings, **overrides: Any) -> None:
        self._settings = settings
        self._producer = Producer(settings.producer_config(**overrides))
        # Records librdkafka had no room for, oldest first; guarded by _lock, which also orders
        # every hand-over to librdkafka so a record never overtakes an older one of its partition.
        self._overflow: deque[_Queued] = deque()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._poll, name="keystate-producer-poll", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._closed.is_set():
            # Short polls while records wait for room, so the overflow drains as soon as it can.
            self._producer.poll(0.005 if self._overflow else 0.05)
            if self._overflow:
                self._drain()

    def _drain(self) -> None:
        # At most _DRAIN_BATCH records per hold of the lock, so produce() on the loop never waits long.
        with self._lock:
            for _ in range(_DRAIN_BATCH):
                if not self._overflow:
                    return
                queued = self._overflow[0]
                try:
                    self._producer.produce(queued.topic, queued.value, **queued.kwargs)
                except BufferError:
                    return  # still full: the next poll frees room
                except KafkaException as exc:
                    error = kafka_error(f"produce to {queued.topic}", exc, self._settings)
                    _threadsafe(queued.loop, _fail, queued.future, error)
                self._overflow.popleft()

    def produce(
        self,
        topic: str,
        value: bytes,
        *,
        key: bytes | None = None,
        partition: int | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> asyncio.Future[Message]:
        """Hand a record to Kafka; the future completes once Kafka acknowledged it (acks=all).

        Never blocks: a record that does not fit librdkafka's queue waits in the overflow queue.
        Raises `KafkaUnavailable` if librdkafka refuses the record outright (e.g. too large) or
        the overflow queue is full too (Kafka has been slower than the load for a long while).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Message] = loop.create_future()

        def delivered(err: KafkaError | None, msg: Message) -> None:
            error = None if err is None else kafka_error(f"produce to {topic}", err, self._settings)
            _threadsafe(loop, _settle, future, error, msg)

        kwargs: dict[str, Any] = {"key": key, "headers": headers, "on_delivery": delivered}
        if partition is not None:
            kwargs["partition"] = partition
        with self._lock:
            if not self._overflow:
                try:
                    self._producer.produce(topic, value, **kwargs)
                    return future
                except BufferError:
                    pass  # librdkafka's queue is full: wait in the overflow queue below
                except KafkaException as exc:
                    raise kafka_error(f"produce to {topic}", exc, self._settings) from exc
            if len(self._overflow) >= self.max_overflow:
                raise KafkaUnavailable(
                    f"produce to {topic} failed: {len(self._overflow)} records already wait for room in the "
                    "local queue; Kafka is slower than the load (check the brokers, or lower the load)"
                )
            self._overflow.append(_Queued(topic, value, kwargs, future, loop))
        return future

    def waiting(self) -> int:
        """Records in the overflow queue, not yet handed to librdkafka."""
        return len(self._overflow)

    def partitions(self, topic: str, timeout: float = 10.0) -> int:
        """The partition count of `topic` (blocking metadata request)."""
        try:
            meta = list_topics(self._producer, f"metadata for {topic}", self._settings.watch, timeout, topic)
        except KafkaException as exc:
            raise kafka_error(f"metadata for {topic}", exc, self._settings, self._producer) from exc
        info = meta.topics.get(topic)
        if info is None or info.error is not None or not info.partitions:
            raise KafkaUnavailable(
                f"topic {topic} does not exist; create keystate's topics with `keystate topics create`"
            )
        return len(info.partitions)

    def flush(self, timeout: float = 10.0) -> int:
        """Wait until what was produced so far is delivered (up to `timeout`); how many are not. Blocks."""
        deadline = time.monotonic() + timeout
        while self._overflow and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.01)  # the poll thread drains the overflow queue
        return int(self._producer.flush(max(0.0, deadline - time.monotonic()))) + len(self._overflow)

    def close(self, timeout: float = 10.0) -> None:
        """Deliver what is queued (up to `timeout`), then stop the poll thread. Blocks: call it off the loop."""
        deadline = time.monotonic() + timeout
        while self._overflow and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.01)  # the poll thread drains the overflow queue
        remaining = self._producer.flush(max(0.0, deadline - time.monotonic()))
        self._closed.set()
        self._thread.join(timeout=1.0)
        with self._lock:
            dropped = list(self._overflow)
            self._overflow.clear()
        for queued in dropped:
            _threadsafe(queued.loop, _fail, queued.future, KafkaUnavailable(f"produce to {queued.topic} failed: producer closed"))
        if remaining or dropped:
            log.warning("producer closed with %d records not delivered", remaining + len(dropped))


@dataclass(slots=True)
class _Queued:
    """A record waiting for room in librdkafka's queue."""

    topic: str
    value: bytes
    kwargs: dict[str, Any]
    future: asyncio.Future[Message]
    loop: asyncio.AbstractEventLoop


def _threadsafe(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    """Run `fn` on `loop` from another thread; a closed loop has nobody left to tell."""
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass


def _settle(future: asyncio.Future[Message], error: KafkaUnavailable | None, msg: Message) -> None:
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(msg)


class TopicFollower:
    """Reads every partition of one topic (from the start or the end) and hands records to a callback.

    Runs a consumer without a group on its own thread; the callback runs on the event loop.
    `ready` resolves once every partition has been read up to the end it had at start.
    """

    def __init__(
        self,
        settings: KafkaSettings,
        topic: str,
        on_record: Callable[[Message], None],
        *,
        from_beginning: bool,
    ) -> None:
        self._settings = settings
        self._topic = topic
        self._on_record = on_record
        self._from_beginning = from_beginning
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ready: asyncio.Future[None] | None = None

    async def start(self, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        self.ready = loop.create_future()
        self._thread = threading.Thread(target=self._run, args=(loop,), name=f"keystate-follow-{self._topic}", daemon=True)
        self._thread.start()
        await asyncio.wait_for(asyncio.shield(self.ready), timeout)

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.ready is not None
        ready = self.ready
        consumer: Consumer | None = None
        try:
            consumer = Consumer(self._settings.consumer_config(**{"group.id": f"keystate-follower-{id(self)}"}))
            meta = _topic_metadata(consumer, self._topic, self._settings.watch)
            ends: dict[int, int] = {}
            assignment = []
            for p in meta.partitions:
                low, high = watermarks(consumer, TopicPartition(self._topic, p))
                ends[p] = high
                assignment.append(TopicPartition(self._topic, p, low if self._from_beginning else high))
            consumer.assign(assignment)
        except (KafkaException, KafkaUnavailable) as exc:
            # A refused login shows up as a timeout or transport failure: name the refusal instead.
            refused = auth_error(f"follow {self._topic}", exc, self._settings.watch, consumer)
            error = refused or (exc if isinstance(exc, KafkaUnavailable) else kafka_error(f"follow {self._topic}", exc))
            if consumer is not None:
                consumer.close()
            loop.call_soon_threadsafe(_fail, ready, error)
            return
        # read_committed may never show the high watermark (aborted tail): use the position.
        pending = {p for p, end in ends.items() if self._from_beginning and end > 0}
        if not pending:
            loop.call_soon_threadsafe(_done, ready)
        try:
            while not self._stop.is_set():
                if pending:
                    positions = consumer.position([TopicPartition(self._topic, p) for p in pending])
                    pending -= {tp.partition for tp in positions if tp.offset >= ends[tp.partition]}
                    if not pending:
                        loop.call_soon_threadsafe(_done, ready)
                msg = consumer.poll(0.1)
                if msg is None:
                    continue
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("reading %s: %s", self._topic, err)
                    continue
                loop.call_soon_threadsafe(self._on_record, msg)
        finally:
            consumer.close()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)


def _topic_metadata(consumer: Consumer, topic: str, watch: AuthWatch, timeout: float = 30.0) -> Any:
    """The topic's metadata once every partition has a leader (just-created topics take a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        meta = list_topics(consumer, f"follow {topic}", watch, 10.0, topic).topics.get(topic)
        if meta is not None and meta.error is None and meta.partitions and all(
            p.leader >= 0 and p.error is None for p in meta.partitions.values()
        ):
            return meta
        if time.monotonic() > deadline:
            detail = "does not exist" if meta is None or not meta.partitions else f"is not ready ({meta.error})"
            raise KafkaUnavailable(f"topic {topic} {detail}; create keystate's topics with `keystate topics create`")
        time.sleep(0.2)


def _done(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


def _fail(future: asyncio.Future[Any], error: Exception) -> None:
    if not future.done():
        future.set_exception(error)
