"""Service settings changed with PATCH /services: duration parsing, the body, and how overrides merge into MetaState."""

from __future__ import annotations

from typing import Any

import pytest

from keystate.ingress.admin_deployments import service_json
from keystate.ingress.admin_services import parse_duration_ms, settings_patch
from keystate.ingress.errors import BadRequest
from keystate.schemas._codec import codec
from keystate.server.discovery import manifest_to_record
from keystate.server.kafka import KafkaSettings
from keystate.server.meta import MetaState, MetaView, handler_is_private
from keystate.server.service_settings import SERVICE_SETTINGS, merged_settings, settings_key

from ingress_support import handler, manifest, service

H, M, D = 3_600_000, 60_000, 86_400_000


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1d", D), ("2h30m", 2 * H + 30 * M), ("1h 30m", H + 30 * M), ("500ms", 500), ("10s", 10_000),
        ("0s", 0), ("1hr 5min", H + 5 * M), ("2 days", 2 * D), ("1w", 7 * D),
        ("PT1H", H), ("P1DT12H", D + 12 * H), ("PT0.5S", 500), ("pt90m", 90 * M), (1500, 1500), ("1500", 1500),
    ],
)
def test_durations_are_read_as_humantime_iso_8601_or_milliseconds(text: Any, ms: int) -> None:
    assert parse_duration_ms(text) == ms


@pytest.mark.parametrize("text", ["", "1x", "h", "1h30", "-5s", -5, "PT", "P1DT", "P1Y", "1.5h", True, 1.5, None, "1d!"])
def test_anything_else_is_not_a_duration(text: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration_ms(text)


def test_a_body_becomes_a_settings_patch_and_null_drops_an_override() -> None:
    body = {"public": False, "journal_retention": "0s", "inactivity_timeout": "PT1M", "abort_timeout": None}
    assert settings_patch(body, "SERVICE") == {
        "public": False, "journal_retention_ms": 0, "inactivity_timeout_ms": M, "abort_timeout_ms": None,
    }


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ([], "JSON object with at least one of public, idempotency_retention"),
        ({}, "JSON object with at least one of"),
        ({"journal_retention": "forever"}, '"journal_retention": \'forever\' is not a duration; write it as a humantime'),
        ({"public": "no"}, '"public" must be true or false'),
        ({"retention": "1d"}, "unknown field retention; accepted: public, idempotency_retention"),
        ({"workflow_completion_retention": "1d"}, "applies to workflows only"),
        ({"abort_timeout": "PT1X"}, '"abort_timeout"'),
    ],
)
def test_bad_bodies_say_which_field_and_the_accepted_formats(body: Any, fragment: str) -> None:
    with pytest.raises(BadRequest) as caught:
        settings_patch(body, "SERVICE")
    assert fragment in str(caught.value)


def test_a_patch_keeps_the_fields_it_does_not_name() -> None:
    first = merged_settings(None, "S", {"public": False, "journal_retention_ms": 0}, now_ms=1)
    second = merged_settings(first, "S", {"inactivity_timeout_ms": 5000, "journal_retention_ms": None}, now_ms=2)
    assert second["public"] is False and second["inactivity_timeout_ms"] == 5000
    assert second["journal_retention_ms"] is None and second["modified_at_ms"] == 2
    # The record is what goes to keystate.meta.
    assert codec().decode_as(SERVICE_SETTINGS, codec().encode(SERVICE_SETTINGS, second)) == second


def _deployment(deployment_id: str, *services: dict[str, Any]) -> dict[str, Any]:
    record = manifest_to_record(manifest(*services), f"http://{deployment_id}:9080", now_ms=1)
    return {**record, "deployment_id": deployment_id}


def _greeter(**extra: Any) -> dict[str, Any]:
    return {**service("Greeter", "SERVICE", handler("greet"), handler("secret", ingressPrivate=True)), **extra}


def test_the_effective_service_is_the_declared_one_with_the_override_on_top_and_survives_re_registration() -> None:
    state = MetaState()
    state.apply("dp_a", _deployment("dp_a", _greeter(journalRetention=3_600_000)))
    state.apply_settings("Greeter", merged_settings(None, "Greeter", {"public": False, "journal_retention_ms": 0,
                                                                       "inactivity_timeout_ms": 5000}, now_ms=1))
    entry = state.service("Greeter")
    assert entry is not None
    assert entry.metadata["ingress_private"] is True
    assert [handler_is_private(entry.metadata, h) for h in entry.metadata["handlers"]] == [True, True]
    assert entry.journal_retention_ms() == 0
    assert entry.completion_retention_ms() == 3_600_000  # declared, not overridden
    assert entry.metadata["inactivity_timeout_ms"] == 5000
    # Discovery compares the declared services, not the override.
    assert state.current_services()["Greeter"]["ingress_private"] is False
    # A new deployment of the service keeps the override (as in Restate, until changed).
    state.apply("dp_b", _deployment("dp_b", _greeter()))
    entry = state.service("Greeter")
    assert entry is not None and entry.deployment_id == "dp_b" and entry.metadata["ingress_private"] is True
    assert entry.journal_retention_ms() == 0 and entry.completion_retention_ms() is None
    # public=true again: inheriting handlers open, the one that declared itself private stays private.
    state.apply_settings("Greeter", merged_settings(state.settings["Greeter"], "Greeter", {"public": True}, now_ms=2))
    entry = state.service("Greeter")
    assert entry is not None
    assert [handler_is_private(entry.metadata, h) for h in entry.metadata["handlers"]] == [False, True]
    # A tombstone drops the override.
    state.apply_settings("Greeter", None)
    entry = state.service("Greeter")
    assert entry is not None and entry.settings == {} and entry.journal_retention_ms() is None


def test_workflows_take_the_workflow_completion_retention_others_the_idempotency_retention() -> None:
    state = MetaState()
    state.apply("dp_a", _deployment("dp_a", _greeter(), service("Flow", "WORKFLOW", handler("run", ty="WORKFLOW"))))
    for name in ("Greeter", "Flow"):
        patch = {"idempotency_retention_ms": 1000, "workflow_completion_retention_ms": 2000}
        state.apply_settings(name, merged_settings(None, name, patch, now_ms=1))
    greeter, flow = state.service("Greeter"), state.service("Flow")
    assert greeter is not None and flow is not None
    assert (greeter.completion_retention_ms(), flow.completion_retention_ms()) == (1000, 2000)
    shown = service_json(flow.metadata, flow.deployment_id, flow.settings)
    assert shown["workflow_completion_retention_ms"] == 2000 and shown["idempotency_retention_ms"] is None
    assert shown["overridden"] == ["idempotency_retention_ms", "workflow_completion_retention_ms"]


def test_the_view_reads_settings_records_by_their_key_and_ignores_a_mismatched_one() -> None:
    view = MetaView(KafkaSettings("127.0.0.1:1"))
    view.apply("dp_a", codec().encode("keystate.DeploymentRecord", _deployment("dp_a", _greeter())))
    record = merged_settings(None, "Greeter", {"public": False}, now_ms=1)
    view.apply(settings_key("Other"), codec().encode(SERVICE_SETTINGS, record))  # key and record disagree
    assert "Other" not in view.state.settings
    view.apply(settings_key("Greeter"), codec().encode(SERVICE_SETTINGS, record))
    entry = view.state.service("Greeter")
    assert entry is not None and entry.metadata["ingress_private"] is True
    view.apply(settings_key("Greeter"), None)
    entry = view.state.service("Greeter")
    assert entry is not None and entry.metadata["ingress_private"] is False
