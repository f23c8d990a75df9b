"""Durable timers: rows in the timers table, fired by a TimerFiredCommand on the log."""

from __future__ import annotations

from typing import Any

from keystate.schemas.enums import TimerKind
from keystate.schemas.ids import InvocationIdStr
from keystate.schemas.records import TimerValue

from .actions import Action, RegisterTimer
from .tables import Key, Tables

__all__ = ["do_delete_all", "do_register", "take"]


def _key(iid: str, kind: str, index: int | None, attempt: int | None) -> Key:
    # str(): keys hold the plain symbol, as a decoded command gives it.
    return (iid, str(kind), index if index is not None else (attempt if attempt is not None else -1))


def do_register(
    tables: Tables,
    iid: InvocationIdStr,
    kind: TimerKind,
    index: int | None,
    attempt: int | None,
    fire_at_ms: int,
    out: list[Action],
) -> None:
    timer = TimerValue(invocation_id=iid, timer_kind=kind, entry_index=index, attempt=attempt, fire_at_ms=fire_at_ms)
    record = timer.to_avro()
    key = _key(iid, kind, index, attempt)
    tables.timers.put(key, record)
    out.append(RegisterTimer(key, fire_at_ms, record))


def take(tables: Tables, cmd: dict[str, Any]) -> TimerValue | None:
    """Delete the fired timer's row; None when it was already fired or deleted (a duplicate)."""
    key = _key(cmd["invocation_id"], cmd["timer_kind"], cmd.get("entry_index"), cmd.get("attempt"))
    row = tables.timers.get(key)
    if row is None:
        return None
    tables.timers.delete(key)
    return TimerValue.from_avro(row)


def do_delete_all(tables: Tables, iid: InvocationIdStr) -> None:
    for key, _ in list(tables.timers.scan((iid,))):
        tables.timers.delete(key)
