"""Cancel (cooperative: a 409 at the handler's next wait) and kill (at once), down the call tree."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from keystate.schemas.enums import CompletionStatus, InvocationState
from keystate.schemas.ids import InvocationId, InvocationIdStr
from keystate.schemas.records import InvocationStatus, JournalRecord, Result

from . import inbox, timers
from .actions import Action, SendToPartition
from .completion import do_complete_entry
from .lifecycle import do_complete, do_start_attempt, live_status
from .model import Config, failure, is_completed
from .rows import put_status
from .tables import Tables

__all__ = ["CANCELLED", "KILLED", "WAITING", "on_cancel", "on_kill", "pending_entries"]

CANCELLED = failure(409, "cancelled")
KILLED = failure(409, "killed")

WAITING = {
    "keystate.CallEntry",
    "keystate.SleepEntry",
    "keystate.AwakeableEntry",
    "keystate.GetPromiseEntry",
}


def pending_entries(tables: Tables, iid: InvocationIdStr) -> list[tuple[int, str, dict[str, Any]]]:
    """(index, entry name, entry) of every entry still waiting for its completion."""
    pending = []
    for key, record in tables.journal.scan((iid,)):
        name, entry = JournalRecord.from_avro(record).entry
        if name not in WAITING:
            continue
        if not is_completed(name, entry):
            pending.append((key[1], name, entry))
    return sorted(pending, key=lambda p: p[0])


def _to_children(tables: Tables, iid: InvocationIdStr, command: str, reason: str, out: list[Action]) -> None:
    for _, name, entry in pending_entries(tables, iid):
        if name == "keystate.CallEntry":
            child = entry["invocation_id"]
            out.append(
                SendToPartition(
                    InvocationId.parse(child).partition_key,
                    child.encode(),
                    command,
                    {"invocation_id": child, "reason": reason},
                    child,
                )
            )


def _end_waiting(
    tables: Tables,
    status: InvocationStatus,
    result: Result,
    now: int,
    cfg: Config,
    out: list[Action],
    completion: CompletionStatus,
) -> bool:
    """End an invocation that never started (scheduled or in an inbox); True if it was one."""
    iid = status.invocation_id
    if status.status is InvocationState.SCHEDULED:
        timers.do_delete_all(tables, iid)
    elif status.status is InvocationState.INBOXED:
        inbox.do_remove(tables, *status.target.object_key(), iid)
    else:
        return False
    do_complete(tables, status, result, now, cfg, out, completion)
    return True


def on_cancel(tables: Tables, cmd: dict[str, Any], now: int, cfg: Config, out: list[Action]) -> None:
    iid = cmd["invocation_id"]
    status = live_status(tables, iid)
    if status is None:
        return
    if _end_waiting(tables, status, CANCELLED, now, cfg, out, CompletionStatus.CANCELLED):
        return
    if status.cancel_requested:
        return  # delivered once; a repeat must not cancel the compensation
    _to_children(tables, iid, "keystate.CancelCommand", cmd["reason"], out)
    pending = pending_entries(tables, iid)
    status = replace(status, cancel_requested=True, cancel_pending=not pending, modified_at_ms=now)
    put_status(tables, status)
    for index, _, _ in pending:
        do_complete_entry(tables, iid, index, CANCELLED, now, cfg, out)
    if status.status is InvocationState.PAUSED:
        # Let the handler run its compensation: it meets the 409 at its next wait.
        do_start_attempt(tables, status, now, cfg, out)


def on_kill(tables: Tables, cmd: dict[str, Any], now: int, cfg: Config, out: list[Action]) -> None:
    iid = cmd["invocation_id"]
    status = live_status(tables, iid)
    if status is None:
        return
    if _end_waiting(tables, status, KILLED, now, cfg, out, CompletionStatus.KILLED):
        return
    _to_children(tables, iid, "keystate.KillCommand", cmd["reason"], out)
    do_complete(tables, status, KILLED, now, cfg, out, CompletionStatus.KILLED)
