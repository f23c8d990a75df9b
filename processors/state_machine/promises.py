"""Durable promises of workflows and awakeables: completions that come from other handlers."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from keystate.schemas.ids import InvalidIdError, InvocationId, InvocationIdStr
from keystate.schemas.records import CallerRef, InvocationStatus, PromiseValue

from .actions import Action, SendToPartition
from .completion import do_complete_entry
from .model import Config, failure, value
from .rows import get_journal, get_promise, put_promise
from .tables import Tables

__all__ = ["on_complete_awakeable", "on_promise_entry", "parse_awakeable_id", "send_awakeable_completion"]

_PENDING = PromiseValue(result=None, waiters=())


def parse_awakeable_id(awakeable_id: str) -> tuple[InvocationIdStr, int] | None:
    """(invocation id, entry index) of `awk_<invocation id>_<index>`, or None if malformed."""
    if not awakeable_id.startswith("awk_"):
        return None
    iid, _, index = awakeable_id[4:].rpartition("_")
    try:
        InvocationId.parse(iid)
        return InvocationIdStr(iid), int(index)
    except (InvalidIdError, ValueError):
        return None


def send_awakeable_completion(entry: dict[str, Any], out: list[Action]) -> None:
    """A CompleteAwakeableEntry: route the completion to the awakeable's owner."""
    owner = parse_awakeable_id(entry["awakeable_id"])
    if owner is None:
        return  # the SDK validates ids; a malformed one completes nothing
    iid, _ = owner
    out.append(
        SendToPartition(
            InvocationId.parse(iid).partition_key,
            iid.encode(),
            "keystate.CompleteAwakeableCommand",
            {"awakeable_id": entry["awakeable_id"], "result": entry["result"]},
            iid,
        )
    )


def on_complete_awakeable(tables: Tables, cmd: dict[str, Any], now: int, cfg: Config, out: list[Action]) -> None:
    owner = parse_awakeable_id(cmd["awakeable_id"])
    if owner is None:
        return
    iid, index = owner
    record = get_journal(tables, iid, index)
    if record is None or record.name != "keystate.AwakeableEntry":
        return
    do_complete_entry(tables, iid, index, cmd["result"], now, cfg, out)


def on_promise_entry(
    tables: Tables,
    status: InvocationStatus,
    index: int,
    name: str,
    entry: dict[str, Any],
    now: int,
    cfg: Config,
    out: list[Action],
) -> None:
    """Get, peek and complete a promise of the workflow this invocation belongs to."""
    iid = status.invocation_id
    key = (*status.target.object_key(), entry["name"])
    promise = get_promise(tables, key) or _PENDING
    if name == "keystate.GetPromiseEntry":
        if promise.result is not None:
            do_complete_entry(tables, iid, index, promise.result, now, cfg, out)
        else:
            waiter = CallerRef(invocation_id=iid, entry_index=index)
            put_promise(tables, key, replace(promise, waiters=(*promise.waiters, waiter)))
    elif name == "keystate.PeekPromiseEntry":
        # An empty value means "not resolved yet".
        do_complete_entry(tables, iid, index, promise.result or value(b""), now, cfg, out)
    elif name == "keystate.CompletePromiseEntry":
        if promise.result is not None:
            do_complete_entry(tables, iid, index, failure(409, f"promise {entry['name']!r} was already completed"), now, cfg, out)
            return
        put_promise(tables, key, PromiseValue(result=entry["completion"], waiters=()))
        do_complete_entry(tables, iid, index, value(b""), now, cfg, out)
        for waiter in promise.waiters:
            do_complete_entry(tables, waiter.invocation_id, waiter.entry_index, entry["completion"], now, cfg, out)
