"""The processor's metrics: its /metrics listener and address flag, and observations on a registry of their own."""

from __future__ import annotations

import socket
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from keystate.processors.metrics import (
    DEFAULT_METRICS_PORT,
    MetricsAddress,
    ProcessorMetrics,
    code_class,
    default_metrics_address,
    parse_metrics_address,
    start_metrics_server,
)
from keystate.processors.records import OutKind, OutRecord
from keystate.processors.step import StepResult
from keystate.server.errors import ServerError


def test_numeric_instance_ids_get_distinct_ports_and_others_a_free_one() -> None:
    assert default_metrics_address("0") == MetricsAddress("127.0.0.1", DEFAULT_METRICS_PORT)
    assert default_metrics_address("2") == MetricsAddress("127.0.0.1", DEFAULT_METRICS_PORT + 2)
    assert default_metrics_address("worker-a") == MetricsAddress("127.0.0.1", 0)


# A changelog row: a batch that produces anything commits a transaction.
_ROW = OutRecord(OutKind.CHANGELOG, "keystate.changelog", 0, b'["status","inv_1"]', b"", None, ("keystate.log", 0, 7))

def test_the_address_flag_takes_host_port_ipv6_or_off_and_says_how_to_write_it() -> None:
    assert parse_metrics_address("0.0.0.0:9200") == MetricsAddress("0.0.0.0", 9200)
    assert parse_metrics_address("[::1]:9200") == MetricsAddress("::1", 9200)
    assert parse_metrics_address("off") is None
    with pytest.raises(ServerError, match="is not HOST:PORT; give e.g. 127.0.0.1:9170"):
        parse_metrics_address("9200x")


def test_the_listener_serves_the_registry_and_a_busy_port_says_how_to_fix_it() -> None:
    registry = CollectorRegistry()
    metrics = ProcessorMetrics(registry)
    metrics.batch_committed(7, 0.004, StepResult(produced=[_ROW], offsets={("keystate.log", 0): 8}))
    server = start_metrics_server(MetricsAddress("127.0.0.1", 0), registry)
    try:
        with urllib.request.urlopen(server.url, timeout=10) as response:
            text = response.read().decode()
        samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples if not s.labels}
        assert samples["keystate_batch_records_sum"] == 7
        assert samples["keystate_transaction_commit_seconds_count"] == 1
        port = int(server.url.rsplit(":", 1)[1].split("/")[0])
        with pytest.raises(ServerError, match="its own --metrics-address"):
            start_metrics_server(MetricsAddress("127.0.0.1", port), registry)
    finally:
        server.stop()
    with socket.socket() as s:  # stopped: nothing listens there any more (REUSEADDR: past TIME_WAIT only)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
        s.listen()


def test_a_committed_batch_counts_its_completions_and_dead_letters_and_an_empty_one_no_commit() -> None:
    registry = CollectorRegistry()
    metrics = ProcessorMetrics(registry)
    target = {"service": "Counter", "handler": "add"}
    result = StepResult(produced=[_ROW], offsets={("keystate.log", 0): 3})
    result.counts.status_written({"status": "INVOKED", "target": target, "completion_status": None})
    result.counts.status_written(None)  # a purged row
    result.counts.status_written({"status": "COMPLETED", "target": target, "completion_status": "FAILED"})
    result.counts.dead_lettered("requests", "invalid")
    StepResult().counts.status_written({"status": "COMPLETED", "target": target, "completion_status": "SUCCEEDED"})  # never committed

    metrics.batch_committed(3, 0.01, result)
    metrics.batch_committed(0, 0.0, StepResult())  # nothing written: no transaction
    metrics.batch_committed(2, 0.0, StepResult(offsets={("keystate.log", 0): 5}))  # read back, nothing to write

    def sample(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    assert sample("keystate_invocations_completed_total", service="Counter", result="failed") == 1
    assert sample("keystate_invocations_completed_total", service="Counter", result="succeeded") is None
    assert sample("keystate_dead_letters_total", source="requests", reason="invalid") == 1
    assert sample("keystate_batch_records_count") == 3
    assert sample("keystate_transaction_commit_seconds_count") == 1


def test_error_codes_fall_into_three_classes() -> None:
    assert [code_class(c) for c in (404, 500, 503, 0, 1001)] == ["4xx", "5xx", "5xx", "other", "other"]
