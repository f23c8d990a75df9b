"""Prometheus metrics of the ingress and admin API: requests by route class and status, latency, GET /metrics.

The ingress and the admin API run in one process and share prometheus-client's default registry (a
`keystate runtime` process adds its processor's metrics to it), so both listeners' /metrics show the
same text; scrape one of them. /metrics sits behind the listener's bearer token like every route but
/health: Prometheus sends it with `authorization: {credentials_file: ...}`.
"""

from __future__ import annotations

import time

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest

__all__ = ["METRICS_PATH", "HttpMetrics", "add_metrics_route", "http_metrics_middleware"]

METRICS_PATH = "/metrics"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# The ingress's catch-all invocation route, named by what it does instead of its template.
_CATCH_ALL = "/{path}"


class HttpMetrics:
    """Request counters and latency histograms of both listeners, on `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = REGISTRY if registry is None else registry
        self.registry = r
        self.requests = Counter(
            "keystate_http_requests_total", "HTTP requests answered, by listener (ingress, admin), route class and status.",
            ["listener", "route", "code"], registry=r,
        )
        self.latency = Histogram(
            "keystate_http_request_duration_seconds", "Time from a request's arrival to its answer.",
            ["listener", "route"], buckets=_LATENCY_BUCKETS, registry=r,
        )


HTTP = HttpMetrics()
"""The process's HTTP metrics on prometheus-client's default registry."""


def route_class(request: web.Request) -> str:
    """A bounded label: the matched route's template (`/invocations/{id}`), never the path itself."""
    resource = request.match_info.route.resource
    canonical = resource.canonical if resource is not None else None
    if canonical is None:
        return "unmatched"
    if canonical == _CATCH_ALL:  # the ingress's POST /{service}/[{key}/]{handler}[/send]
        return "send" if request.path.rstrip("/").endswith("/send") else "call"
    return canonical


def http_metrics_middleware(listener: str, metrics: HttpMetrics | None = None) -> Middleware:
    """Counts and times every request of `listener`; place it first, so refusals and errors are counted too."""
    m = HTTP if metrics is None else metrics

    @web.middleware
    async def count_requests(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        finally:
            route = route_class(request)
            m.requests.labels(listener, route, str(status)).inc()
            m.latency.labels(listener, route).observe(time.perf_counter() - started)

    return count_requests


def add_metrics_route(app: web.Application, registry: CollectorRegistry | None = None) -> None:
    """GET /metrics: the registry in Prometheus's text format (add it before any catch-all route)."""
    source = REGISTRY if registry is None else registry

    async def metrics(_: web.Request) -> web.Response:
        response = web.Response(body=generate_latest(source))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app.router.add_get(METRICS_PATH, metrics)
