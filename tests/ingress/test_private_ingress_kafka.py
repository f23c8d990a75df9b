"""Ingress-private handlers and secret headers at the HTTP ingress, against a real broker."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp.test_utils import TestClient

from keystate.ingress.runtime import IngressRuntime
from keystate.schemas._codec import codec
from keystate.server.meta import register

from ingress_support import handler, read_log_record, record, service

pytestmark = pytest.mark.integration

BILLING = service(
    "Billing", "SERVICE", handler("charge"), handler("settle", ingressPrivate=True)
)
# A private service with one handler made public again (Restate: the handler's own setting wins).
LEDGER = service("Ledger", "VIRTUAL_OBJECT", handler("post", "EXCLUSIVE"), handler("read", "SHARED", ingressPrivate=False))
LEDGER["ingressPrivate"] = True
VAULT = service("Vault", "SERVICE", handler("open"))
VAULT["forwardHeaders"] = ["Authorization"]

SECRET_HEADERS = {"Authorization": "Bearer x-secret-123", "Cookie": "session=x-secret-456", "X-Api-Key": "x-secret-789"}


@pytest.fixture(autouse=True)
async def registered(runtime: IngressRuntime) -> None:
    await register(runtime.meta, runtime.producer, record("http://private-deployment:9080", BILLING, LEDGER, VAULT))


async def _sent_headers(runtime: IngressRuntime, client: TestClient, path: str) -> dict[str, str]:
    response = await client.post(path, json="x", headers={**SECRET_HEADERS, "x-trace": "t1"})
    assert response.status == 202, await response.text()
    invocation_id = (await response.json())["invocationId"]
    msg = await asyncio.to_thread(read_log_record, runtime.settings.bootstrap, runtime.settings.topics.log, invocation_id)
    _, command = codec().decode(msg.value())
    return dict(command["headers"])


async def test_a_private_handler_is_refused_with_restates_400_and_says_how_to_reach_it(ingress: TestClient) -> None:
    for path in ("/Billing/settle", "/Billing/settle/send", "/Ledger/k1/post", "/Ledger/k1/post/send"):
        response = await ingress.post(path, json="x")
        assert response.status == 400, path
        message = (await response.json())["message"]
        assert message.startswith("the invoked service is not public"), message
        assert "ingress_private=False" in message and "other handlers" in message
    # Attaching by idempotency key resolves the handler too: refused the same way.
    attach = await ingress.get("/restate/invocation/Billing/settle/key-1/attach")
    assert attach.status == 400


async def test_public_handlers_next_to_private_ones_are_called_as_before(ingress: TestClient) -> None:
    for path in ("/Billing/charge/send", "/Ledger/k1/read/send"):
        response = await ingress.post(path, json="x")
        assert response.status == 202, (path, await response.text())


async def test_the_admin_lists_which_services_and_handlers_are_private(admin: TestClient) -> None:
    services = {s["name"]: s for s in (await (await admin.get("/services")).json())["services"]}
    assert services["Billing"]["ingress_private"] is False
    assert {h["name"]: h["ingress_private"] for h in services["Billing"]["handlers"]} == {"charge": False, "settle": True}
    assert services["Ledger"]["ingress_private"] is True
    assert {h["name"]: h["ingress_private"] for h in services["Ledger"]["handlers"]} == {"post": True, "read": False}
    assert services["Vault"]["forward_headers"] == ["authorization"]


async def test_secret_headers_are_not_in_the_invoke_command(runtime: IngressRuntime, ingress: TestClient) -> None:
    headers = await _sent_headers(runtime, ingress, "/Billing/charge/send")
    assert headers.get("x-trace") == "t1"
    assert not {"authorization", "cookie", "x-api-key"} & set(headers), headers
    assert "x-secret" not in repr(headers)


async def test_a_service_that_forwards_a_secret_header_gets_it_and_only_it(runtime: IngressRuntime, ingress: TestClient) -> None:
    headers = await _sent_headers(runtime, ingress, "/Vault/open/send")
    assert headers["authorization"] == "Bearer x-secret-123"
    assert not {"cookie", "x-api-key"} & set(headers)
