"""The invoker connects only where the deployment allow-list says, and follows no redirect."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from keystate.processors.invoker import Invoker, InvokerSettings
from keystate.processors.state_machine import Invoke
from keystate.schemas.ids import InvocationId
from keystate.schemas.topics import Topics
from keystate.server.address_policy import AddressPolicy
from keystate.server.kafka import AsyncProducer, KafkaSettings
from keystate.server.topics import TopicSettings, ensure_topics
from tests.e2e.results import read_all

pytestmark = pytest.mark.integration

PARTITIONS = 2


@pytest.fixture
async def deployment() -> AsyncIterator[tuple[str, list[str]]]:
    """A loopback server that counts requests and redirects every invocation elsewhere."""
    seen: list[str] = []

    async def redirect(request: web.Request) -> web.Response:
        seen.append(request.path)
        raise web.HTTPTemporaryRedirect("http://169.254.169.254/latest/meta-data/")

    app = web.Application()
    app.router.add_post("/invoke/{service}/{handler}", redirect)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}", seen
    finally:
        await runner.cleanup()


def _invoke(iid: str) -> Invoke:
    target = {"service": "Greeter", "handler": "greet", "key": None, "service_type": "SERVICE", "handler_kind": "SHARED"}
    return Invoke(iid, 1, target, [], None, None, 0, 1, int(time.time() * 1000))


async def _failures(bootstrap: str, prefix: str, url: str, settings: InvokerSettings) -> dict[str, object]:
    topics = Topics(prefix)
    ensure_topics(bootstrap, topics, TopicSettings(partitions=PARTITIONS))
    producer = AsyncProducer(KafkaSettings(bootstrap, topics))
    invoker = Invoker(producer, topics.log, PARTITIONS, lambda _d, _s: (url, ["request_response"]), settings)
    await invoker.start()
    iid = str(InvocationId.new())
    try:
        invoker.invoke(_invoke(iid))
        while invoker.live():
            await asyncio.sleep(0.05)
    finally:
        await invoker.close()
        await asyncio.to_thread(producer.close)
    (record,) = read_all(bootstrap, topics.log, until=lambda rs: len(rs) >= 1, timeout=30)
    assert record["invocation_id"] == iid
    return dict(record)


async def test_a_deployment_outside_the_allow_list_is_not_connected_to(
    kafka_bootstrap: str, unique_topic_prefix: str, deployment: tuple[str, list[str]]
) -> None:
    url, seen = deployment
    settings = InvokerSettings(deployment_allow=AddressPolicy.parse("public"))
    record = await _failures(kafka_bootstrap, unique_topic_prefix, url, settings)
    message = record["failure"]["message"]  # type: ignore[index]
    assert message.startswith("not connecting to the deployment: ")
    assert "127.0.0.1, a loopback address" in message and "--deployment-allow" in message
    assert seen == []


async def test_a_redirect_from_a_deployment_is_not_followed(
    kafka_bootstrap: str, unique_topic_prefix: str, deployment: tuple[str, list[str]]
) -> None:
    url, seen = deployment
    record = await _failures(kafka_bootstrap, unique_topic_prefix, url, InvokerSettings())
    message = record["failure"]["message"]  # type: ignore[index]
    assert "HTTP 307" in message and "does not follow redirects" in message
    assert "169.254.169.254" in message  # where it pointed, so the operator sees it
    assert record["retryable"] is True
    assert seen == ["/invoke/Greeter/greet"]
