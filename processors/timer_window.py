"""Which timers live in memory: only those due within a horizon; the stores keep the rest.

A completed invocation keeps a purge timer for its retention (a day by default), so the timers
tables grow with the number of invocations, not with live work. The timer service's heap holds only
timers due before `loaded_until` of their partition; the session moves the window forward every few
seconds, loading the next slice from the store's fire-time index. A timer written by a batch is
scheduled at once only when it falls inside the window; later ones are loaded when the window
reaches them (they are committed in the store by then: the window moves on the session thread,
after the batches whose timers it reads).
"""

from __future__ import annotations

from collections.abc import Iterable

from .partition import PartitionProcessor
from .state_machine import RegisterTimer
from .step import Effect

__all__ = ["TimerWindow"]


class TimerWindow:
    """Per partition, the fire time up to which its timers are in the timer service."""

    def __init__(self, horizon_ms: int = 60_000, refill_every_ms: int = 10_000, page: int = 20_000) -> None:
        self.horizon_ms = horizon_ms
        self.refill_every_ms = refill_every_ms
        # At most this many timers per partition per load: after a long outage the overdue ones
        # come in slices, one per refill (2,000 a second), instead of all into memory at once.
        self.page = page
        self._loaded_until: dict[int, int] = {}
        self._next_refill_ms = 0

    def load(self, proc: PartitionProcessor, now_ms: int) -> list[Effect]:
        """The partition's committed timers due within the horizon and not loaded yet (at most a page)."""
        until = now_ms + self.horizon_ms
        after = self._loaded_until.get(proc.partition)
        rows = proc.store.due_timers(until, limit=self.page, after_ms=after)
        effects: list[Effect] = [(proc.partition, RegisterTimer(key, int(row["fire_at_ms"]), row)) for key, row in rows]
        if len(rows) == self.page:
            # Full page: more may be due at the last fire time; the next load starts just before it
            # (a timer scheduled twice fires once: the heap keeps one entry per row).
            last = int(rows[-1][1]["fire_at_ms"])
            until = max(last - 1, after if after is not None else last - 1)
        self._loaded_until[proc.partition] = until
        return effects

    def refill(self, procs: Iterable[PartitionProcessor], now_ms: int) -> list[Effect]:
        """Move every partition's window forward, when it is time to."""
        if now_ms < self._next_refill_ms:
            return []
        self._next_refill_ms = now_ms + self.refill_every_ms
        return [effect for proc in procs for effect in self.load(proc, now_ms)]

    def admit(self, effects: list[Effect]) -> list[Effect]:
        """A batch's effects without the timers beyond their partition's window (loaded later from the store)."""
        return [
            (p, action)
            for p, action in effects
            if not isinstance(action, RegisterTimer) or action.fire_at_ms <= self._loaded_until.get(p, 0)
        ]

    def forget(self, partitions: Iterable[int]) -> None:
        for p in partitions:
            self._loaded_until.pop(p, None)
