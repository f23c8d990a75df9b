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
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from .state_machine import Invoke, NotifyCompletion, StopInvocation

if TYPE_CHECKING:
    from .step import Effect

__all__ = ["NO_PARTITION", "FailGate", "Gate", "GateAction", "GatedInvoke", "OpenGate", "split_early"]

NO_PARTITION = -1
"""The partition of the effects that open or fail a gate: no partition's drop filters them out."""


@dataclass(eq=False)
class Gate:
    """Opens when the transaction of the batch that started its attempts committed; used on the event loop."""

    _opened: asyncio.Event = field(default_factory=asyncio.Event)
    failed: bool = False

    def open(self) -> None:
        self._opened.set()

    def fail(self) -> None:
        self.failed = True

    async def wait(self) -> None:
        """Return once open; a failed gate's attempts are stopped (cancelled) while they wait here."""
        await self._opened.wait()


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
