"""Journal entries from the invoker, and completions of entries that wait for something."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from keystate.schemas.enums import HandlerKind, InvocationState, ServiceType, TimerKind
from keystate.schemas.ids import InvalidIdError, InvocationId, InvocationIdStr, ServiceId
from keystate.schemas.records import CallerRef, InvocationStatus, StateValue, Target

from . import promises, timers
from .cancellation import CANCELLED, WAITING
from .completion import do_complete_entry
from .actions import Action, SendToPartition
from .lifecycle import do_complete, do_start_attempt, journal_retention, live_status
from .model import Config, failure
from .rows import put_journal, put_status
from .tables import Tables

__all__ = ["on_completion", "on_journal_append"]

_PROMISE_ENTRIES = {"keystate.GetPromiseEntry", "keystate.PeekPromiseEntry", "keystate.CompletePromiseEntry"}
_STATE_WRITES = {"keystate.SetStateEntry", "keystate.ClearStateEntry", "keystate.ClearAllStateEntry"}


def on_journal_append(tables: Tables, cmd: dict[str, Any], now: int, cfg: Config, out: list[Action]) -> None:
    iid: InvocationIdStr = cmd["invocation_id"]
    status = live_status(tables, iid, cmd["attempt"])
    if status is None or status.status is not InvocationState.INVOKED:
        return  # a fenced attempt, or an invocation that has ended
    index = cmd["entry_index"]
    length = status.journal_length
    if index < length:
        return  # redelivered
    if index > length:
        # Entries of this attempt went missing: the journal cannot continue from here.
        do_start_attempt(tables, status, now, cfg, out)
        return
    name, entry = cmd["entry"]["entry"]
    if name in _STATE_WRITES and not _may_write_state(status.target):
        do_complete(tables, status, failure(500, f"{status.target.handler} may not write state"), now, cfg, out)
        return
    status = replace(status, journal_length=length + 1, retry_count=0, modified_at_ms=now)
    put_status(tables, status)
    if name == "keystate.OutputEntry":
        if journal_retention(cfg, status) > 0:
            put_journal(tables, iid, index, (name, entry))  # kept for inspection with the rest of the journal
        do_complete(tables, status, entry["result"], now, cfg, out)
        return
    put_journal(tables, iid, index, (name, entry))
    if status.cancel_pending and name in WAITING:
        # The cancel reaches the handler here, once; what it does afterwards (compensation) runs.
        put_status(tables, replace(status, cancel_pending=False))
        do_complete_entry(tables, iid, index, CANCELLED, now, cfg, out)
        return
    _apply_entry(tables, status, index, name, entry, now, cfg, out)


def _may_write_state(target: Target) -> bool:
    return target.keyed and target.handler_kind in (HandlerKind.EXCLUSIVE, HandlerKind.WORKFLOW)


def _apply_entry(
    tables: Tables,
    status: InvocationStatus,
    index: int,
    name: str,
    entry: dict[str, Any],
    now: int,
    cfg: Config,
    out: list[Action],
) -> None:
    iid = status.invocation_id
    target = status.target
    if name == "keystate.SetStateEntry":
        tables.state.put((*target.object_key(), entry["key"]), StateValue(value=entry["value"]).to_avro())
    elif name == "keystate.ClearStateEntry":
        tables.state.delete((*target.object_key(), entry["key"]))
    elif name == "keystate.ClearAllStateEntry":
        for key, _ in list(tables.state.scan(target.object_key())):
            tables.state.delete(key)
    elif name in ("keystate.CallEntry", "keystate.SendEntry"):
        _call_or_send(tables, status, index, name, entry, now, cfg, out)
    elif name == "keystate.SleepEntry":
        if not entry["fired"]:
            timers.do_register(tables, iid, TimerKind.SLEEP, index, None, entry["wake_up_at_ms"], out)
    elif name in _PROMISE_ENTRIES:
        if target.service_type is not ServiceType.WORKFLOW:
            do_complete_entry(tables, iid, index, failure(400, "promises exist only in workflows"), now, cfg, out)
        else:
            promises.on_promise_entry(tables, status, index, name, entry, now, cfg, out)
    elif name == "keystate.CompleteAwakeableEntry":
        promises.send_awakeable_completion(entry, out)
    elif name == "keystate.CancelInvocationEntry":
        try:
            callee = InvocationId.parse(entry["invocation_id"])
        except InvalidIdError:
            return  # nothing to cancel
        out.append(
            SendToPartition(
                callee.partition_key,
                entry["invocation_id"].encode(),
                "keystate.CancelCommand",
                {"invocation_id": entry["invocation_id"], "reason": f"cancelled by {iid}"},
                entry["invocation_id"],
            )
        )


def _call_or_send(
    tables: Tables,
    status: InvocationStatus,
    index: int,
    name: str,
    entry: dict[str, Any],
    now: int,
    cfg: Config,
    out: list[Action],
) -> None:
    iid = status.invocation_id
    target = cfg.resolve_target(entry["target"])
    if isinstance(target, str):
        verb = "call" if name == "keystate.CallEntry" else "send"
        message = f"cannot {verb} {entry['target']['service']}/{entry['target']['handler']}: {target}"
        if name == "keystate.CallEntry":
            do_complete_entry(tables, iid, index, failure(404, message), now, cfg, out)
        else:
            # A send has no result to carry the failure: the sender fails, or the mistake goes unseen.
            do_complete(tables, status, failure(404, message), now, cfg, out)
        return
    if not _routes_to_target(entry):
        # A keyed callee must land on its key's partition, or one-writer-per-key breaks.
        message = (
            f"protocol violation: callee id {entry['invocation_id']} does not route to "
            f"{entry['target']['service']}/{entry['target']['key']}"
        )
        do_complete(tables, status, failure(500, message), now, cfg, out)
    elif name == "keystate.CallEntry":
        caller = CallerRef(invocation_id=iid, entry_index=index).to_avro()
        out.append(_invoke_command(entry, target, iid, now, caller=caller))
    else:
        out.append(_invoke_command(entry, target, iid, now, caller=None, execute_at=entry.get("invoke_at_ms")))


def _routes_to_target(entry: dict[str, Any]) -> bool:
    target = entry["target"]
    try:
        callee = InvocationId.parse(entry["invocation_id"])
    except InvalidIdError:
        return False
    if target.get("key") is None:
        return True
    return callee.partition_key == ServiceId(target["service"], target["key"]).partition_key


def _invoke_command(
    entry: dict[str, Any],
    target: dict[str, Any],
    caller_id: InvocationIdStr,
    now: int,
    *,
    caller: dict[str, Any] | None,
    execute_at: int | None = None,
) -> SendToPartition:
    """The InvokeCommand of a call or send, for `target` as registered (the journal keeps the caller's guess)."""
    callee = entry["invocation_id"]
    key = f"{target['service']}/{target['key']}" if target.get("key") is not None else callee
    record = {
        "invocation_id": callee,
        "target": target,
        "argument": entry["argument"],
        "headers": entry["headers"],
        "idempotency_key": entry.get("idempotency_key"),
        "caller": caller,
        "reply_topic": None,
        "execute_at_ms": execute_at,
        "created_at_ms": now,
        "source": caller_id,
    }
    return SendToPartition(
        InvocationId.parse(callee).partition_key, key.encode(), "keystate.InvokeCommand", record, callee
    )


def on_completion(tables: Tables, cmd: dict[str, Any], now: int, cfg: Config, out: list[Action]) -> None:
    do_complete_entry(tables, cmd["invocation_id"], cmd["entry_index"], cmd["result"], now, cfg, out)
