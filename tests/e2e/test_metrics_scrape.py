"""Prometheus /metrics on the admin API, the ingress and a processor of a running stack (issue 10).

Real processes on a real broker: a few calls (one service failing for good after its retries, one
retrying once), a poison record on keystate.requests, then each process is scraped and its text
parsed with prometheus-client's own parser.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from confluent_kafka import Producer

from keystate.processors.invoker import InvokerSettings
from keystate.schemas.topics import Topics

from harness import SERVICES_SCRIPT, Stack, free_port, http
from results import read_all

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
ADDS = 5


def scrape(url: str) -> Samples:
    from prometheus_client.parser import text_string_to_metric_families

    response = http("GET", url)
    assert response.status == 200, response.body
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.body.decode())
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def matching(samples: Samples, name: str, **labels: str) -> dict[frozenset[tuple[str, str]], float]:
    """The samples of `name` whose labels include `labels`."""
    want = set(labels.items())
    return {lbls: v for (n, lbls), v in samples.items() if n == name and want <= lbls}


def eventually(url: str, ready: Callable[[Samples], bool], stack: Stack, timeout: float = 60.0) -> Samples:
    """Scrape until `ready` (metrics follow commits, and lag is sampled every few seconds)."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(url)
        if ready(samples):
            return samples
        assert time.monotonic() < deadline, f"{url} never satisfied the check\n{stack.logs()}"
        time.sleep(0.5)


def test_metrics_of_admin_ingress_and_processor_after_calls_failures_and_a_dead_letter(
    stack: Stack, deployment_env: dict[str, str], tmp_path: Path
) -> None:
    metrics_port = free_port()
    stack.processor("a", "--metrics-address", f"127.0.0.1:{metrics_port}")
    stack.ingress()
    port = free_port()
    stack.deployment(SERVICES_SCRIPT, port, env=deployment_env)
    stack.register(f"http://127.0.0.1:{port}")
    processor_url = f"http://127.0.0.1:{metrics_port}/metrics"

    for i in range(ADDS):
        assert http("POST", f"{stack.url}/Counter/metrics/add", 1).json() == i
    assert http("POST", f"{stack.url}/Flaky/always_fails").status == 500  # 3 failed attempts, then failed for good
    assert http("POST", f"{stack.url}/Flaky/fails_then_waits", str(tmp_path / "marker")).json() == 1
    topics = Topics(stack.prefix)
    producer = Producer({"bootstrap.servers": stack.bootstrap})
    producer.produce(topics.requests, b"\x00 not an InvocationRequest")
    assert producer.flush(10) == 0
    assert read_all(stack.bootstrap, topics.requests_dlq, until=lambda rs: len(rs) >= 1)

    proc = eventually(
        processor_url,
        lambda s: bool(matching(s, "keystate_consumer_lag", topic=topics.log))
        and value(s, "keystate_dead_letters_total", source="requests", reason="invalid") >= 1,
        stack,
    )
    completed = "keystate_invocations_completed_total"
    assert value(proc, completed, service="Counter", result="succeeded") == ADDS  # once each, never per row write
    assert value(proc, completed, service="Flaky", result="failed") == 1
    assert value(proc, completed, service="Flaky", result="succeeded") == 1
    assert value(proc, "keystate_invocations_started_total", service="Counter") == ADDS
    assert value(proc, "keystate_attempts_started_total", service="Flaky") == 3 + 2
    assert value(proc, "keystate_attempt_failures_total", service="Flaky", code_class="5xx") >= 3
    assert value(proc, "keystate_transaction_commit_seconds_count") > 0
    assert value(proc, "keystate_transaction_commit_seconds_sum") > 0
    assert value(proc, "keystate_batch_records_sum") >= ADDS
    # A batch that writes nothing (entries read back after a batch wrote them itself) commits no transaction.
    assert 0 < value(proc, "keystate_transaction_commit_seconds_count") <= value(proc, "keystate_batch_records_count")
    lags = matching(proc, "keystate_consumer_lag", topic=topics.log)
    assert {dict(labels)["partition"] for labels in lags} <= {"0", "1", "2", "3"}
    assert all(v >= 0 for v in lags.values())
    assert value(proc, "keystate_invoker_concurrency_limit") == InvokerSettings().max_concurrent_attempts_per_deployment
    assert ("keystate_invoker_attempts_running", frozenset()) in proc
    assert ("keystate_invoker_attempts_queued", frozenset()) in proc
    restores = matching(proc, "keystate_restore_seconds_count")
    assert sum(restores.values()) >= 1  # every owned log partition was restored before it ran
    assert ("keystate_restored_records_total", frozenset()) in proc
    assert not any(
        "invocation_id" in dict(labels) or "key" in dict(labels) for (_, labels) in proc
    )

    # The admin's gauge of invocations by state, from its read model of the status rows (it catches up).
    admin = eventually(
        f"{stack.admin_url}/metrics",
        lambda s: value(s, "keystate_invocations", service="Counter", status="completed") == ADDS
        and value(s, "keystate_invocations", service="Flaky", status="completed") == 2,
        stack,
    )
    assert not matching(admin, "keystate_invocations", status="running")  # none left running
    requests = "keystate_http_requests_total"
    assert value(admin, requests, listener="admin", route="/deployments", code="201") + value(
        admin, requests, listener="admin", route="/deployments", code="200"
    ) >= 1
    assert value(admin, requests, listener="ingress", route="call", code="200") >= ADDS + 1
    assert value(admin, requests, listener="ingress", route="call", code="500") == 1
    assert value(admin, "keystate_http_request_duration_seconds_count", listener="ingress", route="call") >= ADDS + 2
    ingress = scrape(f"{stack.url}/metrics")  # the same process's registry, on the ingress listener
    assert value(ingress, requests, listener="admin", route="/metrics", code="200") >= 1
