"""Client mistakes get a JSON 4xx that says what was wrong, never a 500 or aiohttp's plain text (no Kafka)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from keystate.ingress.admin import admin_app
from keystate.ingress.app import MAX_DELAY_MS, ingress_app, parse_delay
from keystate.ingress.errors import BadRequest
from keystate.ingress.http_limits import parser_options
from keystate.ingress.restate_paths import parse_awakeable_id
from keystate.ingress.runtime import IngressRuntime, IngressSettings
from keystate.schemas.ids import InvocationId
from keystate.schemas.topics import Topics

from ingress_support import COUNTER, GREETER, record

KiB = 1024


def _runtime() -> IngressRuntime:
    # Never started: requests that pass validation stop at the missing producer (503).
    runtime = IngressRuntime(IngressSettings("127.0.0.1:1", Topics("unit."), max_url_bytes=16 * KiB, max_header_bytes=16 * KiB))
    rec = record("http://d:9080", GREETER, COUNTER)
    runtime.meta.state.apply(rec["deployment_id"], rec)
    return runtime


async def _client(app: web.Application, runtime: IngressRuntime) -> TestClient:
    server = TestServer(app, host="127.0.0.1")
    # The parser options run_ingress uses, so the test sees what production does.
    await server.start_server(**parser_options(runtime.settings.http_limits))
    return TestClient(server)


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    runtime = _runtime()
    async with await _client(ingress_app(runtime), runtime) as c:
        yield c


@pytest.fixture
async def admin() -> AsyncIterator[TestClient]:
    runtime = _runtime()
    async with await _client(admin_app(runtime), runtime) as c:
        yield c


async def _error(response: web.StreamResponse, status: int) -> str:
    assert response.status == status, await response.text()  # type: ignore[attr-defined]
    assert response.content_type == "application/json"
    body = await response.json()  # type: ignore[attr-defined]
    assert body["code"] == status
    return str(body["message"])


@pytest.mark.parametrize("delay", ["99999999999999d", "9" * 60 + "d", "P99999999999999D", "P" + "9" * 40 + "D", "3651d"])
async def test_an_overflowing_delay_is_a_400_that_says_the_range(client: TestClient, delay: str) -> None:
    message = await _error(await client.post(f"/Greeter/greet/send?delay={delay}", json=1), 400)
    assert "too long: the longest delay is 3650 days" in message


@pytest.mark.parametrize("delay", ["P" + "9" * 100 + "D", "9" * 5000 + "d"])
async def test_a_delay_too_long_to_read_is_a_400(client: TestClient, delay: str) -> None:
    message = await _error(await client.post(f"/Greeter/greet/send?delay={delay}", json=1), 400)
    assert "too long to be a duration" in message


def test_the_longest_delay_is_accepted() -> None:
    assert parse_delay("3650d") == MAX_DELAY_MS
    with pytest.raises(BadRequest, match="use a duration like"):
        parse_delay("²s")  # not a digit int() reads


@pytest.mark.parametrize("index", ["²", "١", "99999999999", "-1"])
async def test_an_awakeable_index_that_is_no_entry_index_is_a_400(client: TestClient, index: str) -> None:
    awakeable = f"awk_{InvocationId.new()}_{index}"
    message = await _error(await client.post(f"/restate/awakeables/{awakeable}/resolve", json=1), 400)
    assert "is not an entry index" in message and "awk_<invocation id>_<index>" in message
    with pytest.raises(BadRequest):
        parse_awakeable_id(awakeable)


async def test_a_10_kb_key_is_accepted(client: TestClient) -> None:
    response = await client.post(f"/Counter/{'k' * 10 * KiB}/add", json=1)
    assert "not connected to Kafka" in await _error(response, 503)  # passed validation, stopped at Kafka


async def test_a_10_kb_header_is_accepted(client: TestClient) -> None:
    response = await client.post("/Counter/a/add", json=1, headers={"x-big": "v" * 10 * KiB})
    assert "not connected to Kafka" in await _error(response, 503)


async def test_a_key_over_the_url_limit_is_a_json_414_naming_the_limit(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR):
        message = await _error(await client.post(f"/Counter/{'k' * 20 * KiB}/add", json=1), 414)
    assert "over the limit of 16384 (max_url_bytes)" in message
    assert not [r for r in caplog.records if r.exc_info], "a client mistake logs no traceback"


async def test_headers_over_the_limit_are_a_json_431_naming_the_limit(client: TestClient) -> None:
    response = await client.post("/Counter/a/add", json=1, headers={"x-big": "v" * 20 * KiB})
    assert "over the limit of 16384 (max_header_bytes)" in await _error(response, 431)


async def test_a_header_that_is_not_utf8_is_a_400(client: TestClient) -> None:
    # Raw bytes on the socket: HTTP clients would encode the value for us.
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"POST /Counter/a/add HTTP/1.1\r\nHost: x\r\nidempotency-key: \xff\xfe\r\n"
        b"content-type: application/json\r\ncontent-length: 1\r\nconnection: close\r\n\r\n1"
    )
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), answer
    assert b"is not valid UTF-8" in body and json.loads(body)["code"] == 400


async def test_the_admin_api_has_the_same_limits(admin: TestClient) -> None:
    long_id = "inv_" + "x" * 10 * KiB
    assert "not an invocation id" in await _error(await admin.patch(f"/invocations/{long_id}/cancel"), 400)
    too_long = "inv_" + "x" * 20 * KiB
    assert "max_url_bytes" in await _error(await admin.get(f"/invocations/{too_long}"), 414)
