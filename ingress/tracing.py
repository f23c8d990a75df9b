"""Ingress spans: one per HTTP request, the root of its invocation's trace (see keystate.server.tracing).

The span's parent is the request's own W3C `traceparent`, if it has one. Its context replaces that
header in the invocation's headers, so the invocation, its attempts and the handler's own spans join
the caller's trace.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from keystate.server import tracing

__all__ = ["INGRESS_SCOPE", "invocation_headers", "tracing_middlewares"]

INGRESS_SCOPE = "keystate.ingress"


def tracing_middlewares() -> list[Any]:
    """The middleware recording ingress spans; none when OpenTelemetry is not installed."""
    return [_trace_request] if tracing.ENABLED else []


@web.middleware
async def _trace_request(request: web.Request, handler: Any) -> web.StreamResponse:
    the_tracer = tracing.tracer(INGRESS_SCOPE)
    if the_tracer is None:
        return await handler(request)
    from opentelemetry.trace import SpanKind, Status, StatusCode

    parent = tracing.parent_context(request.headers)
    attributes = {"http.request.method": request.method, "url.path": request.path}
    with the_tracer.start_as_current_span(
        f"ingress {request.method}", context=parent, kind=SpanKind.SERVER, attributes=attributes,
        record_exception=True, set_status_on_exception=True,
    ) as span:  # current in this request's task: `invocation_headers` finds it there
        response = await handler(request)
        span.set_attribute("http.response.status_code", response.status)
        if response.status >= 500:
            span.set_status(Status(StatusCode.ERROR, f"HTTP {response.status}"))
        return response


def invocation_headers(target: str, invocation_id: str, headers: dict[str, str]) -> dict[str, str]:
    """`headers` carrying the request span's context, the span named after `target`; unchanged if untraced."""
    if not tracing.ENABLED:
        return headers
    from opentelemetry import trace

    span = trace.get_current_span()
    if not span.get_span_context().is_valid:
        return headers
    service_handler = target.split("/")
    span.update_name(f"ingress {service_handler[0]}/{service_handler[-1]}")
    span.set_attribute("keystate.invocation.id", invocation_id)
    span.set_attribute("keystate.target", target)
    return tracing.inject(trace.set_span_in_context(span), headers)
