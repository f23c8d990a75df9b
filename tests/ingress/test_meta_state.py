"""MetaState as a story: deployments registered in log order; the newest wins a service name."""

from __future__ import annotations

import pytest

from keystate.schemas._codec import codec
from keystate.server.errors import MetaError
from keystate.server.meta import DEPLOYMENT_RECORD, MetaState

from ingress_support import COUNTER, GREETER, handler, record, service


def test_a_registered_deployment_serves_its_services() -> None:
    state = MetaState()
    first = record("http://a:9080", GREETER, COUNTER)

    state.apply(first["deployment_id"], first)

    assert state.deployments == {first["deployment_id"]: first}
    assert state.service("Greeter").deployment_id == first["deployment_id"]
    assert state.service("Counter").metadata["service_type"] == "VIRTUAL_OBJECT"
    assert state.service("Nope") is None


def test_the_newest_registration_wins_a_service_name() -> None:
    state = MetaState()
    old = record("http://a:9080", GREETER, COUNTER)
    new = record("http://b:9080", service("Greeter", "SERVICE", handler("greet"), handler("wave")))

    state.apply(old["deployment_id"], old)
    state.apply(new["deployment_id"], new)

    assert state.service("Greeter").deployment_id == new["deployment_id"]
    assert [h["name"] for h in state.service("Greeter").metadata["handlers"]] == ["greet", "wave"]
    # Services the new deployment does not declare stay with the old one.
    assert state.service("Counter").deployment_id == old["deployment_id"]


def test_a_tombstone_removes_a_deployment_and_falls_back_to_the_previous_one() -> None:
    state = MetaState()
    old = record("http://a:9080", GREETER, COUNTER)
    new = record("http://b:9080", GREETER)
    state.apply(old["deployment_id"], old)
    state.apply(new["deployment_id"], new)

    state.apply(new["deployment_id"], None)

    assert list(state.deployments) == [old["deployment_id"]]
    assert state.service("Greeter").deployment_id == old["deployment_id"]

    state.apply(old["deployment_id"], None)
    assert state.deployments == {}
    assert state.services == {}


def test_a_redelivered_record_changes_nothing() -> None:
    state = MetaState()
    old = record("http://a:9080", GREETER)
    new = record("http://b:9080", GREETER)
    state.apply(old["deployment_id"], old)
    state.apply(new["deployment_id"], new)

    state.apply(old["deployment_id"], old)

    assert list(state.deployments) == [old["deployment_id"], new["deployment_id"]]
    assert state.service("Greeter").deployment_id == new["deployment_id"]


def test_a_tombstone_for_an_unknown_deployment_is_ignored() -> None:
    state = MetaState()
    state.apply("dp_unknown", None)
    assert state.deployments == {} and state.services == {}


def test_a_record_whose_key_differs_from_its_id_is_rejected() -> None:
    state = MetaState()
    rec = record("http://a:9080", GREETER)
    with pytest.raises(MetaError, match="does not match its deployment_id"):
        state.apply("dp_other", rec)
    assert state.deployments == {}


def test_find_same_matches_uri_and_services_after_an_avro_round_trip() -> None:
    state = MetaState()
    rec = record("http://a:9080", GREETER, COUNTER)
    _, stored = codec().decode(codec().encode(DEPLOYMENT_RECORD, rec))
    state.apply(stored["deployment_id"], stored)

    again = record("http://a:9080", GREETER, COUNTER)
    changed = record("http://a:9080", GREETER)
    elsewhere = record("http://b:9080", GREETER, COUNTER)

    assert again["deployment_id"] != rec["deployment_id"]
    assert state.find_same(again) == stored
    assert state.find_same(changed) is None
    assert state.find_same(elsewhere) is None
