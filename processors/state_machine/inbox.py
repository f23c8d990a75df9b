"""Virtual-object inbox: one exclusive invocation per key runs; the others wait in arrival order."""

from __future__ import annotations

from typing import Any

from .tables import Tables

__all__ = ["do_enqueue", "do_release", "do_remove", "try_lock"]


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
    while head < nxt:
        item = tables.inbox.get((service, key, head))
        head += 1
        if item is None:
            continue  # cancelled or killed while it waited
        tables.inbox.delete((service, key, head - 1))
        tables.objects.put((service, key), {"locked_by": item["invocation_id"], "next_seq": nxt, "head_seq": head})
        return str(item["invocation_id"])
    tables.objects.delete((service, key))
    return None


def do_remove(tables: Tables, service: str, key: str, invocation_id: str) -> None:
    """Take a waiting invocation out of the key's inbox (cancelled or killed before it ran)."""
    for row_key, item in list(tables.inbox.scan((service, key))):
        if item["invocation_id"] == invocation_id:
            tables.inbox.delete(row_key)
