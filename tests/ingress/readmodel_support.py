"""Builders for the read model tests: invocation statuses, and changelog records written as a processor writes them."""

from __future__ import annotations

from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from keystate.processors.changelog import row_record, table_key
from keystate.schemas.ids import InvocationId
from keystate.schemas.topics import Topics

NOW = 1_700_000_000_000
MAILER = {"service": "Mailer", "handler": "send", "key": None, "service_type": "SERVICE", "handler_kind": "EXCLUSIVE"}


def status(invocation_id: str, state: str = "INVOKED", **fields: Any) -> dict[str, Any]:
    """A whole `keystate.InvocationStatus` record."""
    return {
        "invocation_id": invocation_id,
        "target": MAILER,
        "status": state,
        "attempt": 1,
        "journal_length": 1,
        "waiting_on": [],
        "deployment_id": None,
        "headers": {},
        "idempotency_key": None,
        "caller": None,
        "reply_topic": None,
        "created_at_ms": NOW,
        "modified_at_ms": NOW,
        "execute_at_ms": None,
        "result": None,
        "completion_status": None,
        "last_failure": None,
        "retry_count": 0,
        "retention_ms": 86_400_000,
        "source": "ingress",
        **fields,
    }


def ensure_changelog(bootstrap: str, topics: Topics, partitions: int) -> None:
    """Create `<prefix>changelog` if missing (until `ensure_topics` creates the multiplexed changelog)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    name = topics.changelog_topic
    config = {"cleanup.policy": "compact", "max.message.bytes": str(16 * 1024 * 1024)}
    spec = NewTopic(name, num_partitions=partitions, replication_factor=1, config=config)
    try:
        admin.create_topics([spec], operation_timeout=30)[name].result(30)
    except KafkaException as exc:
        if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
            raise


def write_changelog(
    bootstrap: str,
    topics: Topics,
    rows: list[tuple[str, dict[str, Any] | None]],
    *,
    partitions: int,
    noise: int = 0,
) -> None:
    """Write status rows (a status, or None for a tombstone) as a partition processor writes them,
    each on the partition of its invocation id; `noise` rows of other tables follow each status row."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "message.max.bytes": 16 * 1024 * 1024})
    topic = topics.changelog_topic
    for invocation_id, value in rows:
        key, data, headers = row_record("status", (invocation_id,), value)
        partition = InvocationId.parse(invocation_id).partition(partitions)
        producer.produce(topic, data, key=key, headers=headers, partition=partition)
        for n in range(noise):
            # Rows of other tables share the topic; the read model skips them without decoding.
            producer.produce(topic, b"\x00not-a-status", key=table_key("journal", (invocation_id, n)), partition=partition)
        producer.poll(0)
    assert producer.flush(30) == 0


def write_rows(
    bootstrap: str, topics: Topics, rows: list[tuple[str, tuple[Any, ...], dict[str, Any] | None]], *, partitions: int
) -> None:
    """Write rows of any table (table, key parts, value or None) as a processor writes them, in the order
    given: rows of an invocation on its partition, the others on partition 0 (the read model reads all)."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20})
    topic = topics.changelog_topic
    for table, key, value in rows:
        record_key, data, headers = row_record(table, key, value)
        partition = InvocationId.parse(key[0]).partition(partitions) if table in ("status", "journal") else 0
        producer.produce(topic, data, key=record_key, headers=headers, partition=partition)
    assert producer.flush(30) == 0
