"""The executor of effects: after a commit, hands the batch's actions to the invoker and the timers.

New attempts may come before their commit, gated on it (keystate.processors.early).

Runs on the event loop. Effects queue in order and run in chunks of `chunk` per loop callback, so
taking over a partition with thousands of timers never stalls the loop in one callback.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from keystate.schemas.ids import InvocationId

from .early import FailGate, Gate, GatedInvoke, OpenGate
from .state_machine import Invoke, NotifyCompletion, RegisterTimer, StopInvocation
from .step import Effect

__all__ = ["EffectExecutor", "InvokerPort", "TimersPort"]


class InvokerPort(Protocol):
    def invoke(self, action: Invoke, gate: Gate | None = None) -> None: ...

    def abandon(self, gate: Gate) -> None: ...

    def open_gate(self, gate: Gate) -> None: ...

    def notify(self, invocation_id: str, attempt_no: int, index: int, result: Any) -> None: ...

    def stop(self, invocation_id: str) -> None: ...

    def stop_where(self, predicate: Callable[[str], bool]) -> list[asyncio.Task[None]]: ...

    async def flush(self, timeout_s: float) -> int: ...


class TimersPort(Protocol):
    def schedule(self, partition: int, key: tuple[Any, ...], record: dict[str, Any]) -> None: ...

    def cancel_partition(self, partition: int) -> None: ...


class EffectExecutor:
    """Runs effects on the event loop, in order, `chunk` at a time."""

    def __init__(self, invoker: InvokerPort, timers: TimersPort, log_partitions: int, chunk: int = 200) -> None:
        self._invoker = invoker
        self._timers = timers
        self._partitions = log_partitions
        self._chunk = chunk
        self._queue: deque[Effect] = deque()
        self._scheduled = False

    def submit(self, effects: list[Effect]) -> None:
        """Queue effects (on the loop); they run in later loop iterations, in order."""
        self._queue.extend(effects)
        if not self._scheduled and self._queue:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)

    def backlog(self) -> int:
        return len(self._queue)

    def drop_partitions(self, partitions: list[int]) -> list[asyncio.Task[None]]:
        """The partitions are no longer ours: stop their attempts, timers and queued effects; the attempts' tasks."""
        wanted = set(partitions)
        self._queue = deque(e for e in self._queue if e[0] not in wanted)
        tasks = self._invoker.stop_where(lambda iid: InvocationId.parse(iid).partition(self._partitions) in wanted)
        for p in partitions:
            self._timers.cancel_partition(p)
        return tasks

    async def hand_over(self, partitions: list[int], timeout_s: float) -> tuple[int, int]:
        """Drop the partitions, wait until their attempts ended and their commands are on the log.

        Then a new owner's restart of an invocation lands on the log after everything the stopped
        attempt appended, so no step it journaled runs twice. Returns (attempts still running,
        commands not flushed) when `timeout_s` ran out first.
        """
        tasks = self.drop_partitions(partitions)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        if tasks:
            await asyncio.wait(tasks, timeout=timeout_s)
        unflushed = await self._invoker.flush(max(0.1, deadline - loop.time()))
        return sum(not t.done() for t in tasks), unflushed

    def _drain(self) -> None:
        self._scheduled = False
        for _ in range(min(self._chunk, len(self._queue))):
            partition, action = self._queue.popleft()
            self._run(partition, action)
        if self._queue:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._drain)

    def _run(self, partition: int, action: object) -> None:
        if isinstance(action, Invoke):
            self._invoker.invoke(action)
        elif isinstance(action, GatedInvoke):
            self._invoker.invoke(action.action, action.gate)
        elif isinstance(action, OpenGate):
            self._invoker.open_gate(action.gate)
        elif isinstance(action, FailGate):
            action.gate.fail()
            self._invoker.abandon(action.gate)
        elif isinstance(action, NotifyCompletion):
            self._invoker.notify(action.invocation_id, action.attempt, action.index, action.result)
        elif isinstance(action, StopInvocation):
            self._invoker.stop(action.invocation_id)
        elif isinstance(action, RegisterTimer):
            self._timers.schedule(partition, action.key, action.record)
