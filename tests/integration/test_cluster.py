"""A 3-node local KRaft cluster keeps every acknowledged record when one node is killed with SIGKILL."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient

from keystate.cli.kafka import LocalCluster
from tests.kafka_fixture import create_topic

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

N = 200


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    """A started 3-node cluster on free ports, stopped by pid afterwards."""
    local = LocalCluster(tmp_path / "cluster", port=0, start_timeout=120)
    local.start()
    yield local
    local.stop()


@pytest.mark.timeout(280)
def test_acked_records_survive_a_killed_node(cluster: LocalCluster) -> None:
    bootstrap = cluster.bootstrap
    admin = AdminClient({"bootstrap.servers": bootstrap})
    topic = create_topic(admin, f"test.cluster.{uuid.uuid4().hex[:8]}", partitions=3, replication_factor=3,
                         config={"min.insync.replicas": "2"})
    _warm_up_group_coordinator(bootstrap, topic)  # __consumer_offsets needs 3 live brokers to be created

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True,
                         "linger.ms": 5, "delivery.timeout.ms": 120_000})
    failures: list[KafkaError] = []
    _produce(producer, topic, "before", failures)

    victim = admin.list_topics(topic, timeout=10).topics[topic].partitions[0].leader
    cluster.stop_node(victim, kill=True)
    _produce(producer, topic, "after", failures)

    assert failures == []
    received = _consume_all(bootstrap, topic, 2 * N)
    expected = {f"{phase}-{i}".encode() for phase in ("before", "after") for i in range(N)}
    assert len(received) == len(set(received)) == 2 * N  # the idempotent producer wrote no duplicates
    assert set(received) == expected


def _produce(producer: Producer, topic: str, phase: str, failures: list[KafkaError]) -> None:
    def on_delivery(error: KafkaError | None, _message: object) -> None:
        if error is not None:
            failures.append(error)

    for i in range(N):
        producer.produce(topic, f"{phase}-{i}".encode(), key=str(i).encode(), on_delivery=on_delivery)
        producer.poll(0)
    assert producer.flush(150) == 0, f"records of phase {phase!r} still unacknowledged after 150 s"


def _warm_up_group_coordinator(bootstrap: str, topic: str) -> None:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"warm-up-{uuid.uuid4().hex}"})
    consumer.subscribe([topic])
    deadline = time.monotonic() + 60
    try:
        while not consumer.assignment():
            assert time.monotonic() < deadline, "the consumer group got no assignment within 60 s"
            consumer.poll(0.5)
    finally:
        consumer.close()


def _consume_all(bootstrap: str, topic: str, count: int, timeout: float = 90.0) -> list[bytes]:
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"test-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(values) < count and time.monotonic() < deadline:
            for message in consumer.consume(num_messages=count, timeout=1.0):
                if message.error() is None:
                    values.append(message.value())
                elif not message.error().retriable():
                    raise AssertionError(message.error())
    finally:
        consumer.close()
    return values
