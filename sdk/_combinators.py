"""Combinators over durable futures: gather, select, as_completed, wait_completed.

Which futures completed first is a fact of one attempt: a replay may find more of them
completed. So `wait_completed` (and `as_completed` and `select` on top of it) journals the
order it saw as a step named `keystate:combinator`, and a replay follows the journal. `gather`
waits for all of them, which has one outcome whatever the order: it journals nothing.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

from ._context import DurableFuture, InvocationCore

__all__ = ["COMBINATOR_STEP", "as_completed", "gather", "select", "wait_completed"]

COMBINATOR_STEP = "keystate:combinator"


def _core_of(futures: tuple[DurableFuture[Any], ...]) -> InvocationCore:
    core: InvocationCore | None = None
    for f in futures:
        if not isinstance(f, DurableFuture):
            raise TypeError(f"combinators take durable futures from ctx, got {type(f).__name__}")
        if core is None:
            core = f._core
        elif f._core is not core:
            raise ValueError("all futures must come from the same invocation's context")
    assert core is not None
    return core


def _decode_order(data: bytes) -> list[int]:
    order = json.loads(data)
    if not isinstance(order, list) or not all(isinstance(i, int) for i in order):
        raise ValueError(f"a {COMBINATOR_STEP} step holds a list of entry indexes, got {order!r}")
    return order


async def wait_completed(
    *futures: DurableFuture[Any],
) -> tuple[list[DurableFuture[Any]], list[DurableFuture[Any]]]:
    """Until at least one future is completed; returns (completed, pending), each in argument order."""
    if not futures:
        return [], []
    core = _core_of(futures)
    if not any(f.is_completed() for f in futures):
        # Waiting on several entries suspends on all of them: any completion resumes the handler.
        await core.wait_any(list(futures))
    seen = [f.index for f in futures if f.is_completed()]
    order = await core.record(COMBINATOR_STEP, json.dumps(seen, separators=(",", ":")).encode(), _decode_order)
    by_index = {f.index: f for f in futures}
    unknown = [i for i in order if i not in by_index]
    if unknown or not order:
        raise ValueError(
            f"the journaled {COMBINATOR_STEP} step names entries {order}, but the handler waits on "
            f"{sorted(by_index)}: the handler code changed since this invocation started"
        )
    done = set(order)
    return [f for f in futures if f.index in done], [f for f in futures if f.index not in done]


async def as_completed(*futures: DurableFuture[Any]) -> AsyncIterator[DurableFuture[Any]]:
    """Yields the futures as they complete (await each one for its value)."""
    remaining = list(futures)
    while remaining:
        completed, remaining = await wait_completed(*remaining)
        for f in completed:
            yield f


async def gather(*futures: DurableFuture[Any]) -> list[DurableFuture[Any]]:
    """Until every future is completed; returns the futures (await each one for its value)."""
    if not futures:
        return []
    core = _core_of(futures)
    pending = [f for f in futures if not f.is_completed()]
    while pending:
        await core.wait_any(pending)  # suspends on every pending one
        pending = [f for f in pending if not f.is_completed()]
    return list(futures)


async def select(**futures: DurableFuture[Any]) -> list[Any]:
    """Until the first future completes: `[name, result]`, e.g. `case ["timeout", _]:`.

    A future completed with a failure raises its TerminalError here.
    """
    if not futures:
        raise ValueError("select needs at least one future")
    names = {id(f): name for name, f in futures.items()}
    async for f in as_completed(*futures.values()):
        return [names[id(f)], await f]
    raise AssertionError("unreachable: as_completed yields at least one future")
