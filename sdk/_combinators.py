"""Combinators over durable futures: gather, select, as_completed, wait_completed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from ._context import DurableFuture, InvocationCore

__all__ = ["as_completed", "gather", "select", "wait_completed"]


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
    completed = [f for f in futures if f.is_completed()]
    pending = [f for f in futures if not f.is_completed()]
    return completed, pending


async def as_completed(*futures: DurableFuture[Any]) -> AsyncIterator[DurableFuture[Any]]:
    """Yields the futures as they complete (await each one for its value)."""
    remaining = list(futures)
    while remaining:
        completed, remaining = await wait_completed(*remaining)
        for f in completed:
            yield f


async def gather(*futures: DurableFuture[Any]) -> list[DurableFuture[Any]]:
    """Until every future is completed; returns the futures (await each one for its value)."""
    async for _ in as_completed(*futures):
        pass
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
