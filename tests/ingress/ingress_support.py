"""Builders of the records the ingress tests use (manifests, deployment records)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

from keystate.server.discovery import manifest_to_record


def manifest(*services: dict[str, Any], protocol: int = 1) -> dict[str, Any]:
    return {"protocol": protocol, "transports": ["websocket"], "services": list(services)}


def service(name: str, ty: str = "SERVICE", *handlers: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "ty": ty, "handlers": list(handlers) or [handler("greet")]}


def handler(name: str, ty: str | None = None, **extra: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {"name": name, "input": {}, "output": {}}
    if ty is not None:
        spec["ty"] = ty
    spec.update(extra)
    return spec


GREETER = service("Greeter", "SERVICE", handler("greet"), handler("upload", input={"contentType": "application/octet-stream"}))
COUNTER = service("Counter", "VIRTUAL_OBJECT", handler("add", "EXCLUSIVE"), handler("get", "SHARED"))
SIGNUP = service("Signup", "WORKFLOW", handler("run", "WORKFLOW"), handler("status", "SHARED"))


class Deployment:
    """A fake deployment whose /discover answer each test sets."""

    def __init__(self) -> None:
        self.respond: Callable[[], web.StreamResponse] = lambda: web.json_response(manifest(GREETER))
        self.server: TestServer | None = None
        self.delay = 0.0

    @property
    def uri(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    async def _discover(self, request: web.Request) -> web.StreamResponse:
        await asyncio.sleep(self.delay)
        return self.respond()


def record(uri: str, *services: dict[str, Any], now_ms: int = 1_700_000_000_000) -> dict[str, Any]:
    return manifest_to_record(manifest(*services), uri, now_ms=now_ms)


def read_log_record(bootstrap: str, topic: str, invocation_id: str, timeout: float = 30.0) -> Any:
    """The record on `topic` (any partition) whose `invocation_id` header is `invocation_id`."""
    import time

    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "ingress-tests", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            if dict(msg.headers() or []).get("invocation_id") == invocation_id.encode():
                return msg
        raise AssertionError(f"no record for {invocation_id} on {topic} within {timeout} s")
    finally:
        consumer.close()


def produce_result(bootstrap: str, topic: str, result: dict[str, Any]) -> None:
    """Write an InvocationResult as a partition processor would."""
    from confluent_kafka import Producer

    from keystate.schemas._codec import codec

    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(
        topic,
        codec().encode("keystate.InvocationResult", result),
        key=result["invocation_id"].encode(),
        headers=[("type", b"keystate.InvocationResult")],
    )
    assert producer.flush(10) == 0


def find_command(
    bootstrap: str, topic: str, name: str, where: Callable[[dict[str, Any]], bool], timeout: float = 30.0
) -> tuple[Any, dict[str, Any]]:
    """The first record of type `name` on `topic` whose decoded value satisfies `where`, as a processor reads it."""
    import time

    from confluent_kafka import Consumer, TopicPartition

    from keystate.schemas._codec import codec

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "ingress-tests", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is None or msg.error() is not None:
                continue
            if dict(msg.headers() or []).get("type") != name.encode():
                continue
            record = codec().decode_as(name, msg.value())
            if where(record):
                return msg, record
        raise AssertionError(f"no {name} matching the test's condition on {topic} within {timeout} s")
    finally:
        consumer.close()


def produce_reply(bootstrap: str, topic: str, reply: dict[str, Any]) -> None:
    """Write a QueryOutputReply as a partition processor would: keyed by the invocation id it names."""
    from confluent_kafka import Producer

    from keystate.schemas._codec import codec

    full = {"invocation_id": None, "result": None, "previously_accepted": False, "expires_at_ms": None, **reply}
    producer = Producer({"bootstrap.servers": bootstrap})
    producer.produce(
        topic,
        codec().encode("keystate.QueryOutputReply", full),
        key=(full["invocation_id"] or full["request_id"]).encode(),
        headers=[("type", b"keystate.QueryOutputReply")],
    )
    assert producer.flush(10) == 0


def produce_records(bootstrap: str, topic: str, records: list[tuple[str, dict[str, Any], str]]) -> None:
    """Write several (type, record, key) with one producer, back to back, as one processor commit would."""
    from confluent_kafka import Producer

    from keystate.schemas._codec import codec

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50})
    for name, record, key in records:
        producer.produce(topic, codec().encode(name, record), key=key.encode(), headers=[("type", name.encode())])
    assert producer.flush(10) == 0
