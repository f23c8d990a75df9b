"""Kafka clients end to end: Confluent's AvroSerializer (three modes) -> keystate.requests -> a running
stack -> keystate.results read with AvroDeserializer, all through the admin's schema registry API.

Issue 11, "Schema registry API that Confluent's clients accept", "An example producer and consumer",
"Correlation" and "Public results only on the public topic".
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext

from keystate.schemas._codec import AVRO_DIR
from keystate.schemas.topics import Topics
from keystate.server.topics import TopicSettings, ensure_topics

from harness import ROOT, Stack, free_port, http
from results import read_all

sys.path.insert(0, str(ROOT / "examples"))
from kafka_client import invoke, registry_client  # noqa: E402

pytestmark = pytest.mark.integration

EXAMPLES = str(ROOT / "examples" / "serve.py")
REQUEST_AVSC = (AVRO_DIR / "InvocationRequest.avsc").read_text()
MODES = {
    "auto-register": ({"auto.register.schemas": True}, REQUEST_AVSC),
    "use-latest-version": ({"auto.register.schemas": False, "use.latest.version": True}, None),
    "lookup": ({"auto.register.schemas": False}, REQUEST_AVSC),
}


@pytest.fixture(scope="module")
def stack(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """processor + ingress + the examples, registered; shared by the tests of this module (no token)."""
    prefix = f"kc{uuid.uuid4().hex[:8]}."
    ensure_topics(kafka_bootstrap, Topics(prefix), TopicSettings(partitions=2))
    s = Stack(kafka_bootstrap, prefix, tmp_path_factory.mktemp("kafka-client"))
    try:
        s.processor("a")
        s.ingress()
        port = free_port()
        s.deployment(EXAMPLES, port, name="examples", env={"KEYSTATE_SIGNUP_OUTBOX": str(s.workdir / "outbox")})
        s.register(f"http://127.0.0.1:{port}")
        yield s
    finally:
        s.stop()


def _greet(stack: Stack, serializer: AvroSerializer, deserializer: AvroDeserializer, name: str) -> dict[str, Any]:
    request = {"service": "Greeter", "handler": "greet", "argument": json.dumps(name).encode(), "headers": {"correlation-id": name}}
    try:
        return invoke(stack.bootstrap, serializer, deserializer, request, prefix=stack.prefix, timeout=90)
    except TimeoutError as exc:
        raise AssertionError(f"{exc}\n{stack.logs()}") from exc


@pytest.mark.parametrize("mode", MODES)
def test_an_avro_serializer_request_comes_back_as_a_result_read_with_the_avro_deserializer(stack: Stack, mode: str) -> None:
    conf, schema = MODES[mode]
    registry = registry_client(stack.admin_url)
    serializer = AvroSerializer(registry, schema, conf=conf)
    deserializer = AvroDeserializer(registry)
    name = f"{mode}-{uuid.uuid4().hex[:6]}"

    result = _greet(stack, serializer, deserializer, name)

    assert result["status"] == "SUCCEEDED", result
    assert result["output"] == json.dumps(f"Hello {name}!").encode()
    assert result["target"] == {"service": "Greeter", "handler": "greet", "key": None, "service_type": "SERVICE", "handler_kind": "EXCLUSIVE"}
    assert result["failure"] is None and result["invocation_id"].startswith("inv_")


def test_the_deserializer_with_the_latest_version_reads_results_too(stack: Stack) -> None:
    registry = registry_client(stack.admin_url)
    serializer = AvroSerializer(registry, conf={"auto.register.schemas": False, "use.latest.version": True})
    deserializer = AvroDeserializer(registry, conf={"use.latest.version": True})

    result = _greet(stack, serializer, deserializer, "latest")

    assert result["status"] == "SUCCEEDED" and result["output"] == b'"Hello latest!"'


def test_the_example_client_greets_through_kafka(stack: Stack) -> None:
    run = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "kafka_client.py"), "Ann",
         "--bootstrap", stack.bootstrap, "--registry", stack.admin_url, "--prefix", stack.prefix, "--timeout", "90"],
        capture_output=True, text=True, timeout=150, cwd=Path(ROOT),
    )

    assert run.returncode == 0, f"{run.stdout}\n{run.stderr}\n{stack.logs()}"
    assert run.stdout.strip() == 'Greeter/greet answered "Hello Ann!"'


# ---- correlation: the request's Kafka key and headers come back on its result ------------------------


def _records(bootstrap: str, topic: str, until: Any, timeout: float = 90.0) -> list[Any]:
    """Every committed record of `topic` from the start (raw messages), until `until(records)` holds."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}", "auto.offset.reset": "earliest",
                         "isolation.level": "read_committed", "enable.auto.commit": False})
    consumer.subscribe([topic])
    found: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(found):
            found += [m for m in consumer.consume(100, 0.5) if m.error() is None]
    finally:
        consumer.close()
    return found


def test_a_request_s_kafka_key_and_correlation_header_come_back_on_results_and_on_its_reply_topic(stack: Stack) -> None:
    replies = f"{stack.prefix}my-replies"
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    admin.create_topics([NewTopic(replies, 1, 1)])[replies].result(30)
    registry = registry_client(stack.admin_url)
    serializer = AvroSerializer(registry, conf={"auto.register.schemas": False, "use.latest.version": True})
    deserializer = AvroDeserializer(registry)
    correlation_id = uuid.uuid4().hex
    request = {"service": "Greeter", "handler": "greet", "argument": b'"Kim"', "reply_topic": replies}
    requests = f"{stack.prefix}requests"
    producer = Producer({"bootstrap.servers": stack.bootstrap})
    producer.produce(
        requests,
        key=b"order-7",
        value=serializer(request, SerializationContext(requests, MessageField.VALUE)),
        headers=[("correlation-id", correlation_id.encode()), ("authorization", b"Bearer s3cret")],
    )
    assert producer.flush(10) == 0

    def ours(records: list[Any]) -> list[Any]:
        return [m for m in records if ("correlation-id", correlation_id.encode()) in (m.headers() or [])]

    for topic in (f"{stack.prefix}results", replies):
        found = ours(_records(stack.bootstrap, topic, lambda rs: bool(ours(rs))))
        assert len(found) == 1, f"no result with our correlation-id on {topic}\n{stack.logs()}"
        [message] = found
        result = deserializer(message.value(), SerializationContext(topic, MessageField.VALUE))
        assert result["status"] == "SUCCEEDED" and result["output"] == b'"Hello Kim!"'
        assert result["correlation"] == {"key": b"order-7", "headers": {"correlation-id": correlation_id}}
        assert dict(message.headers())["type"] == b"keystate.InvocationResult"
        assert all(name != "authorization" for name, _ in message.headers())  # a secret is never echoed


def test_the_example_client_finds_its_result_by_its_correlation_id(stack: Stack) -> None:
    registry = registry_client(stack.admin_url)
    serializer = AvroSerializer(registry, conf={"auto.register.schemas": False, "use.latest.version": True})
    request = {"service": "Greeter", "handler": "greet", "argument": b'"Lee"'}

    result = invoke(stack.bootstrap, serializer, AvroDeserializer(registry), request, prefix=stack.prefix, timeout=90, key=b"K")

    assert result["output"] == b'"Hello Lee!"'
    assert result["correlation"]["key"] == b"K" and set(result["correlation"]["headers"]) == {"correlation-id"}


# ---- internal replies stay off the public results topic ---------------------------------------------


def test_keystate_results_holds_only_invocation_results_after_idempotent_and_workflow_calls(stack: Stack) -> None:
    user = f"u-{uuid.uuid4().hex[:8]}"
    idem = {"idempotency-key": f"k-{uuid.uuid4().hex}"}
    for _ in range(2):  # the second finds the first (a QueryOutputReply with previously_accepted)
        answer = http("POST", f"{stack.url}/Greeter/greet", "Ida", headers=idem)
        assert answer.status == 200 and answer.body == b'"Hello Ida!"', answer.body
    signup = {"name": "Wil", "email": "wil@example.com"}
    assert http("POST", f"{stack.url}/UserSignup/{user}/run/send", signup).status == 202
    assert http("POST", f"{stack.url}/UserSignup/{user}/run/send", signup).json()["status"] == "PreviouslyAccepted"
    assert http("GET", f"{stack.url}/restate/workflow/UserSignup/{user}/output").status == 470  # a query, still running
    secret = _wait_for_secret(stack)
    assert http("POST", f"{stack.url}/UserSignup/{user}/click", secret).status == 200
    attached = http("GET", f"{stack.url}/restate/workflow/UserSignup/{user}/attach")
    assert attached.status == 200 and attached.body == b"true", attached.body

    results_topic = f"{stack.prefix}results"
    records = _records(stack.bootstrap, results_topic, lambda rs: False, timeout=5)
    types = {dict(m.headers() or [])["type"] for m in records}
    assert types == {b"keystate.InvocationResult"}, types
    registry = registry_client(stack.admin_url)
    latest = AvroDeserializer(registry, conf={"use.latest.version": True})
    decoded = [latest(m.value(), SerializationContext(results_topic, MessageField.VALUE)) for m in records]
    assert all(r["invocation_id"].startswith("inv_") and r["status"] for r in decoded)
    # The replies went to the ingress's own topic instead.
    [reply_topic] = [t for t in AdminClient({"bootstrap.servers": stack.bootstrap}).list_topics(timeout=10).topics
                     if t.startswith(f"{stack.prefix}replies.")]
    replies = [r for r in read_all(stack.bootstrap, reply_topic, timeout=5) if "request_id" in r]
    assert len(replies) >= 5  # two idempotent calls, two workflow sends, one output query, one attach


def _wait_for_secret(stack: Stack, timeout: float = 60.0) -> str:
    outbox = stack.workdir / "outbox"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if outbox.exists() and outbox.read_text().strip():
            return outbox.read_text().split()[-1]
        time.sleep(0.2)
    raise AssertionError(f"the signup workflow sent no mail\n{stack.logs()}")
