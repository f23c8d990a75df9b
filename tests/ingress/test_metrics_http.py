"""GET /metrics on the ingress and the admin API: behind each listener's token, counting requests by route class.

Real apps on 127.0.0.1 with a runtime never connected to Kafka (as in test_auth.py); the metrics of a
running stack are checked end to end in tests/e2e/test_metrics_scrape.py.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client.parser import text_string_to_metric_families

from keystate.ingress.admin import admin_app
from keystate.ingress.app import ingress_app
from keystate.ingress.auth import ADMIN, INGRESS, BearerToken
from keystate.ingress.runtime import IngressRuntime, IngressSettings

ADMIN_SECRET = "admin-secret-0123456789abcdef"
INGRESS_SECRET = "ingress-secret-0123456789abcdef"


async def _clients(tmp_path: Path, *, tokens: bool) -> AsyncIterator[tuple[TestClient, TestClient]]:
    settings = IngressSettings(
        "127.0.0.1:1",  # never connected
        state_dir=tmp_path,
        admin_token=BearerToken(ADMIN_SECRET, f"${ADMIN.env}") if tokens else None,
        ingress_token=BearerToken(INGRESS_SECRET, f"${INGRESS.env}") if tokens else None,
    )
    runtime = IngressRuntime(settings)
    async with (
        TestClient(TestServer(ingress_app(runtime), host="127.0.0.1")) as ingress,
        TestClient(TestServer(admin_app(runtime), host="127.0.0.1")) as admin,
    ):
        yield ingress, admin


@pytest.fixture
async def with_tokens(tmp_path: Path) -> AsyncIterator[tuple[TestClient, TestClient]]:
    async for clients in _clients(tmp_path, tokens=True):
        yield clients


@pytest.fixture
async def open_apps(tmp_path: Path) -> AsyncIterator[tuple[TestClient, TestClient]]:
    async for clients in _clients(tmp_path, tokens=False):
        yield clients


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def _requests(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], **labels: str) -> float:
    return samples.get(("keystate_http_requests_total", frozenset(labels.items())), 0.0)


async def _scrape(client: TestClient, token: str | None = None) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = await client.get("/metrics", headers=headers)
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/plain")
    return _samples(await response.text())


async def test_metrics_need_the_listeners_token_and_say_how_to_send_it(with_tokens: tuple[TestClient, TestClient]) -> None:
    ingress, admin = with_tokens

    refused_admin = await admin.get("/metrics")
    refused_ingress = await ingress.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_SECRET}"})

    assert refused_admin.status == 401
    assert "KEYSTATE_ADMIN_TOKEN" in (await refused_admin.json())["message"]
    assert refused_ingress.status == 401  # the admin token is not the ingress's
    assert ADMIN_SECRET not in await refused_ingress.text()
    assert await _scrape(admin, ADMIN_SECRET)
    assert await _scrape(ingress, INGRESS_SECRET)


async def test_requests_are_counted_by_listener_route_class_and_status(open_apps: tuple[TestClient, TestClient]) -> None:
    ingress, admin = open_apps
    before = await _scrape(admin)

    assert (await admin.get("/services/nope")).status == 404
    assert (await admin.get("/no/such/route")).status == 404
    assert (await ingress.post("/NoSuchService/greet", json="x")).status == 404
    assert (await ingress.post("/NoSuchService/greet/send", json="x")).status == 404
    after = await _scrape(ingress)

    def grew(**labels: str) -> float:
        return _requests(after, **labels) - _requests(before, **labels)

    assert grew(listener="admin", route="/services/{name}", code="404") == 1
    assert grew(listener="admin", route="unmatched", code="404") == 1
    assert grew(listener="ingress", route="call", code="404") == 1
    assert grew(listener="ingress", route="send", code="404") == 1
    latency = [v for (name, labels), v in after.items()
               if name == "keystate_http_request_duration_seconds_count" and ("listener", "admin") in labels]
    assert latency and min(latency) >= 1
    # Paths never become labels: the service name of the request is nowhere in the text.
    assert not any("NoSuchService" in value for _, labels in after for _, value in labels)
