"""Processor spans: the invocation, each attempt, and each run, call, send and sleep an attempt journals.

How the spans hang together (OpenTelemetry; see keystate.server.tracing):

    ingress <svc>/<handler>            the HTTP request (or the Kafka producer's span: its traceparent header)
      invocation <svc>/<handler>       recorded when an attempt journals the output: start = created_at
        attempt <svc>/<handler>        one per attempt; its context goes to the deployment as `traceparent`
          run <name> | call <target> | send <target> | sleep   as the entries arrive on the stream
          (the handler's own spans, made with the OTel API in the deployment, are children of the attempt)
        ... the next attempt, on any processor, after any restart

The invocation span's id is derived from the invocation id, so every attempt, on whichever processor,
is its child before it is recorded; its trace id is the invocation's `traceparent`'s (from the
invocation's headers, journaled in its Input entry), or else derived from the invocation id too.
A call's or send's span context goes into the callee's headers: the callee's invocation is its child.

Entry spans last from the entry's arrival until Kafka acknowledged its append (a run's execution is
the SDK's `ctx.run <name>` span, in the deployment); a sleep's lasts until its wake-up time. An
invocation that ends without an output (killed, or purged while suspended) records no invocation
span: its attempts then point at a parent that is never exported.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from keystate.server import tracing

from .invoker_stream import Terminal
from .state_machine import Invoke

__all__ = ["STOPPED", "AttemptTrace", "end_attempt", "entry_span", "start_attempt"]

# How an attempt ended when it ended with no terminal command of its own: it was stopped (cancelled).
STOPPED = Terminal("stopped", {})

SCOPE = "keystate.processors"
_INPUT = "keystate.InputEntry"
_OUTPUT = "keystate.OutputEntry"
_RUN = "keystate.RunEntry"
_CALL = "keystate.CallEntry"
_SEND = "keystate.SendEntry"
_SLEEP = "keystate.SleepEntry"


@dataclass(slots=True)
class AttemptTrace:
    """The spans of one running attempt; `headers` go on its request to the deployment."""

    tracer: Any
    span: Any
    upstream: Any  # the context from the invocation's headers, or None
    forced: bool  # whether the invocation span can take its derived id
    trace_id: int
    headers: dict[str, str] = field(default_factory=dict)
    failure: str | None = None  # the output's failure, once journaled


def start_attempt(action: Invoke) -> AttemptTrace | None:
    """Open the attempt's span (child of its invocation's span); None when not tracing."""
    the_tracer = tracing.tracer(SCOPE)
    if the_tracer is None:
        return None
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

    iid = action.invocation_id
    upstream = tracing.parent_context(_input_headers(action))
    if upstream is not None:
        up = trace.get_current_span(upstream).get_span_context()
        trace_id, flags, state = up.trace_id, up.trace_flags, up.trace_state
    else:
        trace_id, flags, state = tracing.derived_trace_id(iid), TraceFlags(TraceFlags.SAMPLED), None
    forced = tracing.can_force_ids(the_tracer)
    if forced:
        invocation = SpanContext(trace_id, tracing.derived_span_id(iid), True, flags, state)
        parent = trace.set_span_in_context(NonRecordingSpan(invocation))
    else:  # a tracer that cannot take given ids: attempts hang from the upstream span directly
        parent = _or_root(upstream)
    target = action.target
    span = the_tracer.start_span(
        f"attempt {target['service']}/{target['handler']}",
        context=parent,
        kind=SpanKind.CLIENT,
        attributes={**_target_attributes(action), "keystate.attempt": action.attempt,
                    "keystate.retry_count": action.retry_count},
    )
    out = AttemptTrace(the_tracer, span, upstream, forced, trace_id)
    tracing.inject(trace.set_span_in_context(span), out.headers)
    return out


def entry_span(attempt: AttemptTrace | None, index: int, entry: dict[str, Any]) -> Callable[[Any], None] | None:
    """A span for a run, call, send or sleep entry arriving from the deployment; what ends it once the
    entry is on the log (a done-callback for its delivery), or None.

    A call's or send's span context is written into the entry's headers (unless the handler set a
    traceparent itself), so the callee's invocation is its child.
    """
    if attempt is None:
        return None
    name, body = entry["entry"]
    if name == _OUTPUT:
        result = body.get("result")
        if isinstance(result, tuple) and result[0] == "keystate.Failure":
            attempt.failure = str(result[1].get("message", ""))
        return None
    if name not in (_RUN, _CALL, _SEND, _SLEEP):
        return None
    from opentelemetry import trace
    from opentelemetry.trace import SpanKind, Status, StatusCode

    parent = trace.set_span_in_context(attempt.span)
    attributes: dict[str, Any] = {"keystate.entry.index": index}
    if name == _RUN:
        title, kind = f"run {body['name']}", SpanKind.INTERNAL
        attributes["keystate.run.name"] = body["name"]
    elif name == _SLEEP:
        title, kind = "sleep", SpanKind.INTERNAL
        wake = int(body["wake_up_at_ms"])
        attributes["keystate.sleep.wake_up_at_ms"] = wake
        attributes["keystate.sleep.duration_ms"] = max(0, wake - int(time.time() * 1000))
    else:
        callee = body["target"]
        target = "/".join(p for p in (callee["service"], callee.get("key"), callee["handler"]) if p is not None)
        title = f"{'call' if name == _CALL else 'send'} {callee['service']}/{callee['handler']}"
        kind = SpanKind.CLIENT if name == _CALL else SpanKind.PRODUCER
        attributes["keystate.callee.target"] = target
        attributes["keystate.callee.invocation.id"] = body["invocation_id"]
    span = attempt.tracer.start_span(title, context=parent, kind=kind, attributes=attributes)
    if name in (_CALL, _SEND):
        headers = body.setdefault("headers", {})
        if not any(k.lower() == tracing.TRACEPARENT for k in headers):
            tracing.inject(trace.set_span_in_context(span), headers)
    if name == _RUN and isinstance(body.get("result"), tuple) and body["result"][0] == "keystate.Failure":
        span.set_status(Status(StatusCode.ERROR, str(body["result"][1].get("message", ""))))

    def journaled(delivery: Any) -> None:
        failed = delivery.cancelled() or delivery.exception() is not None
        if failed:
            span.set_status(Status(StatusCode.ERROR, "the entry could not be appended to the log"))
        if name == _SLEEP and not failed:
            # The sleep as scheduled: it ends at its wake-up time, whichever attempt sees it fire.
            span.end(end_time=max(int(body["wake_up_at_ms"]) * 1_000_000, time.time_ns()))
        else:
            span.end()

    return journaled


def end_attempt(attempt: AttemptTrace | None, action: Invoke, terminal: Terminal | None, output_appended: bool) -> None:
    """Close the attempt's span with how it ended (its terminal command, None: with its output, or
    `STOPPED`); when it journaled the output, record the invocation's span (from its creation until now)."""
    if attempt is None:
        return
    from opentelemetry.trace import SpanKind, Status, StatusCode

    span = attempt.span
    if terminal is None:
        outcome = "output"
    elif terminal is STOPPED:
        outcome = "stopped"
    elif terminal.name.endswith("SuspendCommand"):
        outcome = "suspended"
    else:
        outcome = "failed"
        failure = terminal.record.get("failure") or {}
        span.set_status(Status(StatusCode.ERROR, str(failure.get("message", "the attempt failed"))))
    span.set_attribute("keystate.attempt.outcome", outcome)
    span.end()
    if terminal is not None or not output_appended:
        return
    target = action.target
    ids = tracing.forced_ids(
        None if attempt.upstream is not None else attempt.trace_id,
        tracing.derived_span_id(action.invocation_id) if attempt.forced else None,
    )
    with ids:
        invocation = attempt.tracer.start_span(
            f"invocation {target['service']}/{target['handler']}",
            context=_or_root(attempt.upstream),
            kind=SpanKind.CONSUMER,
            attributes={**_target_attributes(action), "keystate.attempts": action.attempt + 1},
            start_time=action.first_attempt_at_ms * 1_000_000,
        )
    if attempt.failure is not None:
        invocation.set_status(Status(StatusCode.ERROR, attempt.failure))
    invocation.set_attribute("keystate.invocation.outcome", "failure" if attempt.failure is not None else "success")
    invocation.end()


def _or_root(ctx: Any) -> Any:
    """`ctx`, or an empty context: a span without upstream is a root, whatever the task's current span."""
    if ctx is not None:
        return ctx
    from opentelemetry.context import Context

    return Context()


def _input_headers(action: Invoke) -> Mapping[str, str] | None:
    if not action.journal:
        return None
    name, body = action.journal[0]["entry"]
    return body.get("headers") if name == _INPUT else None


def _target_attributes(action: Invoke) -> dict[str, Any]:
    target = action.target
    out: dict[str, Any] = {
        "keystate.invocation.id": action.invocation_id,
        "keystate.service": target["service"],
        "keystate.handler": target["handler"],
    }
    if target.get("key") is not None:
        out["keystate.key"] = target["key"]
    if action.deployment_id is not None:
        out["keystate.deployment.id"] = action.deployment_id
    return out
