"""A watchdog on the partition loop: no progress with work pending -> reset; stuck in a call -> exit."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["Stuck", "Stalled", "Watchdog"]


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


class Watchdog:
    """Written by the loop thread, read by another; plain attribute writes are atomic under the GIL."""

    def __init__(self, stall_reset_s: float, stuck_grace_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.stall_reset_s = stall_reset_s
        self.stuck_grace_s = stuck_grace_s
        self._clock = clock
        self._pending_since: float | None = None
        self._call: tuple[str, float, float] | None = None  # (operation, started, bound)

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
        """A batch committed (or there was nothing to do); `pending` if more work was already seen."""
        self._pending_since = self._clock() if pending else None

    def work_seen(self) -> None:
        """Records were polled (or commands queued) and are not committed yet."""
        if self._pending_since is None:
            self._pending_since = self._clock()

    def check(self) -> Stalled | Stuck | None:
        now = self._clock()
        call = self._call
        if call is not None:
            operation, started, bound = call
            if now - started > bound + self.stuck_grace_s:
                return Stuck(operation, now - started, bound)
        since = self._pending_since
        # Inside a call, only its own bound counts (a long restore is not a stall).
        if call is None and since is not None and now - since > self.stall_reset_s:
            return Stalled(now - since)
        return None
