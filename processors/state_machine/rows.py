"""Typed reads and writes of table rows: tables hold Avro dicts, the state machine works on records."""

from __future__ import annotations

from keystate.schemas.ids import InvocationIdStr
from keystate.schemas.records import (
    Entry,
    IdempotencyValue,
    InvocationStatus,
    JournalRecord,
    ObjectStatus,
    PromiseValue,
)

from .tables import Key, Tables

__all__ = [
    "get_idempotency",
    "get_journal",
    "get_object",
    "get_promise",
    "get_status",
    "put_journal",
    "put_object",
    "put_promise",
    "put_status",
]


def get_status(tables: Tables, iid: InvocationIdStr) -> InvocationStatus | None:
    row = tables.status.get((iid,))
    return None if row is None else InvocationStatus.from_avro(row)


def put_status(tables: Tables, status: InvocationStatus) -> None:
    tables.status.put((status.invocation_id,), status.to_avro())


def get_journal(tables: Tables, iid: InvocationIdStr, index: int) -> JournalRecord | None:
    row = tables.journal.get((iid, index))
    return None if row is None else JournalRecord.from_avro(row)


def put_journal(tables: Tables, iid: InvocationIdStr, index: int, entry: Entry) -> None:
    tables.journal.put((iid, index), JournalRecord(entry=entry).to_avro())


def get_object(tables: Tables, service: str, key: str) -> ObjectStatus | None:
    row = tables.objects.get((service, key))
    return None if row is None else ObjectStatus.from_avro(row)


def put_object(tables: Tables, service: str, key: str, obj: ObjectStatus) -> None:
    tables.objects.put((service, key), obj.to_avro())


def get_promise(tables: Tables, key: Key) -> PromiseValue | None:
    row = tables.promises.get(key)
    return None if row is None else PromiseValue.from_avro(row)


def put_promise(tables: Tables, key: Key, promise: PromiseValue) -> None:
    tables.promises.put(key, promise.to_avro())


def get_idempotency(tables: Tables, key: Key) -> IdempotencyValue | None:
    row = tables.idempotency.get(key)
    return None if row is None else IdempotencyValue.from_avro(row)
