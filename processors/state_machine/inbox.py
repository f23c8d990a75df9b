"""Virtual-object inbox: one exclusive invocation per key runs; the others wait in arrival order."""

from __future__ import annotations

from typing import Any

from .tables import Tables

__all__ = ["do_enqueue", "do_release", "try_lock"]


def _object(tables: Tables, service: str, key: str) -> dict[str, Any]:
    return tables.objects.get((service, key)) or {"locked_by": None, "next_seq": 0, "head_seq": 0}


def try_lock(tables: Tables, service: str, key: str, invocation_id: str) -> bool:
    """Take the key's lock if it is free and nobody waits before us."""
    obj = _object(tables, service, key)
    if obj["locked_by"] is not None or obj["head_seq"] != obj["next_seq"]:
        return False
    tables.objects.put((service, key), {**obj, "locked_by": invocation_id})
    return True


def do_enqueue(tables: Tables, service: str, key: str, invocation_id: str) -> None:
    obj = _object(tables, service, key)
    seq = obj["next_seq"]
    tables.inbox.put((service, key, seq), {"invocation_id": invocation_id, "seq": seq})
    tables.objects.put((service, key), {**obj, "next_seq": seq + 1})


def do_release(tables: Tables, service: str, key: str, invocation_id: str) -> str | None:
    """Release the lock held by `invocation_id`; returns the next inboxed invocation, now locked."""
    obj = tables.objects.get((service, key))
    if obj is None or obj["locked_by"] != invocation_id:
        return None
    head, nxt = obj["head_seq"], obj["next_seq"]
    if head == nxt:
        tables.objects.delete((service, key))
        return None
    item = tables.inbox.get((service, key, head))
    tables.inbox.delete((service, key, head))
    next_id = None if item is None else item["invocation_id"]
    tables.objects.put((service, key), {"locked_by": next_id, "next_seq": nxt, "head_seq": head + 1})
    if next_id is None:  # a hole in the inbox cannot happen; skip it rather than wedge the key
        return do_release(tables, service, key, invocation_id=None)  # type: ignore[arg-type]
    return next_id
