"""Invoke a handler from a plain Kafka client: Confluent's AvroSerializer against keystate's schema registry.

With `make dev` running (broker on 127.0.0.1:19092, admin API on :9070, the examples registered):

    python examples/kafka_client.py Ann          # prints: Greeter/greet answered "Hello Ann!"

It produces an InvocationRequest for Greeter/greet to `keystate.requests` and reads the
InvocationResult from `keystate.results`. The admin port serves the schema registry API, so the
serializer needs no schema of its own (`use.latest.version`), and the deserializer finds the
writer's schema by the id in each record. The request record carries a Kafka key and a fresh
`correlation-id` Kafka header; its result repeats both (`result["correlation"]`, and the header on
the result record): that is how this client finds its own result among everyone else's.
Set $KEYSTATE_ADMIN_TOKEN when the admin API requires a token.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.serialization import MessageField, SerializationContext


CORRELATION_ID = "correlation-id"


def registry_client(url: str, token: str | None = None) -> SchemaRegistryClient:
    """A client of the admin API's schema registry; with the admin token when it requires one."""
    conf: dict[str, Any] = {"url": url}
    if token:
        # Sends `Authorization: Bearer <token>`; the client insists on a logical cluster, which keystate ignores.
        conf |= {"bearer.auth.credentials.source": "STATIC_TOKEN", "bearer.auth.token": token,
                 "bearer.auth.logical.cluster": "keystate"}
    return SchemaRegistryClient(conf)


def follow_results(bootstrap: str, topic: str) -> Consumer:
    """A consumer at the current end of the results topic, so it sees every result from now on."""
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"kafka-client-example-{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "isolation.level": "read_committed",  # results are written in the processors' transactions
    })
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    ends = [TopicPartition(topic, p, consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1])
            for p in partitions]
    consumer.assign(ends)
    return consumer


def invoke(
    bootstrap: str,
    serializer: AvroSerializer,
    deserializer: AvroDeserializer,
    request: dict[str, Any],
    *,
    prefix: str = "keystate.",
    timeout: float = 60.0,
    key: bytes | None = None,
) -> dict[str, Any]:
    """Produce `request` (an InvocationRequest) with a fresh `correlation-id` header and return its InvocationResult.

    The record's Kafka key is `key` (default: the correlation id); the result carries both back.
    """
    requests_topic, results_topic = f"{prefix}requests", f"{prefix}results"
    correlation_id = uuid.uuid4().hex
    consumer = follow_results(bootstrap, results_topic)
    try:
        producer = Producer({"bootstrap.servers": bootstrap})
        value = serializer(request, SerializationContext(requests_topic, MessageField.VALUE))
        producer.produce(
            requests_topic,
            key=key if key is not None else correlation_id.encode(),
            value=value,
            headers=[(CORRELATION_ID, correlation_id.encode())],
        )
        if producer.flush(10) != 0:
            raise TimeoutError(f"the request was not delivered to {requests_topic} within 10 s; is Kafka at {bootstrap}?")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error() is not None:
                continue
            # The header is enough to skip other clients' results without decoding them.
            if (CORRELATION_ID, correlation_id.encode()) not in (message.headers() or []):
                continue
            result = deserializer(message.value(), SerializationContext(results_topic, MessageField.VALUE))
            if isinstance(result, dict) and (result.get("correlation") or {}).get("headers", {}).get(CORRELATION_ID) == correlation_id:
                return result
        raise TimeoutError(
            f"no result within {timeout} s; is the handler registered? Rejected requests are in {prefix}requests.dlq"
        )
    finally:
        consumer.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Greet someone through Kafka: InvocationRequest in, InvocationResult out.")
    parser.add_argument("name", nargs="?", default="Kafka")
    parser.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092"))
    parser.add_argument("--registry", default=os.environ.get("KEYSTATE_ADMIN_URL", "http://127.0.0.1:9070"),
                        help="keystate's admin API, which serves the schema registry API")
    parser.add_argument("--prefix", default=os.environ.get("KEYSTATE_TOPIC_PREFIX", "keystate."))
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args(argv)

    registry = registry_client(args.registry, os.environ.get("KEYSTATE_ADMIN_TOKEN"))
    # No schema here: the serializer takes the latest version of `<prefix>requests-value` from the registry.
    serializer = AvroSerializer(registry, conf={"auto.register.schemas": False, "use.latest.version": True})
    deserializer = AvroDeserializer(registry)
    request = {"service": "Greeter", "handler": "greet", "argument": json.dumps(args.name).encode()}
    result = invoke(args.bootstrap, serializer, deserializer, request, prefix=args.prefix, timeout=args.timeout)

    target = result["target"]
    if result["status"] != "SUCCEEDED":
        print(f"{target['service']}/{target['handler']} {result['status']}: {result['failure']}", file=sys.stderr)
        return 1
    print(f"{target['service']}/{target['handler']} answered {result['output'].decode()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
