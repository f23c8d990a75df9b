"""The timer service keeps thousands of timers without stalling the event loop, on the real broker."""

from __future__ import annotations

import asyncio
import time

import pytest

from keystate.processors.timers import TimerService
from keystate.schemas.ids import InvocationId
from keystate.schemas.topics import Topics
from keystate.server.errors import KafkaUnavailable
from keystate.server.kafka import AsyncProducer, KafkaSettings
from keystate.server.topics import TopicSettings, ensure_topics
from tests.e2e.results import read_all

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


async def test_a_firing_whose_produce_fails_fires_again_unless_its_partition_was_dropped(
    kafka_bootstrap: str, unique_topic_prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    topics = Topics(unique_topic_prefix)
    ensure_topics(kafka_bootstrap, topics, TopicSettings(partitions=1))
    producer = AsyncProducer(KafkaSettings(kafka_bootstrap, topics))
    real = AsyncProducer.produce
    refused: list[bytes] = []

    def fail_first_two(self: AsyncProducer, topic: str, value: bytes, **kwargs: object) -> asyncio.Future[object]:
        # The real producer, except that the first two firings' deliveries fail.
        if len(refused) < 2:
            refused.append(value)
            future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
            future.set_exception(KafkaUnavailable("injected delivery failure"))
            return future
        return real(self, topic, value, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(AsyncProducer, "produce", fail_first_two)
    service = TimerService(producer, topics.log, partitions=1)
    now = int(time.time() * 1000)
    revoked, retried = str(InvocationId.new()), str(InvocationId.new())
    service.schedule(0, ("revoked",), _row(revoked, now))
    await asyncio.sleep(0.2)  # fired once, refused: back in the schedule for a retry
    assert service.pending() == 1
    service.cancel_partition(0)  # revoked: its retry is dropped with it
    service.schedule(0, ("retried",), _row(retried, now))
    await asyncio.sleep(0.2)  # refused too; its partition's epoch is current, so it waits for a retry
    assert service.pending() == 1
    await asyncio.wait_for(_drained(service), 10)
    await asyncio.to_thread(producer.close)
    fired = read_all(kafka_bootstrap, topics.log, until=lambda rs: len(rs) >= 1, timeout=10)
    assert [r["invocation_id"] for r in fired] == [retried]
