"""The ingress against a real broker: commands land on the right log partition, results come back as HTTP."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time

import pytest
from aiohttp.test_utils import TestClient

from keystate.ingress.runtime import IngressRuntime
from keystate.schemas._codec import codec
from keystate.schemas.ids import InvocationId, partition_for
from keystate.server.meta import register

from ingress_support import COUNTER, GREETER, SIGNUP, produce_result, read_log_record, record

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
async def registered(runtime: IngressRuntime) -> None:
    # Idempotent: the first test of the module registers, later ones find the same deployment.
    await register(runtime.meta, runtime.producer, record("http://deployment:9080", GREETER, COUNTER, SIGNUP))


def _result(command: dict, status: str = "SUCCEEDED", **fields) -> dict:
    return {
        "invocation_id": command["invocation_id"],
        "target": command["target"],
        "status": status,
        "output": None,
        "failure": None,
        "idempotency_key": command["idempotency_key"],
        "completed_at_ms": int(time.time() * 1000),
        **fields,
    }


async def _command_of(runtime: IngressRuntime, invocation_id: str):
    settings = runtime.settings
    msg = await asyncio.to_thread(read_log_record, settings.bootstrap, settings.topics.log, invocation_id)
    name, command = codec().decode(msg.value())
    assert name == "keystate.InvokeCommand"
    return msg, command


async def _wait_for_pending_calls(runtime: IngressRuntime, count: int = 1) -> tuple[str, ...]:
    for _ in range(200):
        if len(runtime.results.waiting_for()) >= count:
            return runtime.results.waiting_for()
        await asyncio.sleep(0.05)
    raise AssertionError("the call never registered for its result")


async def _wait_for_pending_call(runtime: IngressRuntime) -> str:
    return (await _wait_for_pending_calls(runtime))[0]


async def test_a_keyed_call_lands_on_the_partition_of_its_key_and_returns_the_output(
    runtime: IngressRuntime, ingress: TestClient
) -> None:
    call = asyncio.create_task(
        ingress.post(
            "/Counter/alice/add",
            data=b"5",
            headers={"content-type": "application/json", "x-custom": "yes", "connection": "keep-alive", "x-trace": "k1"},
        )
    )
    invocation_id = await _wait_for_pending_call(runtime)
    msg, command = await _command_of(runtime, invocation_id)

    assert msg.partition() == partition_for("Counter/alice", 4) == InvocationId.parse(invocation_id).partition(4)
    assert msg.key() == b"Counter/alice"
    assert dict(msg.headers()) == {
        "type": b"keystate.InvokeCommand",
        "invocation_id": invocation_id.encode(),
        "target": b"Counter/alice/add",
    }
    assert command["target"] == {
        "service": "Counter",
        "handler": "add",
        "key": "alice",
        "service_type": "VIRTUAL_OBJECT",
        "handler_kind": "EXCLUSIVE",
    }
    assert command["argument"] == b"5"
    assert command["idempotency_key"] is None and command["request_id"] is None
    assert command["source"] == "ingress"
    assert command["execute_at_ms"] is None and command["caller"] is None
    # Answered on this ingress's own reply topic, not on the public keystate.results (issue 11).
    assert command["reply_topic"] == runtime.reply_topic == f"{runtime.settings.topics.prefix}replies.{runtime.settings.ingress_id}"
    assert command["headers"]["x-custom"] == "yes"
    assert command["headers"]["x-trace"] == "k1"
    assert "connection" not in command["headers"] and "content-length" not in command["headers"]
    assert all(name == name.lower() for name in command["headers"])

    await asyncio.to_thread(
        produce_result, runtime.settings.bootstrap, runtime.reply_topic, _result(command, output=b'{"total": 5}')
    )
    response = await asyncio.wait_for(call, 30)

    assert response.status == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-restate-id"] == invocation_id
    assert await response.read() == b'{"total": 5}'
    assert runtime.results.pending == 0


async def test_a_service_call_is_keyed_by_its_id_and_a_failure_keeps_its_code(
    runtime: IngressRuntime, ingress: TestClient
) -> None:
    call = asyncio.create_task(ingress.post("/Greeter/greet", json="bob"))
    invocation_id = await _wait_for_pending_call(runtime)
    msg, command = await _command_of(runtime, invocation_id)

    assert msg.key() == invocation_id.encode()
    assert msg.partition() == InvocationId.parse(invocation_id).partition(4)
    assert command["target"]["key"] is None and command["target"]["service_type"] == "SERVICE"
    assert command["argument"] == b'"bob"'

    failure = {"code": 409, "message": "bob already greeted"}
    await asyncio.to_thread(
        produce_result, runtime.settings.bootstrap, runtime.reply_topic, _result(command, "FAILED", failure=failure)
    )
    response = await asyncio.wait_for(call, 30)

    assert response.status == 409
    assert response.headers["x-restate-id"] == invocation_id
    assert await response.json() == {"code": 409, "message": "bob already greeted"}


async def test_a_cancelled_invocation_answers_409(runtime: IngressRuntime, ingress: TestClient) -> None:
    call = asyncio.create_task(ingress.post("/Counter/user-1/add", json=1))
    invocation_id = await _wait_for_pending_call(runtime)
    _, command = await _command_of(runtime, invocation_id)

    await asyncio.to_thread(
        produce_result, runtime.settings.bootstrap, runtime.reply_topic, _result(command, "CANCELLED")
    )
    response = await asyncio.wait_for(call, 30)

    assert response.status == 409
    assert await response.json() == {"code": 409, "message": "the invocation was cancelled"}


async def test_send_answers_202_with_the_id_and_schedules_with_a_delay(runtime: IngressRuntime, ingress: TestClient) -> None:
    before = int(time.time() * 1000)
    response = await ingress.post("/Counter/bob/add/send?delay=10s", json=1)

    assert response.status == 202
    body = await response.json()
    assert body["status"] == "Accepted"
    assert response.headers["x-restate-id"] == body["invocationId"]
    _, command = await _command_of(runtime, body["invocationId"])
    assert command["target"]["key"] == "bob"
    assert before + 10_000 <= command["execute_at_ms"] <= int(time.time() * 1000) + 10_000
    assert runtime.results.pending == 0


async def test_a_service_send_without_body_passes_empty_bytes(runtime: IngressRuntime, ingress: TestClient) -> None:
    response = await ingress.post("/Greeter/greet/send")

    assert response.status == 202
    _, command = await _command_of(runtime, (await response.json())["invocationId"])
    assert command["argument"] == b""


async def test_a_call_that_does_not_finish_in_time_answers_504(runtime: IngressRuntime, ingress: TestClient) -> None:
    runtime.settings = dataclasses.replace(runtime.settings, call_timeout=0.5)
    response = await ingress.post("/Greeter/greet", json="slow")

    assert response.status == 504
    invocation_id = response.headers["x-restate-id"]
    body = await response.json()
    assert body["code"] == 504
    assert invocation_id in body["message"] and "keeps running" in body["message"]
    assert runtime.results.pending == 0


@pytest.mark.parametrize(
    ("path", "kwargs", "status", "fragment"),
    [
        ("/Nope/greet", {}, 404, "service 'Nope' is not registered (registered services: Counter, Greeter, Signup)"),
        ("/Greeter/wave", {}, 404, "has no handler 'wave'; its handlers are: greet, upload"),
        ("/Counter/alice/reset", {}, 404, "its handlers are: add, get"),
        ("/Greeter/alice/greet", {}, 400, "Greeter is a service and takes no key"),
        ("/Counter/add", {}, 400, "Counter is a virtual object: a key is required, call POST /Counter/{key}/{handler}"),
        ("/Signup/run", {}, 400, "Signup is a workflow: a key is required"),
        ("/Greeter/greet", {"data": b"hi", "headers": {"content-type": "text/plain"}}, 400, "accepts application/json"),
        ("/Greeter/greet", {"data": b"x" * (64 * 1024 + 1)}, 413, "over the payload limit of 65536"),
        ("/Greeter/greet?delay=10s", {}, 400, "delay is only allowed when sending"),
        ("/Greeter/greet/send?delay=soon", {}, 400, "cannot read delay 'soon'"),
    ],
)
async def test_bad_requests_get_a_json_error_that_says_how_to_fix_them(
    runtime: IngressRuntime, ingress: TestClient, path: str, kwargs: dict, status: int, fragment: str
) -> None:
    response = await ingress.post(path, **kwargs)

    assert response.status == status
    assert response.headers["content-type"].startswith("application/json")
    body = json.loads(await response.text())
    assert body["code"] == status
    assert fragment in body["message"]
    assert "x-restate-id" not in response.headers
    assert runtime.results.pending == 0


async def test_a_handler_that_declares_its_input_type_accepts_it(runtime: IngressRuntime, ingress: TestClient) -> None:
    response = await ingress.post(
        "/Greeter/upload/send", data=b"\x00\x01", headers={"content-type": "application/octet-stream"}
    )
    assert response.status == 202
    _, command = await _command_of(runtime, (await response.json())["invocationId"])
    assert command["argument"] == b"\x00\x01"


async def test_a_get_is_not_an_invocation(ingress: TestClient) -> None:
    response = await ingress.get("/Greeter/greet")
    assert response.status == 405
    assert (await response.json())["code"] == 405
