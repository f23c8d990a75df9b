"""Restate's breaking-change rule and the same-uri check, on MetaState alone (no Kafka)."""

from __future__ import annotations

from keystate.server.deployment_changes import breaking_changes, discovery_differences
from keystate.server.meta import MetaState

from ingress_support import COUNTER, GREETER, handler, record, service


def current(*services: dict) -> dict:
    state = MetaState()
    old = record("http://a:9080", *services)
    state.apply(old["deployment_id"], old)
    return state.current_services()


def test_adding_services_and_handlers_breaks_nothing() -> None:
    new = record("http://b:9080", service("Greeter", "SERVICE", handler("greet"), handler("upload"), handler("wave")), COUNTER)
    assert breaking_changes(current(GREETER), new) == []


def test_leaving_a_service_out_breaks_nothing_it_stays_where_it_is() -> None:
    assert breaking_changes(current(GREETER, COUNTER), record("http://b:9080", GREETER)) == []


def test_each_breaking_change_is_listed() -> None:
    new = record(
        "http://b:9080",
        service("Greeter", "VIRTUAL_OBJECT", handler("greet", "EXCLUSIVE")),
        service("Counter", "VIRTUAL_OBJECT", handler("add", "SHARED")),
    )

    assert breaking_changes(current(GREETER, COUNTER), new) == [
        "service Greeter changes type from SERVICE to VIRTUAL_OBJECT",
        "handler Counter/add changes kind from EXCLUSIVE to SHARED",
        "handler Counter/get is removed",
    ]


def test_the_newest_deployment_is_what_a_new_one_is_compared_with() -> None:
    state = MetaState()
    for deployment in (record("http://a:9080", GREETER), record("http://b:9080", service("Greeter", "SERVICE", handler("greet")))):
        state.apply(deployment["deployment_id"], deployment)

    # `upload` was already dropped by the newest deployment: dropping it again breaks nothing.
    assert breaking_changes(state.current_services(), record("http://c:9080", service("Greeter", "SERVICE", handler("greet")))) == []


def test_discovery_differences_name_what_changed_at_a_uri() -> None:
    old = record("http://a:9080", GREETER)
    new = record("http://a:9080", service("Greeter", "SERVICE", handler("greet")), COUNTER)

    assert discovery_differences(old, new) == ["service Counter added", "handler Greeter/upload removed"]


def test_find_by_uri_and_latest_for() -> None:
    state = MetaState()
    a, b = record("http://a:9080", GREETER, COUNTER), record("http://b:9080", GREETER)
    for deployment in (a, b):
        state.apply(deployment["deployment_id"], deployment)

    assert state.find_by_uri("http://a:9080") == a and state.find_by_uri("http://c:9080") is None
    assert state.latest_for(a["deployment_id"]) == ["Counter"]
    assert state.latest_for(b["deployment_id"]) == ["Greeter"]


def test_a_tombstone_marks_the_deployment_removed() -> None:
    state = MetaState()
    a = record("http://a:9080", GREETER)
    state.apply(a["deployment_id"], a)
    assert state.removed == set()

    state.apply(a["deployment_id"], None)

    assert state.removed == {a["deployment_id"]} and a["deployment_id"] not in state.deployments
