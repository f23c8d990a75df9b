"""Completions of entries that wait for something: a call's result, a timer, an awakeable, a promise."""

from __future__ import annotations

from typing import Any

from keystate.schemas.enums import InvocationState
from keystate.schemas.ids import InvocationIdStr

from .actions import Action, NotifyCompletion
from .lifecycle import do_start_attempt, live_status
from .model import Config, Result, is_completed
from .rows import get_journal, put_journal
from .tables import Tables

__all__ = ["COMPLETABLE", "do_complete_entry"]

COMPLETABLE = {
    "keystate.CallEntry",
    "keystate.SleepEntry",
    "keystate.AwakeableEntry",
    "keystate.GetPromiseEntry",
    "keystate.PeekPromiseEntry",
    "keystate.CompletePromiseEntry",
}


def do_complete_entry(
    tables: Tables, iid: InvocationIdStr, index: int, result: Result | None, now: int, cfg: Config, out: list[Action]
) -> None:
    """Record the result of a waiting entry and wake whoever waits for it; duplicates change nothing."""
    status = live_status(tables, iid)
    if status is None:
        return
    record = get_journal(tables, iid, index)
    if record is None:
        return
    name, entry = record.entry
    if name not in COMPLETABLE or is_completed(name, entry):
        return
    put_journal(tables, iid, index, (name, _completed(name, entry, result)))
    if status.status is InvocationState.INVOKED:
        out.append(NotifyCompletion(iid, status.attempt, index, result))
    elif status.status is InvocationState.SUSPENDED and index in status.waiting_on:
        do_start_attempt(tables, status, now, cfg, out)


def _completed(name: str, entry: dict[str, Any], result: Result | None) -> dict[str, Any]:
    """The entry with its result; a call's row drops its argument and headers for the result.

    A journal row holds at most one payload (see keystate.schemas.limits): argument and result side
    by side could add up past the record limit. Nothing reads a completed call's argument: the SDK
    matches a replayed call by its target, and the callee got its argument with its own InvokeCommand.
    """
    if name == "keystate.SleepEntry":
        return {**entry, "fired": True, "result": result}
    if name == "keystate.CallEntry":
        return {**entry, "argument": b"", "headers": {}, "result": result}
    return {**entry, "result": result}
