"""AsyncProducer never blocks the event loop, keeps order when its local queue overflows, loses no failure."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest
from confluent_kafka import Producer

from keystate.schemas.limits import kafka_sizes
from keystate.schemas.topics import Topics
from keystate.server.errors import KafkaUnavailable
from keystate.server.kafka import AsyncProducer, KafkaSettings
from keystate.server.topics import TopicSettings, ensure_topics

pytestmark = pytest.mark.integration

RECORDS = 3000


class BlockingCallSpy:
    """The real confluent-kafka Producer, noting every call of a method that can block and its thread."""

    def __init__(self, inner: Producer) -> None:
        self._inner = inner
        self.blocking_calls: list[tuple[str, threading.Thread]] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def flush(self, *args: Any) -> int:
        self.blocking_calls.append(("flush", threading.current_thread()))
        return int(self._inner.flush(*args))

    def poll(self, *args: Any) -> int:
        self.blocking_calls.append(("poll", threading.current_thread()))
        return int(self._inner.poll(*args))


def _small_queue_producer(bootstrap: str, topics: Topics) -> tuple[AsyncProducer, BlockingCallSpy]:
    # A local queue of 10 records overflows at once under a burst of thousands.
    producer = AsyncProducer(KafkaSettings(bootstrap, topics), **{"queue.buffering.max.messages": 10})
    spy = BlockingCallSpy(producer._producer)
    producer._producer = spy  # type: ignore[assignment]
    return producer, spy


async def test_a_burst_over_the_local_queue_never_blocks_the_loop_and_keeps_order(
    kafka_bootstrap: str, unique_topic_prefix: str
) -> None:
    topics = Topics(unique_topic_prefix)
    ensure_topics(kafka_bootstrap, topics, TopicSettings(partitions=2))
    producer, spy = _small_queue_producer(kafka_bootstrap, topics)
    loop_thread = threading.current_thread()
    try:
        # No await between produces: whatever produce does, it does on the loop thread.
        futures = [producer.produce(topics.log, str(n).encode(), partition=n % 2) for n in range(RECORDS)]
        on_loop = [name for name, thread in spy.blocking_calls if thread is loop_thread]
        assert on_loop == [], f"blocking producer calls on the event loop: {on_loop[:5]}"
        messages = await asyncio.wait_for(asyncio.gather(*futures), 60)
    finally:
        await asyncio.to_thread(producer.close)
    for partition in (0, 1):
        values = [int(m.value()) for m in messages if m.partition() == partition]
        offsets = [m.offset() for m in messages if m.partition() == partition]
        assert values == list(range(partition, RECORDS, 2))
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets), "records were reordered"


async def test_a_record_refused_from_the_overflow_fails_its_own_future_only(
    kafka_bootstrap: str, unique_topic_prefix: str
) -> None:
    topics = Topics(unique_topic_prefix)
    ensure_topics(kafka_bootstrap, topics, TopicSettings(partitions=1))
    producer, _ = _small_queue_producer(kafka_bootstrap, topics)
    try:
        before = [producer.produce(topics.log, b"x", partition=0) for _ in range(50)]
        over = kafka_sizes(KafkaSettings(kafka_bootstrap).max_payload_bytes).producer_message_max_bytes + 1
        too_big = producer.produce(topics.log, b"x" * over, partition=0)  # librdkafka refuses it
        after = [producer.produce(topics.log, b"y", partition=0) for _ in range(50)]
        with pytest.raises(KafkaUnavailable, match="produce to .* failed"):
            await asyncio.wait_for(too_big, 60)
        delivered = await asyncio.wait_for(asyncio.gather(*before, *after), 60)
    finally:
        await asyncio.to_thread(producer.close)
    assert [m.value() for m in delivered] == [b"x"] * 50 + [b"y"] * 50


async def test_when_the_overflow_is_full_too_produce_says_so_instead_of_waiting() -> None:
    # No broker at all: nothing is ever delivered, so the queues only fill.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        nowhere = f"127.0.0.1:{s.getsockname()[1]}"
    producer = AsyncProducer(KafkaSettings(nowhere), **{"queue.buffering.max.messages": 3})
    producer.max_overflow = 5
    try:
        futures = [producer.produce("t", b"x", partition=0) for _ in range(8)]  # 3 queued + 5 waiting
        assert producer.waiting() == 5
        with pytest.raises(KafkaUnavailable, match="5 records already wait for room"):
            producer.produce("t", b"x", partition=0)
    finally:
        await asyncio.to_thread(producer.close, 0.5)
    for future in futures[3:]:
        with pytest.raises(KafkaUnavailable, match="producer closed"):
            await asyncio.wait_for(future, 5)
