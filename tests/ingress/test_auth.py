"""Bearer tokens on the ingress and the admin API: real apps on 127.0.0.1, the runtime not connected to Kafka.

Nothing here needs Kafka: a request that passes authentication reaches its route, which answers
from the (empty) meta view; the end-to-end flow with a broker is in test_auth_kafka.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from keystate.ingress.admin import admin_app
from keystate.ingress.app import ingress_app
from keystate.ingress.auth import ADMIN, INGRESS, BearerToken
from keystate.ingress.runtime import IngressRuntime, IngressSettings

ADMIN_SECRET = "admin-secret-0123456789abcdef"
INGRESS_SECRET = "ingress-secret-0123456789abcdef"


def _settings(tmp_path: Path, *, admin: str | None = ADMIN_SECRET, ingress: str | None = INGRESS_SECRET) -> IngressSettings:
    return IngressSettings(
        "127.0.0.1:1",  # never connected: these tests stop at authentication or at the meta view
        state_dir=tmp_path,
        admin_token=None if admin is None else BearerToken(admin, f"${ADMIN.env}"),
        ingress_token=None if ingress is None else BearerToken(ingress, f"${INGRESS.env}"),
    )


async def _clients(settings: IngressSettings) -> AsyncIterator[tuple[TestClient, TestClient]]:
    runtime = IngressRuntime(settings)
    async with (
        TestClient(TestServer(ingress_app(runtime), host="127.0.0.1")) as ingress,
        TestClient(TestServer(admin_app(runtime), host="127.0.0.1")) as admin,
    ):
        yield ingress, admin


@pytest.fixture
async def both(tmp_path: Path) -> AsyncIterator[tuple[TestClient, TestClient]]:
    async for clients in _clients(_settings(tmp_path)):
        yield clients


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_admin_without_a_token_is_401_naming_the_header_and_the_setting(both: tuple[TestClient, TestClient]) -> None:
    _, admin = both

    response = await admin.get("/deployments")

    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    body = await response.json()
    assert body["code"] == 401
    assert "Authorization: Bearer <token>" in body["message"]
    assert "KEYSTATE_ADMIN_TOKEN" in body["message"] and "--admin-token-file" in body["message"]


async def test_admin_refuses_a_wrong_token_without_echoing_it(both: tuple[TestClient, TestClient]) -> None:
    _, admin = both
    wrong = "not-the-admin-token-but-close"

    response = await admin.get("/deployments", headers=_bearer(wrong))

    assert response.status == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    text = await response.text()
    assert wrong not in text and ADMIN_SECRET not in text
    assert "KEYSTATE_ADMIN_TOKEN" in text


async def test_admin_accepts_the_right_token(both: tuple[TestClient, TestClient]) -> None:
    _, admin = both

    response = await admin.get("/deployments", headers=_bearer(ADMIN_SECRET))

    assert response.status == 200
    assert await response.json() == {"deployments": []}


@pytest.mark.parametrize(
    "header",
    [f"Basic {ADMIN_SECRET}", "Bearer", "Bearer ", ADMIN_SECRET, f"Bearer {ADMIN_SECRET}x", f"Bearer {ADMIN_SECRET[:-1]}"],
)
async def test_admin_refuses_malformed_and_near_miss_headers(both: tuple[TestClient, TestClient], header: str) -> None:
    _, admin = both

    response = await admin.get("/services", headers={"Authorization": header})

    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


async def test_the_bearer_scheme_is_case_insensitive(both: tuple[TestClient, TestClient]) -> None:
    _, admin = both

    response = await admin.get("/services", headers={"Authorization": f"bearer {ADMIN_SECRET}"})

    assert response.status == 200


async def test_health_stays_open_and_nothing_else_does(both: tuple[TestClient, TestClient]) -> None:
    _, admin = both

    health = await admin.get("/health")
    # Not started: 503 "starting", but answered without a token (liveness probes carry none).
    assert health.status == 503 and (await health.json())["status"] == "starting"
    for method, path in [
        ("GET", "/health/../deployments"),
        ("GET", "/health/"),
        ("GET", "/no/such/path"),  # 401 before 404: unauthenticated callers cannot map the routes
        ("POST", "/health"),
        ("POST", "/deployments"),
        ("GET", "/schemas/ids/1"),
        ("PATCH", "/invocations/inv_1/cancel"),
        ("DELETE", "/deployments/dp_1"),
    ]:
        response = await admin.request(method, path)
        assert response.status == 401, (method, path, response.status)


async def test_ingress_refuses_missing_and_wrong_tokens_and_accepts_the_right_one(
    both: tuple[TestClient, TestClient],
) -> None:
    ingress, _ = both

    missing = await ingress.post("/Greeter/greet", json="Ann")
    wrong = await ingress.post("/Greeter/greet", json="Ann", headers=_bearer("guess-guess-guess-guess"))
    right = await ingress.post("/Greeter/greet", json="Ann", headers=_bearer(INGRESS_SECRET))
    restate = await ingress.get("/restate/invocation/inv_1/output")

    assert (missing.status, wrong.status, restate.status) == (401, 401, 401)
    message = (await missing.json())["message"]
    assert "Authorization: Bearer <token>" in message
    assert "KEYSTATE_INGRESS_TOKEN" in message and "--ingress-token-file" in message
    assert "guess-guess-guess-guess" not in await wrong.text()
    # Past authentication: the route answers (no such service is registered).
    assert right.status == 404
    assert "is not registered" in (await right.json())["message"]


async def test_the_two_tokens_are_independent(both: tuple[TestClient, TestClient]) -> None:
    ingress, admin = both

    admin_with_ingress_token = await admin.get("/deployments", headers=_bearer(INGRESS_SECRET))
    ingress_with_admin_token = await ingress.post("/Greeter/greet", json="Ann", headers=_bearer(ADMIN_SECRET))

    assert admin_with_ingress_token.status == 401
    assert ingress_with_admin_token.status == 401


async def test_a_listener_without_a_token_stays_open(tmp_path: Path) -> None:
    async for ingress, admin in _clients(_settings(tmp_path, ingress=None)):
        open_ingress = await ingress.post("/Greeter/greet", json="Ann")
        closed_admin = await admin.get("/deployments")

        assert open_ingress.status == 404  # reached the route: no such service
        assert closed_admin.status == 401

    async for ingress, admin in _clients(_settings(tmp_path, admin=None, ingress=None)):
        assert (await admin.get("/deployments")).status == 200
        assert (await ingress.post("/Greeter/greet", json="Ann")).status == 404


async def test_run_ingress_refuses_a_non_loopback_listener_without_a_token_before_connecting(tmp_path: Path) -> None:
    from keystate.ingress.auth import AuthSetupError
    from keystate.ingress.runtime import run_ingress

    open_admin = _settings(tmp_path, admin=None)
    # Bootstrap 127.0.0.1:1 has no broker: the refusal comes before any Kafka client starts.
    with pytest.raises(AuthSetupError, match="refusing to serve the admin API on 0.0.0.0"):
        await asyncio.wait_for(run_ingress(open_admin, "127.0.0.1", admin_host="0.0.0.0"), 5)
    with pytest.raises(AuthSetupError, match="refusing to serve the ingress on ::"):
        await asyncio.wait_for(run_ingress(_settings(tmp_path, ingress=None), "::"), 5)


async def test_a_header_that_is_not_utf8_is_400_with_or_without_the_token(both: tuple[TestClient, TestClient]) -> None:
    ingress, _ = both
    answers = []
    for auth in (b"", f"Authorization: Bearer {INGRESS_SECRET}\r\n".encode()):
        # Raw bytes on the socket: HTTP clients would encode the value for us.
        reader, writer = await asyncio.open_connection(ingress.host, ingress.port)
        writer.write(
            b"POST /Greeter/greet HTTP/1.1\r\nHost: x\r\n" + auth
            + b"X-Name: caf\xe9\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
        await writer.drain()
        answers.append(await reader.read())
        writer.close()
        await writer.wait_closed()

    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
        assert b"is not valid UTF-8" in answer
