"""Starting attempts while their batch commits: the attempt runs at once, its log writes wait for the commit.

An InvokeCommand is durable on the log before the processor reads it, so the attempt it starts need
not wait for the transaction that records it. It must only not *write* before that transaction
committed: if it aborted, the command is applied again (by this session's re-run or by the next
owner) and starts the same attempt number again, and entries of the first run on the log would be
taken for the second's. So an early attempt holds a `Gate`: it connects, sends the journal and
runs the handler, and every record it appends (entries, suspension, failure) waits until the gate
opens after the commit. If the commit fails, the gate fails: the attempt is stopped before it wrote
anything, and what it did outside (a `ctx.run` side effect) is repeated by the next attempt, as after
any crash mid-attempt. The gate's opening and failing travel the effects queue behind the attempts
they concern, so they run in order with them on the event loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from keystate.schemas.ids import InvocationIdStr
from keystate.server.commands import LogRecord

from .state_machine import Invoke, NotifyCompletion, StopInvocation

if TYPE_CHECKING:
    from .step import Effect, StepResult

__all__ = ["MAX_CHAINED", "NO_PARTITION", "EarlyRun", "FailGate", "Gate", "GateAction", "GatedInvoke", "OpenGate", "split_early"]

NO_PARTITION = -1
"""The partition of the effects that open or fail a gate: no partition's drop filters them out."""

MAX_CHAINED = 32
"""Attempts a batch may start for its re-runs with folded entries (beyond those of its records)."""

CHAIN_WINDOWS = 5
"""How long a batch may wait for chained attempts in all, in fold windows (each step waits one at most)."""

log = logging.getLogger(__name__)


class Gate:
    """The commit a batch's early attempts wait for, and the entries they journal meanwhile.

    Lives on two threads: the partition thread creates it, takes `snapshot`s and `close`s it; the event loop
    offers entries, marks attempts blocked, and opens or fails it (through the effects queue).
    While collecting, an attempt's entries are kept here instead of being produced: the first ones,
    as many as `close` says, go into the batch's own transaction (folded), so a short invocation costs
    one transaction instead of two; they count as written when the gate opens. The others (all of
    them after `close(0)`: the batch could not take them) are produced by `open`, in order, before
    anything later.
    """

    def __init__(self, attempts: int) -> None:
        self.failed = False
        self._opened = asyncio.Event()
        self._lock = threading.Lock()
        self._collecting = True
        self._folded = 0  # how many of the collected entries the batch writes
        self._collected: list[tuple[LogRecord, asyncio.Future[Any]]] = []
        self._attempts = attempts
        self._blocked: set[str] = set()
        self._all_blocked = threading.Event()

    # ---- event loop ---------------------------------------------------------------------------------
    def offer(self, record: LogRecord, *, blocking: bool) -> asyncio.Future[Any] | None:
        """Keep `record` for the batch; its delivery future (resolved when the gate opens), or None when
        no longer collecting (then wait for the gate and produce). `blocking`: the attempt waits for it."""
        with self._lock:
            if not self._collecting:
                return None
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._collected.append((record, future))
        if blocking and record.invocation_id is not None:
            self.blocked(record.invocation_id)
        return future

    def blocked(self, invocation_id: str) -> None:
        """The attempt can go no further before the commit (it waits for an ack, or it ended)."""
        with self._lock:
            self._blocked.add(invocation_id)
            if len(self._blocked) >= self._attempts:
                self._all_blocked.set()

    def open(self, produce: Callable[[LogRecord], asyncio.Future[Any]]) -> None:
        """The batch committed: folded entries are written; unfolded ones are produced now, in order."""
        with self._lock:
            self._collecting = False  # a batch that did not fold (or collect) keeps nothing after this
        for n, (record, future) in enumerate(self._collected):
            if n < self._folded:
                if not future.done():
                    future.set_result(None)
            else:
                _chain(produce(record), future)
        self._collected = []
        self._opened.set()

    def fail(self) -> None:
        with self._lock:
            self._collecting = False
        self.failed = True
        for _, future in self._collected:
            future.cancel()
        self._collected = []

    async def wait(self) -> None:
        """Return once open; a failed gate's attempts are stopped (cancelled) while they wait here."""
        await self._opened.wait()

    # ---- partition thread ---------------------------------------------------------------------------
    def snapshot(self, window_s: float) -> list[LogRecord]:
        """Wait up to `window_s` until every attempt is blocked; the entries collected so far (it goes on)."""
        if window_s > 0:
            self._all_blocked.wait(window_s)
        with self._lock:
            return [record for record, _ in self._collected]

    def close(self, folded: int) -> None:
        """Stop collecting: the batch writes the first `folded` collected entries, `open` produces the rest."""
        with self._lock:
            self._collecting = False
            self._folded = folded

    def add(self, attempts: int) -> None:
        """More attempts joined (started by a re-run of the batch): wait for them too."""
        with self._lock:
            self._attempts += attempts
            if len(self._blocked) < self._attempts:
                self._all_blocked.clear()


def _chain(source: asyncio.Future[Any], target: asyncio.Future[Any]) -> None:
    def done(f: asyncio.Future[Any]) -> None:
        if target.done():
            return
        if f.cancelled():
            target.cancel()
        elif f.exception() is not None:
            target.set_exception(f.exception())  # type: ignore[arg-type]
        else:
            target.set_result(f.result())

    source.add_done_callback(done)


@dataclass(frozen=True, slots=True)
class GatedInvoke:
    """Start `action` now; its log writes wait for `gate`."""

    action: Invoke
    gate: Gate


@dataclass(frozen=True, slots=True)
class OpenGate:
    gate: Gate


@dataclass(frozen=True, slots=True)
class FailGate:
    """Stop the attempts of `gate`: their batch did not commit."""

    gate: Gate


GateAction = GatedInvoke | OpenGate | FailGate


def split_early(effects: list[Effect]) -> tuple[list[tuple[int, Invoke]], list[Effect]]:
    """(attempts that may start before the commit, the effects that wait for it), each in order.

    Only an Invoke whose invocation no other effect of the batch concerns starts early: a stop or a
    completion for the same invocation must keep its place after it.
    """
    concerned = Counter(
        a.invocation_id for _, a in effects if isinstance(a, (Invoke, NotifyCompletion, StopInvocation))
    )
    early: list[tuple[int, Invoke]] = []
    rest: list[Effect] = []
    for effect in effects:
        partition, action = effect
        if isinstance(action, Invoke) and concerned[action.invocation_id] == 1:
            early.append((partition, action))
        else:
            rest.append(effect)
    return early, rest


class EarlyRun:
    """One run of a batch whose new attempts started before its transaction (the session's `early` hook).

    `window_s`: how long the partition thread waits, before the transaction, for those attempts to
    journal what they can (until each waits for an ack or ended); 0 only starts them early. Entries
    folded into the batch may let more attempts start (the next invocation in an object's inbox once
    the one before it ended): `more` starts those under the same gate and waits for them, one window
    at most each time and CHAIN_WINDOWS in all, so a queue of short calls on one key shares a
    transaction instead of paying one each.
    """

    def __init__(self, early: list[tuple[int, Invoke]], submit: Callable[[list[Effect]], None], window_s: float) -> None:
        self._submit = submit
        self._window_s = window_s
        self._deadline = 0.0
        self._started = {(action.invocation_id, action.attempt) for _, action in early}
        self._chained: set[tuple[InvocationIdStr, int]] = set()  # started by `more`
        self.gate = Gate(len(early))
        submit([(p, GatedInvoke(action, self.gate)) for p, action in early])

    def collect(self) -> list[LogRecord]:
        self._deadline = time.monotonic() + CHAIN_WINDOWS * self._window_s
        return self.gate.snapshot(self._window_s)

    def more(self, result: StepResult) -> list[LogRecord] | None:
        if self._window_s <= 0 or len(self._chained) >= MAX_CHAINED:
            return None
        fresh = [(p, a) for p, a in result.effects if not (isinstance(a, Invoke) and (a.invocation_id, a.attempt) in self._started)]
        early, _ = split_early(fresh)
        early = early[: MAX_CHAINED - len(self._chained)]
        left = self._deadline - time.monotonic()
        if not early or left <= 0:
            return None
        chained = {(action.invocation_id, action.attempt) for _, action in early}
        self._chained |= chained
        self._started |= chained
        self.gate.add(len(early))
        self._submit([(p, GatedInvoke(action, self.gate)) for p, action in early])
        return self.gate.snapshot(min(left, self._window_s))

    def close(self, folded: int) -> None:
        self.gate.close(folded)

    def trim(self, result: StepResult) -> None:
        present = {(a.invocation_id, a.attempt) for _, a in result.effects if isinstance(a, Invoke)}
        result.effects = [
            (p, a) for p, a in result.effects if not (isinstance(a, Invoke) and (a.invocation_id, a.attempt) in self._started)
        ]
        # An attempt started for a re-run the batch did not keep must not outlive it: its invocation was
        # not started by what commits, and would start again with the same attempt number. (The batch's
        # first attempts are in every run: `result` is either a re-run or the first run, already split.)
        orphans = sorted(iid for iid, _ in self._chained - present)
        if orphans:
            log.warning("stopping %d attempts started for a run of the batch that was not kept: %s", len(orphans), orphans)
            self._submit([(NO_PARTITION, StopInvocation(iid)) for iid in orphans])

    def settle(self, committed: bool) -> None:
        self._submit([(NO_PARTITION, OpenGate(self.gate) if committed else FailGate(self.gate))])
