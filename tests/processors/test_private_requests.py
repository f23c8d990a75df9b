"""keystate.requests and ingress-private handlers, secret headers: the router's answers through the batch step."""

from __future__ import annotations

from typing import Any

from keystate.processors.driver import ProcessorDriver
from keystate.processors.records import OutKind
from keystate.server.meta import MetaState

from driver_support import PARTITIONS


def _meta() -> MetaState:
    meta = MetaState()
    meta.apply(
        "dp_1",
        {
            "deployment_id": "dp_1",
            "uri": "http://127.0.0.1:9080",
            "transports": ["websocket"],
            "protocol_version": 1,
            "created_at_ms": 0,
            "services": [
                {
                    "name": "Greeter",
                    "service_type": "SERVICE",
                    "handlers": [
                        {"name": "greet", "kind": "EXCLUSIVE", "ingress_private": False},
                        {"name": "internal", "kind": "EXCLUSIVE", "ingress_private": True},
                    ],
                    "ingress_private": False,
                    "forward_headers": [],
                },
                {
                    "name": "Vault",
                    "service_type": "SERVICE",
                    "handlers": [{"name": "open", "kind": "EXCLUSIVE", "ingress_private": False}],
                    "ingress_private": False,
                    "forward_headers": ["authorization"],
                },
            ],
        },
    )
    return meta


def _driver(**kwargs: Any) -> ProcessorDriver:
    d = ProcessorDriver(_meta(), partitions=PARTITIONS, **kwargs)
    d.assign(*range(PARTITIONS))
    return d


def _results(d: ProcessorDriver, topic: str) -> list[dict[str, Any]]:
    return [d.codec.decode_as("keystate.InvocationResult", r.value) for r in d.records(topic) if r.value]


def test_a_request_for_a_private_handler_gets_a_failed_result_on_results_and_its_reply_topic() -> None:
    d = _driver(existing_topics={"replies"})
    refused = d.request(service="Greeter", handler="internal", argument=b'"x"', reply_topic="replies", idempotency_key="k1")
    good = d.request(service="Greeter", handler="greet", argument=b'"x"')
    out = d.pipe([refused, good])

    for topic in (d.topics_names.results, "replies"):
        [result] = _results(d, topic)
        assert result["status"] == "FAILED" and result["failure"]["code"] == 400
        assert result["failure"]["message"].startswith("the invoked service is not public")
        assert "Greeter/internal" in result["failure"]["message"] and "ingress_private=False" in result["failure"]["message"]
        assert result["idempotency_key"] == "k1" and result["target"]["handler"] == "internal"
    # Not run, not dead-lettered: the only command is the public request's.
    assert d.dead_letters() == []
    [(name, command)] = d.log_commands()
    assert name == "keystate.InvokeCommand" and command["target"]["handler"] == "greet"
    assert [r.kind for r in out.produced if r.topic == d.topics_names.results] == [OutKind.PUBLISH]
    assert d.offsets[(d.topics_names.requests, 0)] == good.offset + 1


def test_secret_headers_of_a_request_are_dropped_unless_the_service_forwards_them() -> None:
    d = _driver()
    secrets = {"Authorization": "Bearer x-secret-123", "cookie": "sid=x-secret-456", "x-trace": "t1"}
    d.pipe([
        d.request(service="Greeter", handler="greet", argument=b'"x"', headers=secrets),
        d.request(service="Vault", handler="open", argument=b'"x"', headers=secrets),
    ])
    headers = {c["target"]["service"]: c["headers"] for _, c in d.log_commands()}
    assert headers["Greeter"] == {"x-trace": "t1"}
    assert headers["Vault"] == {"Authorization": "Bearer x-secret-123", "x-trace": "t1"}


def test_the_deny_list_comes_from_the_settings(monkeypatch: Any) -> None:
    monkeypatch.setenv("KEYSTATE_REDACT_HEADERS", "X-Trace")
    d = _driver()
    d.pipe([d.request(service="Greeter", handler="greet", argument=b'"x"', headers={"x-trace": "t", "cookie": "c"})])
    [(_, command)] = d.log_commands()
    assert command["headers"] == {"cookie": "c"}


# ---- correlation (issue 11): the request's Kafka key and headers travel with it ----------------------


HEADERS = [("correlation-id", b"c-42"), ("authorization", b"Bearer s3cret"), ("binary", b"\xff\xfe"), ("empty", None)]


def test_a_request_s_kafka_key_and_headers_travel_with_its_invocation_without_secrets() -> None:
    d = _driver()
    d.pipe([d.request(key=b"order-7", kafka_headers=HEADERS, service="Greeter", handler="greet", argument=b'"x"')])

    [(name, command)] = d.log_commands()
    assert name == "keystate.InvokeCommand"
    # Not UTF-8, no value, or a secret of the deny-list (even one the service forwards): left out.
    assert command["correlation"] == {"key": b"order-7", "headers": {"correlation-id": "c-42"}}


def test_a_correlation_id_in_the_request_s_headers_map_counts_when_there_is_no_such_kafka_header() -> None:
    d = _driver()
    d.pipe([d.request(service="Greeter", handler="greet", argument=b'"x"', headers={"Correlation-Id": "from-map", "x": "y"})])

    [(_, command)] = d.log_commands()
    assert command["correlation"] == {"key": None, "headers": {"correlation-id": "from-map"}}


def test_a_request_without_key_or_headers_has_no_correlation() -> None:
    d = _driver()
    d.pipe([d.request(service="Greeter", handler="greet", argument=b'"x"')])

    [(_, command)] = d.log_commands()
    assert command["correlation"] is None


def test_a_refused_request_s_result_carries_its_correlation_in_the_value_and_as_kafka_headers() -> None:
    d = _driver(existing_topics={"replies"})
    d.pipe([d.request(key=b"K", kafka_headers=HEADERS, service="Greeter", handler="internal", argument=b'"x"', reply_topic="replies")])

    for topic in (d.topics_names.results, "replies"):
        [record] = d.records(topic)
        assert d.codec.decode_as("keystate.InvocationResult", record.value)["correlation"] == {
            "key": b"K",
            "headers": {"correlation-id": "c-42"},
        }
        assert record.headers == [("type", b"keystate.InvocationResult"), ("correlation-id", b"c-42")]
