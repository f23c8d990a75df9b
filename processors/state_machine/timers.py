"""Durable timers: rows in the timers table, fired by a TimerFiredCommand on the log."""

from __future__ import annotations

from typing import Any

from .actions import Action, RegisterTimer
from .tables import Key, Tables

__all__ = ["do_delete_all", "do_register", "take"]


def _key(iid: str, kind: str, index: int | None, attempt: int | None) -> Key:
    return (iid, kind, index if index is not None else (attempt if attempt is not None else -1))


def do_register(
    tables: Tables, iid: str, kind: str, index: int | None, attempt: int | None, fire_at_ms: int, out: list[Action]
) -> None:
    record = {"invocation_id": iid, "timer_kind": kind, "entry_index": index, "attempt": attempt, "fire_at_ms": fire_at_ms}
    key = _key(iid, kind, index, attempt)
    tables.timers.put(key, record)
    out.append(RegisterTimer(key, fire_at_ms, record))


def take(tables: Tables, cmd: dict[str, Any]) -> dict[str, Any] | None:
    """Delete the fired timer's row; None when it was already fired or deleted (a duplicate)."""
    key = _key(cmd["invocation_id"], cmd["timer_kind"], cmd.get("entry_index"), cmd.get("attempt"))
    row = tables.timers.get(key)
    if row is not None:
        tables.timers.delete(key)
    return row


def do_delete_all(tables: Tables, iid: str) -> None:
    for key, _ in list(tables.timers.scan((iid,))):
        tables.timers.delete(key)
