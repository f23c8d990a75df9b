"""Topic bootstrap on the broker, and every Avro record through a real topic."""

from __future__ import annotations

import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, ConfigResource

from keystate.schemas._codec import codec
from keystate.schemas._registry import SCHEMA_IDS, UPGRADES
from keystate.schemas.topics import Topics
from keystate.server.errors import TopicConfigError
from keystate.server.topics import CHANGELOG_COMPACTION, TopicSettings, ensure_topics
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
    expected = {topics.log, topics.requests, topics.requests_dlq, topics.results, topics.meta, topics.changelog_topic}
    assert set(created) == expected

    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    listed = admin.list_topics(timeout=30).topics
    assert {len(listed[t].partitions) for t in [topics.log, topics.changelog_topic]} == {3}
    assert len(listed[topics.meta].partitions) == 1
    for topic in [topics.changelog_topic, topics.meta]:
        assert _configs(admin, topic)["cleanup.policy"] == "compact"
    changelog = _configs(admin, topics.changelog_topic)
    assert {name: changelog[name] for name in CHANGELOG_COMPACTION} == dict(CHANGELOG_COMPACTION)
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
                written = dict(msg.headers())["type"].decode()
                assert written == msg.key().decode()
                name, record = c.decode(msg.value())
                assert name == UPGRADES.get(written, written)  # old versions are read as the current one
                seen[written] = record
    consumer.close()
    assert set(seen) == set(records)
    for written, record in seen.items():
        # What came back from Kafka is what the codec gives for the same bytes without Kafka.
        assert record == c.decode(c.encode(written, records[written]))[1]


def test_legacy_per_table_changelogs_are_refused_until_migrated(kafka_bootstrap: str, unique_topic_prefix: str) -> None:
    """An older version's per-table changelogs: topics create refuses; `topics migrate` copies and deletes them."""
    from confluent_kafka.admin import NewTopic

    from keystate.cli.migrate import migrate_changelogs
    from keystate.processors import changelog

    topics = Topics(unique_topic_prefix)
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})
    old = topics.changelog("state")
    admin.create_topics([NewTopic(old, num_partitions=2, replication_factor=1, config={"cleanup.policy": "compact"})])[old].result(30)
    value = changelog.encode_value("state", {"value": b"42"})
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(old, value, key=changelog.encode_key(("Counter", "alice", "count")), partition=1)
    producer.flush(30)

    with pytest.raises(TopicConfigError, match="keystate topics migrate"):
        ensure_topics(kafka_bootstrap, topics, TopicSettings(partitions=2))

    assert migrate_changelogs(kafka_bootstrap, topics, TopicSettings(partitions=2)) == {"state": 1}
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": f"t-{uuid.uuid4()}", "auto.offset.reset": "earliest"})
    consumer.subscribe([topics.changelog_topic])
    msg = None
    deadline = time.monotonic() + 30
    while msg is None and time.monotonic() < deadline:
        msg = consumer.poll(0.5)
    consumer.close()
    assert msg is not None and msg.partition() == 1
    assert changelog.split_key(msg.key()) == ("state", ("Counter", "alice", "count")) and msg.value() == value
    deadline = time.monotonic() + 30
    while old in admin.list_topics(timeout=30).topics and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ensure_topics(kafka_bootstrap, topics, TopicSettings(partitions=2)) == []
