"""The timer service fires thousands of timers onto the log of their partition."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter

import pytest
from confluent_kafka import Consumer

from keystate.processors.timers import TimerService
from keystate.schemas._codec import codec
from keystate.schemas.ids import InvocationId
from keystate.schemas.topics import Topics
from keystate.server.kafka import AsyncProducer, KafkaSettings
from keystate.server.topics import TopicSettings, ensure_topics

pytestmark = pytest.mark.integration

TIMERS = 5000


async def test_thousands_of_timers_fire_once_each_on_their_partition(kafka_bootstrap: str, unique_topic_prefix: str) -> None:
    topics = Topics(unique_topic_prefix)
    ensure_topics(kafka_bootstrap, topics, TopicSettings(partitions=2))
    producer = AsyncProducer(KafkaSettings(kafka_bootstrap, topics))
    service = TimerService(producer, topics.log)
    fire_at = int(time.time() * 1000) + 1000
    ids = [str(InvocationId.new()) for _ in range(TIMERS)]
    for n, iid in enumerate(ids):
        record = {"invocation_id": iid, "timer_kind": "SLEEP", "entry_index": 1, "attempt": None, "fire_at_ms": fire_at}
        service.schedule(n % 2, (iid, "SLEEP", 1), record)
    # A timer cancelled with its partition never fires.
    service.schedule(1, ("gone", "SLEEP", 1), {"invocation_id": ids[0], "timer_kind": "SLEEP", "entry_index": 9, "attempt": None, "fire_at_ms": fire_at})
    service.cancel_partition(1)
    assert service.pending() == TIMERS // 2
    while service.pending():
        await asyncio.sleep(0.1)
    await asyncio.to_thread(producer.close)

    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest"})
    consumer.subscribe([topics.log])
    fired: Counter[str] = Counter()
    deadline = time.monotonic() + 30
    while sum(fired.values()) < TIMERS // 2 and time.monotonic() < deadline:
        for msg in consumer.consume(1000, 0.5):
            if msg.error() is None:
                assert msg.partition() == 0
                name, record = codec().decode(msg.value())
                assert name == "keystate.TimerFiredCommand" and record["fire_at_ms"] == fire_at
                assert msg.timestamp()[1] >= fire_at - 5  # not before its time (clock granularity aside)
                fired[record["invocation_id"]] += 1
    consumer.close()
    assert fired == Counter(ids[0::2])
