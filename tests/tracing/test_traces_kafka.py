"""Traces end to end on a real broker: one trace from the caller's traceparent through the ingress, the
invocation and its attempt to the spans a handler makes itself; a Kafka-produced request joins its trace too.

Ingress, processor and deployment run in this process with one TracerProvider and the OpenTelemetry
SDK's in-memory exporter.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pytest
from aiohttp import web
from confluent_kafka import Producer
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import keystate
from keystate import Context, Service
from keystate.ingress.runtime import IngressSettings, run_ingress
from keystate.processors.worker import ProcessorSettings, Worker
from keystate.schemas._codec import codec
from keystate.schemas.topics import Topics
from keystate.server.kafka import KafkaSettings
from keystate.server.tracing import derived_trace_id
from keystate.server.topics import TopicSettings, ensure_topics
from tests.e2e.harness import free_port, http, wait_http

pytestmark = pytest.mark.integration

CALLER_TRACE = 0x0AF7651916CD43DD8448EB211C80319C
CALLER_SPAN = 0xB7AD6B7169203331
PRODUCER_TRACE = 0x4BF92F3577B34DA6A3CE929D0E0E4736
PRODUCER_SPAN = 0x00F067AA0BA902B7



def handler_tracer() -> trace.Tracer:
    """The handler's tracer, of the provider installed now (a module-level one would keep the first test's)."""
    return trace.get_tracer("test.handler")

traced = Service("Traced")
callee = Service("TracedCallee")


@callee.handler()
async def echo(ctx: Context, name: str) -> str:
    with handler_tracer().start_as_current_span("callee-work"):
        return name


@traced.handler()
async def greet(ctx: Context, name: str) -> str:
    with handler_tracer().start_as_current_span("handler-work"):
        pass

    def step() -> str:
        with handler_tracer().start_as_current_span("inside-run"):
            return "done"

    await ctx.run("step", step)
    await ctx.sleep(timedelta(milliseconds=20))
    echoed = await ctx.service_call(echo, name)
    return f"hello {echoed}"


failed_once: set[str] = set()


@traced.handler()
async def flaky(ctx: Context, name: str) -> str:
    """Fails its first attempt (retryably), succeeds on the next."""
    if name not in failed_once:
        failed_once.add(name)
        raise RuntimeError("the first attempt fails")
    return name


def _traceparent(trace_id: int, span_id: int) -> str:
    return f"00-{trace_id:032x}-{span_id:016x}-01"


@dataclass
class Running:
    topics: Topics
    bootstrap: str
    url: str


@pytest.fixture
async def running(
    spans: InMemorySpanExporter, kafka_bootstrap: str, unique_topic_prefix: str, tmp_path: Path
) -> AsyncIterator[Running]:
    """Ingress, processor and the deployment of `traced` and `callee`, all on this event loop."""
    topics = Topics(unique_topic_prefix)
    await asyncio.to_thread(ensure_topics, kafka_bootstrap, topics, TopicSettings(partitions=2))
    deployment_port, port, admin_port = free_port(), free_port(), free_port()
    runner = web.AppRunner(keystate.app([traced, callee]))
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", deployment_port).start()
    stop = asyncio.Event()
    processor = asyncio.create_task(
        Worker(
            ProcessorSettings(
                kafka=KafkaSettings(kafka_bootstrap, topics),
                instance_id=f"{unique_topic_prefix}traces",
                state_dir=tmp_path / "processor",
            )
        ).run(stop)
    )
    ingress = asyncio.create_task(
        run_ingress(
            IngressSettings(kafka_bootstrap, topics, call_timeout=60.0, state_dir=tmp_path / "ingress"),
            port=port,
            admin_port=admin_port,
        )
    )
    try:
        await asyncio.to_thread(wait_http, f"http://127.0.0.1:{admin_port}/health", 60.0)
        registered = await asyncio.to_thread(
            http, "POST", f"http://127.0.0.1:{admin_port}/deployments", {"uri": f"http://127.0.0.1:{deployment_port}"}
        )
        assert registered.status in (200, 201), registered.body
        yield Running(topics, kafka_bootstrap, f"http://127.0.0.1:{port}")
    finally:
        ingress.cancel()
        await asyncio.gather(ingress, return_exceptions=True)
        stop.set()
        await asyncio.wait_for(processor, 60)
        await runner.cleanup()


async def _wait_for(exporter: InMemorySpanExporter, *names: str, trace_id: int) -> dict[str, ReadableSpan]:
    """The finished spans of `trace_id` by name, once all of `names` are there (spans may end after the reply)."""
    for _ in range(600):
        found = {s.name: s for s in exporter.get_finished_spans() if s.context.trace_id == trace_id}
        if all(n in found for n in names):
            return found
        await asyncio.sleep(0.05)
    seen = sorted({(f"{s.context.trace_id:032x}", s.name) for s in exporter.get_finished_spans()})
    raise AssertionError(f"spans {names} of trace {trace_id:032x} did not all finish; finished: {seen}")


def _parent(span: ReadableSpan) -> int | None:
    return span.parent.span_id if span.parent is not None else None


async def test_one_trace_from_the_http_request_through_the_attempt_into_the_handler(
    running: Running, spans: InMemorySpanExporter
) -> None:
    headers = {"traceparent": _traceparent(CALLER_TRACE, CALLER_SPAN)}
    response = await asyncio.to_thread(http, "POST", f"{running.url}/Traced/greet", "Ann", headers)
    assert response.status == 200, response.body
    assert response.json() == "hello Ann"

    names = [
        "ingress Traced/greet", "invocation Traced/greet", "attempt Traced/greet", "handler-work",
        "ctx.run step", "inside-run", "run step", "sleep", "call TracedCallee/echo",
        "invocation TracedCallee/echo", "attempt TracedCallee/echo", "callee-work",
    ]
    got = await _wait_for(spans, *names, trace_id=CALLER_TRACE)

    ingress = got["ingress Traced/greet"]
    assert _parent(ingress) == CALLER_SPAN
    assert ingress.kind is trace.SpanKind.SERVER
    assert ingress.attributes is not None and ingress.attributes["http.response.status_code"] == 200
    invocation_id = ingress.attributes["keystate.invocation.id"]

    invocation = got["invocation Traced/greet"]
    assert _parent(invocation) == ingress.context.span_id
    assert invocation.attributes is not None and invocation.attributes["keystate.invocation.id"] == invocation_id
    attempt = got["attempt Traced/greet"]
    assert _parent(attempt) == invocation.context.span_id
    assert attempt.attributes is not None and attempt.attributes["keystate.attempt.outcome"] == "output"
    assert invocation.start_time is not None and attempt.start_time is not None
    assert invocation.start_time <= attempt.start_time  # recorded after the fact, from created_at

    # The deployment runs the handler inside the attempt's context: its own spans are the attempt's children.
    assert _parent(got["handler-work"]) == attempt.context.span_id
    assert _parent(got["ctx.run step"]) == attempt.context.span_id
    assert _parent(got["inside-run"]) == got["ctx.run step"].context.span_id
    # The processor's spans of the entries the attempt journaled.
    for name in ("run step", "sleep", "call TracedCallee/echo"):
        assert _parent(got[name]) == attempt.context.span_id, name
    sleep = got["sleep"]
    assert sleep.attributes is not None and sleep.attributes["keystate.sleep.wake_up_at_ms"] > 0

    # The callee's invocation hangs from the call, its attempt from it, the callee's own span from that.
    call = got["call TracedCallee/echo"]
    callee_invocation = got["invocation TracedCallee/echo"]
    assert _parent(callee_invocation) == call.context.span_id
    assert call.attributes is not None
    assert callee_invocation.attributes is not None
    assert callee_invocation.attributes["keystate.invocation.id"] == call.attributes["keystate.callee.invocation.id"]
    assert _parent(got["attempt TracedCallee/echo"]) == callee_invocation.context.span_id
    assert _parent(got["callee-work"]) == got["attempt TracedCallee/echo"].context.span_id


async def _produce_request(running: Running, service: str, handler: str, argument: bytes, headers: list[tuple[str, bytes]]) -> None:
    request = {"service": service, "handler": handler, "key": None, "argument": argument, "headers": {},
               "idempotency_key": None, "reply_topic": None, "delay_ms": None}
    producer = Producer({"bootstrap.servers": running.bootstrap})
    producer.produce(running.topics.requests, codec().encode("keystate.InvocationRequest", request), headers=headers)
    assert await asyncio.to_thread(producer.flush, 30) == 0


async def test_a_request_produced_to_kafka_with_a_traceparent_header_joins_its_trace(
    running: Running, spans: InMemorySpanExporter
) -> None:
    traceparent = _traceparent(PRODUCER_TRACE, PRODUCER_SPAN).encode()
    await _produce_request(running, "TracedCallee", "echo", b'"Bo"', [("traceparent", traceparent)])

    got = await _wait_for(
        spans, "invocation TracedCallee/echo", "attempt TracedCallee/echo", "callee-work", trace_id=PRODUCER_TRACE
    )
    invocation = got["invocation TracedCallee/echo"]
    assert _parent(invocation) == PRODUCER_SPAN
    assert _parent(got["attempt TracedCallee/echo"]) == invocation.context.span_id
    assert _parent(got["callee-work"]) == got["attempt TracedCallee/echo"].context.span_id


async def test_every_attempt_of_an_untraced_request_is_a_child_of_one_invocation_span_of_its_own_trace(
    running: Running, spans: InMemorySpanExporter
) -> None:
    # No traceparent anywhere: the invocation's trace and span ids derive from its id, so each attempt
    # (any processor, any restart) finds the same parent before the invocation span is recorded.
    await _produce_request(running, "Traced", "flaky", b'"Cy"', [])
    invocation = None
    for _ in range(600):
        invocation = next((s for s in spans.get_finished_spans() if s.name == "invocation Traced/flaky"), None)
        if invocation is not None:
            break
        await asyncio.sleep(0.05)
    assert invocation is not None, [s.name for s in spans.get_finished_spans()]
    assert invocation.parent is None and invocation.attributes is not None
    assert invocation.context.trace_id == derived_trace_id(str(invocation.attributes["keystate.invocation.id"]))

    attempts = sorted(
        (s for s in spans.get_finished_spans() if s.name == "attempt Traced/flaky"),
        key=lambda s: s.attributes["keystate.attempt"] if s.attributes else 0,
    )
    assert [_parent(a) for a in attempts] == [invocation.context.span_id] * 2
    assert [a.attributes["keystate.attempt.outcome"] for a in attempts if a.attributes] == ["failed", "output"]
    assert attempts[0].status.status_code is trace.StatusCode.ERROR
    assert "the first attempt fails" in (attempts[0].status.description or "")
