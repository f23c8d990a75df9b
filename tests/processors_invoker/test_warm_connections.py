"""Warm connections: the invoker runs attempt after attempt on one WebSocket to a real SDK deployment,
writing to a real broker; sockets that ended badly are closed, dead pooled ones replaced."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from aiohttp import web

import keystate
from keystate import Context
from keystate.processors.invoker import Invoker, InvokerSettings
from keystate.processors.state_machine import Invoke
from keystate.schemas.ids import InvocationId
from keystate.schemas.topics import Topics
from keystate.server.kafka import AsyncProducer, KafkaSettings
from keystate.server.topics import TopicSettings, ensure_topics
from tests.e2e.harness import free_port
from tests.e2e.results import read_all

pytestmark = pytest.mark.integration

PARTITIONS = 2
NS = "keystate."

warm = keystate.Service("Warm")
hanging = asyncio.Event()  # set while the `hang` handler runs
hung_up = asyncio.Event()  # set once the deployment noticed its socket was closed


@warm.handler()
async def greet(ctx: Context, name: str) -> str:
    return f"Hello {name}!"


@warm.handler()
async def wait(ctx: Context) -> str:
    _, promise = ctx.awakeable(type_hint=str)
    return await promise


@warm.handler()
async def hang(ctx: Context) -> str:
    hanging.set()
    try:
        await asyncio.Event().wait()
    finally:
        hung_up.set()
    return "never"


class Deployment:
    """The real SDK app on a loopback port; `connections` counts the TCP connections it accepted."""

    def __init__(self, port: int, **options: Any) -> None:
        self.port = port
        self.peers: set[Any] = set()
        self._options = {"suspend_after": timedelta(seconds=0.2), **options}
        self._runner: web.AppRunner | None = None

    @property
    def connections(self) -> int:
        return len(self.peers)

    async def start(self) -> None:
        application = keystate.app([warm], **self._options)

        @web.middleware
        async def count(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
            if request.path.startswith("/invoke/") and request.transport is not None:
                self.peers.add(request.transport.get_extra_info("peername"))
            return await handler(request)

        application.middlewares.append(count)
        self._runner = web.AppRunner(application, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Deployment:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()


@pytest.fixture
async def topics(kafka_bootstrap: str, unique_topic_prefix: str) -> Topics:
    topics = Topics(unique_topic_prefix)
    await asyncio.to_thread(ensure_topics, kafka_bootstrap, topics, TopicSettings(partitions=PARTITIONS))
    return topics


@contextlib.asynccontextmanager
async def _invoker(
    bootstrap: str, topics: Topics, url: Callable[[str], str], settings: InvokerSettings | None = None
) -> AsyncIterator[Invoker]:
    """An invoker writing to a real broker; `url` gives a deployment id's base URL."""
    producer = AsyncProducer(KafkaSettings(bootstrap, topics))
    the_invoker = Invoker(producer, topics.log, PARTITIONS, lambda d, _s: (url(d), ["websocket"]), settings or InvokerSettings())
    await the_invoker.start()
    try:
        yield the_invoker
    finally:
        await the_invoker.close()
        await asyncio.to_thread(producer.close)


@pytest.fixture
async def invoker(kafka_bootstrap: str, topics: Topics) -> AsyncIterator[tuple[Invoker, int]]:
    """An invoker pointed at the port of the test's deployment."""
    port = free_port()
    async with _invoker(kafka_bootstrap, topics, lambda _d: f"http://127.0.0.1:{port}") as the_invoker:
        yield the_invoker, port


def _journal(argument: bytes, *more: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"entry": (NS + "InputEntry", {"argument": argument, "headers": {}})}, *more]


def _action(iid: str, handler: str, argument: bytes = b"", *, attempt: int = 1, more: tuple[dict[str, Any], ...] = ()) -> Invoke:
    target = {"service": "Warm", "handler": handler, "key": None, "service_type": "SERVICE", "handler_kind": "EXCLUSIVE"}
    return Invoke(iid, attempt, target, _journal(argument, *more), None, None, attempt - 1, 1, int(time.time() * 1000))


async def _run(invoker: Invoker, action: Invoke) -> None:
    """Invoke and wait until the attempt ended (it wrote its last command)."""
    invoker.invoke(action)
    for _ in range(300):
        if not invoker.is_live(action.invocation_id):
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"attempt of {action.invocation_id} still running after 6 s")


def _log(bootstrap: str, topics: Topics, count: int) -> list[dict[str, Any]]:
    """The first `count` commands the invoker wrote to the log."""
    return read_all(bootstrap, topics.log, until=lambda rs: len(rs) >= count, timeout=30)


def _outputs(records: list[dict[str, Any]]) -> dict[str, Any]:
    """invocation id -> the result of its OutputEntry."""
    return {
        r["invocation_id"]: r["entry"]["entry"][1]["result"]
        for r in records
        if "entry" in r and r["entry"]["entry"][0] == NS + "OutputEntry"
    }


async def test_sequential_attempts_share_one_connection(
    kafka_bootstrap: str, topics: Topics, invoker: tuple[Invoker, int]
) -> None:
    the_invoker, port = invoker
    async with Deployment(port) as deployment:
        ids = [str(InvocationId.new()) for _ in range(5)]
        for n, iid in enumerate(ids):
            await _run(the_invoker, _action(iid, "greet", f'"n{n}"'.encode()))
        assert deployment.connections == 1
    outputs = _outputs(await asyncio.to_thread(_log, kafka_bootstrap, topics, 5))
    assert outputs == {iid: (NS + "Value", {"value": f'"Hello n{n}!"'.encode()}) for n, iid in enumerate(ids)}


async def test_a_deployment_that_does_not_advertise_reuse_gets_a_socket_per_attempt(
    kafka_bootstrap: str, topics: Topics, invoker: tuple[Invoker, int]
) -> None:
    the_invoker, port = invoker
    async with Deployment(port, idle_timeout=None) as deployment:  # as an SDK from before warm connections answers
        ids = [str(InvocationId.new()) for _ in range(3)]
        for iid in ids:
            await _run(the_invoker, _action(iid, "greet", b'"old"'))
        assert deployment.connections == 3
    assert set(_outputs(await asyncio.to_thread(_log, kafka_bootstrap, topics, 3))) == set(ids)


async def test_after_a_deployment_restart_the_next_attempt_succeeds_on_a_fresh_socket(
    kafka_bootstrap: str, topics: Topics, invoker: tuple[Invoker, int]
) -> None:
    the_invoker, port = invoker
    first, second = str(InvocationId.new()), str(InvocationId.new())
    before = Deployment(port)
    await before.start()
    await _run(the_invoker, _action(first, "greet", b'"a"'))
    await before.stop()  # the pooled socket dies with it
    async with Deployment(port) as after:
        await _run(the_invoker, _action(second, "greet", b'"b"'))
        assert after.connections == 1
    records = await asyncio.to_thread(_log, kafka_bootstrap, topics, 2)
    assert set(_outputs(records)) == {first, second}
    assert not [r for r in records if "failure" in r]  # no attempt failed for the dead socket


async def test_a_pooled_socket_closed_before_the_deployment_answered_is_replaced_once(
    kafka_bootstrap: str, topics: Topics, invoker: tuple[Invoker, int]
) -> None:
    # The deployment closes the reused socket at the StartMessage of a handler it does not serve:
    # the invoker connects once anew, and the handshake's 404 is what the failure says.
    the_invoker, port = invoker
    async with Deployment(port) as deployment:
        ok, unknown = str(InvocationId.new()), str(InvocationId.new())
        await _run(the_invoker, _action(ok, "greet", b'"a"'))
        await _run(the_invoker, _action(unknown, "nope"))
        assert deployment.connections == 2
    records = await asyncio.to_thread(_log, kafka_bootstrap, topics, 2)
    failed = [r for r in records if r.get("invocation_id") == unknown and "failure" in r]
    assert len(failed) == 1 and failed[0]["retryable"] is True
    assert "HTTP 404" in failed[0]["failure"]["message"] and "/invoke/Warm/nope" in failed[0]["failure"]["message"]


async def test_a_cancelled_attempt_closes_its_socket_and_the_next_attempt_works(
    kafka_bootstrap: str, topics: Topics, invoker: tuple[Invoker, int]
) -> None:
    the_invoker, port = invoker
    async with Deployment(port) as deployment:
        hanging.clear()
        hung_up.clear()
        stopped, after = str(InvocationId.new()), str(InvocationId.new())
        the_invoker.invoke(_action(stopped, "hang"))
        await asyncio.wait_for(hanging.wait(), 10)
        the_invoker.stop(stopped)  # e.g. the invocation was cancelled or moved
        await asyncio.wait_for(hung_up.wait(), 10)  # the deployment saw its socket close
        await _run(the_invoker, _action(after, "greet", b'"next"'))
        assert deployment.connections == 2
    assert set(_outputs(await asyncio.to_thread(_log, kafka_bootstrap, topics, 1))) == {after}


async def test_suspension_then_resume_over_the_pooled_socket(
    kafka_bootstrap: str, topics: Topics, invoker: tuple[Invoker, int]
) -> None:
    the_invoker, port = invoker
    async with Deployment(port) as deployment:
        iid = str(InvocationId.new())
        await _run(the_invoker, _action(iid, "wait"))  # suspends on its awakeable
        records = await asyncio.to_thread(_log, kafka_bootstrap, topics, 2)
        awakeable = next(r["entry"] for r in records if "entry" in r)
        assert [r["waiting_on"] for r in records if "waiting_on" in r] == [[1]]
        name, entry = awakeable["entry"]
        resolved = {"entry": (name, {**entry, "result": (NS + "Value", {"value": b'"woken"'})})}
        await _run(the_invoker, _action(iid, "wait", attempt=2, more=(resolved,)))
        assert deployment.connections == 1
    outputs = _outputs(await asyncio.to_thread(_log, kafka_bootstrap, topics, 4))
    assert outputs == {iid: (NS + "Value", {"value": b'"woken"'})}


async def test_a_completion_for_an_ended_attempt_never_reaches_the_next_attempt(
    kafka_bootstrap: str, topics: Topics, invoker: tuple[Invoker, int]
) -> None:
    the_invoker, port = invoker
    async with Deployment(port) as deployment:
        ended, next_one = str(InvocationId.new()), str(InvocationId.new())
        the_invoker.invoke(_action(ended, "wait"))
        attempt = the_invoker._live[ended]
        for _ in range(200):
            if attempt.ws is not None:
                break
            await asyncio.sleep(0.01)
        socket = attempt.ws
        assert socket is not None
        while the_invoker.is_live(ended):
            await asyncio.sleep(0.02)
        # A completion notified while the attempt ran, whose send runs only after it ended.
        assert the_invoker._stream is not None
        await the_invoker._send(attempt, socket, the_invoker._stream.completion(1, (NS + "Value", {"value": b'"late"'})))
        await _run(the_invoker, _action(next_one, "wait"))  # same handler, same entry index, same socket
        assert deployment.connections == 1
    records = await asyncio.to_thread(_log, kafka_bootstrap, topics, 4)
    assert _outputs(records) == {}  # the late value never completed the next attempt's awakeable
    assert sorted(r["invocation_id"] for r in records if "waiting_on" in r) == sorted([ended, next_one])


async def test_idle_sockets_of_one_deployment_make_room_for_another_on_the_same_endpoint(
    kafka_bootstrap: str, topics: Topics
) -> None:
    # Two deployments behind one host:port (different base paths) share its connection limit; with a
    # limit of 1, the socket idle for one must be closed before the other connects, not block it.
    port = free_port()
    root = web.Application()
    root.add_subapp("/a/", keystate.app([warm]))
    root.add_subapp("/b/", keystate.app([warm]))
    runner = web.AppRunner(root, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    settings = InvokerSettings(max_concurrent_attempts_per_deployment=1, connect_timeout_s=5.0)
    ids = [str(InvocationId.new()) for _ in range(3)]
    try:
        async with _invoker(kafka_bootstrap, topics, lambda d: f"http://127.0.0.1:{port}/{d}", settings) as the_invoker:
            for iid, deployment in zip(ids, ("a", "b", "a"), strict=True):
                action = _action(iid, "greet", f'"{deployment}"'.encode())
                await _run(the_invoker, dataclasses.replace(action, deployment_id=deployment))
    finally:
        await runner.cleanup()
    outputs = _outputs(await asyncio.to_thread(_log, kafka_bootstrap, topics, 3))
    assert outputs == {
        iid: (NS + "Value", {"value": f'"Hello {d}!"'.encode()}) for iid, d in zip(ids, ("a", "b", "a"), strict=True)
    }


async def test_a_socket_idle_past_the_pools_timeout_is_closed_and_the_next_attempt_connects_anew(
    kafka_bootstrap: str, topics: Topics
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = InvokerSettings(idle_connection_timeout_s=2.0)
    async with Deployment(port) as deployment, _invoker(kafka_bootstrap, topics, lambda _d: url, settings) as the_invoker:
        await _run(the_invoker, _action(str(InvocationId.new()), "greet", b'"a"'))
        await _run(the_invoker, _action(str(InvocationId.new()), "greet", b'"b"'))
        assert deployment.connections == 1
        assert the_invoker._pool is not None
        for _ in range(500):  # the pool's watcher closes it once it was idle for 2 s
            if the_invoker._pool.idle(url) == 0:
                break
            await asyncio.sleep(0.02)
        assert the_invoker._pool.idle(url) == 0
        await _run(the_invoker, _action(str(InvocationId.new()), "greet", b'"c"'))
        assert deployment.connections == 2
    assert len(_outputs(await asyncio.to_thread(_log, kafka_bootstrap, topics, 3))) == 3
