"""Idempotency keys and workflow runs against a real broker; the test plays the partition processor."""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Callable
from email.utils import parsedate_to_datetime
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from keystate.ingress.runtime import IngressRuntime
from keystate.schemas.ids import HandlerKind, InvocationId, InvocationTarget, ServiceType, idempotency_partition_key
from keystate.server.meta import register

from ingress_support import COUNTER, GREETER, SIGNUP, find_command, produce_records, produce_reply, produce_result, record

pytestmark = pytest.mark.integration

INVOKE = "keystate.InvokeCommand"


@pytest.fixture(autouse=True)
async def registered(runtime: IngressRuntime) -> None:
    await register(runtime.meta, runtime.producer, record("http://deployment:9080", GREETER, COUNTER, SIGNUP))


def _unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


async def _command(runtime: IngressRuntime, where: Callable[[dict[str, Any]], bool]) -> tuple[Any, dict[str, Any]]:
    s = runtime.settings
    return await asyncio.to_thread(find_command, s.bootstrap, s.topics.log, INVOKE, where)


async def _reply(runtime: IngressRuntime, command: dict[str, Any], **fields: Any) -> None:
    reply = {"request_id": command["request_id"], "invocation_id": command["invocation_id"], "status": "RUNNING", **fields}
    await asyncio.to_thread(produce_reply, runtime.settings.bootstrap, runtime.reply_topic, reply)


def _result(invocation_id: str, command: dict[str, Any], status: str = "SUCCEEDED", **fields: Any) -> dict[str, Any]:
    return {
        "invocation_id": invocation_id,
        "target": command["target"],
        "status": status,
        "output": None,
        "failure": None,
        "idempotency_key": command["idempotency_key"],
        "completed_at_ms": int(time.time() * 1000),
        **fields,
    }


async def _finish(runtime: IngressRuntime, invocation_id: str, command: dict[str, Any], **fields: Any) -> None:
    s = runtime.settings
    await asyncio.to_thread(produce_result, s.bootstrap, s.reply_topic, _result(invocation_id, command, **fields))


async def _settled(runtime: IngressRuntime) -> None:
    for _ in range(100):
        if runtime.results.pending == 0:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"{runtime.results.pending} waiters were never forgotten")


async def test_a_repeated_idempotency_key_gets_the_same_id_and_response(runtime: IngressRuntime, ingress: TestClient) -> None:
    key, idem = _unique("dora"), _unique("order")
    first = asyncio.create_task(ingress.post(f"/Counter/{key}/add", json=3, headers={"idempotency-key": idem}))
    msg, command = await _command(runtime, lambda c: c["idempotency_key"] == idem)

    target = InvocationTarget("Counter", "add", key, ServiceType.VIRTUAL_OBJECT, HandlerKind.EXCLUSIVE)
    invocation_id = InvocationId.parse(command["invocation_id"])
    assert invocation_id.partition_key == idempotency_partition_key(target, idem)
    assert msg.partition() == invocation_id.partition(4)
    assert command["request_id"] and uuid.UUID(command["request_id"])

    await _reply(runtime, command)
    await _finish(runtime, command["invocation_id"], command, output=b"3")
    response = await asyncio.wait_for(first, 30)
    assert response.status == 200
    assert await response.read() == b"3"
    assert response.headers["x-restate-id"] == command["invocation_id"]
    assert "idempotency-expires" not in response.headers

    # The repeat is a new command; the processor answers that the first invocation completed.
    second = asyncio.create_task(ingress.post(f"/Counter/{key}/add", json=3, headers={"idempotency-key": idem}))
    _, repeat = await _command(runtime, lambda c: c["idempotency_key"] == idem and c["request_id"] != command["request_id"])
    expires_ms = int(time.time() * 1000) + 86_400_000
    await _reply(
        runtime,
        repeat,
        invocation_id=command["invocation_id"],
        status="SUCCEEDED",
        result=("keystate.Value", {"value": b"3"}),
        previously_accepted=True,
        expires_at_ms=expires_ms,
    )
    again = await asyncio.wait_for(second, 30)

    assert again.status == 200
    assert await again.read() == b"3"
    assert again.headers["x-restate-id"] == command["invocation_id"]
    assert int(parsedate_to_datetime(again.headers["idempotency-expires"]).timestamp()) == expires_ms // 1000
    await _settled(runtime)


async def test_a_result_right_behind_its_reply_is_not_missed(runtime: IngressRuntime, ingress: TestClient) -> None:
    idem = _unique("fast")
    call = asyncio.create_task(ingress.post("/Greeter/greet", json="x", headers={"idempotency-key": idem}))
    _, command = await _command(runtime, lambda c: c["idempotency_key"] == idem)
    iid = command["invocation_id"]
    target = InvocationTarget("Greeter", "greet")
    assert InvocationId.parse(iid).partition_key == idempotency_partition_key(target, idem)

    # One commit: the reply and the result arrive in the same fetch.
    reply = {"request_id": command["request_id"], "invocation_id": iid, "status": "RUNNING", "result": None,
             "previously_accepted": False, "expires_at_ms": None}
    s = runtime.settings
    await asyncio.to_thread(
        produce_records,
        s.bootstrap,
        s.reply_topic,
        [("keystate.QueryOutputReply", reply, iid), ("keystate.InvocationResult", _result(iid, command, output=b'"hi"'), iid)],
    )
    response = await asyncio.wait_for(call, 30)

    assert response.status == 200
    assert await response.read() == b'"hi"'
    await _settled(runtime)


async def test_a_repeated_key_of_a_failed_invocation_repeats_the_failure(runtime: IngressRuntime, ingress: TestClient) -> None:
    idem = _unique("pay")
    call = asyncio.create_task(ingress.post("/Greeter/greet", json="x", headers={"idempotency-key": idem}))
    _, command = await _command(runtime, lambda c: c["idempotency_key"] == idem)
    existing = str(InvocationId.new(idempotency_partition_key(InvocationTarget("Greeter", "greet"), idem)))
    await _reply(
        runtime,
        command,
        invocation_id=existing,
        status="FAILED",
        previously_accepted=True,
        result=("keystate.Failure", {"code": 422, "message": "card declined"}),
        expires_at_ms=1_900_000_000_000,
    )
    response = await asyncio.wait_for(call, 30)

    assert response.status == 422
    assert await response.json() == {"code": 422, "message": "card declined"}
    assert response.headers["x-restate-id"] == existing
    assert response.headers["idempotency-expires"] == "Sun, 17 Mar 2030 17:46:40 GMT"


async def test_an_idempotent_send_is_accepted_then_previously_accepted(runtime: IngressRuntime, ingress: TestClient) -> None:
    key, idem = _unique("eve"), _unique("once")
    first = asyncio.create_task(ingress.post(f"/Counter/{key}/add/send", json=1, headers={"idempotency-key": idem}))
    _, command = await _command(runtime, lambda c: c["idempotency_key"] == idem)
    assert runtime.results.waiting_for() == ()  # a send never waits for the result
    await _reply(runtime, command)
    response = await asyncio.wait_for(first, 30)

    assert response.status == 202
    assert await response.json() == {"invocationId": command["invocation_id"], "status": "Accepted"}
    assert response.headers["x-restate-id"] == command["invocation_id"]

    second = asyncio.create_task(ingress.post(f"/Counter/{key}/add/send", json=1, headers={"idempotency-key": idem}))
    _, repeat = await _command(runtime, lambda c: c["idempotency_key"] == idem and c["request_id"] != command["request_id"])
    await _reply(runtime, repeat, invocation_id=command["invocation_id"], previously_accepted=True)
    again = await asyncio.wait_for(second, 30)

    assert again.status == 202
    assert await again.json() == {"invocationId": command["invocation_id"], "status": "PreviouslyAccepted"}
    await _settled(runtime)


async def test_a_workflow_runs_once_and_a_second_run_call_is_409(runtime: IngressRuntime, ingress: TestClient) -> None:
    wf = _unique("user")
    first = asyncio.create_task(ingress.post(f"/Signup/{wf}/run", json={"email": "a@b.c"}))
    _, command = await _command(runtime, lambda c: c["target"]["key"] == wf)
    assert command["target"]["handler_kind"] == "WORKFLOW"
    assert command["idempotency_key"] is None and command["request_id"]
    assert InvocationId.parse(command["invocation_id"]).partition_key == InvocationTarget(
        "Signup", "run", wf, ServiceType.WORKFLOW
    ).service_id.partition_key  # type: ignore[union-attr]

    await _reply(runtime, command)
    await _finish(runtime, command["invocation_id"], command, output=b'"welcome"')
    response = await asyncio.wait_for(first, 30)
    assert response.status == 200 and await response.read() == b'"welcome"'

    second = asyncio.create_task(ingress.post(f"/Signup/{wf}/run", json={"email": "a@b.c"}))
    _, repeat = await _command(runtime, lambda c: c["target"]["key"] == wf and c["request_id"] != command["request_id"])
    await _reply(
        runtime, repeat, invocation_id=command["invocation_id"], previously_accepted=True, status="SUCCEEDED",
        result=("keystate.Value", {"value": b'"welcome"'}),
    )
    conflict = await asyncio.wait_for(second, 30)

    assert conflict.status == 409
    assert conflict.headers["x-restate-id"] == command["invocation_id"]
    assert await conflict.json() == {
        "code": 409,
        "message": f"workflow Signup/{wf} was already started; attach with GET /restate/workflow/Signup/{wf}/attach",
    }
    await _settled(runtime)


async def test_a_second_workflow_send_is_previously_accepted(runtime: IngressRuntime, ingress: TestClient) -> None:
    wf = _unique("user")
    first = asyncio.create_task(ingress.post(f"/Signup/{wf}/run/send", json={}))
    _, command = await _command(runtime, lambda c: c["target"]["key"] == wf)
    await _reply(runtime, command)
    assert (await (await asyncio.wait_for(first, 30)).json())["status"] == "Accepted"

    second = asyncio.create_task(ingress.post(f"/Signup/{wf}/run/send", json={}))
    _, repeat = await _command(runtime, lambda c: c["target"]["key"] == wf and c["request_id"] != command["request_id"])
    await _reply(runtime, repeat, invocation_id=command["invocation_id"], previously_accepted=True)
    response = await asyncio.wait_for(second, 30)

    assert response.status == 202
    assert await response.json() == {"invocationId": command["invocation_id"], "status": "PreviouslyAccepted"}


async def test_a_shared_workflow_handler_is_an_ordinary_keyed_call(runtime: IngressRuntime, ingress: TestClient) -> None:
    wf = _unique("user")
    call = asyncio.create_task(ingress.post(f"/Signup/{wf}/status"))
    msg, command = await _command(runtime, lambda c: c["target"]["key"] == wf)

    assert command["request_id"] is None and command["target"]["handler_kind"] == "SHARED"
    assert msg.key() == f"Signup/{wf}".encode()
    await _finish(runtime, command["invocation_id"], command, output=b'"pending"')
    response = await asyncio.wait_for(call, 30)
    assert response.status == 200 and await response.read() == b'"pending"'


async def test_without_a_reply_an_idempotent_call_times_out_saying_why(runtime: IngressRuntime, ingress: TestClient) -> None:
    runtime.settings = dataclasses.replace(runtime.settings, call_timeout=0.5)
    response = await ingress.post("/Greeter/greet", json="x", headers={"idempotency-key": _unique("lost")})

    assert response.status == 504
    body = await response.json()
    assert "no partition processor confirmed it" in body["message"]
    assert "same idempotency-key" in body["message"]
    assert response.headers["x-restate-id"].startswith("inv_")
    assert runtime.results.pending == 0
