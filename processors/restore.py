"""Restore of a partition processor's tables: read each of its changelog partitions to the end."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from keystate.server.kafka import KafkaSettings, kafka_error, watermarks

from .partition import PartitionProcessor
from .state_machine import Config, Tables

__all__ = ["restore_partition"]


def restore_partition(partition: int, cfg: Config, settings: KafkaSettings, timeout_s: float = 300.0) -> tuple[PartitionProcessor, int]:
    """A RUNNING processor for `partition` with its tables as committed; and the number of records read."""
    proc = PartitionProcessor(partition, cfg)
    consumer = Consumer(settings.consumer_config(**{"group.id": f"keystate-restore-{partition}", "enable.partition.eof": True}))
    try:
        count = _restore_from(proc, consumer, settings, timeout_s)
    except KafkaException as exc:
        raise kafka_error(f"restore of partition {partition}", exc) from exc
    finally:
        consumer.close()
    proc.restored()
    return proc, count


def _restore_from(proc: PartitionProcessor, consumer: Consumer, settings: KafkaSettings, timeout_s: float) -> int:
    partition = proc.partition
    by_topic = {settings.topics.changelog(name): name for name in Tables.names()}
    ends: dict[str, int] = {}
    assignment = []
    for topic in by_topic:
        low, high = watermarks(consumer, TopicPartition(topic, partition))
        if high > low:
            ends[topic] = high
            assignment.append(TopicPartition(topic, partition, low))
    if not assignment:
        return 0
    consumer.assign(assignment)
    count = 0
    pending = set(ends)
    deadline = time.monotonic() + timeout_s
    while pending:
        if time.monotonic() > deadline:
            raise TimeoutError(f"restore of partition {partition} did not reach the end of {sorted(pending)}")
        for msg in consumer.consume(1000, 0.2):
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(err)
                continue
            key, source = msg.key(), msg.topic()
            if key is None or source is None:
                continue  # keystate writes every changelog record with a key; a keyless one restores nothing
            proc.restore_record(by_topic[source], key, msg.value())
            count += 1
        # Control records (transaction markers) take offsets too: compare positions, not the last record.
        for tp in consumer.position([TopicPartition(t, partition) for t in pending]):
            if tp.offset >= ends[tp.topic]:
                pending.discard(tp.topic)
    return count
