"""The ingress HTTP layer without Kafka: routing, limits, error mapping, delays."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from keystate.ingress.app import ingress_app, parse_delay
from keystate.ingress.errors import (
    BadRequest,
    IngressError,
    InvocationFailed,
    KeyMismatch,
    NotFound,
    PayloadTooLarge,
    ResultTimeout,
    Unavailable,
    error_response,
)
from keystate.ingress.runtime import IngressRuntime, IngressSettings
from keystate.schemas.ids import InvalidIdError
from keystate.schemas.topics import Topics
from keystate.server.errors import KafkaUnavailable, MetaError

from ingress_support import COUNTER, GREETER, record

LIMIT = 1024


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    # Never started: requests that pass validation stop at the missing producer (503).
    runtime = IngressRuntime(IngressSettings("127.0.0.1:1", Topics("unit."), max_payload_bytes=LIMIT))
    rec = record("http://d:9080", GREETER, COUNTER)
    runtime.meta.state.apply(rec["deployment_id"], rec)
    async with TestClient(TestServer(ingress_app(runtime), host="127.0.0.1")) as c:
        yield c


def _body(response: web.Response) -> dict:
    assert response.content_type == "application/json"
    assert isinstance(response.body, bytes)
    return json.loads(response.body)


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (BadRequest("b"), 400),
        (KeyMismatch("k"), 400),
        (NotFound("n"), 404),
        (PayloadTooLarge("p"), 413),
        (Unavailable("u"), 503),
        (ResultTimeout("t"), 504),
        (InvocationFailed(409, "conflict"), 409),
        (InvocationFailed(0, "odd code"), 500),
        (IngressError("boom"), 500),
    ],
)
def test_every_ingress_error_has_its_status_and_json_body(error: IngressError, status: int) -> None:
    response = error_response(error)
    assert response.status == status
    assert _body(response) == {"code": status, "message": error.message}


def test_the_invocation_id_becomes_the_x_restate_id_header() -> None:
    response = error_response(InvocationFailed(409, "no", invocation_id="inv_1"))
    assert response.headers["x-restate-id"] == "inv_1"
    assert "x-restate-id" not in error_response(NotFound("x")).headers


@pytest.mark.parametrize(
    ("error", "status", "fragment"),
    [
        (web.HTTPRequestEntityTooLarge(max_size=10, actual_size=20), 413, "limit of 10 bytes"),
        (MetaError("bad manifest"), 400, "bad manifest"),
        (KafkaUnavailable("broker down"), 503, "Kafka is unavailable: broker down"),
        (InvalidIdError("not an id"), 400, "not an id"),
        (RuntimeError("bug"), 500, "internal error: RuntimeError: bug"),
    ],
)
def test_foreign_errors_are_translated(error: BaseException, status: int, fragment: str) -> None:
    response = error_response(error, max_body_bytes=10)
    assert response.status == status
    body = _body(response)
    assert body["code"] == status and fragment in body["message"]


async def test_a_chunked_body_over_the_limit_is_413(client: TestClient) -> None:
    async def chunks():
        for _ in range(4):
            yield b"x" * 512

    response = await client.post("/Greeter/greet", data=chunks(), headers={"content-type": "application/json"})
    assert response.status == 413
    assert (await response.json())["code"] == 413


async def test_a_valid_request_without_kafka_is_503(client: TestClient) -> None:
    response = await client.post("/Counter/a%2Fb/add", json=1)
    assert response.status == 503
    body = await response.json()
    assert "not connected to Kafka" in body["message"]
    assert "x-restate-id" not in response.headers  # nothing was accepted


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8", "APPLICATION/JSON"])
async def test_json_content_types_pass_validation(client: TestClient, content_type: str) -> None:
    response = await client.post("/Greeter/greet", data=b"1", headers={"content-type": content_type})
    assert response.status == 503  # passed validation, stopped at Kafka


async def test_unknown_paths_are_json_404s(client: TestClient) -> None:
    for path in ("/", "/Greeter", "/Counter/a/b/c/d"):
        response = await client.post(path)
        assert response.status == 404, path
        assert (await response.json())["code"] == 404


@pytest.mark.parametrize(
    ("text", "ms"),
    [("10s", 10_000), ("500ms", 500), ("1m30s", 90_000), ("2h", 7_200_000), ("1d", 86_400_000), ("PT10S", 10_000), ("PT1M", 60_000), ("1.5s", 1500)],
)
def test_delays(text: str, ms: int) -> None:
    assert parse_delay(text) == ms


@pytest.mark.parametrize("text", ["", "10", "soon", "PT", "10s later", "-5s"])
def test_bad_delays_say_what_is_expected(text: str) -> None:
    with pytest.raises(BadRequest, match="use a duration like 10s"):
        parse_delay(text)
