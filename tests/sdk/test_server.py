"""The real SDK app over a real WebSocket, with the test acting as the processor."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from pydantic import BaseModel

import keystate
from keystate import Context, ObjectContext, ObjectSharedContext, TerminalError
from keystate.schemas._codec import codec

from sdk_helpers import NS, ack, completion, entries_of, input_entry, kinds, start, target, value

greeter = keystate.Service("Greeter")
counter = keystate.VirtualObject("Counter")
seen_threads: list[int] = []


class Order(BaseModel):
    item: str
    qty: int


@greeter.handler()
async def greet(ctx: Context, name: str) -> str:
    return f"Hello {name}!"


@greeter.handler()
async def order(ctx: Context, o: Order) -> Order:
    stamped = await ctx.run("stamp", lambda: o.qty + 1)
    return Order(item=o.item.upper(), qty=stamped)


@greeter.handler()
async def slow(ctx: Context) -> str:
    def block() -> str:
        seen_threads.append(threading.get_ident())
        time.sleep(0.3)
        return "slept"

    return await ctx.run("block", block)


@greeter.handler()
async def forbidden(ctx: Context) -> str:
    raise TerminalError("no entry", 403)


@greeter.handler()
async def relay(ctx: Context, name: str) -> str:
    return await ctx.service_call(greet, name)


@counter.handler()
async def add(ctx: ObjectContext, n: int) -> int:
    count = (await ctx.get("count") or 0) + n
    ctx.set("count", count)
    return count


@counter.handler(kind="shared")
async def peek(ctx: ObjectSharedContext) -> int:
    return await ctx.get("count") or 0


class Processor:
    """Speaks the protocol over the socket, as the invoker would."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws

    async def send(self, *messages: tuple[str, dict[str, Any]]) -> None:
        for name, record in messages:
            await self.ws.send_bytes(codec().encode(name, record))

    async def recv(self, timeout: float = 3.0) -> tuple[str, dict[str, Any]]:
        msg = await self.ws.receive(timeout=timeout)
        assert msg.type is aiohttp.WSMsgType.BINARY, msg
        return codec().decode(msg.data)

    async def recv_until_closed(self, timeout: float = 3.0) -> list[tuple[str, dict[str, Any]]]:
        out = []
        while True:
            msg = await self.ws.receive(timeout=timeout)
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                return out
            assert msg.type is aiohttp.WSMsgType.BINARY, msg
            out.append(codec().decode(msg.data))


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    application = keystate.app([greeter, counter], suspend_after=timedelta(seconds=0.2))
    async with TestClient(TestServer(application)) as c:
        yield c


async def connect(client: TestClient, service: str, handler: str) -> Processor:
    return Processor(await client.ws_connect(f"/invoke/{service}/{handler}"))


async def test_greeter_end_to_end(client: TestClient) -> None:
    p = await connect(client, "Greeter", "greet")
    await p.send(start(target("Greeter", "greet")), input_entry(b'"bob"'))
    out = await p.recv_until_closed()
    assert kinds(out) == ["1:OutputEntry", "EndMessage"]
    assert entries_of(out)[0][2] == {"result": value(b'"Hello bob!"')}
    assert p.ws.closed


async def test_run_step_returns_only_after_the_ack(client: TestClient) -> None:
    p = await connect(client, "Greeter", "order")
    await p.send(start(target("Greeter", "order")), input_entry(b'{"item":"tea","qty":1}'))
    name, record = await p.recv()
    assert name == NS + "EntryMessage"
    assert record["entry"]["entry"] == (NS + "RunEntry", {"name": "stamp", "result": value(b"2")})
    with pytest.raises(asyncio.TimeoutError):
        await p.ws.receive(timeout=0.1)  # no output before the step is durable
    await p.send(ack(1))
    out = await p.recv_until_closed()
    assert kinds(out) == ["2:OutputEntry", "EndMessage"]
    assert Order.model_validate_json(entries_of(out)[0][2]["result"][1]["value"]) == Order(item="TEA", qty=2)


async def test_object_state_with_eager_state(client: TestClient) -> None:
    p = await connect(client, "Counter", "add")
    await p.send(
        start(target("Counter", "add", "alice", "VIRTUAL_OBJECT"), state={"count": b"41"}), input_entry(b"1")
    )
    out = await p.recv_until_closed()
    assert [(n, e) for _, n, e in entries_of(out)] == [
        ("GetStateEntry", {"key": "count", "value": b"41"}),
        ("SetStateEntry", {"key": "count", "value": b"42"}),
        ("OutputEntry", {"result": value(b"42")}),
    ]
    assert out[-1] == (NS + "EndMessage", {})


async def test_terminal_error_becomes_a_failure_output(client: TestClient) -> None:
    p = await connect(client, "Greeter", "forbidden")
    await p.send(start(target("Greeter", "forbidden")), input_entry())
    out = await p.recv_until_closed()
    assert entries_of(out) == [(1, "OutputEntry", {"result": (NS + "Failure", {"code": 403, "message": "no entry"})})]


async def test_sync_run_function_runs_in_a_thread_and_the_loop_stays_responsive(client: TestClient) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.02)
            ticks += 1

    task = asyncio.create_task(ticker())
    try:
        p = await connect(client, "Greeter", "slow")
        await p.send(start(target("Greeter", "slow")), input_entry())
        began = time.monotonic()
        name, record = await p.recv()
        elapsed = time.monotonic() - began
    finally:
        task.cancel()
    assert record["entry"]["entry"] == (NS + "RunEntry", {"name": "block", "result": value(b'"slept"')})
    assert elapsed >= 0.3
    assert ticks >= 8  # ~15 expected in 0.3 s; a blocked loop would give 0 or 1
    assert seen_threads and seen_threads[-1] != threading.get_ident()
    await p.send(ack(1))
    assert kinds(await p.recv_until_closed()) == ["2:OutputEntry", "EndMessage"]


async def test_suspension_over_the_socket_then_resume_in_a_new_attempt(client: TestClient) -> None:
    p = await connect(client, "Greeter", "relay")
    await p.send(start(target("Greeter", "relay")), input_entry(b'"ann"'))
    out = await p.recv_until_closed()
    assert kinds(out) == ["1:CallEntry", "SuspensionMessage"]
    call = entries_of(out)[0][2]

    p2 = await connect(client, "Greeter", "relay")
    await p2.send(
        start(target("Greeter", "relay"), 2, retry_count=1), input_entry(b'"ann"'),
        (NS + "EntryMessage", {"index": 1, "entry": {"entry": (NS + "CallEntry", call)}}),
        completion(1, value(b'"Hello ann!"')),
    )
    out2 = await p2.recv_until_closed()
    assert entries_of(out2) == [(2, "OutputEntry", {"result": value(b'"Hello ann!"')})]


async def test_unknown_handler_is_404(client: TestClient) -> None:
    response = await client.get("/invoke/Greeter/nope")
    assert response.status == 404
    assert "unknown handler Greeter/nope" in await response.text()
    with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
        await client.ws_connect("/invoke/Nobody/greet")
    assert raised.value.status == 404


async def test_garbage_from_the_processor_closes_the_socket_and_the_app_keeps_serving(client: TestClient) -> None:
    p = await connect(client, "Greeter", "greet")
    await p.ws.send_bytes(b"\x07 definitely not avro")
    msg = await p.ws.receive(timeout=3)
    assert msg.type is aiohttp.WSMsgType.CLOSE
    assert p.ws.close_code == aiohttp.WSCloseCode.PROTOCOL_ERROR

    text = await connect(client, "Greeter", "greet")
    await text.ws.send_str("hello")
    assert (await text.ws.receive(timeout=3)).type is aiohttp.WSMsgType.CLOSE

    wrong_order = await connect(client, "Greeter", "greet")
    await wrong_order.send(ack(0))  # before any StartMessage
    assert (await wrong_order.ws.receive(timeout=3)).type is aiohttp.WSMsgType.CLOSE

    again = await connect(client, "Greeter", "greet")
    await again.send(start(target("Greeter", "greet")), input_entry(b'"eve"'))
    assert entries_of(await again.recv_until_closed()) == [(1, "OutputEntry", {"result": value(b'"Hello eve!"')})]


async def test_processor_hanging_up_mid_attempt_does_not_break_the_app(client: TestClient) -> None:
    p = await connect(client, "Greeter", "relay")
    await p.send(start(target("Greeter", "relay")), input_entry(b'"x"'))
    await p.recv()  # the call entry
    await p.ws.close()
    p2 = await connect(client, "Greeter", "greet")
    await p2.send(start(target("Greeter", "greet")), input_entry(b'"y"'))
    assert kinds(await p2.recv_until_closed()) == ["1:OutputEntry", "EndMessage"]


async def test_discovery_manifest(client: TestClient) -> None:
    response = await client.get("/discover")
    assert response.status == 200
    manifest = await response.json()
    assert manifest["protocol"] == 1 and manifest["transports"] == ["websocket", "request-response"]
    services = {s["name"]: s for s in manifest["services"]}
    assert services["Greeter"]["ty"] == "SERVICE"
    assert services["Counter"]["ty"] == "VIRTUAL_OBJECT"
    handlers = {h["name"]: h for h in services["Counter"]["handlers"]}
    assert handlers["add"]["ty"] == "EXCLUSIVE" and handlers["peek"]["ty"] == "SHARED"
    assert handlers["add"]["input"] == {"contentType": "application/json"}
    assert handlers["peek"]["input"] == {}
    assert {h["name"] for h in services["Greeter"]["handlers"]} == {"greet", "order", "slow", "forbidden", "relay"}


def test_workflow_manifest_and_bytes_content_type() -> None:
    wf = keystate.Workflow("Signup")

    @wf.main()
    async def run(ctx: keystate.WorkflowContext, data: bytes) -> bytes:
        return data

    @wf.handler()
    async def click(ctx: keystate.WorkflowSharedContext, link: str) -> None:
        await ctx.promise("link").resolve(link)

    [service] = keystate.manifest([wf])["services"]
    assert service["ty"] == "WORKFLOW"
    assert service["handlers"] == [
        {"name": "run", "ty": "WORKFLOW", "input": {"contentType": "application/octet-stream"},
         "output": {"contentType": "application/octet-stream"}},
        {"name": "click", "ty": "SHARED", "input": {"contentType": "application/json"},
         "output": {"contentType": "application/json"}},
    ]


async def test_a_quiet_attempt_sends_heartbeats() -> None:
    """A long ctx.run says nothing for a while; heartbeats keep the processor's inactivity timer off."""
    slow = keystate.Service("Slow")

    @slow.handler()
    async def step(ctx: Context) -> str:
        return await ctx.run("sleep", lambda: time.sleep(0.5) or "done")

    application = keystate.app([slow], heartbeat_interval=timedelta(milliseconds=100))
    async with TestClient(TestServer(application)) as client:
        ws = await client.ws_connect("/invoke/Slow/step")
        c = codec()
        the_target = {"service": "Slow", "handler": "step", "key": None, "service_type": "SERVICE", "handler_kind": "EXCLUSIVE"}
        start_message = {"invocation_id": "inv_0000000aaaaaaaaaaaaaaaaaaaaaaaa", "attempt": 1, "target": the_target,
                         "known_entries": 1, "state": [], "partial_state": True, "random_seed": 1, "retry_count": 0,
                         "duration_since_first_attempt_ms": 0}
        await ws.send_bytes(c.encode("keystate.StartMessage", start_message))
        entry = {"entry": ("keystate.InputEntry", {"argument": b"", "headers": {}})}
        await ws.send_bytes(c.encode("keystate.EntryMessage", {"index": 0, "entry": entry}))
        names = []
        while "keystate.EntryMessage" not in names:
            names.append(c.decode((await ws.receive(timeout=5)).data)[0])
        assert names.count("keystate.HeartbeatMessage") >= 3
        await ws.close()
