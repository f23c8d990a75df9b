"""Client calls with a real time bound: run on a helper thread, abandoned (never awaited) past the bound.

Why: librdkafka's transactional calls can ignore their own timeout. `send_offsets_to_transaction`
waits forever when the group coordinator is not found after a broker restart (confluentinc/librdkafka
#5456 and #5511, fix in PR #5457, not released in 2.16). confluent-kafka releases the GIL inside these
calls, so another thread can run them while the partition loop waits at most `bound + grace`.

A call that does not return in time is abandoned with its client: nothing may call that client
again, close it or destroy it (each could block the same way, or free memory the stuck call still
uses). The helper thread keeps the client alive while it waits, so the client's destructor runs on
that thread if the call ever returns, never on the partition loop's. The next session's
`init_transactions` with the same transactional id fences an abandoned producer on the broker.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import CallAbandoned

__all__ = ["BoundedCaller", "StuckCall", "stuck_calls"]

log = logging.getLogger(__name__)

T = TypeVar("T")

# librdkafka issues that make a call ignore its timeout; named in the error so an operator can follow up.
KNOWN_HANGS = "confluentinc/librdkafka#5456, #5511"


@dataclass(slots=True)
class _Job:
    operation: str
    fn: Callable[[], Any]
    done: threading.Event = field(default_factory=threading.Event)
    result: Any = None
    error: BaseException | None = None


@dataclass(frozen=True, slots=True)
class StuckCall:
    """An abandoned call still running on its helper thread."""

    owner: str
    operation: str
    since: float


# Every abandoned call that has not returned yet (module level: it outlives the session that made it).
_stuck: dict[int, StuckCall] = {}
_stuck_lock = threading.Lock()


def stuck_calls() -> list[StuckCall]:
    """The abandoned calls that have not returned yet, oldest first."""
    with _stuck_lock:
        return sorted(_stuck.values(), key=lambda c: c.since)


class BoundedCaller:
    """Runs one client's blocking calls, one at a time, on a daemon thread; waits at most bound + grace.

    After a call is abandoned the caller refuses every further call (its thread is still busy).
    """

    def __init__(self, owner: str, grace_s: float = 5.0) -> None:
        self.owner = owner
        self.grace_s = grace_s
        self.abandoned: str | None = None  # the operation it was abandoned in
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def call(self, operation: str, bound_s: float, fn: Callable[[], T]) -> T:
        """`fn()` on the helper thread; its exception is re-raised here as is.

        Raises `CallAbandoned` (a fatal `TransactionFailed`) if it does not return within
        `bound_s + grace_s`, or if an earlier call was abandoned.
        """
        if self.abandoned is not None:
            raise CallAbandoned(
                f"{operation} refused: {self.owner} was abandoned while stuck in {self.abandoned}; use a new client",
                operation=operation,
            )
        if self._thread is None:
            self._thread = threading.Thread(target=self._serve, name=f"keystate-call-{self.owner}", daemon=True)
            self._thread.start()
        job = _Job(operation, fn)
        self._jobs.put(job)
        if not job.done.wait(bound_s + self.grace_s):
            # Decided under the lock the helper thread takes to finish a job: either it finished
            # just now (use the result) or it will find the call registered as stuck (and exit).
            with _stuck_lock:
                finished = job.done.is_set()
                if not finished:
                    _stuck[id(job)] = StuckCall(self.owner, operation, time.monotonic())
            if not finished:
                self.abandoned = operation
                raise CallAbandoned(
                    f"{operation} did not return within {bound_s + self.grace_s:g} s although its timeout is "
                    f"{bound_s:g} s (librdkafka can ignore it, e.g. while it looks for the group coordinator: {KNOWN_HANGS}); "
                    f"{self.owner} is abandoned and replaced by new clients",
                    operation=operation,
                )
        if job.error is not None:
            raise job.error
        return job.result

    def close(self) -> None:
        """Let the helper thread end (a stuck one ends when its call returns, if ever)."""
        if self._thread is not None and self.abandoned is None:
            self._jobs.put(None)

    def _serve(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            started = time.monotonic()
            try:
                job.result = job.fn()
            except BaseException as exc:  # handed to the waiting thread, which re-raises it
                job.error = exc
            with _stuck_lock:
                late = _stuck.pop(id(job), None)
                job.done.set()
            if late is not None:
                log.warning(
                    "%s: abandoned call %s returned after %.0f s (%s); its client stays unused",
                    self.owner,
                    job.operation,
                    time.monotonic() - started,
                    "failed" if job.error is not None else "succeeded",
                )
                # Nothing waits for this thread any more; dropping the job here lets the client's
                # destructor run on this thread rather than on the partition loop's.
                return
