"""SQL over the read model's store, without a broker: Restate's tables and values, read-only, limits, meta tables."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from pathlib import Path
from typing import Any

import duckdb
import pytest

from keystate.ingress.readmodel_sql import MetaTables, NotReadOnly, QueryResult, select
from keystate.ingress.readmodel_store import ReadModelStore
from keystate.ingress.readmodel_tables import TABLES, row_of
from keystate.schemas._codec import codec

from readmodel_support import NOW, status

IID = "inv_1aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
CALLEE = "inv_1bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
TRIP = {"service": "Trip", "handler": "book", "key": "t1", "service_type": "VIRTUAL_OBJECT", "handler_kind": "EXCLUSIVE"}
NAP = {"service": "Sleeper", "handler": "nap", "key": None, "service_type": "SERVICE", "handler_kind": "EXCLUSIVE"}


def _change(table: str, key: tuple[Any, ...], value: dict[str, Any] | None, partition: int = 0) -> tuple[Any, ...]:
    """A change as the follower makes it from a changelog record: the value encoded and decoded by the codec."""
    name = TABLES[table].record
    decoded = None if value is None else codec().decode_as(name, codec().encode(name, value))
    return row_of(table, key, partition, decoded)


def _entry(record: str, /, **fields: Any) -> dict[str, Any]:
    return {"entry": (f"keystate.{record}", fields)}


def _value(data: bytes) -> tuple[str, dict[str, Any]]:
    return ("keystate.Value", {"value": data})


def _failure(code: int, message: str) -> tuple[str, dict[str, Any]]:
    return ("keystate.Failure", {"code": code, "message": message})


@pytest.fixture
def store(tmp_path: Path) -> ReadModelStore:
    store = ReadModelStore(tmp_path / "rm.duckdb")
    changes: dict[str, list[tuple[Any, ...]]] = {
        "status": [
            _change("status", (IID,), status(
                IID, "SUSPENDED", target=TRIP, deployment_id="dp_1", journal_length=5, retry_count=1, attempt=2,
                last_failure={"code": 500, "message": "boom"}, created_at_ms=NOW, modified_at_ms=NOW + 1_456,
            )),
            _change("status", (CALLEE,), status(
                CALLEE, "COMPLETED", target=NAP, completion_status="KILLED", result=_failure(409, "killed"), source=IID,
            )),
        ],
        "journal": [
            _change("journal", (IID, 0), _entry("InputEntry", argument=b'"sleep"', headers={"a": "b"})),
            _change("journal", (IID, 1), _entry("SetStateEntry", key="status", value=b'"booking"')),
            _change("journal", (IID, 2), _entry("RunEntry", name="charge", result=_value(b"\xff\x00"))),
            _change("journal", (IID, 3), _entry(
                "CallEntry", target=NAP, argument=b"600000", headers={}, idempotency_key=None, invocation_id=CALLEE, result=None
            )),
            _change("journal", (IID, 4), _entry("SleepEntry", wake_up_at_ms=NOW + 600_000, fired=False, result=None)),
        ],
        "state": [
            _change("state", ("Trip", "t1", "status"), {"value": b'"booking"'}),
            _change("state", ("Trip", "t1", "blob"), {"value": b"\xff\xfe"}),
            _change("state", ("Trip", "t2", "status"), {"value": b'"booked"'}),
        ],
        "inbox": [_change("inbox", ("Trip", "t1", 7), {"invocation_id": CALLEE, "seq": 7})],
        "promises": [
            _change("promises", ("Flow", "w1", "done"), {"result": _value(b'"yes"'), "waiters": []}),
            _change("promises", ("Flow", "w1", "bad"), {"result": _failure(400, "no"), "waiters": []}),
            _change("promises", ("Flow", "w1", "open"), {"result": None, "waiters": []}),
        ],
        "idempotency": [
            _change("idempotency", ("Sleeper", "", "nap", "idem-1"), {"invocation_id": CALLEE}),
            _change("idempotency", ("Flow", "w1", "", ""), {"invocation_id": IID}),  # a workflow run: not an idempotency key
        ],
    }
    store.apply({table: dict(rows) for table, rows in changes.items()}, {0: 100})
    return store


def _rows(store: ReadModelStore, sql: str, *, max_rows: int = 100, meta: MetaTables | None = None) -> list[dict[str, Any]]:
    cursor = store.reader()
    try:
        return select(cursor, sql, max_rows=max_rows, meta=meta).rows
    finally:
        cursor.close()


def test_sys_invocation_shows_restates_columns_and_values(store: ReadModelStore) -> None:
    rows = _rows(store, "SELECT * FROM sys_invocation ORDER BY id")
    assert rows == [
        {
            "id": IID, "target": "Trip/t1/book", "target_service_name": "Trip", "target_service_key": "t1",
            "target_handler_name": "book", "target_service_ty": "virtual_object", "status": "suspended",
            "completion_result": None, "completion_failure": None,
            "created_at": "2023-11-14T22:13:20.000Z", "modified_at": "2023-11-14T22:13:21.456Z", "scheduled_at": None,
            "pinned_deployment_id": "dp_1", "retry_count": 1, "attempt": 2, "last_failure": "boom",
            "last_failure_error_code": 500, "idempotency_key": None, "invoked_by": "ingress", "invoked_by_id": None,
            "journal_size": 5,
        },
        {
            "id": CALLEE, "target": "Sleeper/nap", "target_service_name": "Sleeper", "target_service_key": None,
            "target_handler_name": "nap", "target_service_ty": "service", "status": "completed",
            "completion_result": "failure", "completion_failure": "[409] killed",
            "created_at": "2023-11-14T22:13:20.000Z", "modified_at": "2023-11-14T22:13:20.000Z", "scheduled_at": None,
            "pinned_deployment_id": None, "retry_count": 0, "attempt": 1, "last_failure": None,
            "last_failure_error_code": None, "idempotency_key": None, "invoked_by": "service", "invoked_by_id": IID,
            "journal_size": 1,
        },
    ]


def test_sys_journal_shows_each_entry_in_order_with_its_name_and_decoded_json(store: ReadModelStore) -> None:
    rows = _rows(store, f"SELECT * FROM sys_journal WHERE id = '{IID}' ORDER BY index")
    assert [(r["index"], r["entry_type"], r["name"], r["completed"]) for r in rows] == [
        (0, "Input", None, True), (1, "SetState", "status", True), (2, "Run", "charge", True),
        (3, "Call", None, False), (4, "Sleep", None, False),
    ]
    assert json.loads(rows[0]["entry_json"]) == {"argument": '"sleep"', "headers": {"a": "b"}}
    # A payload that is not UTF-8 comes as base64.
    assert json.loads(rows[2]["entry_json"]) == {"name": "charge", "result": {"value": base64.b64encode(b"\xff\x00").decode()}}
    assert (rows[3]["invoked_id"], rows[3]["invoked_target"]) == (CALLEE, "Sleeper/nap")
    assert rows[4]["sleep_wakeup_at"] == "2023-11-14T22:23:20.000Z"
    assert all(r["promise_name"] is None for r in rows)


def test_state_inbox_promise_and_idempotency_tables(store: ReadModelStore) -> None:
    state = _rows(store, "SELECT * FROM state WHERE service_key = 't1' ORDER BY key")
    assert state == [
        {"service_name": "Trip", "service_key": "t1", "key": "blob", "value_utf8": None, "value": base64.b64encode(b"\xff\xfe").decode()},
        {"service_name": "Trip", "service_key": "t1", "key": "status", "value_utf8": '"booking"', "value": base64.b64encode(b'"booking"').decode()},
    ]
    assert store.object_state("Trip", "t1") == {"blob": b"\xff\xfe", "status": b'"booking"'}
    assert store.object_state("Trip", "nobody") == {}
    assert _rows(store, "SELECT * FROM sys_inbox") == [
        {"service_name": "Trip", "service_key": "t1", "id": CALLEE, "sequence_number": 7}
    ]
    promises = _rows(store, "SELECT key, completed, completion_success_value_utf8, completion_failure FROM sys_promise ORDER BY key")
    assert promises == [
        {"key": "bad", "completed": True, "completion_success_value_utf8": None, "completion_failure": "[400] no"},
        {"key": "done", "completed": True, "completion_success_value_utf8": '"yes"', "completion_failure": None},
        {"key": "open", "completed": False, "completion_success_value_utf8": None, "completion_failure": None},
    ]
    assert _rows(store, "SELECT * FROM sys_idempotency") == [
        {"service_name": "Sleeper", "service_key": None, "service_handler": "nap", "idempotency_key": "idem-1", "invocation_id": CALLEE}
    ]


def test_deleted_rows_of_every_table_are_gone(store: ReadModelStore) -> None:
    store.apply(
        {
            "journal": dict([_change("journal", (IID, 4), None), _change("journal", (IID, 9), None)]),
            "state": dict([_change("state", ("Trip", "t1", "blob"), None)]),
            "inbox": dict([_change("inbox", ("Trip", "t1", 7), None)]),
            "promises": dict([_change("promises", ("Flow", "w1", "open"), None)]),
            "idempotency": dict([_change("idempotency", ("Sleeper", "", "nap", "idem-1"), None)]),
        },
        {0: 101},
    )
    counts = _rows(store, """SELECT (SELECT count(*) FROM sys_journal) AS journal, (SELECT count(*) FROM state) AS state,
        (SELECT count(*) FROM sys_inbox) AS inbox, (SELECT count(*) FROM sys_promise) AS promise,
        (SELECT count(*) FROM sys_idempotency) AS idempotency""")
    assert counts == [{"journal": 4, "state": 2, "inbox": 0, "promise": 2, "idempotency": 0}]


@pytest.mark.parametrize("sql", [
    "DELETE FROM keystate.invocation",
    "INSERT INTO keystate.meta VALUES ('x', 'y')",
    "SELECT 1; DROP TABLE keystate.journal",
    "CREATE TABLE x AS SELECT 1",
    "SET memory_limit = '10GB'",
    "PRAGMA database_size",
    "EXPLAIN SELECT 1",
    "ATTACH '/tmp/other.duckdb'",
    "COPY keystate.state TO '/tmp/state.csv'",
])
def test_only_one_select_runs(store: ReadModelStore, sql: str) -> None:
    with pytest.raises(NotReadOnly, match="only one read-only SELECT"):
        _rows(store, sql)
    assert _rows(store, "SELECT count(*) AS n FROM sys_invocation") == [{"n": 2}]


@pytest.mark.parametrize("sql", [
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT * FROM glob('/etc/*')",
])
def test_files_outside_the_store_cannot_be_read(store: ReadModelStore, sql: str) -> None:
    with pytest.raises(duckdb.PermissionException, match="disabled by configuration"):
        _rows(store, sql)


def test_a_query_that_writes_through_the_query_function_is_refused(store: ReadModelStore) -> None:
    with pytest.raises(duckdb.Error):
        _rows(store, "SELECT * FROM query('DELETE FROM keystate.invocation RETURNING id')")
    assert _rows(store, "SELECT count(*) AS n FROM sys_invocation") == [{"n": 2}]


def test_rows_beyond_the_limit_are_left_out_and_said_so(store: ReadModelStore) -> None:
    cursor = store.reader()
    try:
        assert select(cursor, "SELECT * FROM range(5)", max_rows=3, meta=None) == QueryResult(
            [{"range": 0}, {"range": 1}, {"range": 2}], True
        )
        assert select(cursor, "SELECT * FROM range(3)", max_rows=3, meta=None).truncated is False
    finally:
        cursor.close()


def test_values_of_every_type_become_json(store: ReadModelStore) -> None:
    rows = _rows(store, """SELECT 1.5::DECIMAL(4,2) AS d, 'a'::BLOB AS b, [1, 2] AS l, {'x': TIMESTAMP '2026-11-30 01:02:03.456'} AS s,
        DATE '2026-11-30' AS day, INTERVAL 90 SECOND AS i, 'inf'::DOUBLE AS f, true AS t, NULL AS n""")
    assert rows == [{"d": 1.5, "b": "YQ==", "l": [1, 2], "s": {"x": "2026-11-30T01:02:03.456Z"}, "day": "2026-11-30",
                     "i": 90.0, "f": "inf", "t": True, "n": None}]
    assert json.dumps(rows)


def test_deployments_and_services_come_from_the_meta_tables(store: ReadModelStore) -> None:
    meta = MetaTables(
        deployments=[("dp_1", "websocket", "http://a", NOW, False), ("dp_2", "http", "http://b", NOW + 1, True),
                     ("dp_3", "http", "http://c", NOW + 2, False)],
        services=[("Trip", 2, True, "VirtualObject", "dp_2", None, None, 0, 5000, None)],
    )
    rows = _rows(store, "SELECT * FROM sys_deployment ORDER BY id", meta=meta)
    # dp_1 still runs the suspended Trip invocation pinned to it; dp_3 runs nothing.
    assert [(r["id"], r["ty"], r["endpoint"], r["status"]) for r in rows] == [
        ("dp_1", "websocket", "http://a", "draining"), ("dp_2", "http", "http://b", "active"), ("dp_3", "http", "http://c", "drained"),
    ]
    assert rows[0]["created_at"] == "2023-11-14T22:13:20.000Z"
    assert _rows(store, "SELECT * FROM sys_service", meta=meta) == [
        {"name": "Trip", "revision": 2, "public": True, "ty": "VirtualObject", "deployment_id": "dp_2",
         "idempotency_retention_ms": None, "workflow_completion_retention_ms": None, "journal_retention_ms": 0,
         "inactivity_timeout_ms": 5000, "abort_timeout_ms": None}
    ]
    assert _rows(store, "SELECT count(*) AS n FROM sys_service", meta=MetaTables()) == [{"n": 0}]


async def test_a_long_query_is_interrupted(store: ReadModelStore) -> None:
    cursor = store.reader()
    stopped = threading.Event()

    def run() -> None:
        try:
            select(cursor, "SELECT count(*) FROM range(100000000000) a", max_rows=1, meta=None)
        except duckdb.InterruptException:
            stopped.set()

    worker = threading.Thread(target=run)
    worker.start()
    while not stopped.is_set() and worker.is_alive():
        cursor.interrupt()
        await asyncio.sleep(0.05)
    worker.join()
    cursor.close()
    assert stopped.is_set()


def test_the_query_limits_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from keystate.ingress.readmodel_sql import query_max_rows, query_timeout

    assert (query_timeout(), query_max_rows()) == (30.0, 10_000)
    monkeypatch.setenv("KEYSTATE_QUERY_TIMEOUT", "2.5")
    monkeypatch.setenv("KEYSTATE_QUERY_MAX_ROWS", "50")
    assert (query_timeout(), query_max_rows()) == (2.5, 50)
    monkeypatch.setenv("KEYSTATE_QUERY_MAX_ROWS", "none")
    with pytest.raises(ValueError, match=r"\$KEYSTATE_QUERY_MAX_ROWS='none' must be a number of at least 1"):
        query_max_rows()
