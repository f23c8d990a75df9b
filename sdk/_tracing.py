"""OpenTelemetry in the deployment: handlers run inside the trace of the attempt that runs them.

Optional: without `opentelemetry-api` installed nothing here does anything. The processor sends each
attempt's span context as the W3C `traceparent` header of the attempt's request (WebSocket handshake
or POST), or, on a reused WebSocket, in the StartMessage's `attempt_headers`; the handler task runs with it attached, so spans the handler makes with the OpenTelemetry
API are children of the attempt. Without that header (a processor that does not trace), the
`traceparent` among the invocation's own headers is used instead.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterator, Mapping
from contextlib import contextmanager

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    ENABLED = True
except ImportError:  # OpenTelemetry is not installed: handlers run untraced
    ENABLED = False

__all__ = ["ENABLED", "attached", "attempt_context", "handler_context", "run_span", "trace_context"]

_TRACE_HEADERS = ("traceparent", "tracestate")
_SCOPE = "keystate.sdk"


def _extract(headers: Mapping[str, str] | None) -> otel_context.Context | None:
    if not headers:
        return None
    carrier = {k.lower(): v for k, v in headers.items() if k.lower() in _TRACE_HEADERS}
    if "traceparent" not in carrier:
        return None
    ctx = TraceContextTextMapPropagator().extract(carrier)
    return ctx if trace.get_current_span(ctx).get_span_context().is_valid else None


def trace_context(headers: Mapping[str, str] | None) -> otel_context.Context | None:
    """The span context of an attempt's `traceparent` (if any), to be `attached` around its work."""
    return _extract(headers) if ENABLED else None


@contextmanager
def attached(ctx: otel_context.Context | None) -> Iterator[None]:
    """Inside, `ctx` (from `trace_context`) is the current trace context; None changes nothing."""
    if ctx is None:
        yield
        return
    token = otel_context.attach(ctx)
    try:
        yield
    finally:
        otel_context.detach(token)


@contextmanager
def attempt_context(headers: Mapping[str, str]) -> Iterator[None]:
    """Inside, the trace context of the attempt request's `traceparent` (if any) is current."""
    with attached(trace_context(headers)):
        yield


def handler_context(input_headers: Mapping[str, str] | None) -> contextvars.Context | None:
    """The contextvars context to start the handler task in: None (the current one) when a span is
    already current or nothing is to be traced; else a copy with the invocation's `traceparent` attached."""
    if not ENABLED or trace.get_current_span().get_span_context().is_valid:
        return None
    ctx = _extract(input_headers)
    if ctx is None:
        return None
    copied = contextvars.copy_context()
    copied.run(otel_context.attach, ctx)
    return copied


@contextmanager
def run_span(name: str, index: int) -> Iterator[None]:
    """A `ctx.run {name}` span around the step's action: spans the action makes are its children."""
    if not ENABLED or not trace.get_current_span().get_span_context().is_valid:
        yield
        return
    tracer = trace.get_tracer(_SCOPE)
    with tracer.start_as_current_span(f"ctx.run {name}", attributes={"keystate.entry.index": index}):
        yield
