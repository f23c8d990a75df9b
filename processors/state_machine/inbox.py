"""Virtual-object inbox: one exclusive invocation per key runs; the others (and state edits) wait in arrival order."""

from __future__ import annotations

from dataclasses import replace

from keystate.schemas.ids import InvocationIdStr
from keystate.schemas.records import InboxItem, ObjectStatus, SetStateCommand

from .rows import get_object, put_object
from .tables import Tables

__all__ = ["do_enqueue", "do_release", "do_remove", "try_lock"]

_FREE = ObjectStatus(locked_by=None, next_seq=0, head_seq=0)


def _object(tables: Tables, service: str, key: str) -> ObjectStatus:
    return get_object(tables, service, key) or _FREE


def try_lock(tables: Tables, service: str, key: str, invocation_id: InvocationIdStr) -> bool:
    """Take the key's lock if it is free and nobody waits before us."""
    obj = _object(tables, service, key)
    if obj.locked_by is not None or obj.queued:
        return False
    put_object(tables, service, key, replace(obj, locked_by=invocation_id))
    return True


def do_enqueue(
    tables: Tables, service: str, key: str, invocation_id: str, state_edit: SetStateCommand | None = None
) -> None:
    """Queue an invocation, or a state edit (named by `invocation_id`), behind the key's holder."""
    obj = _object(tables, service, key)
    seq = obj.next_seq
    item = InboxItem(invocation_id=InvocationIdStr(invocation_id), seq=seq, state_edit=state_edit)
    tables.inbox.put((service, key, seq), item.to_avro())
    put_object(tables, service, key, replace(obj, next_seq=seq + 1))


def do_release(tables: Tables, service: str, key: str, invocation_id: str) -> InboxItem | None:
    """Release the lock held by `invocation_id`; returns the next inbox item (invocation or state edit), now locked."""
    obj = get_object(tables, service, key)
    if obj is None or obj.locked_by != invocation_id:
        return None
    head, nxt = obj.head_seq, obj.next_seq
    while head < nxt:
        row = tables.inbox.get((service, key, head))
        head += 1
        if row is None:
            continue  # cancelled or killed while it waited
        item = InboxItem.from_avro(row)
        tables.inbox.delete((service, key, head - 1))
        put_object(tables, service, key, ObjectStatus(locked_by=item.invocation_id, next_seq=nxt, head_seq=head))
        return item
    tables.objects.delete((service, key))
    return None


def do_remove(tables: Tables, service: str, key: str, invocation_id: InvocationIdStr) -> None:
    """Take a waiting invocation out of the key's inbox (cancelled or killed before it ran)."""
    for row_key, row in list(tables.inbox.scan((service, key))):
        if InboxItem.from_avro(row).invocation_id == invocation_id:
            tables.inbox.delete(row_key)
