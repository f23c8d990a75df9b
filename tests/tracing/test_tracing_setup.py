"""Tracing without a broker: Kafka trace headers, OTLP export set-up, and keystate without OpenTelemetry installed.

Each set-up check runs in a fresh interpreter: OpenTelemetry's TracerProvider can be set only once per process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from keystate.server.tracing import derived_span_id, derived_trace_id, with_kafka_trace_headers

ROOT = Path(__file__).resolve().parents[2]
PARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    import os

    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, env={**clean, **(env or {})},
        capture_output=True, text=True, timeout=120,
    )


def test_a_produced_request_takes_the_trace_context_of_its_kafka_headers() -> None:
    kafka = [("traceparent", PARENT.encode()), ("tracestate", b"vendor=1"), ("other", b"x")]
    assert with_kafka_trace_headers({"a": "1"}, kafka) == {"a": "1", "traceparent": PARENT, "tracestate": "vendor=1"}
    assert with_kafka_trace_headers({}, {"TraceParent": PARENT}) == {"traceparent": PARENT}


def test_the_requests_own_traceparent_wins_and_a_tracestate_alone_is_not_a_context() -> None:
    own = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    assert with_kafka_trace_headers(own, [("traceparent", PARENT.encode())]) == own
    assert with_kafka_trace_headers({}, [("tracestate", b"vendor=1")]) == {}
    assert with_kafka_trace_headers({}, None) == {}
    assert with_kafka_trace_headers({}, [("traceparent", b"\xff\xfe")]) == {}


def test_an_invocations_span_and_trace_ids_are_the_same_on_every_processor_and_differ_between_invocations() -> None:
    assert derived_span_id("inv_1abc") == derived_span_id("inv_1abc") != derived_span_id("inv_1abd")
    assert 0 < derived_span_id("inv_1abc") < 2**64
    assert 0 < derived_trace_id("inv_1abc") < 2**128


def test_without_opentelemetry_installed_nothing_traces_and_an_explicit_endpoint_says_how_to_fix_it() -> None:
    result = _python(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if the otel extra were not installed
        import keystate, keystate.ingress.app, keystate.processors.invoker
        from keystate import _tracing as sdk_tracing
        from keystate.ingress.tracing import invocation_headers, tracing_middlewares
        from keystate.processors import tracing as processor_tracing
        from keystate.server import tracing
        assert not tracing.ENABLED and not sdk_tracing.ENABLED and not tracing.active()
        assert tracing_middlewares() == []
        assert invocation_headers("S/h", "inv_1", {"a": "b"}) == {"a": "b"}
        assert sdk_tracing.handler_context({"traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}) is None
        with sdk_tracing.attempt_context({}), sdk_tracing.run_span("step", 1):
            pass
        assert processor_tracing.entry_span(None, 1, {"entry": ("keystate.RunEntry", {})}) is None
        try:
            tracing.configure_export("http://127.0.0.1:4318", "keystate")
        except tracing.TracingSetupError as exc:
            print(exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "--otlp-endpoint" in result.stdout and "pip install 'keystate[otel]'" in result.stdout


def test_the_endpoint_variable_without_opentelemetry_warns_but_does_not_stop_keystate() -> None:
    result = _python(
        """
        import sys
        sys.modules["opentelemetry"] = None
        from keystate.server import tracing
        assert tracing.configure_export(None, "keystate") is None
        """,
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"},
    )
    assert result.returncode == 0, result.stderr
    assert "OpenTelemetry is not installed" in result.stderr


def test_an_endpoint_installs_an_otlp_exporting_provider_named_by_otel_service_name() -> None:
    result = _python(
        """
        from keystate.server import tracing
        assert tracing.configure_export(None, "keystate") is None and not tracing.active()
        provider = tracing.configure_export("http://127.0.0.1:9/", "keystate-processor")
        assert provider is not None and tracing.active()
        print(provider.resource.attributes["service.name"])
        provider.shutdown()
        """,
        {"OTEL_SERVICE_NAME": "orders-keystate"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "orders-keystate"
