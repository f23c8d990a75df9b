"""The Grafana dashboard in docs/grafana only charts metrics keystate exports, under their exported names."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import CollectorRegistry

from keystate.ingress.metrics import HttpMetrics, InvocationCounts
from keystate.processors.metrics import ProcessorMetrics

DASHBOARD = Path(__file__).resolve().parents[2] / "docs" / "grafana" / "keystate.json"


def _exported() -> set[str]:
    """Every sample name the processors, the ingress and the admin API can expose."""
    registry = CollectorRegistry()
    ProcessorMetrics(registry)
    HttpMetrics(registry)
    registry.register(InvocationCounts(lambda: [("Svc", "INVOKED", 1)]))
    names = set()
    for family in registry.collect():
        names.add(family.name)
        names.update(f"{family.name}{suffix}" for suffix in ("_total", "_bucket", "_sum", "_count"))
    return names


def test_every_expression_of_the_dashboard_names_an_exported_metric() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    used = {name for expr in exprs for name in re.findall(r"\bkeystate_[a-z_]+", expr)}

    assert len(exprs) >= 10
    assert used and used <= _exported(), used - _exported()
    # The panels the issue asks for are there.
    for metric in ("keystate_transaction_commit_seconds_bucket", "keystate_batch_records_bucket", "keystate_consumer_lag",
                   "keystate_invocations", "keystate_attempt_failures_total", "keystate_dead_letters_total",
                   "keystate_invoker_attempts_running"):
        assert metric in used
