"""One partition processor: its tables, its lifecycle (RESTORING -> RUNNING -> CLOSED), its batch apply."""

from __future__ import annotations

import logging
import time
from enum import Enum
from typing import Any, cast

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from keystate.schemas.topics import Topics
from keystate.server.kafka import KafkaSettings, kafka_error, watermarks

from . import changelog
from .state_machine import Action, Change, Command, Config, Tables, apply

__all__ = ["PartitionProcessor", "TaskState"]

log = logging.getLogger(__name__)


class TaskState(Enum):
    RESTORING = "RESTORING"
    RUNNING = "RUNNING"
    CLOSED = "CLOSED"


class PartitionProcessor:
    """Owns the tables of one partition of keystate.log while this process is assigned it."""

    def __init__(self, partition: int, cfg: Config) -> None:
        self.partition = partition
        self.cfg = cfg
        self.tables = Tables()
        self.state = TaskState.RESTORING

    def restore(self, settings: KafkaSettings, timeout_s: float = 300.0) -> int:
        """Read every changelog partition of ours to its end; returns the number of records read."""
        topics = settings.topics
        consumer = Consumer(
            settings.consumer_config(**{"group.id": f"keystate-restore-{self.partition}", "enable.partition.eof": True})
        )
        try:
            return self._restore_from(consumer, topics, timeout_s)
        except KafkaException as exc:
            raise kafka_error(f"restore of partition {self.partition}", exc) from exc
        finally:
            consumer.close()

    def _restore_from(self, consumer: Consumer, topics: Topics, timeout_s: float) -> int:
        by_topic = {topics.changelog(name): name for name in Tables.names()}
        ends: dict[str, int] = {}
        assignment = []
        for topic in by_topic:
            low, high = watermarks(consumer, TopicPartition(topic, self.partition))
            if high > low:
                ends[topic] = high
                assignment.append(TopicPartition(topic, self.partition, low))
        if not assignment:
            self.state = TaskState.RUNNING
            return 0
        consumer.assign(assignment)
        count = 0
        pending = set(ends)
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"restore of partition {self.partition} did not reach the end of {sorted(pending)}")
            for msg in consumer.consume(1000, 0.2):
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(err)
                    continue
                table = by_topic[cast(str, msg.topic())]
                self.tables.restore(  # keystate writes every changelog record with a key
                    table, changelog.decode_key(cast(bytes, msg.key())), changelog.decode_value(table, msg.value())
                )
                count += 1
            # Control records (transaction markers) take offsets too: compare positions, not the last record.
            for tp in consumer.position([TopicPartition(t, self.partition) for t in pending]):
                if tp.offset >= ends[tp.topic]:
                    pending.discard(tp.topic)
        self.state = TaskState.RUNNING
        return count

    def apply(self, command: Command, now_ms: int) -> list[Action]:
        return apply(self.tables, command, now_ms, self.cfg)

    def drain(self) -> list[Change]:
        return self.tables.drain()

    def unfinished(self) -> list[tuple[str, dict[str, Any]]]:
        """Invocations that had a live attempt when the previous owner stopped."""
        return [
            (key[0], status)
            for key, status in self.tables.status.items()
            if status["status"] == "INVOKED"
        ]

    def timers(self) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        return list(self.tables.timers.items())

    def close(self) -> None:
        self.state = TaskState.CLOSED
