"""The in-memory span recorder of the trace tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.util._once import Once


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    """A global TracerProvider recording into memory; the globals are reset afterwards, so no other test traces."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    assert trace.get_tracer_provider() is provider, "another test left a TracerProvider installed"
    try:
        yield exporter
    finally:
        provider.shutdown()
        # OpenTelemetry sets its provider only once per process: undone by hand for the next test.
        trace._TRACER_PROVIDER = None  # noqa: SLF001
        trace._TRACER_PROVIDER_SET_ONCE = Once()  # noqa: SLF001
