"""Attempt slots: a per-deployment limit with a FIFO queue, and the backlog signal with hysteresis."""

from __future__ import annotations

import asyncio

import pytest

from keystate.processors.invoker_slots import AttemptSlots


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_attempts_over_the_limit_wait_and_start_in_arrival_order() -> None:
    slots = AttemptSlots(per_deployment=2, high=100, low=50)
    started: list[int] = []

    async def attempt(n: int) -> None:
        await slots.acquire("d", partition=0)
        started.append(n)

    tasks = [asyncio.create_task(attempt(n)) for n in range(5)]
    await _settle()
    assert started == [0, 1] and slots.queued() == 3 and slots.running("d") == 2
    for expected in ([0, 1, 2], [0, 1, 2, 3], [0, 1, 2, 3, 4]):
        slots.release("d")
        await _settle()
        assert started == expected
    assert slots.running("d") == 2 and slots.queued() == 0
    await asyncio.gather(*tasks)


async def test_deployments_have_separate_limits() -> None:
    slots = AttemptSlots(per_deployment=1, high=100, low=50)
    await slots.acquire("a", partition=0)
    await asyncio.wait_for(slots.acquire("b", partition=0), 1)  # not behind a's queue
    assert slots.running("a") == slots.running("b") == 1


async def test_a_cancelled_waiter_leaves_the_queue_and_never_takes_a_slot() -> None:
    slots = AttemptSlots(per_deployment=1, high=100, low=50)
    await slots.acquire("d", partition=3)
    gone = asyncio.create_task(slots.acquire("d", partition=3))
    stays = asyncio.create_task(slots.acquire("d", partition=4))
    await _settle()
    gone.cancel()
    await _settle()
    assert slots.queued() == 1
    slots.release("d")
    await asyncio.wait_for(stays, 1)
    assert gone.cancelled() and slots.running("d") == 1
    slots.release("d")
    assert slots.running("d") == 0


async def test_backlog_names_waiting_partitions_above_high_until_below_low() -> None:
    slots = AttemptSlots(per_deployment=1, high=4, low=2)
    await slots.acquire("d", partition=9)
    waiters = [asyncio.create_task(slots.acquire("d", partition=p)) for p in (0, 1, 0, 1)]
    await _settle()
    assert slots.queued() == 4 and slots.backlog == frozenset()  # at the mark, not above it
    waiters.append(asyncio.create_task(slots.acquire("d", partition=2)))
    await _settle()
    assert slots.backlog == {0, 1, 2}
    slots.release("d")  # partition 0's first waiter starts: 4 wait, still above low
    slots.release("d")  # partition 1's: 3 wait
    await _settle()
    assert slots.backlog == {0, 1, 2}
    slots.release("d")  # partition 0's second: 2 wait (0 has none left), not below low yet
    await _settle()
    assert slots.backlog == {1, 2}
    slots.release("d")  # 1 waits: below low, consumption resumes everywhere
    await _settle()
    assert slots.backlog == frozenset()
    slots.release("d")
    await asyncio.gather(*waiters)


def test_nonsense_limits_are_refused_with_the_setting_name() -> None:
    with pytest.raises(ValueError, match="max_concurrent_attempts_per_deployment"):
        AttemptSlots(per_deployment=0, high=1, low=0)
