"""Fixtures of the ingress tests: topics per module, a started runtime, test clients for both apps."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from keystate.ingress.admin import admin_app
from keystate.ingress.app import ingress_app
from keystate.ingress.http_limits import parser_options
from keystate.ingress.runtime import IngressRuntime, IngressSettings
from keystate.schemas.topics import Topics
from keystate.server.topics import TopicSettings, ensure_topics

from ingress_support import Deployment
from readmodel_support import ensure_changelog

PARTITIONS = 4


@pytest.fixture
async def deployment() -> AsyncIterator[Deployment]:
    fake = Deployment()
    app = web.Application()
    app.router.add_get("/discover", fake._discover)
    fake.server = TestServer(app, host="127.0.0.1")
    await fake.server.start_server()
    try:
        yield fake
    finally:
        await fake.server.close()


@pytest.fixture(scope="module")
def topics(kafka_bootstrap: str, request: pytest.FixtureRequest) -> Topics:
    module = request.module.__name__.rsplit(".", 1)[-1]
    prefix = Topics(f"test.{module}.{uuid.uuid4().hex[:8]}.")
    ensure_topics(kafka_bootstrap, prefix, TopicSettings(partitions=PARTITIONS))
    ensure_changelog(kafka_bootstrap, prefix, PARTITIONS)  # a no-op once ensure_topics creates it
    return prefix


@pytest.fixture
def ingress_settings(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> IngressSettings:
    return IngressSettings(
        kafka_bootstrap, topics, max_payload_bytes=64 * 1024, call_timeout=20.0, state_dir=tmp_path / "state"
    )


@pytest.fixture
async def runtime(ingress_settings: IngressSettings) -> AsyncIterator[IngressRuntime]:
    rt = IngressRuntime(ingress_settings)
    await rt.start()
    for _ in range(300):
        if rt.invocations.ready:
            break
        await asyncio.sleep(0.05)
    try:
        yield rt
    finally:
        await rt.stop()


async def _server(app: web.Application, runtime: IngressRuntime) -> TestServer:
    server = TestServer(app, host="127.0.0.1")
    # The HTTP parser options run_ingress uses.
    await server.start_server(**parser_options(runtime.settings.http_limits))
    return server


@pytest.fixture
async def ingress(runtime: IngressRuntime) -> AsyncIterator[TestClient]:
    async with TestClient(await _server(ingress_app(runtime), runtime)) as client:
        yield client


@pytest.fixture
async def admin(runtime: IngressRuntime) -> AsyncIterator[TestClient]:
    async with TestClient(await _server(admin_app(runtime), runtime)) as client:
        yield client
