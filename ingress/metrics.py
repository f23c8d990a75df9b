"""Prometheus metrics of the ingress and admin API: requests by route class and status, latency, GET /metrics.

The ingress and the admin API run in one process and share prometheus-client's default registry (a
`keystate runtime` process adds its processor's metrics to it), so both listeners' /metrics show the
same text; scrape one of them. /metrics sits behind the listener's bearer token like every route but
/health: Prometheus sends it with `authorization: {credentials_file: ...}`.
"""

from __future__ import annotations

import asyncio
import logging
import time

from collections.abc import Callable, Iterator

import duckdb
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["METRICS_PATH", "HttpMetrics", "InvocationCounts", "add_metrics_route", "http_metrics_middleware"]

log = logging.getLogger(__name__)

METRICS_PATH = "/metrics"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)
# The ingress's catch-all invocation route, named by what it does instead of its template.
_CATCH_ALL = "/{path}"
# Status rows' states under the names of Restate's sys_invocation (and of keystate's POST /query).
_STATUS_NAMES = {
    "SCHEDULED": "scheduled",
    "INBOXED": "pending",
    "INVOKED": "running",
    "SUSPENDED": "suspended",
    "BACKING_OFF": "backing-off",
    "PAUSED": "paused",
    "COMPLETED": "completed",
}


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


class InvocationCounts(Collector):
    """`keystate_invocations{service, status}`: invocations per state, counted in the read model at each scrape.

    The read model is fed from the changelog's status rows, so this is the gauge of every processor's
    invocations at once (completed ones until their retention ends). `counts` blocks: the scrape runs off the loop.
    """

    def __init__(self, counts: Callable[[], list[tuple[str, str, int]]]) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        gauge = GaugeMetricFamily(
            "keystate_invocations", "Invocations known to the admin's read model, by service and status.",
            labels=["service", "status"],
        )
        try:
            rows = self._counts()
        except duckdb.Error as exc:  # the other metrics are still worth a scrape
            log.warning("keystate_invocations left out of /metrics: the invocation read model failed: %s", exc)
            return
        for service, status, count in rows:
            gauge.add_metric([service, _STATUS_NAMES.get(status, status.lower())], count)
        yield gauge


def add_metrics_route(app: web.Application, *collectors: Collector, registry: CollectorRegistry | None = None) -> None:
    """GET /metrics: the process registry, plus this app's own `collectors`, in Prometheus's text format.

    Add it before any catch-all route. Collected on a thread: a collector may block (the read model's counts).
    """
    sources = [REGISTRY if registry is None else registry]
    if collectors:
        own = CollectorRegistry(auto_describe=False)
        for collector in collectors:
            own.register(collector)
        sources.append(own)

    def render() -> bytes:
        return b"".join(generate_latest(source) for source in sources)

    async def metrics(_: web.Request) -> web.Response:
        response = web.Response(body=await asyncio.to_thread(render))
        response.headers["Content-Type"] = CONTENT_TYPE_LATEST
        return response

    app.router.add_get(METRICS_PATH, metrics)
