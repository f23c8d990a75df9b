"""Prometheus metrics of a processor process, and the HTTP server that serves them at GET /metrics.

One registry per process (prometheus-client's default one, which also carries the process and GC
collectors); a test may build `ProcessorMetrics(CollectorRegistry())` of its own. The shell calls
the module functions below, one call per site: observations are made once per batch, restore or
attempt, never per record, and labels stay low-cardinality (service names, status classes,
partitions; never invocation ids or keys).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from keystate.server.errors import ServerError

if TYPE_CHECKING:
    from confluent_kafka import Consumer

    from .restore import RestoreReport
    from .step import StepResult

__all__ = [
    "DEFAULT_METRICS_PORT",
    "METRICS",
    "MetricsAddress",
    "MetricsServer",
    "BatchCounts",
    "ProcessorMetrics",
    "attempt_failed",
    "attempt_started",
    "batch_committed",
    "default_metrics_address",
    "parse_metrics_address",
    "restored",
    "sample_lag",
    "start_metrics_server",
    "watch_invoker",
]

log = logging.getLogger(__name__)

# A processor with the numeric --instance-id N serves its metrics on 127.0.0.1:(9170 + N) by default.
DEFAULT_METRICS_PORT = 9170
# Consumer lag is sampled at most this often (position and cached watermarks: no broker round trip).
LAG_SAMPLE_INTERVAL_S = 5.0

_COMPLETED = "COMPLETED"
# Commits take milliseconds when healthy and seconds when the broker struggles.
_COMMIT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
_RESTORE_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0)


class BatchCounts:
    """What one run of the batch step completed and dead-lettered; observed once its transaction commits."""

    __slots__ = ("completed", "dead_letters")

    def __init__(self) -> None:
        self.completed: Tally[tuple[str, str]] = Tally()  # (service, result) -> invocations
        self.dead_letters: Tally[tuple[str, str]] = Tally()  # (source, reason class) -> records

    def status_written(self, row: Mapping[str, Any] | None) -> None:
        """A status row was written: counted when it is the invocation's completion (written once)."""
        if row is not None and row.get("status") == _COMPLETED:
            result = str(row.get("completion_status") or "unknown").lower()
            self.completed[(_service(row.get("target")), result)] += 1

    def dead_lettered(self, source: str, reason: str) -> None:
        self.dead_letters[(source, reason)] += 1


class ProcessorMetrics:
    """The processor's metrics, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = REGISTRY if registry is None else registry
        self.registry = r
        self.commit_seconds = Histogram(
            "keystate_transaction_commit_seconds", "Time to commit one batch's Kafka transaction.",
            buckets=_COMMIT_BUCKETS, registry=r,
        )
        self.batch_records = Histogram(
            "keystate_batch_records", "Records consumed per committed transaction (its _sum counts every record).",
            buckets=_BATCH_BUCKETS, registry=r,
        )
        self.consumer_lag = Gauge(
            "keystate_consumer_lag", "Records not yet consumed: high watermark minus position, per owned partition.",
            ["topic", "partition"], registry=r,
        )
        self.invocations_started = Counter(
            "keystate_invocations_started_total", "Invocations whose first attempt started.", ["service"], registry=r
        )
        self.invocations_completed = Counter(
            "keystate_invocations_completed_total",
            "Invocations completed, by result (succeeded, failed, cancelled, killed).",
            ["service", "result"], registry=r,
        )
        self.attempts = Counter(
            "keystate_attempts_started_total", "Attempts started (first attempts and retries).", ["service"], registry=r
        )
        self.attempt_failures = Counter(
            "keystate_attempt_failures_total",
            "Attempts that ended in a failure (retried or not), by error code class (4xx, 5xx, other).",
            ["service", "code_class"], registry=r,
        )
        self.invoker_running = Gauge(
            "keystate_invoker_attempts_running", "Attempts holding an invoker slot (running against a deployment).",
            registry=r,
        )
        self.invoker_queued = Gauge(
            "keystate_invoker_attempts_queued", "Attempts waiting for an invoker slot of their deployment.", registry=r
        )
        self.invoker_limit = Gauge(
            "keystate_invoker_concurrency_limit", "Attempts that may run against one deployment at once.", registry=r
        )
        self.restore_seconds = Histogram(
            "keystate_restore_seconds", "Duration of a partition store's restore from the changelog.",
            ["mode"], buckets=_RESTORE_BUCKETS, registry=r,
        )
        self.restored_records = Counter(
            "keystate_restored_records_total", "Changelog records read by restores.", registry=r
        )
        self.dead_letters = Counter(
            "keystate_dead_letters_total",
            "Records written to the dead-letter topic, by source topic (requests, log) and reason class.",
            ["source", "reason"], registry=r,
        )
        self._next_lag_sample = 0.0
        self._lag_labels: set[tuple[str, str]] = set()

    # ---- observations -----------------------------------------------------------------------------
    def batch_committed(self, records: int, commit_s: float, result: StepResult) -> None:
        """A batch of `records` is done: its transaction (if it had one) committed in `commit_s`."""
        self.batch_records.observe(records)
        if result.produced:  # else nothing was written: no transaction (see runner.run_batch)
            self.commit_seconds.observe(commit_s)
        counts = result.counts
        for (service, outcome), n in counts.completed.items():
            self.invocations_completed.labels(service, outcome).inc(n)
        for (source, reason), n in counts.dead_letters.items():
            self.dead_letters.labels(source, reason).inc(n)

    def attempt_started(self, service: str, attempt: int) -> None:
        self.attempts.labels(service).inc()
        if attempt <= 1:
            self.invocations_started.labels(service).inc()

    def attempt_failed(self, service: str, code: int) -> None:
        self.attempt_failures.labels(service, code_class(code)).inc()

    def restored(self, report: RestoreReport) -> None:
        self.restore_seconds.labels(report.mode).observe(report.seconds)
        self.restored_records.inc(report.records)

    def watch_invoker(self, running: Callable[[], int], queued: Callable[[], int], limit: int) -> None:
        """Read the invoker's counts at each scrape (plain int reads: safe from the server's thread)."""
        self.invoker_running.set_function(running)
        self.invoker_queued.set_function(queued)
        self.invoker_limit.set(limit)

    def sample_lag(self, consumers: Iterable[Consumer], now: float | None = None) -> None:
        """Every `LAG_SAMPLE_INTERVAL_S`: the lag of each partition the consumers own (local calls only).

        The high watermark is librdkafka's cached one (updated by every fetch); a partition without a
        position yet (restoring, nothing fetched) keeps no sample. Revoked partitions are removed.
        """
        now = time.monotonic() if now is None else now
        if now < self._next_lag_sample:
            return
        self._next_lag_sample = now + LAG_SAMPLE_INTERVAL_S
        seen: set[tuple[str, str]] = set()
        for consumer in consumers:
            try:
                positions = consumer.position(consumer.assignment())
                for tp in positions:
                    _, high = consumer.get_watermark_offsets(tp, cached=True)
                    if tp.offset < 0 or high < 0:
                        continue
                    labels = (tp.topic, str(tp.partition))
                    self.consumer_lag.labels(*labels).set(max(0, high - tp.offset))
                    seen.add(labels)
            except Exception as exc:  # a closing consumer: metrics never break the loop
                log.debug("sampling consumer lag: %s", exc)
                return
        for labels in self._lag_labels - seen:
            self.consumer_lag.remove(*labels)
        self._lag_labels = seen


def code_class(code: int) -> str:
    """'4xx' / '5xx' for HTTP-like codes, else 'other': a bounded label for any error code."""
    if 400 <= code < 500:
        return "4xx"
    if 500 <= code < 600:
        return "5xx"
    return "other"


def _service(target: object) -> str:
    if isinstance(target, Mapping):
        return str(target.get("service") or "unknown")
    return "unknown"


METRICS = ProcessorMetrics()
"""The process's metrics on prometheus-client's default registry."""

batch_committed = METRICS.batch_committed
attempt_started = METRICS.attempt_started
attempt_failed = METRICS.attempt_failed
restored = METRICS.restored
watch_invoker = METRICS.watch_invoker
sample_lag = METRICS.sample_lag


# ---- the processor's own /metrics listener ------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class MetricsAddress:
    host: str
    port: int  # 0: a free port, logged at start


def default_metrics_address(instance_id: str) -> MetricsAddress:
    """127.0.0.1:(9170 + N) for the numeric instance id N (distinct per processor on a host), else a free port."""
    port = DEFAULT_METRICS_PORT + int(instance_id) if instance_id.isdigit() and int(instance_id) < 1000 else 0
    return MetricsAddress("127.0.0.1", port)


def parse_metrics_address(text: str) -> MetricsAddress | None:
    """`HOST:PORT` (IPv6 as `[::1]:PORT`), or `off` / `none` for no listener."""
    if text.strip().lower() in ("off", "none", ""):
        return None
    host, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ServerError(
            f"--metrics-address {text!r} is not HOST:PORT; give e.g. 127.0.0.1:9170 (port 0: any free port), or off"
        )
    return MetricsAddress(host.strip("[]") or "127.0.0.1", int(port))


class MetricsServer:
    """GET /metrics on its own thread: answers even while the event loop or the partition loop is stuck."""

    def __init__(self, server: Any, url: str) -> None:
        self._server = server
        self.url = url

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def start_metrics_server(address: MetricsAddress, registry: CollectorRegistry | None = None) -> MetricsServer:
    """Serve the registry at http://host:port/metrics; `ServerError` says how to fix an unusable address."""
    try:
        server, _ = start_http_server(address.port, address.host, registry=REGISTRY if registry is None else registry)
    except OSError as exc:
        raise ServerError(
            f"cannot serve metrics on {address.host}:{address.port} ({exc.strerror or exc}); give each processor "
            "on this host its own --metrics-address HOST:PORT (port 0 picks a free one), or --metrics-address off"
        ) from exc
    host, port = str(server.server_address[0]), int(server.server_address[1])
    url = f"http://{host if ':' not in host else f'[{host}]'}:{port}/metrics"
    if not _loopback(address.host):
        log.warning(
            "processor metrics on %s without authentication: they name services and counts, never invocation ids, "
            "keys or payloads; restrict who can reach the port", url,
        )
    log.info("processor metrics on %s", url)
    return MetricsServer(server, url)


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
