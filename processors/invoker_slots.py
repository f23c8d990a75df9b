"""Attempt slots: at most N attempts run per deployment, the rest wait in FIFO order, and a backlog signal."""

from __future__ import annotations

import asyncio
from collections import Counter, deque
from collections.abc import Hashable
from dataclasses import dataclass, field

__all__ = ["AttemptSlots"]


@dataclass(slots=True)
class _Gate:
    running: int = 0
    waiters: deque[tuple[asyncio.Future[None], int]] = field(default_factory=deque)


class AttemptSlots:
    """Per-deployment concurrency limit with a FIFO queue; says which log partitions are backlogged.

    `backlog` is replaced, never mutated, so another thread may read it at any time. It names the
    log partitions with queued attempts once the total queue exceeds `high`, and keeps doing so
    until the queue falls below `low` (hysteresis: no pause/resume flapping at the boundary).
    """

    def __init__(self, per_deployment: int, high: int, low: int) -> None:
        if per_deployment < 1:
            raise ValueError(f"max_concurrent_attempts_per_deployment must be at least 1, got {per_deployment}")
        if not 0 <= low <= high:
            raise ValueError(f"the low watermark {low} must be between 0 and the high watermark {high}")
        self._limit = per_deployment
        self._high = high
        self._low = low
        self._gates: dict[Hashable, _Gate] = {}
        self._queued: Counter[int] = Counter()  # log partition -> attempts waiting for a slot
        self._total = 0
        self._over = False
        self.backlog: frozenset[int] = frozenset()

    def queued(self) -> int:
        """Attempts waiting for a slot, over all deployments."""
        return self._total

    def running(self, deployment: Hashable) -> int:
        gate = self._gates.get(deployment)
        return 0 if gate is None else gate.running

    async def acquire(self, deployment: Hashable, partition: int) -> None:
        """Wait for a slot of `deployment` (FIFO); the caller must `release` it afterwards."""
        gate = self._gates.setdefault(deployment, _Gate())
        if gate.running < self._limit and not gate.waiters:
            gate.running += 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        gate.waiters.append((waiter, partition))
        self._count(partition, +1)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release(deployment)  # handed a slot just as it was cancelled: pass it on
            else:
                gate.waiters.remove((waiter, partition))
                self._count(partition, -1)
                self._forget_if_idle(deployment, gate)
            raise

    def release(self, deployment: Hashable) -> None:
        """Give the slot to the oldest waiter of `deployment`, or free it."""
        gate = self._gates[deployment]
        while gate.waiters:
            waiter, partition = gate.waiters.popleft()
            if waiter.done():
                continue
            self._count(partition, -1)
            waiter.set_result(None)  # the slot passes on: `running` stays
            return
        gate.running -= 1
        self._forget_if_idle(deployment, gate)

    def _forget_if_idle(self, deployment: Hashable, gate: _Gate) -> None:
        if gate.running == 0 and not gate.waiters:
            self._gates.pop(deployment, None)

    def _count(self, partition: int, delta: int) -> None:
        before = self._queued[partition]
        self._queued[partition] = before + delta
        if self._queued[partition] <= 0:
            del self._queued[partition]
        self._total += delta
        over = self._over
        if not over and self._total > self._high:
            over = True
        elif over and self._total < self._low:
            over = False
        # Rebuild the set only when it can change: the flag flipped or a partition (un)emptied.
        if over != self._over or (over and (before == 0) != (before + delta == 0)):
            self._over = over
            self.backlog = frozenset(self._queued) if over else frozenset()
