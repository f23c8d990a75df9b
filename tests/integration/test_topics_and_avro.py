"""Topic bootstrap on the broker, and every Avro record through a real topic."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from keystate.schemas._codec import codec
from keystate.schemas._registry import SCHEMA_IDS
from keystate.schemas.topics import CHANGELOG_TABLES, Topics
from keystate.server.errors import TopicConfigError
from keystate.server.topics import TopicSettings, ensure_topics
from tests.kafka_fixture import create_topic
from tests.unit.test_codec import sample

pytestmark = pytest.mark.integration


def _configs(admin: AdminClient, topic: str) -> dict[str, str]:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    described = admin.describe_configs([resource])[resource].result(timeout=30)
    return {name: entry.value for name, entry in described.items()}


def test_bootstrap_creates_every_topic_with_its_config_and_is_idempotent(kafka_bootstrap: str, unique_topic_prefix: str) -> None:
    topics = Topics(unique_topic_prefix)
    created = ensure_topics(kafka_bootstrap, topics, TopicSettings(partitions=3))
    expected = {topics.log, topics.requests, topics.requests_dlq, topics.results, topics.meta, *topics.changelogs}
    assert set(created) == expected
    assert len(topics.changelogs) == len(CHANGELOG_TABLES)

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    listed = admin.list_topics(timeout=30).topics
    assert {len(listed[t].partitions) for t in [topics.log, *topics.changelogs]} == {3}
    assert len(listed[topics.meta].partitions) == 1
    for topic in [*topics.changelogs, topics.meta]:
        assert _configs(admin, topic)["cleanup.policy"] == "compact"
    log_config = _configs(admin, topics.log)
    assert log_config["cleanup.policy"] == "delete"
    assert log_config["retention.ms"] == str(7 * 24 * 3600 * 1000)
    assert _configs(admin, topics.results)["retention.ms"] == str(24 * 3600 * 1000)

    assert ensure_topics(kafka_bootstrap, topics, TopicSettings(partitions=3)) == []


def test_bootstrap_refuses_a_different_partition_count(kafka_bootstrap: str, unique_topic_prefix: str) -> None:
    topics = Topics(unique_topic_prefix)
    ensure_topics(kafka_bootstrap, topics, TopicSettings(partitions=2))
    with pytest.raises(TopicConfigError, match="has 2 partitions, keystate is configured for 4"):
        ensure_topics(kafka_bootstrap, topics, TopicSettings(partitions=4))


def test_every_record_survives_a_trip_through_kafka(kafka_bootstrap: str, unique_topic_prefix: str) -> None:
    topic = create_topic(AdminClient({"bootstrap.servers": kafka_bootstrap}), f"{unique_topic_prefix}avro")
    c = codec()
    records = {name: sample(name, 1) for name in SCHEMA_IDS}
    producer = Producer({"bootstrap.servers": kafka_bootstrap, "enable.idempotence": True})
    failures: list[object] = []
    for name, record in records.items():
        producer.produce(
            topic,
            c.encode(name, record),
            key=name.encode(),
            headers=[("type", name.encode())],
            on_delivery=lambda err, msg: failures.append(err) if err else None,
        )
    assert producer.flush(30) == 0
    assert failures == []

    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": uuid.uuid4().hex, "auto.offset.reset": "earliest"})
    consumer.subscribe([topic])
    seen: dict[str, dict] = {}
    deadline = time.monotonic() + 60
    while len(seen) < len(records) and time.monotonic() < deadline:
        for msg in consumer.consume(100, 0.5):
            if msg.error() is None:
                name, record = c.decode(msg.value())
                assert dict(msg.headers())["type"].decode() == name == msg.key().decode()
                seen[name] = record
    consumer.close()
    assert set(seen) == set(records)
    for name, record in seen.items():
        assert c.encode(name, record) == c.encode(name, records[name])
