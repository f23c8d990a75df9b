"""Attach, output and awakeables against a real broker; the test plays the partition processor."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from keystate.ingress.restate_paths import parse_awakeable_id
from keystate.ingress.runtime import IngressRuntime
from keystate.ingress.errors import BadRequest
from keystate.schemas.ids import InvocationId, InvocationTarget, ServiceId, ServiceType, idempotency_partition_key
from keystate.server.meta import register

from ingress_support import COUNTER, GREETER, SIGNUP, find_command, handler, produce_reply, produce_result, record, service

pytestmark = pytest.mark.integration

QUERY = "keystate.QueryOutputCommand"
AWAKEABLE = "keystate.CompleteAwakeableCommand"
REPORT = service("Report", "WORKFLOW", handler("run", "WORKFLOW", output={"contentType": "text/csv"}), handler("peek", "SHARED"))


@pytest.fixture(autouse=True)
async def registered(runtime: IngressRuntime) -> None:
    await register(runtime.meta, runtime.producer, record("http://deployment:9080", GREETER, COUNTER, SIGNUP, REPORT))


def _new_id(partition_key: int | None = None) -> str:
    return str(InvocationId.new(partition_key))  # type: ignore[arg-type]


async def _command(runtime: IngressRuntime, name: str, where: Callable[[dict[str, Any]], bool]) -> tuple[Any, dict[str, Any]]:
    s = runtime.settings
    return await asyncio.to_thread(find_command, s.bootstrap, s.topics.log, name, where)


async def _reply(runtime: IngressRuntime, query: dict[str, Any], invocation_id: str | None, status: str, **fields: Any) -> None:
    reply = {"request_id": query["request_id"], "invocation_id": invocation_id, "status": status, **fields}
    await asyncio.to_thread(produce_reply, runtime.settings.bootstrap, runtime.reply_topic, reply)


async def _finish(runtime: IngressRuntime, invocation_id: str, output: bytes) -> None:
    result = {
        "invocation_id": invocation_id,
        "target": {"service": "Greeter", "handler": "greet", "key": None, "service_type": "SERVICE", "handler_kind": "EXCLUSIVE"},
        "status": "SUCCEEDED",
        "output": output,
        "failure": None,
        "idempotency_key": None,
        "completed_at_ms": int(time.time() * 1000),
    }
    await asyncio.to_thread(produce_result, runtime.settings.bootstrap, runtime.reply_topic, result)


async def test_output_of_a_running_invocation_is_470(runtime: IngressRuntime, ingress: TestClient) -> None:
    iid = _new_id()
    get = asyncio.create_task(ingress.get(f"/restate/invocation/{iid}/output"))
    msg, query = await _command(runtime, QUERY, lambda q: q["invocation_id"] == iid)

    assert msg.partition() == InvocationId.parse(iid).partition(4)
    assert dict(msg.headers())["invocation_id"] == iid.encode()
    assert query["reply_topic"] == runtime.reply_topic
    assert query["attach"] is False and query["idempotency"] is None and query["workflow"] is None
    await _reply(runtime, query, iid, "RUNNING")
    response = await asyncio.wait_for(get, 30)

    assert response.status == 470
    assert response.headers["x-restate-id"] == iid
    body = await response.json()
    assert body["code"] == 470 and "has not completed yet" in body["message"] and "attach" in body["message"]
    assert runtime.results.pending == 0


async def test_attach_by_id_waits_for_the_result(runtime: IngressRuntime, ingress: TestClient) -> None:
    iid = _new_id()
    get = asyncio.create_task(ingress.get(f"/restate/invocation/{iid}/attach"))
    _, query = await _command(runtime, QUERY, lambda q: q["invocation_id"] == iid)
    assert query["attach"] is True
    assert runtime.results.waiting_for() == (iid,)  # registered before the query was produced

    await _reply(runtime, query, iid, "RUNNING")
    await asyncio.sleep(0.3)
    assert not get.done()
    await _finish(runtime, iid, b'"done"')
    response = await asyncio.wait_for(get, 30)

    assert response.status == 200
    assert await response.read() == b'"done"'
    assert response.headers["x-restate-id"] == iid
    assert runtime.results.pending == 0


@pytest.mark.parametrize(
    ("status", "result", "code", "body"),
    [
        ("SUCCEEDED", ("keystate.Value", {"value": b"42"}), 200, b"42"),
        ("FAILED", ("keystate.Failure", {"code": 400, "message": "bad input"}), 400, b'{"code": 400, "message": "bad input"}'),
        ("CANCELLED", None, 409, b'{"code": 409, "message": "the invocation was cancelled"}'),
        ("KILLED", ("keystate.Failure", {"code": 409, "message": "killed"}), 409, b'{"code": 409, "message": "killed"}'),
    ],
)
async def test_output_of_a_completed_invocation(
    runtime: IngressRuntime, ingress: TestClient, status: str, result: Any, code: int, body: bytes
) -> None:
    iid = _new_id()
    get = asyncio.create_task(ingress.get(f"/restate/invocation/{iid}/output"))
    _, query = await _command(runtime, QUERY, lambda q: q["invocation_id"] == iid)
    await _reply(runtime, query, iid, status, result=result)
    response = await asyncio.wait_for(get, 30)

    assert response.status == code
    assert await response.read() == body
    assert response.headers["x-restate-id"] == iid


async def test_an_unknown_invocation_is_404(runtime: IngressRuntime, ingress: TestClient) -> None:
    iid = _new_id()
    get = asyncio.create_task(ingress.get(f"/restate/invocation/{iid}/attach"))
    _, query = await _command(runtime, QUERY, lambda q: q["invocation_id"] == iid)
    await _reply(runtime, query, None, "UNKNOWN")
    response = await asyncio.wait_for(get, 30)

    assert response.status == 404
    assert f"invocation {iid} not found" in (await response.json())["message"]
    assert runtime.results.pending == 0


async def test_attach_by_idempotency_key_of_an_object(runtime: IngressRuntime, ingress: TestClient) -> None:
    key, idem = f"k-{uuid.uuid4().hex[:6]}", f"i-{uuid.uuid4().hex[:6]}"
    get = asyncio.create_task(ingress.get(f"/restate/invocation/Counter/{key}/add/{idem}/attach"))
    msg, query = await _command(runtime, QUERY, lambda q: (q["idempotency"] or {}).get("idempotency_key") == idem)

    target = InvocationTarget("Counter", "add", key, ServiceType.VIRTUAL_OBJECT)
    assert msg.partition() == idempotency_partition_key(target, idem) % 4
    assert query["idempotency"]["target"] == {
        "service": "Counter", "handler": "add", "key": key, "service_type": "VIRTUAL_OBJECT", "handler_kind": "EXCLUSIVE"
    }
    assert query["invocation_id"] is None and query["attach"] is True
    iid = _new_id(idempotency_partition_key(target, idem))
    await _reply(runtime, query, iid, "RUNNING")
    await _finish(runtime, iid, b"7")
    response = await asyncio.wait_for(get, 30)

    assert response.status == 200 and await response.read() == b"7"
    assert response.headers["x-restate-id"] == iid
    assert runtime.results.pending == 0


async def test_output_by_idempotency_key_of_a_service(runtime: IngressRuntime, ingress: TestClient) -> None:
    idem = f"i-{uuid.uuid4().hex[:6]}"
    get = asyncio.create_task(ingress.get(f"/restate/invocation/Greeter/greet/{idem}/output"))
    msg, query = await _command(runtime, QUERY, lambda q: (q["idempotency"] or {}).get("idempotency_key") == idem)

    assert msg.partition() == idempotency_partition_key(InvocationTarget("Greeter", "greet"), idem) % 4
    assert query["idempotency"]["target"]["key"] is None
    await _reply(runtime, query, _new_id(), "SUCCEEDED", result=("keystate.Value", {"value": b'"hello"'}))
    response = await asyncio.wait_for(get, 30)
    assert response.status == 200 and await response.read() == b'"hello"'


async def test_workflow_attach_and_output(runtime: IngressRuntime, ingress: TestClient) -> None:
    wf = f"r-{uuid.uuid4().hex[:6]}"
    get = asyncio.create_task(ingress.get(f"/restate/workflow/Report/{wf}/output"))
    msg, query = await _command(runtime, QUERY, lambda q: (q["workflow"] or {}).get("key") == wf)

    assert msg.partition() == ServiceId("Report", wf).partition_key % 4
    assert msg.key() == f"Report/{wf}".encode()
    assert query["workflow"] == {"service": "Report", "handler": "run", "key": wf, "service_type": "WORKFLOW", "handler_kind": "WORKFLOW"}
    iid = _new_id(ServiceId("Report", wf).partition_key)
    await _reply(runtime, query, iid, "SUCCEEDED", result=("keystate.Value", {"value": b"a,b\n"}))
    response = await asyncio.wait_for(get, 30)

    assert response.status == 200
    assert response.headers["content-type"] == "text/csv"
    assert await response.read() == b"a,b\n" and response.headers["x-restate-id"] == iid

    attach = asyncio.create_task(ingress.get(f"/restate/workflow/Report/{wf}/attach"))
    _, query = await _command(runtime, QUERY, lambda q: (q["workflow"] or {}).get("key") == wf and q["attach"])
    await _reply(runtime, query, iid, "RUNNING")
    await _finish(runtime, iid, b"x,y\n")
    response = await asyncio.wait_for(attach, 30)
    assert response.status == 200 and await response.read() == b"x,y\n"


@pytest.mark.parametrize(
    ("method", "path", "status", "fragment"),
    [
        ("GET", "/restate/invocation/inv_nope/attach", 400, "not an invocation id: 'inv_nope'"),
        ("GET", "/restate/invocation/Nope/greet/k/output", 404, "service 'Nope' is not registered"),
        ("GET", "/restate/invocation/Counter/add/k/output", 400, "use GET /restate/invocation/Counter/{key}/{handler}/{idempotency key}"),
        ("GET", "/restate/invocation/Greeter/wave/k/output", 404, "has no handler 'wave'"),
        ("GET", "/restate/workflow/Counter/x/attach", 400, "Counter is not a workflow"),
        ("GET", "/restate/workflow/Report/attach", 404, "GET /restate/workflow/{workflow}/{id}/attach"),
        ("POST", "/restate/invocation/inv_x/attach", 405, "use GET"),
        ("GET", "/restate/awakeables/awk_x_1/resolve", 405, "use POST"),
        ("POST", "/restate/awakeables/awk_x_1/resolve", 400, "not an awakeable id"),
        ("POST", "/restate/awakeables/sign_1abc/reject", 400, "does not start with 'awk_'"),
        ("POST", "/restate/awakeables/x/complete", 404, "/restate/awakeables/{id}/resolve or /reject"),
        ("GET", "/restate/nothing", 404, "the /restate paths are"),
    ],
)
async def test_bad_restate_paths_explain_themselves(
    runtime: IngressRuntime, ingress: TestClient, method: str, path: str, status: int, fragment: str
) -> None:
    response = await ingress.request(method, path)

    assert response.status == status
    body = await response.json()
    assert body["code"] == status and fragment in body["message"]
    assert runtime.results.pending == 0


async def test_resolve_and_reject_an_awakeable(runtime: IngressRuntime, ingress: TestClient) -> None:
    iid = _new_id()
    resolve = await ingress.post(f"/restate/awakeables/awk_{iid}_3/resolve", data=b'{"ok": true}', headers={"content-type": "application/json"})
    reject = await ingress.post(f"/restate/awakeables/awk_{iid}_4/reject", data="card expired", headers={"content-type": "text/plain"})

    assert (resolve.status, reject.status) == (202, 202)
    msg, resolved = await _command(runtime, AWAKEABLE, lambda c: c["awakeable_id"] == f"awk_{iid}_3")
    assert msg.partition() == InvocationId.parse(iid).partition(4)
    assert msg.key() == iid.encode()
    assert resolved["result"] == ("keystate.Value", {"value": b'{"ok": true}'})
    _, rejected = await _command(runtime, AWAKEABLE, lambda c: c["awakeable_id"] == f"awk_{iid}_4")
    assert rejected["result"] == ("keystate.Failure", {"code": 500, "message": "card expired"})


def test_awakeable_ids_parse_to_their_invocation_and_index() -> None:
    iid = InvocationId.new()
    assert parse_awakeable_id(f"awk_{iid}_12") == (iid, 12)
    for bad in ("awk_", f"awk_{iid}", f"awk_{iid}_-1", f"awk_{iid}_x", f"{iid}_1"):
        with pytest.raises(BadRequest):
            parse_awakeable_id(bad)
