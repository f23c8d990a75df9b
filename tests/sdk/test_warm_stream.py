"""Warm connections, SDK side: attempt after attempt on one WebSocket when the processor asks for it."""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

import keystate
from keystate import Context, ObjectContext
from keystate.schemas._codec import codec
from keystate.schemas.ids import InvocationId, positive_hash

from sdk_helpers import NS, completion, entries_of, entry, input_entry, kinds, start, target, value
from tests.e2e.harness import free_port, wait_http

REUSE = {"x-keystate-reuse": "1"}

greeter = keystate.Service("WarmGreeter")
counter = keystate.VirtualObject("WarmCounter")


@greeter.handler()
async def greet(ctx: Context, name: str) -> str:
    return f"Hello {name}!"


@greeter.handler()
async def relay(ctx: Context, name: str) -> str:
    return await ctx.service_call(greet, name)


@counter.handler()
async def add(ctx: ObjectContext, n: int) -> int:
    count = (await ctx.get("count") or 0) + n
    ctx.set("count", count)
    return count


Message = tuple[str, dict[str, Any]]


class Processor:
    """Speaks the protocol over one socket, as the invoker would."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, *messages: Message) -> None:
        for name, record in messages:
            await self.ws.send_bytes(codec().encode(name, record))

    async def until_ended(self, timeout: float = 3.0) -> list[Message]:
        """Messages up to and including the attempt's End, Suspension or Error."""
        out = []
        while True:
            msg = await self.ws.receive(timeout=timeout)
            assert msg.type is aiohttp.WSMsgType.BINARY, msg
            out.append(codec().decode(msg.data))
            if out[-1][0] in (NS + "EndMessage", NS + "SuspensionMessage", NS + "ErrorMessage"):
                return out


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    application = keystate.app([greeter, counter], suspend_after=timedelta(seconds=0.2), idle_timeout=timedelta(seconds=30))
    async with TestClient(TestServer(application)) as c:
        yield c


async def _reused(client: TestClient, path: str = "/invoke/WarmGreeter/greet") -> Processor:
    ws = await client.ws_connect(path, headers=REUSE)
    assert ws._response.headers.get("x-keystate-reuse") == "1"
    return Processor(ws)


def _id(n: int) -> str:
    return str(InvocationId.new(positive_hash(f"warm-{n}"), random=bytes([n] * 15)))


async def test_attempts_of_different_handlers_run_one_after_another_on_one_socket(client: TestClient) -> None:
    p = await _reused(client)
    await p.send(start(target("WarmGreeter", "greet"), invocation_id=_id(1)), input_entry(b'"ann"'))
    assert kinds(await p.until_ended()) == ["1:OutputEntry", "EndMessage"]
    # Fresh state per attempt: an object handler on the socket opened for a service handler.
    obj = target("WarmCounter", "add", "k", "VIRTUAL_OBJECT")
    await p.send(start(obj, state={"count": b"41"}, invocation_id=_id(2)), input_entry(b"1"))
    out = await p.until_ended()
    assert entries_of(out)[-1] == (3, "OutputEntry", {"result": value(b"42")})
    await p.send(start(target("WarmGreeter", "greet"), invocation_id=_id(3)), input_entry(b'"bo"'))
    assert entries_of(await p.until_ended()) == [(1, "OutputEntry", {"result": value(b'"Hello bo!"')})]
    assert not p.ws.closed


async def test_a_completion_for_an_ended_attempt_never_reaches_the_next_one(client: TestClient) -> None:
    p = await _reused(client, "/invoke/WarmGreeter/relay")
    await p.send(start(target("WarmGreeter", "relay"), invocation_id=_id(4)), input_entry(b'"ann"'))
    assert kinds(await p.until_ended()) == ["1:CallEntry", "SuspensionMessage"]
    # Late for the suspended attempt: it raced the end and is dropped, not kept for the next one.
    await p.send(completion(1, value(b'"stale"')))
    await p.send(start(target("WarmGreeter", "relay"), invocation_id=_id(5)), input_entry(b'"bea"'))
    assert kinds(await p.until_ended()) == ["1:CallEntry", "SuspensionMessage"]


async def test_suspension_then_the_resumed_attempt_on_the_same_socket(client: TestClient) -> None:
    p = await _reused(client, "/invoke/WarmGreeter/relay")
    await p.send(start(target("WarmGreeter", "relay"), invocation_id=_id(6)), input_entry(b'"ann"'))
    out = await p.until_ended()
    assert kinds(out) == ["1:CallEntry", "SuspensionMessage"]
    call = entries_of(out)[0][2]
    await p.send(
        start(target("WarmGreeter", "relay"), 2, retry_count=1, invocation_id=_id(6)),
        input_entry(b'"ann"'),
        entry(1, "CallEntry", call),
        completion(1, value(b'"Hello ann!"')),
    )
    assert entries_of(await p.until_ended()) == [(2, "OutputEntry", {"result": value(b'"Hello ann!"')})]


async def test_without_the_request_header_one_attempt_per_socket_as_before(client: TestClient) -> None:
    ws = await client.ws_connect("/invoke/WarmGreeter/greet")
    assert "x-keystate-reuse" not in ws._response.headers
    p = Processor(ws)
    await p.send(start(target("WarmGreeter", "greet")), input_entry(b'"ann"'))
    assert kinds(await p.until_ended()) == ["1:OutputEntry", "EndMessage"]
    assert (await ws.receive(timeout=3)).type is aiohttp.WSMsgType.CLOSE


async def test_an_idle_socket_is_closed_by_the_sdk() -> None:
    application = keystate.app([greeter], idle_timeout=timedelta(seconds=0.2))
    async with TestClient(TestServer(application)) as c:
        p = await _reused(c)
        await p.send(start(target("WarmGreeter", "greet")), input_entry(b'"ann"'))
        assert kinds(await p.until_ended()) == ["1:OutputEntry", "EndMessage"]
        msg = await p.ws.receive(timeout=5)
        assert msg.type is aiohttp.WSMsgType.CLOSE and p.ws.close_code == aiohttp.WSCloseCode.GOING_AWAY


async def test_an_unknown_handler_or_an_entry_between_attempts_closes_with_a_protocol_error(client: TestClient) -> None:
    p = await _reused(client)
    await p.send(start(target("WarmGreeter", "greet")), input_entry(b'"ann"'))
    await p.until_ended()
    await p.send(start(target("WarmGreeter", "nope")), input_entry())
    msg = await p.ws.receive(timeout=3)
    assert msg.type is aiohttp.WSMsgType.CLOSE and p.ws.close_code == aiohttp.WSCloseCode.PROTOCOL_ERROR
    assert "unknown handler WarmGreeter/nope" in msg.extra

    q = await _reused(client)
    await q.send(start(target("WarmGreeter", "greet")), input_entry(b'"ann"'))
    await q.until_ended()
    await q.send(input_entry())  # an entry with no attempt to belong to
    assert (await q.ws.receive(timeout=3)).type is aiohttp.WSMsgType.CLOSE
    assert q.ws.close_code == aiohttp.WSCloseCode.PROTOCOL_ERROR


def test_a_nonpositive_idle_timeout_is_refused() -> None:
    with pytest.raises(ValueError, match="idle_timeout"):
        keystate.app([greeter], idle_timeout=timedelta(0))


async def test_a_deployment_with_an_idle_warm_socket_stops_at_once_on_sigterm() -> None:
    """aiohttp's graceful shutdown waits (60 s) for open handlers: an idle warm socket must not hold it."""
    port = free_port()
    serve = Path(__file__).resolve().parents[2] / "examples" / "serve.py"
    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(serve), str(port), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL
    )
    try:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{port}/discover", 10.0)
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(f"http://127.0.0.1:{port}/invoke/Greeter/greet", headers=REUSE)
            processor = Processor(ws)
            await processor.send(start(target("Greeter", "greet")), input_entry(b'"a"'))
            assert kinds(await processor.until_ended())[-1] == "EndMessage"  # the socket is idle now
            began = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            closed = await ws.receive(timeout=10)
            assert closed.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
            await ws.close()
        await asyncio.wait_for(proc.wait(), 10)
        assert time.monotonic() - began < 10
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
