"""The partition loop's guards, on an injected clock: watchdog, back-pressure gate, topic cache, effect chunks."""

from __future__ import annotations

import asyncio
from typing import Any

from keystate.processors.backpressure import PauseGate
from keystate.processors.effects import EffectExecutor
from keystate.processors.state_machine import RegisterTimer
from keystate.processors.topic_cache import TopicCache
from keystate.processors.watchdog import Stalled, Stuck, Watchdog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_watchdog_asks_for_a_reset_when_work_waits_without_progress() -> None:
    clock = Clock()
    dog = Watchdog(stall_reset_s=60, stuck_grace_s=30, clock=clock)
    clock.now += 500
    assert dog.check() is None  # idle: nothing pending, however long
    dog.work_seen()
    clock.now += 59
    assert dog.check() is None
    clock.now += 2
    with dog.calling("restore of partition 0", 300):
        assert dog.check() is None  # a long restore is bounded by its own limit
    assert isinstance(dog.check(), Stalled)
    dog.progress()
    assert dog.check() is None


def test_watchdog_reports_a_call_stuck_past_its_bound() -> None:
    clock = Clock()
    dog = Watchdog(stall_reset_s=600, stuck_grace_s=30, clock=clock)
    with dog.calling("send_offsets_to_transaction", 30):
        clock.now += 59
        assert dog.check() is None
        clock.now += 2
        verdict = dog.check()
        assert isinstance(verdict, Stuck) and verdict.operation == "send_offsets_to_transaction"
    assert dog.check() is None


def test_watchdog_does_not_count_a_nested_restore_against_the_poll_around_it() -> None:
    clock = Clock()
    dog = Watchdog(stall_reset_s=600, stuck_grace_s=30, clock=clock)
    with dog.calling("poll", 30):
        with dog.calling("restore of partition 3", 300):
            clock.now += 200
            assert dog.check() is None
        clock.now += 10
        assert dog.check() is None


def test_pause_gate_pauses_backlogged_partitions_and_caps_the_pause() -> None:
    clock = Clock()
    gate = PauseGate(max_pause_s=5, min_resume_s=1, clock=clock)
    owned = {0, 1, 2}
    assert gate.decide(frozenset({1, 7}), owned) == ({1}, set())  # 7 is not ours
    clock.now += 1
    assert gate.decide(frozenset({1}), owned) == (set(), set())
    clock.now += 4
    # Still backlogged after max_pause_s: resumed anyway, so completions for running attempts get in.
    assert gate.decide(frozenset({1}), owned) == (set(), {1})
    clock.now += 0.5
    assert gate.decide(frozenset({1}), owned) == (set(), set())  # reading for at least min_resume_s
    clock.now += 0.5
    assert gate.decide(frozenset({1}), owned) == ({1}, set())
    assert gate.decide(frozenset(), owned) == (set(), {1})  # the backlog drained


def test_topic_cache_refreshes_on_ttl_and_on_a_miss_at_most_every_few_seconds() -> None:
    clock = Clock()
    topics = {"a"}
    calls: list[float] = []

    def list_topics() -> set[str]:
        calls.append(clock.now)
        return set(topics)

    cache = TopicCache(list_topics, ttl_s=60, miss_refresh_s=2, clock=clock)
    assert cache.exists("a") and len(calls) == 1
    assert not cache.exists("b") and len(calls) == 1  # just listed
    topics.add("b")
    clock.now += 1
    assert not cache.exists("b") and len(calls) == 1
    clock.now += 1
    assert cache.exists("b") and len(calls) == 2
    clock.now += 30
    assert cache.exists("a") and len(calls) == 2
    clock.now += 31
    assert cache.exists("a") and len(calls) == 3


class _Timers:
    def __init__(self) -> None:
        self.scheduled: list[tuple[int, Any]] = []

    def schedule(self, partition: int, key: tuple[Any, ...], record: dict[str, Any]) -> None:
        self.scheduled.append((partition, key))

    def cancel_partition(self, partition: int) -> None:
        self.scheduled = [s for s in self.scheduled if s[0] != partition]


class _Invoker:
    def invoke(self, action: Any) -> None: ...

    def notify(self, invocation_id: str, attempt_no: int, index: int, result: Any) -> None: ...

    def stop(self, invocation_id: str) -> None: ...

    def stop_where(self, predicate: Any) -> list[asyncio.Task[None]]:
        return []

    async def flush(self, timeout_s: float) -> int:
        return 0


async def test_executor_schedules_thousands_of_timers_in_chunks_in_order() -> None:
    timers = _Timers()
    executor = EffectExecutor(_Invoker(), timers, log_partitions=4, chunk=100)
    effects = [(i % 2, RegisterTimer(("t", i), i, {"fire_at_ms": i})) for i in range(1000)]
    executor.submit(effects)
    assert timers.scheduled == []
    await asyncio.sleep(0)
    assert len(timers.scheduled) == 100  # one loop iteration runs one chunk
    executor.drop_partitions([1])  # revoked meanwhile: its queued timers never run
    for _ in range(20):
        await asyncio.sleep(0)
    assert [k[1] for _, k in timers.scheduled] == [i for i in range(1000) if i < 100 and i % 2 == 0 or i >= 100 and i % 2 == 0]
    assert executor.backlog() == 0
