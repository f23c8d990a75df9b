"""The deployment runs handlers inside the attempt's trace: spans a handler makes are the attempt's children.

The test plays the processor over both transports (aiohttp's test server), with the OpenTelemetry SDK's
in-memory exporter; no broker.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import keystate
from keystate import Context
from keystate.schemas._codec import codec
from tests.sdk.sdk_helpers import NS, ack, entries_of, input_entry, start, target

ATTEMPT_TRACE, ATTEMPT_SPAN = 0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331
CALLER_TRACE, CALLER_SPAN = 0x4BF92F3577B34DA6A3CE929D0E0E4736, 0x00F067AA0BA902B7
BATCH_TYPE = "application/vnd.keystate.batch+avro"

traced = keystate.Service("SdkTraced")


@traced.handler()
async def work(ctx: Context) -> str:
    with trace.get_tracer("test.handler").start_as_current_span("handler-work"):
        pass
    await ctx.run("step", lambda: "done")
    return "ok"


def _traceparent(trace_id: int, span_id: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-01"


def _batch(*messages: tuple[str, dict[str, Any]]) -> bytes:
    return codec().encode(NS + "MessageBatch", {"messages": [codec().encode(n, r) for n, r in messages]})


def _by_name(exporter: InMemorySpanExporter) -> dict[str, ReadableSpan]:
    return {s.name: s for s in exporter.get_finished_spans()}


@pytest.fixture
async def client(spans: InMemorySpanExporter) -> AsyncIterator[TestClient]:
    async with TestClient(TestServer(keystate.app([traced]))) as c:
        yield c


async def test_the_attempt_requests_traceparent_parents_the_handlers_spans_over_request_response(
    client: TestClient, spans: InMemorySpanExporter
) -> None:
    # The invocation's own traceparent (the caller's) loses to the attempt's: the attempt is the nearer parent.
    body = _batch(start(target("SdkTraced", "work")), input_entry(headers={"traceparent": _traceparent(CALLER_TRACE, CALLER_SPAN)}))
    headers = {"content-type": BATCH_TYPE, "traceparent": _traceparent(ATTEMPT_TRACE, ATTEMPT_SPAN)}
    resp = await client.post("/invoke/SdkTraced/work", data=body, headers=headers)
    assert resp.status == 200, await resp.text()

    got = _by_name(spans)
    assert got["handler-work"].context.trace_id == ATTEMPT_TRACE
    assert got["handler-work"].parent is not None and got["handler-work"].parent.span_id == ATTEMPT_SPAN
    # A new ctx.run ends a request/response attempt before it runs; nothing ran under a wrong parent.
    assert all(s.context.trace_id == ATTEMPT_TRACE for s in spans.get_finished_spans())


async def test_without_an_attempt_traceparent_the_invocations_own_one_is_the_parent(
    client: TestClient, spans: InMemorySpanExporter
) -> None:
    body = _batch(start(target("SdkTraced", "work")), input_entry(headers={"traceparent": _traceparent(CALLER_TRACE, CALLER_SPAN)}))
    resp = await client.post("/invoke/SdkTraced/work", data=body, headers={"content-type": BATCH_TYPE})
    assert resp.status == 200, await resp.text()
    work_span = _by_name(spans)["handler-work"]
    assert work_span.context.trace_id == CALLER_TRACE
    assert work_span.parent is not None and work_span.parent.span_id == CALLER_SPAN


async def test_a_run_is_a_span_of_the_handler_and_untraced_requests_make_root_spans_only(
    client: TestClient, spans: InMemorySpanExporter
) -> None:
    ws = await client.ws_connect("/invoke/SdkTraced/work", headers={"traceparent": _traceparent(ATTEMPT_TRACE, ATTEMPT_SPAN)})
    for name, record in (start(target("SdkTraced", "work")), input_entry()):
        await ws.send_bytes(codec().encode(name, record))
    out: list[tuple[str, dict[str, Any]]] = []
    while not any(name == NS + "EndMessage" for name, _ in out):
        msg = await ws.receive(timeout=30)
        assert msg.type is aiohttp.WSMsgType.BINARY, msg
        out.append(codec().decode(msg.data))
        if [e for e in entries_of(out[-1:]) if e[1] == "RunEntry"]:
            await ws.send_bytes(codec().encode(*ack(entries_of(out[-1:])[0][0])))
    await ws.close()

    got = _by_name(spans)
    run = got["ctx.run step"]
    assert run.parent is not None and run.parent.span_id == ATTEMPT_SPAN
    assert run.context.trace_id == ATTEMPT_TRACE
    assert got["handler-work"].parent is not None and got["handler-work"].parent.span_id == ATTEMPT_SPAN

    # No traceparent anywhere: the SDK adds no spans of its own, the handler's are roots.
    spans.clear()
    resp = await client.post(
        "/invoke/SdkTraced/work", data=_batch(start(target("SdkTraced", "work")), input_entry()),
        headers={"content-type": BATCH_TYPE},
    )
    assert resp.status == 200
    assert [(s.name, s.parent) for s in spans.get_finished_spans()] == [("handler-work", None)]


async def _attempt_on(ws: aiohttp.ClientWebSocketResponse, first: tuple[str, dict[str, Any]]) -> None:
    """One attempt of `work` on an open socket: its StartMessage, input, the run's ack, up to its End."""
    for name, record in (first, input_entry()):
        await ws.send_bytes(codec().encode(name, record))
    while True:
        msg = await ws.receive(timeout=30)
        assert msg.type is aiohttp.WSMsgType.BINARY, msg
        name, record = codec().decode(msg.data)
        if name == NS + "EndMessage":
            return
        for index, kind, _ in entries_of([(name, record)]):
            if kind == "RunEntry":
                await ws.send_bytes(codec().encode(*ack(index)))


async def test_on_a_reused_socket_each_attempt_is_parented_by_its_own_start_messages_traceparent(
    client: TestClient, spans: InMemorySpanExporter
) -> None:
    second_trace, second_span = 0x1234567890ABCDEF1234567890ABCDEF, 0x1122334455667788
    ws = await client.ws_connect(
        "/invoke/SdkTraced/work",
        headers={"traceparent": _traceparent(ATTEMPT_TRACE, ATTEMPT_SPAN), "x-keystate-reuse": "1"},
    )
    name, first = start(target("SdkTraced", "work"))
    await _attempt_on(ws, (name, first))  # no attempt_headers: the handshake's traceparent is its parent
    second = {**first, "attempt_headers": {"traceparent": _traceparent(second_trace, second_span)}}
    await _attempt_on(ws, (name, second))
    await _attempt_on(ws, (name, first))  # the handshake's context belongs to the first attempt only
    await ws.close()

    works = [s for s in spans.get_finished_spans() if s.name == "handler-work"]
    assert [(s.parent.span_id if s.parent else None) for s in works] == [ATTEMPT_SPAN, second_span, None]
    assert works[1].context.trace_id == second_trace
