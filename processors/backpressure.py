"""Back-pressure: pause the log partitions whose work waits in the invoker's queue, within a bound.

Completions for running attempts flow through the same partitions. Pausing a partition until the
queue drains could deadlock (the running attempts wait for those completions), so a partition
stays paused at most `max_pause_s`, then reads for at least `min_resume_s` before it may pause again.
"""

from __future__ import annotations

import time
from collections.abc import Callable

__all__ = ["PauseGate"]


class PauseGate:
    """Decides which partitions to pause and resume; the session applies it to the consumer."""

    def __init__(self, max_pause_s: float, min_resume_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_pause_s = max_pause_s
        self.min_resume_s = min_resume_s
        self._clock = clock
        self._paused: dict[int, float] = {}  # partition -> paused at
        self._resumed: dict[int, float] = {}  # partition -> resumed at (after a forced resume)

    @property
    def paused(self) -> frozenset[int]:
        return frozenset(self._paused)

    def decide(self, backlogged: frozenset[int], owned: set[int]) -> tuple[set[int], set[int]]:
        """(partitions to pause, partitions to resume) given the invoker's backlogged partitions now."""
        now = self._clock()
        to_resume = {p for p, at in self._paused.items() if p not in backlogged or p not in owned or now - at >= self.max_pause_s}
        for p in to_resume:
            if self._paused.pop(p) + self.max_pause_s <= now:
                self._resumed[p] = now
        to_pause = {
            p
            for p in backlogged & owned
            if p not in self._paused and p not in to_resume and now - self._resumed.get(p, -1e18) >= self.min_resume_s
        }
        for p in to_pause:
            self._paused[p] = now
        return to_pause, {p for p in to_resume if p in owned}

    def forget(self, partitions: set[int]) -> None:
        """Partitions revoked: a new assignment starts unpaused."""
        for p in partitions:
            self._paused.pop(p, None)
            self._resumed.pop(p, None)
