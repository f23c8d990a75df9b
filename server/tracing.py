"""OpenTelemetry for the ingress and the processors: the one guarded import, W3C context, OTLP export.

OpenTelemetry is optional (`pip install 'keystate[otel]'`). Without it `ENABLED` is False and every
function here is a cheap no-op, so no span code runs. With it, spans are recorded only once a real
TracerProvider is installed: by `configure_export` (the CLI's `--otlp-endpoint` or the standard
`OTEL_EXPORTER_OTLP_ENDPOINT`), or by the embedding program (tests install one with an in-memory
exporter).

Context crosses keystate as W3C `traceparent`/`tracestate` headers of the invocation: they live in
its InvokeCommand and its journal's Input entry, so any processor, after any restart, can parent
its spans on them.
"""

from __future__ import annotations

import contextvars
import hashlib
import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from .errors import ServerError

log = logging.getLogger(__name__)

try:
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    ENABLED = True
except ImportError:  # the otel extra is not installed: tracing is off
    ENABLED = False

__all__ = [
    "ENABLED",
    "TRACE_HEADERS",
    "TracingSetupError",
    "active",
    "configure_export",
    "derived_span_id",
    "derived_trace_id",
    "forced_ids",
    "inject",
    "parent_context",
    "tracer",
    "with_kafka_trace_headers",
]

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
TRACE_HEADERS = (TRACEPARENT, TRACESTATE)
OTLP_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_ENDPOINT"
OTLP_TRACES_ENDPOINT_ENV = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
SERVICE_NAME_ENV = "OTEL_SERVICE_NAME"
INSTALL_HINT = "install the otel extra: pip install 'keystate[otel]'"

# The ids the next span of a keystate tracer takes instead of random ones (see `forced_ids`).
_forced: contextvars.ContextVar[tuple[int | None, int | None]] = contextvars.ContextVar(
    "keystate_forced_ids", default=(None, None)
)
_tracers: dict[str, tuple[Any, Any]] = {}  # scope name -> (provider, its tracer)


class TracingSetupError(ServerError):
    """Tracing was asked for but cannot be set up; the message says how to fix it."""


def active() -> bool:
    """Whether spans are recorded: OpenTelemetry is installed and a real TracerProvider is set."""
    if not ENABLED:
        return False
    return not isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider | trace.NoOpTracerProvider)


class _ForcingIds:
    """Random ids, except where `forced_ids` names them: lets a span be recorded after the fact with the
    id its children were already given."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def generate_span_id(self) -> int:
        forced = _forced.get()[1]
        return forced if forced is not None else int(self._inner.generate_span_id())

    def generate_trace_id(self) -> int:
        forced = _forced.get()[0]
        return forced if forced is not None else int(self._inner.generate_trace_id())

    def is_trace_id_random(self) -> bool:
        return bool(getattr(self._inner, "is_trace_id_random", lambda: False)())


def tracer(name: str) -> Any:
    """The tracer `name` of the current provider (None when not `active`); it honours `forced_ids`
    where the provider is OpenTelemetry's SDK."""
    if not active():
        return None
    provider = trace.get_tracer_provider()
    cached = _tracers.get(name)
    if cached is not None and cached[0] is provider:
        return cached[1]
    found = provider.get_tracer(name)
    inner = getattr(found, "id_generator", None)
    if inner is not None and not isinstance(inner, _ForcingIds):
        setattr(found, "id_generator", _ForcingIds(inner))  # noqa: B010 - only keystate's own tracer, not the provider
    _tracers[name] = (provider, found)
    return found


def can_force_ids(the_tracer: Any) -> bool:
    """Whether `the_tracer` gives spans the ids `forced_ids` names."""
    return isinstance(getattr(the_tracer, "id_generator", None), _ForcingIds)


@contextmanager
def forced_ids(trace_id: int | None, span_id: int | None) -> Iterator[None]:
    """Spans started inside take these ids (a root span takes `trace_id`; a child keeps its parent's)."""
    token = _forced.set((trace_id, span_id))
    try:
        yield
    finally:
        _forced.reset(token)


def _digest(text: str, size: int) -> int:
    value = int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=size).digest(), "big")
    return value or 1  # all-zero ids are invalid in W3C trace context


def derived_trace_id(invocation_id: str) -> int:
    """The trace id of an invocation that arrived without a traceparent: the same on every processor."""
    return _digest(f"trace:{invocation_id}", 16)


def derived_span_id(invocation_id: str) -> int:
    """The span id of an invocation's span: its attempts' parent, known before the span is recorded."""
    return _digest(f"invocation:{invocation_id}", 8)


def parent_context(headers: Mapping[str, str] | None) -> Any:
    """The OpenTelemetry context of W3C headers (`traceparent`, `tracestate`); None without a valid one."""
    if not ENABLED or not headers:
        return None
    carrier = {k.lower(): v for k, v in headers.items() if k.lower() in TRACE_HEADERS}
    if TRACEPARENT not in carrier:
        return None
    ctx = TraceContextTextMapPropagator().extract(carrier)
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return ctx


def inject(ctx: Any, headers: dict[str, str]) -> dict[str, str]:
    """`headers` with `traceparent`/`tracestate` set to `ctx`'s span (replacing any from upstream)."""
    if not ENABLED or ctx is None:
        return headers
    carrier: dict[str, str] = {}
    TraceContextTextMapPropagator().inject(carrier, context=ctx)
    if TRACEPARENT in carrier:
        for name in [k for k in headers if k.lower() in TRACE_HEADERS]:
            del headers[name]
        headers.update(carrier)
    return headers


def attach(ctx: Any) -> object | None:
    """Make `ctx` current (OpenTelemetry's attach); the token for `detach`."""
    if not ENABLED or ctx is None:
        return None
    return otel_context.attach(ctx)


def detach(token: object | None) -> None:
    if token is not None:
        otel_context.detach(token)  # type: ignore[arg-type]


def configure_export(endpoint: str | None, default_service_name: str) -> Any:
    """Install a TracerProvider exporting over OTLP/HTTP, if an endpoint is given or set in the environment.

    `endpoint` (the `--otlp-endpoint` flag) is the collector's base URL, like
    `$OTEL_EXPORTER_OTLP_ENDPOINT` (e.g. http://127.0.0.1:4318; /v1/traces is appended).
    The service name is `$OTEL_SERVICE_NAME`, else `default_service_name`. Returns the provider (call
    its `shutdown()` at exit to flush) or None when nothing is to be exported.
    Raises `TracingSetupError` when `endpoint` is given but OpenTelemetry is not installed (only a
    warning for the environment variables).
    """
    configured = endpoint or os.environ.get(OTLP_ENDPOINT_ENV) or os.environ.get(OTLP_TRACES_ENDPOINT_ENV)
    if not configured:
        return None
    if not ENABLED:
        if endpoint:
            raise TracingSetupError(f"--otlp-endpoint asks for traces, but OpenTelemetry is not installed; {INSTALL_HINT}")
        # An environment variable may be meant for other programs: no reason to refuse to start.
        log.warning("$%s is set, but OpenTelemetry is not installed: no traces are exported; %s", OTLP_ENDPOINT_ENV, INSTALL_HINT)
        return None
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    # Without an argument the exporter reads the OTEL_EXPORTER_OTLP_* variables itself.
    exporter = OTLPSpanExporter(endpoint=_traces_url(endpoint)) if endpoint else OTLPSpanExporter()
    name = os.environ.get(SERVICE_NAME_ENV) or default_service_name
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: name}))
    provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    log.info("exporting traces over OTLP to %s as service %s", endpoint or configured, name)
    return provider


def _traces_url(base: str) -> str:
    base = base.rstrip("/")
    return base if base.endswith("/v1/traces") else f"{base}/v1/traces"


def with_kafka_trace_headers(headers: dict[str, str], kafka_headers: Any) -> dict[str, str]:
    """A keystate.requests record's headers with the `traceparent`/`tracestate` of its Kafka headers, if
    the request's own headers carry none: a produced request joins its producer's trace.

    Pure (no OpenTelemetry needed): the headers are copied as text.
    """
    if any(k.lower() == TRACEPARENT for k in headers):
        return headers
    pairs = kafka_headers.items() if isinstance(kafka_headers, Mapping) else kafka_headers or ()
    found: dict[str, str] = {}
    for name, raw in pairs:
        lower = name.lower()
        if lower in TRACE_HEADERS and raw is not None:
            try:
                found[lower] = raw.decode("utf-8") if isinstance(raw, bytes) else str(raw)
            except UnicodeDecodeError:
                continue
    if TRACEPARENT not in found:
        return headers
    return {**headers, **found}
