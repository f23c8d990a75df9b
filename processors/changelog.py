"""Changelog records of the processor tables: JSON-array keys (readable with kcat), Avro values."""

from __future__ import annotations

import json
from typing import Any

from keystate.schemas._codec import codec
from keystate.schemas.errors import DecodeError

from .state_machine.tables import Key

__all__ = [
    "HEADER_FIRE_AT",
    "HEADER_STATUS",
    "TABLE_RECORDS",
    "decode_key",
    "decode_value",
    "encode_key",
    "encode_value",
    "row_headers",
    "row_record",
    "scan_prefix",
    "split_key",
    "table_key",
]

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


# ---- the one multiplexed changelog (`Topics.changelog_topic`) ------------------------------------
# Key: a JSON array whose first element is the table name, then the row's key parts, e.g.
# `["status","inv_1abc"]`, `["state","Counter","alice","count"]`, `["journal","inv_1abc",3]`.
# The store uses these bytes as its own keys, so a row restores without decoding its key, and a scan
# of a key prefix is a byte-prefix scan (`scan_prefix`). Value: the table's Avro record, or None (a
# tombstone). Headers carry what the store indexes without decoding the value:
HEADER_STATUS = "keystate.status"
"""On `status` rows: the invocation's state (e.g. b"INVOKED")."""
HEADER_FIRE_AT = "keystate.fire_at"
"""On `timers` rows: the fire time in ms since the epoch, as ASCII digits."""


def table_key(table: str, key: Key) -> bytes:
    """The changelog (and store) key of row `key` of `table`."""
    return json.dumps([table, *key], separators=(",", ":"), ensure_ascii=False).encode()


def scan_prefix(table: str, prefix: Key) -> bytes:
    """The byte prefix shared by exactly the keys of `table` that start with the parts `prefix`.

    Each part ends with a `,` here, so `["journal","inv_1",` never matches `["journal","inv_10",...`.
    """
    whole = table_key(table, prefix)
    return whole[:-1] + b","


def split_key(data: bytes) -> tuple[str, Key]:
    """(table, key parts) of a multiplexed changelog key."""
    parts = decode_key(data)
    if not parts or not isinstance(parts[0], str) or parts[0] not in TABLE_RECORDS:
        raise DecodeError(f"changelog key does not start with a table name: {data[:80]!r}")
    return parts[0], tuple(parts[1:])


def row_headers(table: str, value: Any | None) -> list[tuple[str, bytes]] | None:
    """The headers of a changelog record of `table` (None when the table indexes nothing)."""
    if value is None:
        return None
    if table == "status":
        return [(HEADER_STATUS, str(value["status"]).encode())]
    if table == "timers":
        return [(HEADER_FIRE_AT, str(int(value["fire_at_ms"])).encode())]
    return None


def row_record(table: str, key: Key, value: Any | None) -> tuple[bytes, bytes | None, list[tuple[str, bytes]] | None]:
    """(key, value, headers) of the changelog record of one row; the one way to write a row."""
    return table_key(table, key), encode_value(table, value), row_headers(table, value)
