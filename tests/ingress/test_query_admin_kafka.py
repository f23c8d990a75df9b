"""`POST :9070/query` on a real broker: rows of the changelog through SQL, read-only, limits, errors as 400."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from keystate.ingress.runtime import IngressRuntime
from keystate.schemas.ids import InvocationId

from ingress_support import Deployment, handler, manifest, service
from readmodel_support import NOW, status, write_rows

pytestmark = pytest.mark.integration

COUNTER = {"service": "Counter", "handler": "add", "key": "ann", "service_type": "VIRTUAL_OBJECT", "handler_kind": "EXCLUSIVE"}
JSON = {"Accept": "application/json"}


async def _until(condition: Callable[[], Awaitable[bool]]) -> None:
    for _ in range(300):
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the read model never caught up")


async def _query(admin: TestClient, sql: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    resp = await admin.post("/query", json={"query": sql}, headers=JSON if headers is None else headers)
    return resp.status, await resp.json()


async def _write(runtime: IngressRuntime, rows: list[tuple[str, tuple[Any, ...], dict[str, Any] | None]]) -> None:
    s = runtime.settings
    await asyncio.to_thread(write_rows, s.bootstrap, s.topics, rows, partitions=4)


async def test_changelog_rows_are_queryable_and_deletes_follow(runtime: IngressRuntime, admin: TestClient) -> None:
    iid = str(InvocationId.new())
    await _write(runtime, [
        ("status", (iid,), status(iid, "INVOKED", target=COUNTER, journal_length=2, modified_at_ms=NOW + 5)),
        ("journal", (iid, 0), {"entry": ("keystate.InputEntry", {"argument": b"1", "headers": {}})}),
        ("journal", (iid, 1), {"entry": ("keystate.GetStateEntry", {"key": "count", "value": b"41"})}),
        ("state", ("Counter", "ann", "count"), {"value": b"41"}),
    ])

    async def seen() -> bool:
        return (await _query(admin, f"SELECT count(*) AS n FROM sys_journal WHERE id = '{iid}'"))[1]["rows"] == [{"n": 2}]

    await _until(seen)
    code, body = await _query(admin, f"SELECT id, target, status, modified_at FROM sys_invocation WHERE id = '{iid}'")
    assert code == 200
    assert body == {"rows": [{"id": iid, "target": "Counter/ann/add", "status": "running", "modified_at": "2023-11-14T22:13:20.005Z"}]}
    code, body = await _query(admin, f"SELECT index, entry_type, name FROM sys_journal WHERE id = '{iid}' ORDER BY index")
    assert body["rows"] == [{"index": 0, "entry_type": "Input", "name": None}, {"index": 1, "entry_type": "GetState", "name": "count"}]
    assert (await _query(admin, "SELECT key, value_utf8 FROM state WHERE service_key = 'ann'"))[1]["rows"] == [
        {"key": "count", "value_utf8": "41"}
    ]
    assert await runtime.invocations.object_state("Counter", "ann") == {"count": b"41"}

    # Tombstones delete: the journal and state rows go, then the status row.
    await _write(runtime, [
        ("journal", (iid, 0), None), ("journal", (iid, 1), None), ("state", ("Counter", "ann", "count"), None), ("status", (iid,), None),
    ])

    async def gone() -> bool:
        return (await _query(admin, f"SELECT count(*) AS n FROM sys_invocation WHERE id = '{iid}'"))[1]["rows"] == [{"n": 0}]

    await _until(gone)
    assert (await _query(admin, f"SELECT count(*) AS n FROM sys_journal WHERE id = '{iid}'"))[1]["rows"] == [{"n": 0}]
    assert await runtime.invocations.object_state("Counter", "ann") == {}


@pytest.mark.parametrize(("sql", "says"), [
    ("SELEC id FROM sys_invocation", "syntax error"),
    ("SELECT nope FROM sys_invocation", "nope"),
    ("SELECT * FROM no_such_table", "no_such_table"),
    ("DELETE FROM keystate.invocation", "only one read-only SELECT"),
    ("DROP VIEW sys_invocation", "only one read-only SELECT"),
    ("SELECT 1; SELECT 2", "only one read-only SELECT"),
    ("SELECT * FROM read_csv('/etc/passwd')", "file system operations are disabled"),
])
async def test_bad_sql_writes_and_files_are_refused_with_the_engines_message(
    runtime: IngressRuntime, admin: TestClient, sql: str, says: str
) -> None:
    code, body = await _query(admin, sql)
    assert code == 400 and body["code"] == 400
    assert says in body["message"]
    assert (await _query(admin, "SELECT count(*) >= 0 AS ok FROM sys_invocation"))[1]["rows"] == [{"ok": True}]


async def test_bodies_and_accept_headers_that_do_not_fit(runtime: IngressRuntime, admin: TestClient) -> None:
    assert (await _query(admin, "SELECT 1 AS one", headers={}))[1] == {"rows": [{"one": 1}]}
    resp = await admin.post("/query", json={"query": "SELECT 1"}, headers={"Accept": "text/csv"})
    assert resp.status == 406 and "Accept: application/json" in (await resp.json())["message"]
    for body in ({"sql": "SELECT 1"}, {"query": ""}, ["SELECT 1"]):
        resp = await admin.post("/query", json=body, headers=JSON)
        assert resp.status == 400 and '"query"' in (await resp.json())["message"]
    resp = await admin.post("/query", data=b"SELECT 1", headers=JSON)
    assert resp.status == 400 and "must be JSON" in (await resp.json())["message"]


async def test_a_query_over_the_time_limit_is_stopped_and_rows_over_the_row_limit_are_left_out(
    runtime: IngressRuntime, admin: TestClient
) -> None:
    runtime.settings = dataclasses.replace(runtime.settings, query_timeout=0.2, query_max_rows=3)
    code, body = await _query(admin, "SELECT count(*) FROM range(1000000000000) a, range(10) b")
    assert code == 400 and "longer than the limit of 0.2 s" in body["message"] and "KEYSTATE_QUERY_TIMEOUT" in body["message"]
    code, body = await _query(admin, "SELECT * FROM range(10) r(n)")
    assert code == 200 and body["rows"] == [{"n": 0}, {"n": 1}, {"n": 2}]
    assert body["truncated"] is True and "first 3 rows" in body["message"]
    # The store still answers after an interrupted query.
    assert (await _query(admin, "SELECT 1 AS one"))[1] == {"rows": [{"one": 1}]}


async def test_deployments_and_services_are_queryable(runtime: IngressRuntime, admin: TestClient, deployment: Deployment) -> None:
    deployment.respond = lambda: web.json_response(
        manifest(service("Queried", "VIRTUAL_OBJECT", handler("go")))
    )
    created = await (await admin.post("/deployments", json={"uri": deployment.uri})).json()
    code, body = await _query(admin, f"SELECT id, ty, endpoint, status FROM sys_deployment WHERE id = '{created['id']}'")
    assert code == 200 and body["rows"] == [{"id": created["id"], "ty": "websocket", "endpoint": deployment.uri, "status": "active"}]
    code, body = await _query(admin, "SELECT name, revision, public, ty, deployment_id FROM sys_service WHERE name = 'Queried'")
    assert body["rows"] == [{"name": "Queried", "revision": 1, "public": True, "ty": "VirtualObject", "deployment_id": created["id"]}]
