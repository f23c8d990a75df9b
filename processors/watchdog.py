"""A watchdog on the partition loop: no progress with work pending -> reset; stuck in a call or
reset too often in a row -> exit."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["GiveUp", "Stuck", "Stalled", "Watchdog"]


@dataclass(frozen=True, slots=True)
class Stalled:
    """Work is pending and nothing was committed for `seconds`: reset the session."""

    seconds: float


@dataclass(frozen=True, slots=True)
class Stuck:
    """The loop is inside `operation` for `seconds`, past its own bound: exit the process."""

    operation: str
    seconds: float
    bound_s: float


@dataclass(frozen=True, slots=True)
class GiveUp:
    """`times` setbacks (abandoned calls, stall resets) in a row, the last in `operation`: exit the process."""

    operation: str
    times: int


class Watchdog:
    """Written by the loop thread, read by another; plain attribute writes are atomic under the GIL."""

    def __init__(
        self,
        stall_reset_s: float,
        stuck_grace_s: float,
        max_setbacks: int = 3,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stall_reset_s = stall_reset_s
        self.stuck_grace_s = stuck_grace_s
        self.max_setbacks = max_setbacks
        self._clock = clock
        self._pending_since: float | None = None
        self._call: tuple[str, float, float] | None = None  # (operation, started, bound)
        self._setbacks = 0
        self._last_setback: tuple[str, float] | None = None  # (operation, when)

    @contextmanager
    def calling(self, operation: str, bound_s: float) -> Iterator[None]:
        """Around a blocking client call that should return within `bound_s`.

        Calls nest (a restore inside the poll that runs the rebalance callback): the outer call's
        clock restarts when the inner one returns, so the inner one's time is not counted twice.
        """
        outer = self._call
        self._call = (operation, self._clock(), bound_s)
        try:
            yield
        finally:
            self._call = None if outer is None else (outer[0], self._clock(), outer[2])

    def progress(self, pending: bool = False) -> None:
        """A batch committed (or there was nothing to do); `pending` if more work was already seen.

        Nothing to do for `stall_reset_s` after the last setback also clears the setbacks: an idle
        processor that met one broker restart a day must not exit on the third.
        """
        self._pending_since = self._clock() if pending else None
        last = self._last_setback
        if last is not None and self._clock() - last[1] > self.stall_reset_s:
            self._setbacks = 0
            self._last_setback = None

    def committed(self) -> None:
        """A batch of records committed: the loop works, setbacks so far are forgiven."""
        self.progress()
        self._setbacks = 0
        self._last_setback = None

    def setback(self, operation: str) -> None:
        """The session was reset because `operation` was abandoned (or the loop stalled)."""
        self._setbacks += 1
        self._last_setback = (operation, self._clock())

    @property
    def setbacks(self) -> int:
        """Setbacks in a row so far."""
        return self._setbacks

    def work_seen(self) -> None:
        """Records were polled (or commands queued) and are not committed yet."""
        if self._pending_since is None:
            self._pending_since = self._clock()

    def check(self) -> Stalled | Stuck | GiveUp | None:
        now = self._clock()
        call = self._call
        if call is not None:
            operation, started, bound = call
            if now - started > bound + self.stuck_grace_s:
                return Stuck(operation, now - started, bound)
        last = self._last_setback
        if last is not None and self._setbacks >= self.max_setbacks:
            return GiveUp(last[0], self._setbacks)
        since = self._pending_since
        # Inside a call, only its own bound counts (a long restore is not a stall).
        if call is None and since is not None and now - since > self.stall_reset_s:
            return Stalled(now - since)
        return None
