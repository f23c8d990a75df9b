"""The timer service keeps thousands of timers without stalling the event loop, on the real broker."""

from __future__ import annotations

import asyncio
import time

import pytest

from keystate.processors.timers import TimerService
from keystate.schemas.ids import InvocationId
from keystate.schemas.topics import Topics
from keystate.server.kafka import AsyncProducer, KafkaSettings
from keystate.server.topics import TopicSettings, ensure_topics

pytestmark = pytest.mark.integration

TIMERS = 20_000


def _row(iid: str, fire_at_ms: int, index: int = 1) -> dict[str, object]:
    return {"invocation_id": iid, "timer_kind": "SLEEP", "entry_index": index, "attempt": None, "fire_at_ms": fire_at_ms}


async def _drained(service: TimerService) -> None:
    while service.pending():
        await asyncio.sleep(0.05)


async def test_thousands_of_due_timers_fire_in_slices_that_let_other_work_run(
    kafka_bootstrap: str, unique_topic_prefix: str
) -> None:
    topics = Topics(unique_topic_prefix)
    ensure_topics(kafka_bootstrap, topics, TopicSettings(partitions=1))
    producer = AsyncProducer(KafkaSettings(kafka_bootstrap, topics))
    service = TimerService(producer, topics.log, partitions=1)
    overdue = int(time.time() * 1000) - 1000
    for n in range(TIMERS):
        service.schedule(0, (f"t{n}", "SLEEP", 1), _row(str(InvocationId.new()), overdue))
    seen: list[int] = []

    async def ticker() -> None:
        # Each pass is one trip through the event loop; it records how many timers were left.
        while service.pending():
            seen.append(service.pending())
            await asyncio.sleep(0)

    try:
        await asyncio.wait_for(asyncio.gather(ticker(), _drained(service)), 60)
    finally:
        await asyncio.to_thread(producer.close)
    in_between = [n for n in seen if 0 < n < TIMERS]
    assert len(in_between) >= 5, f"the loop ran other work only {len(in_between)} times while {TIMERS} timers fired"


async def test_rescheduling_replaces_and_cancelling_a_partition_drops_its_timers(
    kafka_bootstrap: str, unique_topic_prefix: str
) -> None:
    topics = Topics(unique_topic_prefix)
    ensure_topics(kafka_bootstrap, topics, TopicSettings(partitions=2))
    producer = AsyncProducer(KafkaSettings(kafka_bootstrap, topics))
    service = TimerService(producer, topics.log, partitions=2)
    later = int(time.time() * 1000) + 3_600_000
    iid = str(InvocationId.new())
    for n in range(10_000):
        service.schedule(1, (f"t{n}", "SLEEP", 1), _row(iid, later))
    service.schedule(0, ("a", "SLEEP", 1), _row(iid, later))
    service.schedule(0, ("a", "SLEEP", 1), _row(iid, later + 1))  # the same row again: replaces
    assert service.pending() == 10_001
    service.cancel_partition(1)
    assert service.pending() == 1
    service.cancel_partition(0)
    assert service.pending() == 0
    await asyncio.to_thread(producer.close)
