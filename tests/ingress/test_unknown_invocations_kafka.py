"""Admin actions on invocations the read model does not know: the processor decides (404 when unknown)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from keystate.ingress.runtime import IngressRuntime
from keystate.schemas.ids import InvocationId
from keystate.server.meta import register

from ingress_support import COUNTER, GREETER, find_command, produce_reply, record

pytestmark = pytest.mark.integration

QUERY = "keystate.QueryOutputCommand"


async def _command(runtime: IngressRuntime, name: str, where: Callable[[dict[str, Any]], bool]) -> tuple[Any, dict[str, Any]]:
    s = runtime.settings
    return await asyncio.to_thread(find_command, s.bootstrap, s.topics.log, name, where)


async def _answer_query(runtime: IngressRuntime, invocation_id: str, status: str) -> None:
    """Play the partition processor: answer the query the admin API asks about `invocation_id`."""
    _, query = await _command(runtime, QUERY, lambda q: q["invocation_id"] == invocation_id)
    assert query["attach"] is False
    reply = {"request_id": query["request_id"], "invocation_id": None if status == "UNKNOWN" else invocation_id, "status": status}
    await asyncio.to_thread(produce_reply, runtime.settings.bootstrap, runtime.reply_topic, reply)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PATCH", "/invocations/{id}/cancel"),
        ("PATCH", "/invocations/{id}/kill"),
        ("PATCH", "/invocations/{id}/resume"),
        ("PATCH", "/invocations/{id}/purge"),
        ("DELETE", "/invocations/{id}"),
    ],
)
async def test_an_action_on_an_unknown_invocation_is_404(
    runtime: IngressRuntime, admin: TestClient, method: str, path: str
) -> None:
    invocation_id = str(InvocationId.new())
    response = asyncio.create_task(admin.request(method, path.format(id=invocation_id)))
    await _answer_query(runtime, invocation_id, "UNKNOWN")
    answer = await asyncio.wait_for(response, 30)

    assert answer.status == 404
    body = await answer.json()
    assert body["code"] == 404 and f"unknown invocation {invocation_id}" in body["message"]


async def test_an_invocation_only_the_processor_knows_is_cancelled(runtime: IngressRuntime, admin: TestClient) -> None:
    invocation_id = str(InvocationId.new())
    response = asyncio.create_task(admin.patch(f"/invocations/{invocation_id}/cancel"))
    await _answer_query(runtime, invocation_id, "RUNNING")
    assert (await asyncio.wait_for(response, 30)).status == 202
    await _command(runtime, "keystate.CancelCommand", lambda c: c["invocation_id"] == invocation_id)


async def test_a_completed_invocation_only_the_processor_knows_cannot_be_killed(
    runtime: IngressRuntime, admin: TestClient
) -> None:
    invocation_id = str(InvocationId.new())
    response = asyncio.create_task(admin.patch(f"/invocations/{invocation_id}/kill"))
    await _answer_query(runtime, invocation_id, "SUCCEEDED")
    answer = await asyncio.wait_for(response, 30)
    assert answer.status == 409
    assert "already completed (SUCCEEDED), so it cannot be killed" in (await answer.json())["message"]


async def test_a_10_kb_key_reaches_the_log(runtime: IngressRuntime, ingress: TestClient) -> None:
    await register(runtime.meta, runtime.producer, record("http://deployment:9080", GREETER, COUNTER))
    key = "k" * 10 * 1024
    response = await ingress.post(f"/Counter/{key}/add/send", json=1)
    assert response.status == 202, await response.text()
    invocation_id = response.headers["x-restate-id"]
    msg, command = await _command(runtime, "keystate.InvokeCommand", lambda c: c["invocation_id"] == invocation_id)
    assert command["target"]["key"] == key and msg.key() == f"Counter/{key}".encode()
