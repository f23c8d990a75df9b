"""Restore of a partition's store from the changelog: the tail after its checkpoint, or all of it.

A store is trusted from its checkpoint when the checkpoint names this changelog topic's generation
(its topic id), lies within the partition's offsets, and is younger than the topic's
`delete.retention.ms` (older, and compaction may have removed tombstones the store never saw).
Otherwise the store is wiped and rebuilt from the start of the partition. Records are written to
the store in chunks, each with its own checkpoint, so an interrupted restore resumes where it got.
Runs on a restore thread of its own, never inside a rebalance callback.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from keystate.server.kafka import KafkaSettings, kafka_error, watermarks

from .store import Checkpoint, PartitionStore, Record

__all__ = ["ChangelogInfo", "RestoreCancelled", "RestoreReport", "restore_store"]

log = logging.getLogger(__name__)

# The restore consumer prefetches less than the processor's (whose fetch sizes follow the payload
# limit: 8.7 MB per partition, 64 MB queued by default): several restores run at once, and their
# buffers would otherwise dominate the processor's memory. A record larger than a fetch still comes.
# With a small queue, librdkafka's default fetch.queue.backoff.ms (1 s) idles the fetcher each time the
# queue is full: 1 KB rows restored at 18 MB/s with it and at 184 MB/s with 5 ms (bench/README.md).
_RESTORE_CONSUMER = {
    "enable.partition.eof": True,
    "fetch.wait.max.ms": 100,
    "max.partition.fetch.bytes": 1 << 20,
    "fetch.max.bytes": 4 << 20,
    "queued.max.messages.kbytes": 8192,
    "fetch.queue.backoff.ms": 5,
}
_STATUS_ROW = b'["status",'
_TIMERS_ROW = b'["timers",'


@dataclass(frozen=True, slots=True)
class ChangelogInfo:
    """What a restore must know of the changelog topic (looked up once per session)."""

    topic: str
    topic_id: str
    delete_retention_ms: int


@dataclass(frozen=True, slots=True)
class RestoreReport:
    partition: int
    records: int
    bytes: int
    from_offset: int
    seconds: float
    mode: str  # "checkpoint": the tail after a valid checkpoint; "rebuilt": from the start
    reason: str  # why it was rebuilt ("" after a checkpoint)

    def describe(self) -> str:
        how = "checkpoint" if self.mode == "checkpoint" else f"rebuilt: {self.reason}"
        return (
            f"partition {self.partition}: restored {self.records} changelog records ({self.bytes} bytes) "
            f"from offset {self.from_offset} in {self.seconds:.2f} s ({how})"
        )


class RestoreCancelled(Exception):
    """The partition was revoked while it restored; the store keeps what it wrote, with its checkpoint."""


def stale_reason(checkpoint: Checkpoint | None, info: ChangelogInfo, low: int, high: int, now_ms: int) -> str:
    """Why the store cannot continue from its checkpoint; "" when it can."""
    if checkpoint is None:
        return "no store"
    if checkpoint.topic_id != info.topic_id:
        return f"the store follows another generation of {info.topic} (topic id {checkpoint.topic_id}, now {info.topic_id})"
    if checkpoint.offset > high:
        return f"its checkpoint {checkpoint.offset} is past the end of the changelog ({high}): the topic was recreated"
    if checkpoint.offset < low:
        return f"its checkpoint {checkpoint.offset} is before the start of the changelog ({low}): records were deleted"
    age = now_ms - checkpoint.written_at_ms
    if age > info.delete_retention_ms:
        return (
            f"its checkpoint is {age // 1000} s old, older than the changelog's delete.retention.ms "
            f"({info.delete_retention_ms // 1000} s): compaction may have removed deletes it never saw"
        )
    return ""


def restore_store(
    store: PartitionStore,
    partition: int,
    info: ChangelogInfo,
    settings: KafkaSettings,
    cancelled: threading.Event,
    chunk: int = 5000,
) -> RestoreReport:
    """Bring `store` up to the end of its changelog partition; raises RestoreCancelled when `cancelled` is set."""
    started = time.monotonic()
    consumer = Consumer(settings.consumer_config(**{"group.id": f"keystate-restore-{partition}", **_RESTORE_CONSUMER}))
    try:
        tp = TopicPartition(info.topic, partition)
        low, high = watermarks(consumer, tp)
        now_ms = int(time.time() * 1000)
        reason = stale_reason(store.checkpoint(), info, low, high, now_ms)
        if reason:
            store.wipe()
            start = low
        else:
            checkpoint = store.checkpoint()
            assert checkpoint is not None
            start = checkpoint.offset
        with store.restoring():
            records, size = _read(store, consumer, TopicPartition(info.topic, partition, start), high, info.topic_id, cancelled, chunk)
    except KafkaException as exc:
        raise kafka_error(f"restore of partition {partition} from {info.topic}", exc) from exc
    finally:
        consumer.close()
    return RestoreReport(
        partition, records, size, start, time.monotonic() - started, "rebuilt" if reason else "checkpoint", reason
    )


def _read(
    store: PartitionStore,
    consumer: Consumer,
    tp: TopicPartition,
    end: int,
    topic_id: str,
    cancelled: threading.Event,
    chunk: int,
) -> tuple[int, int]:
    """Copy records from `tp.offset` to `end` into the store; (records, bytes)."""
    if tp.offset >= end:
        # Nothing to read: the checkpoint still moves to now, so its age says when it was last known current.
        store.apply((), Checkpoint(topic_id, max(tp.offset, end), int(time.time() * 1000)))
        return 0, 0
    consumer.assign([tp])
    count = size = 0
    position = tp.offset
    while True:
        if cancelled.is_set():
            raise RestoreCancelled(f"partition {tp.partition} was revoked while it restored")
        batch: list[Record] = []
        for msg in consumer.consume(chunk, 0.5):
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    raise KafkaException(err)
                continue
            key = msg.key()
            if key is None:
                continue  # keystate writes every changelog record with a key; a keyless one restores nothing
            value = msg.value()
            # Only status and timer rows carry headers the store indexes; reading the others' costs time.
            headers = msg.headers() if key.startswith(_STATUS_ROW) or key.startswith(_TIMERS_ROW) else None
            batch.append((key, value, headers))  # type: ignore[arg-type]  # keystate writes bytes header values
            size += len(key) + (len(value) if value is not None else 0)
        # Control records (transaction markers) take offsets too: the position, not the last record, says how far.
        position = max(position, consumer.position([tp])[0].offset)
        if batch or position >= end:
            count += store.apply(batch, Checkpoint(topic_id, position, int(time.time() * 1000)))
        if position >= end:
            return count, size
