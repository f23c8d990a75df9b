"""How changelog rows become read-model rows: a DuckDB table per changelog table, and views named like Restate's.

The raw tables (schema `keystate`) keep keystate's own values (INVOKED, SUCCEEDED, ms since the
epoch) and the changelog partition each row came from; the views in the main schema (`sys_invocation`,
`sys_journal`, `state`, `sys_inbox`, `sys_promise`, `sys_idempotency`) show them with Restate's
column names and values. `sys_deployment` and `sys_service` come from the meta view, per query.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "RAW",
    "TABLES",
    "VIEWS",
    "Change",
    "TableSpec",
    "changelog_table",
    "plain",
    "row_of",
    "utf8",
]

RAW = "keystate"
"""The schema of the raw tables; the views in `main` are what `POST /query` documents."""


@dataclass(frozen=True, slots=True)
class TableSpec:
    """One raw table: its DuckDB columns (name, type), the leading `key` columns its primary key is made of."""

    name: str
    record: str
    columns: tuple[tuple[str, str], ...]
    key: int

    @property
    def qualified(self) -> str:
        return f"{RAW}.{self.name}"

    def ddl(self) -> str:
        cols = ", ".join(f"{name} {ty}" for name, ty in self.columns)
        pk = ", ".join(name for name, _ in self.columns[: self.key])
        return f"CREATE TABLE IF NOT EXISTS {self.qualified} ({cols}, PRIMARY KEY ({pk}))"


# Changelog table -> raw table. The key columns come first, in the changelog key's order; `partition`
# follows them so a partition can be forgotten when its topic was recreated.
TABLES: dict[str, TableSpec] = {
    "status": TableSpec("invocation", "keystate.InvocationStatus", (
        ("id", "VARCHAR"), ("partition", "INTEGER"),
        ("service", "VARCHAR"), ("handler", "VARCHAR"), ("key", "VARCHAR"),
        ("service_type", "VARCHAR"), ("handler_kind", "VARCHAR"),
        ("status", "VARCHAR"), ("completion_status", "VARCHAR"), ("completion_failure", "VARCHAR"),
        ("deployment_id", "VARCHAR"), ("attempt", "INTEGER"), ("retry_count", "INTEGER"),
        ("created_at_ms", "BIGINT"), ("modified_at_ms", "BIGINT"), ("execute_at_ms", "BIGINT"),
        ("last_failure_code", "INTEGER"), ("last_failure_message", "VARCHAR"),
        ("idempotency_key", "VARCHAR"), ("source", "VARCHAR"), ("journal_length", "INTEGER"),
    ), 1),
    "journal": TableSpec("journal", "keystate.JournalRecord", (
        ("id", "VARCHAR"), ("idx", "INTEGER"), ("partition", "INTEGER"),
        ("entry_type", "VARCHAR"), ("name", "VARCHAR"), ("completed", "BOOLEAN"), ("entry_json", "VARCHAR"),
        ("invoked_id", "VARCHAR"), ("invoked_target", "VARCHAR"), ("sleep_wakeup_at_ms", "BIGINT"),
        ("promise_name", "VARCHAR"),
    ), 2),
    "state": TableSpec("state", "keystate.StateValue", (
        ("service_name", "VARCHAR"), ("service_key", "VARCHAR"), ("key", "VARCHAR"), ("partition", "INTEGER"),
        ("value_utf8", "VARCHAR"), ("value", "BLOB"),
    ), 3),
    "inbox": TableSpec("inbox", "keystate.InboxItem", (
        ("service_name", "VARCHAR"), ("service_key", "VARCHAR"), ("sequence_number", "BIGINT"),
        ("partition", "INTEGER"), ("id", "VARCHAR"),
    ), 3),
    "promises": TableSpec("promise", "keystate.PromiseValue", (
        ("service_name", "VARCHAR"), ("service_key", "VARCHAR"), ("key", "VARCHAR"), ("partition", "INTEGER"),
        ("completed", "BOOLEAN"), ("completion_success_value", "BLOB"),
        ("completion_success_value_utf8", "VARCHAR"), ("completion_failure", "VARCHAR"),
    ), 3),
    # Key (service, key or "", handler, idempotency key); a workflow's run is (service, key, "", "").
    "idempotency": TableSpec("idempotency", "keystate.IdempotencyValue", (
        ("service_name", "VARCHAR"), ("service_key", "VARCHAR"), ("service_handler", "VARCHAR"),
        ("idempotency_key", "VARCHAR"), ("partition", "INTEGER"), ("invocation_id", "VARCHAR"),
    ), 4),
}

_STATUS = (
    "CASE status WHEN 'INBOXED' THEN 'pending' WHEN 'INVOKED' THEN 'running' "
    "WHEN 'BACKING_OFF' THEN 'backing-off' ELSE lower(status) END"
)
VIEWS: dict[str, str] = {
    "sys_invocation": f"""SELECT id,
        CASE WHEN key IS NULL THEN service || '/' || handler ELSE service || '/' || key || '/' || handler END AS target,
        service AS target_service_name, key AS target_service_key, handler AS target_handler_name,
        lower(service_type) AS target_service_ty, {_STATUS} AS status,
        CASE WHEN completion_status = 'SUCCEEDED' THEN 'success' WHEN completion_status IS NOT NULL THEN 'failure' END
            AS completion_result,
        completion_failure, epoch_ms(created_at_ms) AS created_at, epoch_ms(modified_at_ms) AS modified_at,
        epoch_ms(execute_at_ms) AS scheduled_at, deployment_id AS pinned_deployment_id, retry_count, attempt,
        last_failure_message AS last_failure, last_failure_code AS last_failure_error_code, idempotency_key,
        CASE WHEN source LIKE 'inv\\_%' ESCAPE '\\' THEN 'service' ELSE source END AS invoked_by,
        CASE WHEN source LIKE 'inv\\_%' ESCAPE '\\' THEN source END AS invoked_by_id,
        journal_length AS journal_size
        FROM {RAW}.invocation""",
    "sys_journal": f"""SELECT id, idx AS "index", entry_type, name, completed, entry_json, invoked_id, invoked_target,
        epoch_ms(sleep_wakeup_at_ms) AS sleep_wakeup_at, promise_name FROM {RAW}.journal""",
    "state": f"SELECT service_name, service_key, key, value_utf8, value FROM {RAW}.state",
    "sys_inbox": f"SELECT service_name, service_key, id, sequence_number FROM {RAW}.inbox",
    "sys_promise": f"""SELECT service_name, service_key, key, completed, completion_success_value,
        completion_success_value_utf8, completion_failure FROM {RAW}.promise""",
    "sys_idempotency": f"""SELECT service_name, NULLIF(service_key, '') AS service_key, service_handler, idempotency_key,
        invocation_id FROM {RAW}.idempotency WHERE service_handler <> ''""",
}

# Keys of the multiplexed changelog are JSON arrays led by the table name, e.g. `["status","<invocation id>"]`
# (keystate.processors.changelog.table_key, which the ingress may not import).
_TABLE_NAMES = {name.encode(): name for name in TABLES}


def changelog_table(key: bytes | None) -> str | None:
    """The mirrored table a changelog key belongs to (a key of TABLES), or None for any other key."""
    if key is None or not key.startswith(b'["'):
        return None
    end = key.find(b'"', 2)
    return _TABLE_NAMES.get(key[2:end]) if end > 2 and key[end + 1 : end + 2] == b"," else None


Change = tuple[tuple[Any, ...], tuple[Any, ...] | None]
"""(primary key, whole row) of a raw table, or (primary key, None) to delete the row."""

_VALUE = "keystate.Value"
_FAILURE = "keystate.Failure"


def utf8(data: bytes | None) -> str | None:
    """`data` as text if it is UTF-8, else None."""
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def plain(value: Any) -> Any:
    """A decoded Avro value as JSON: bytes as UTF-8 text where they decode, else base64; a Value/Failure
    union as {"value": ...} / {"failure": {"code", "message"}}."""
    if isinstance(value, bytes):
        text = utf8(value)
        return text if text is not None else base64.b64encode(value).decode("ascii")
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], dict):
        name, record = value
        if name == _VALUE:
            return {"value": plain(record["value"])}
        if name == _FAILURE:
            return {"failure": plain(record)}
        return plain(record)
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value


def _failure_text(result: Any) -> str | None:
    """"[code] message" of a Failure result, None for a value or no result."""
    if isinstance(result, tuple) and result[0] == _FAILURE:
        return f"[{result[1]['code']}] {result[1]['message']}"
    return None


def _target_text(target: Mapping[str, Any]) -> str:
    if target.get("key") is None:
        return f"{target['service']}/{target['handler']}"
    return f"{target['service']}/{target['key']}/{target['handler']}"


def _status(key: tuple[Any, ...], partition: int, s: dict[str, Any]) -> tuple[Any, ...]:
    target, failure = s["target"], s.get("last_failure")
    return (
        key[0], partition, target["service"], target["handler"], target.get("key"),
        target["service_type"], target["handler_kind"], s["status"], s.get("completion_status"),
        _failure_text(s.get("result")), s.get("deployment_id"), s["attempt"], s["retry_count"],
        s["created_at_ms"], s["modified_at_ms"], s.get("execute_at_ms"),
        None if failure is None else failure["code"], None if failure is None else failure["message"],
        s.get("idempotency_key"), s.get("source"), s.get("journal_length"),
    )


# Entry record -> (entry_type as Restate names it, the field that names the entry).
_ENTRIES: dict[str, tuple[str, str | None]] = {
    "keystate.InputEntry": ("Input", None),
    "keystate.OutputEntry": ("Output", None),
    "keystate.GetStateEntry": ("GetState", "key"),
    "keystate.SetStateEntry": ("SetState", "key"),
    "keystate.ClearStateEntry": ("ClearState", "key"),
    "keystate.ClearAllStateEntry": ("ClearAllState", None),
    "keystate.GetStateKeysEntry": ("GetStateKeys", None),
    "keystate.RunEntry": ("Run", "name"),
    "keystate.CallEntry": ("Call", None),
    "keystate.SendEntry": ("OneWayCall", None),
    "keystate.SleepEntry": ("Sleep", None),
    "keystate.AwakeableEntry": ("Awakeable", "awakeable_id"),
    "keystate.CompleteAwakeableEntry": ("CompleteAwakeable", "awakeable_id"),
    "keystate.GetPromiseEntry": ("GetPromise", "name"),
    "keystate.PeekPromiseEntry": ("PeekPromise", "name"),
    "keystate.CompletePromiseEntry": ("CompletePromise", "name"),
    "keystate.CancelInvocationEntry": ("CancelInvocation", None),
}
# Entries that wait for a result: completed once it is there (every other entry is complete when written).
_AWAITING = {"Call", "Sleep", "Awakeable", "GetPromise", "PeekPromise", "CompletePromise"}
_PROMISES = {"GetPromise", "PeekPromise", "CompletePromise"}


def _journal(key: tuple[Any, ...], partition: int, record: dict[str, Any]) -> tuple[Any, ...]:
    name, entry = record["entry"]
    entry_type, name_field = _ENTRIES.get(name, (name.rsplit(".", 1)[-1].removesuffix("Entry"), None))
    completed = True
    if entry_type in _AWAITING:
        completed = entry.get("result") is not None or bool(entry.get("fired"))
    target = entry.get("target") if entry_type in ("Call", "OneWayCall") else None
    wake = entry.get("wake_up_at_ms") if entry_type == "Sleep" else None
    return (
        key[0], key[1], partition, entry_type, None if name_field is None else entry.get(name_field), completed,
        json.dumps(plain(entry), separators=(",", ":"), ensure_ascii=False),
        entry.get("invocation_id") if target is not None else None,
        None if target is None else _target_text(target), wake,
        entry.get("name") if entry_type in _PROMISES else None,
    )


def _state(key: tuple[Any, ...], partition: int, v: dict[str, Any]) -> tuple[Any, ...]:
    return (*key, partition, utf8(v["value"]), v["value"])


def _inbox(key: tuple[Any, ...], partition: int, v: dict[str, Any]) -> tuple[Any, ...]:
    return (*key, partition, v["invocation_id"])


def _promise(key: tuple[Any, ...], partition: int, v: dict[str, Any]) -> tuple[Any, ...]:
    result = v.get("result")
    value = result[1]["value"] if isinstance(result, tuple) and result[0] == _VALUE else None
    return (*key, partition, result is not None, value, utf8(value), _failure_text(result))


def _idempotency(key: tuple[Any, ...], partition: int, v: dict[str, Any]) -> tuple[Any, ...]:
    return (*key, partition, v["invocation_id"])


_ROWS: dict[str, Callable[[tuple[Any, ...], int, dict[str, Any]], tuple[Any, ...]]] = {
    "status": _status,
    "journal": _journal,
    "state": _state,
    "inbox": _inbox,
    "promises": _promise,
    "idempotency": _idempotency,
}


def row_of(table: str, key: tuple[Any, ...], partition: int, value: dict[str, Any] | None) -> Change:
    """The raw-table change for one changelog row of `table` (a mirrored table: a key of TABLES)."""
    spec = TABLES[table]
    if len(key) != spec.key:
        raise ValueError(f"a {table} key has {spec.key} parts, not {len(key)}: {list(key)!r}")
    return key, None if value is None else _ROWS[table](key, partition, value)
