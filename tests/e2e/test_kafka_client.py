"""Kafka clients end to end: Confluent's AvroSerializer (three modes) -> keystate.requests -> a running
stack -> keystate.results read with AvroDeserializer, all through the admin's schema registry API.

Issue 11, "Schema registry API that Confluent's clients accept" and "An example producer and consumer".
"""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer

from keystate.schemas._codec import AVRO_DIR
from keystate.schemas.topics import Topics
from keystate.server.topics import TopicSettings, ensure_topics

from harness import ROOT, Stack, free_port

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
        s.deployment(EXAMPLES, port, name="examples")
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
