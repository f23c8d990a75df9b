"""Changelog records of the processor tables: JSON-array keys (readable with kcat), Avro values."""

from __future__ import annotations

import json
from typing import Any

from keystate.schemas._codec import codec
from keystate.schemas.errors import DecodeError

from .state_machine.tables import Key

__all__ = ["TABLE_RECORDS", "decode_key", "decode_value", "encode_key", "encode_value"]

TABLE_RECORDS = {
    "status": "keystate.InvocationStatus",
    "journal": "keystate.JournalRecord",
    "state": "keystate.StateValue",
    "inbox": "keystate.InboxItem",
    "objects": "keystate.ObjectStatus",
    "timers": "keystate.TimerValue",
    "promises": "keystate.PromiseValue",
    "idempotency": "keystate.IdempotencyValue",
}


def encode_key(key: Key) -> bytes:
    return json.dumps(key, separators=(",", ":"), ensure_ascii=False).encode()


def decode_key(data: bytes) -> Key:
    try:
        parts = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise DecodeError(f"changelog key is not a JSON array: {data[:80]!r}") from exc
    if not isinstance(parts, list):
        raise DecodeError(f"changelog key is not a JSON array: {data[:80]!r}")
    return tuple(parts)


def encode_value(table: str, value: Any | None) -> bytes | None:
    return None if value is None else codec().encode(TABLE_RECORDS[table], value)


def decode_value(table: str, data: bytes | None) -> Any | None:
    return None if data is None else codec().decode_as(TABLE_RECORDS[table], data)
