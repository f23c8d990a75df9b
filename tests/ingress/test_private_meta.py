"""Ingress-private flags and forwarded headers: manifest parsing, the stored record, and records of version 1."""

from __future__ import annotations

from typing import Any

import pytest

from keystate.schemas._codec import codec
from keystate.server.discovery import manifest_to_record
from keystate.server.errors import MetaError
from keystate.server.kafka import KafkaSettings
from keystate.server.meta import DEPLOYMENT_RECORD_V1, MetaView, handler_is_private

from ingress_support import handler, manifest, service


def _record(*services: dict[str, Any]) -> dict[str, Any]:
    return manifest_to_record(manifest(*services), "http://d:9080", now_ms=1)


def test_a_handler_is_private_by_its_own_flag_else_by_its_service() -> None:
    plain = service("Plain", "SERVICE", handler("a"), handler("b", ingressPrivate=True))
    closed = {**service("Closed", "SERVICE", handler("c"), handler("d", ingressPrivate=False)), "ingressPrivate": True}
    record = _record(plain, closed)
    flags = {(s["name"], h["name"]): handler_is_private(s, h) for s in record["services"] for h in s["handlers"]}
    assert flags == {("Plain", "a"): False, ("Plain", "b"): True, ("Closed", "c"): True, ("Closed", "d"): False}
    assert [s["ingress_private"] for s in record["services"]] == [False, True]


def test_the_flags_and_forwarded_headers_survive_the_avro_record() -> None:
    svc = {**service("S", "SERVICE", handler("h", ingressPrivate=True)), "forwardHeaders": ["X-Api-Key", "authorization"]}
    record = _record(svc)
    name, back = codec().decode(codec().encode("keystate.DeploymentRecord", record))
    assert name == "keystate.DeploymentRecord"
    assert back["services"][0]["forward_headers"] == ["authorization", "x-api-key"]
    assert back["services"][0]["handlers"][0]["ingress_private"] is True


@pytest.mark.parametrize(
    ("where", "field", "value", "fragment"),
    [
        ("service", "ingressPrivate", "yes", "'ingressPrivate' must be true or false"),
        ("handler", "ingressPrivate", 1, "'ingressPrivate' must be true or false"),
        ("service", "forwardHeaders", "authorization", "'forwardHeaders' must be a list of HTTP header names"),
        ("service", "forwardHeaders", ["bad header"], "'forwardHeaders' must be a list of HTTP header names"),
    ],
)
def test_bad_flags_name_the_field(where: str, field: str, value: Any, fragment: str) -> None:
    svc = service("S", "SERVICE", handler("h", **({field: value} if where == "handler" else {})))
    if where == "service":
        svc[field] = value
    with pytest.raises(MetaError, match=fragment):
        _record(svc)


def test_a_deployment_record_of_version_1_is_read_as_public_without_forwarded_headers() -> None:
    # The bytes an older keystate wrote to keystate.meta (schema id 401) must still be read.
    old = {
        "deployment_id": "dp_old",
        "uri": "http://d:9080",
        "transports": ["websocket"],
        "protocol_version": 1,
        "services": [
            {"name": "Greeter", "service_type": "SERVICE", "handlers": [{"name": "greet", "kind": "EXCLUSIVE"}]}
        ],
        "created_at_ms": 1,
    }
    value = codec().encode(DEPLOYMENT_RECORD_V1, old)
    assert value[:5] == b"\x00\x00\x00\x01\x91"
    view = MetaView(KafkaSettings("127.0.0.1:1"))
    view.apply("dp_old", value)
    entry = view.state.service("Greeter")
    assert entry is not None and entry.metadata["ingress_private"] is False and entry.metadata["forward_headers"] == []
    [greet] = entry.metadata["handlers"]
    assert greet["ingress_private"] is False and not handler_is_private(entry.metadata, greet)
