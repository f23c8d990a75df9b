"""Operators' SQL over the read model: one read-only SELECT, the meta tables beside it, rows as JSON values."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import duckdb

from .readmodel_tables import RAW

__all__ = [
    "INTERVAL_ENV",
    "QUERY_MAX_ROWS_ENV",
    "QUERY_TIMEOUT_ENV",
    "MetaTables",
    "NotReadOnly",
    "QueryResult",
    "json_value",
    "query_max_rows",
    "query_timeout",
    "select",
    "write_interval",
]

INTERVAL_ENV = "KEYSTATE_READMODEL_INTERVAL_MS"
QUERY_TIMEOUT_ENV = "KEYSTATE_QUERY_TIMEOUT"
QUERY_MAX_ROWS_ENV = "KEYSTATE_QUERY_MAX_ROWS"


def _env_number(name: str, default: float, low: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        value = low - 1
    if value < low:
        raise ValueError(f"${name}={text!r} must be a number of at least {low:g} (default {default:g})")
    return value


def query_timeout() -> float:
    """Seconds a `POST /query` may run ($KEYSTATE_QUERY_TIMEOUT, default 30)."""
    return _env_number(QUERY_TIMEOUT_ENV, 30.0, 0.001)


def write_interval() -> float:
    """Seconds between the writes of a caught-up read model ($KEYSTATE_READMODEL_INTERVAL_MS, default 500 ms).

    DuckDB's cost is per transaction: one per small fetch took half the ingress's CPU under load
    (py-spy, greet at c=16). Queries see changes up to this late.
    """
    return _env_number(INTERVAL_ENV, 500, 0) / 1000


def query_max_rows() -> int:
    """Rows a `POST /query` answers at most ($KEYSTATE_QUERY_MAX_ROWS, default 10000)."""
    return int(_env_number(QUERY_MAX_ROWS_ENV, 10_000, 1))


class NotReadOnly(Exception):
    """The query is not one SELECT (or WITH ... SELECT) statement."""


@dataclass(frozen=True, slots=True)
class MetaTables:
    """`sys_deployment` and `sys_service` rows, from the meta view at the time of the query.

    deployments: (id, ty, endpoint, created_at_ms, latest: new invocations of some service go to it);
    services: (name, revision, public, ty, deployment_id, then the effective idempotency_retention_ms,
    workflow_completion_retention_ms, journal_retention_ms, inactivity_timeout_ms, abort_timeout_ms; None:
    the processor's default).
    """

    deployments: list[tuple[str, str, str, int, bool]] = field(default_factory=list)
    services: list[tuple[str, int, bool, str, str, int | None, int | None, int | None, int | None, int | None]] = field(
        default_factory=list
    )


@dataclass(frozen=True, slots=True)
class QueryResult:
    """The rows of a query (at most the row limit) and whether more were left out."""

    rows: list[dict[str, Any]]
    truncated: bool


# A deployment that is nobody's latest is draining while invocations that have not completed are pinned to it.
_DEPLOYMENTS = f"""CREATE OR REPLACE TEMP TABLE sys_deployment AS
SELECT d.id, d.ty, d.endpoint, epoch_ms(d.created_at_ms) AS created_at,
    CASE WHEN d.latest THEN 'active'
         WHEN EXISTS (SELECT 1 FROM {RAW}.invocation i WHERE i.deployment_id = d.id AND i.status <> 'COMPLETED')
         THEN 'draining' ELSE 'drained' END AS status
FROM (SELECT unnest($1::VARCHAR[]) AS id, unnest($2::VARCHAR[]) AS ty, unnest($3::VARCHAR[]) AS endpoint,
             unnest($4::BIGINT[]) AS created_at_ms, unnest($5::BOOLEAN[]) AS latest) AS d"""
_SERVICES = """CREATE OR REPLACE TEMP TABLE sys_service AS
SELECT * FROM (SELECT unnest($1::VARCHAR[]) AS name, unnest($2::INTEGER[]) AS revision, unnest($3::BOOLEAN[]) AS public,
                      unnest($4::VARCHAR[]) AS ty, unnest($5::VARCHAR[]) AS deployment_id,
                      unnest($6::BIGINT[]) AS idempotency_retention_ms, unnest($7::BIGINT[]) AS workflow_completion_retention_ms,
                      unnest($8::BIGINT[]) AS journal_retention_ms, unnest($9::BIGINT[]) AS inactivity_timeout_ms,
                      unnest($10::BIGINT[]) AS abort_timeout_ms)"""


def _columns(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)] if rows else [[] for _ in range(width)]


def select(cursor: duckdb.DuckDBPyConnection, sql: str, *, max_rows: int, meta: MetaTables | None) -> QueryResult:
    """Run `sql` on `cursor` if it is a single SELECT; up to `max_rows` rows, as JSON values.

    Raises NotReadOnly for anything else, and duckdb.Error for what the engine refuses. Runs in a
    read-only transaction besides: a write that got past the statement check still fails.
    """
    statements = cursor.extract_statements(sql)
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        kinds = ", ".join(s.type.name for s in statements) or "none"
        raise NotReadOnly(
            f"only one read-only SELECT (or WITH ... SELECT) statement can be run here, not {kinds}; "
            "the read model follows the changelog and cannot be changed through SQL"
        )
    lowered = sql.lower()
    # The meta tables are small but built per query: only when the query names them.
    if meta is not None and "sys_deployment" in lowered:
        cursor.execute(_DEPLOYMENTS, _columns(meta.deployments, 5))
    if meta is not None and "sys_service" in lowered:
        cursor.execute(_SERVICES, _columns(meta.services, 10))
    cursor.execute("BEGIN TRANSACTION READ ONLY")
    try:
        cursor.execute(statements[0].query)
        names = [d[0] for d in cursor.description or ()]
        rows = cursor.fetchmany(max_rows + 1)
    finally:
        try:
            cursor.execute("ROLLBACK")
        except duckdb.Error:
            pass  # an interrupted query may have ended its transaction already: its own error tells more
    return QueryResult(
        [{name: json_value(v) for name, v in zip(names, row, strict=True)} for row in rows[:max_rows]],
        len(rows) > max_rows,
    )


def json_value(value: Any) -> Any:
    """A DuckDB value as JSON: timestamps as ISO-8601 UTC ("...T01:02:03.456Z"), blobs as base64."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        # JSON has no NaN or infinity.
        return value if value == value and value not in (float("inf"), float("-inf")) else str(value)
    if isinstance(value, dt.datetime):
        if value.tzinfo is not None:
            value = value.astimezone(dt.UTC).replace(tzinfo=None)
        return value.isoformat(timespec="milliseconds") + "Z"
    if isinstance(value, (dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dict):
        return {str(k): json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    return str(value)
