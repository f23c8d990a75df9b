"""`keystate topics migrate`: copy the per-table changelogs of keystate < 0.2 into the one changelog topic.

Run it with every processor stopped. Each old `<prefix><table>-changelog` partition is read to its
end (committed records only) and its rows are written to the same partition of
`<prefix>changelog` with the table name in front of their keys; the old topics are deleted once
every row is acknowledged. Running it again after an interruption is safe: rows are upserts.
"""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from keystate.processors import changelog
from keystate.schemas.topics import CHANGELOG_TABLES, Topics
from keystate.server.errors import KafkaUnavailable
from keystate.server.kafka import KafkaSecurity, KafkaSettings, watermarks
from keystate.server.topics import TopicSettings, ensure_topics

__all__ = ["migrate_changelogs"]

log = logging.getLogger(__name__)


def migrate_changelogs(
    bootstrap: str, topics: Topics, settings: TopicSettings, timeout: float = 60.0, security: KafkaSecurity | None = None
) -> dict[str, int]:
    """Copy every legacy changelog into `topics.changelog_topic`; rows copied per table. Deletes the old topics."""
    security = KafkaSecurity.from_env() if security is None else security
    kafka = KafkaSettings(bootstrap, topics, max_payload_bytes=settings.max_payload_bytes, security=security)
    admin = AdminClient(kafka.admin_config())
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise KafkaUnavailable(f"cannot list topics on {bootstrap}: {exc}") from exc
    legacy = {table: topics.changelog(table) for table in CHANGELOG_TABLES if topics.changelog(table) in existing}
    if not legacy:
        return {}
    ensure_topics(bootstrap, topics, settings, timeout=timeout, migrating=True, security=security)
    producer = Producer(kafka.producer_config(**{"linger.ms": 20, "client.id": "keystate-migrate"}))
    consumer = Consumer(kafka.consumer_config(**{"group.id": "keystate-migrate", "enable.partition.eof": True}))
    copied: dict[str, int] = {}
    try:
        for table, topic in legacy.items():
            copied[table] = 0
            for partition in range(len(existing[topic].partitions)):
                copied[table] += _copy(consumer, producer, table, TopicPartition(topic, partition), topics.changelog_topic)
            log.info("copied %d records of %s", copied[table], topic)
        if producer.flush(timeout):
            raise KafkaUnavailable(f"not every row reached {topics.changelog_topic} within {timeout:g} s; run the migration again")
    finally:
        consumer.close()
    for topic, future in admin.delete_topics(list(legacy.values()), operation_timeout=timeout).items():
        try:
            future.result()
        except KafkaException as exc:
            raise KafkaUnavailable(f"the rows are copied, but deleting {topic} failed: {exc}; delete it by hand") from exc
    return copied


def _copy(consumer: Consumer, producer: Producer, table: str, tp: TopicPartition, target: str) -> int:
    low, high = watermarks(consumer, tp)
    if high <= low:
        return 0
    consumer.assign([TopicPartition(tp.topic, tp.partition, low)])
    count = 0
    deadline = time.monotonic() + 600.0
    while consumer.position([tp])[0].offset < high:
        if time.monotonic() > deadline:
            raise KafkaUnavailable(f"reading {tp.topic}[{tp.partition}] did not reach its end ({high}) within 600 s")
        for msg in consumer.consume(1000, 0.5):
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    raise KafkaUnavailable(f"reading {tp.topic}[{tp.partition}]: {err.str()}")
                continue
            old_key = msg.key()
            if old_key is None:
                continue
            value = msg.value()
            decoded = changelog.decode_value(table, value)
            key = changelog.table_key(table, changelog.decode_key(old_key))
            headers = changelog.row_headers(table, decoded)
            while True:
                try:
                    producer.produce(target, value, key=key, partition=tp.partition, headers=headers)  # type: ignore[arg-type]
                    break
                except BufferError:
                    producer.poll(0.1)
            count += 1
        producer.poll(0)
    return count
