"""Bulk load for bench/state_scale.py: the real state machine in-process, its rows produced to the changelog.

Every row is what a real run writes: each invocation is an InvokeCommand plus JournalAppendCommands
(SetStateEntry for objects, then OutputEntry) applied by `keystate.processors.state_machine.apply` to
the `Tables` of the log partition its command goes to (`command_record(...).partition`). Only the
transport differs: instead of the processor's transactions, the changes of a chunk are coalesced (one
record per row, the row's last value, as a compacted changelog holds it) and produced with a plain,
batching producer to the same partition of the multiplexed changelog (`row_record`). The loader keeps
one chunk of tables in memory at a time, so its own memory does not grow with N.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from keystate.processors.changelog import decode_value, row_record, split_key
from keystate.processors.state_machine import Config, Tables, apply
from keystate.schemas.ids import InvocationId, InvocationTarget, PartitionKey, idempotency_partition_key, partition_for_hash
from keystate.server.commands import command_record

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from state_machine.builders import append, invoke, object_target, output, service_target, set_state  # noqa: E402

__all__ = ["LoadStats", "Loader", "object_keys_by_partition", "object_partition", "read_back"]

SERVICE = "ScaleService"
"""The service of the N completed invocations (never called again, so not served)."""
OBJECT = "ScaleObject"
"""The virtual object of the M objects; bench/_scale_services.py serves it."""
STATE_KEY = "blob"

Command = tuple[str, dict[str, Any]]


@dataclass
class LoadStats:
    """What the load produced."""

    invocations: int = 0
    objects: int = 0
    records: int = 0
    bytes: int = 0  # keys + values + headers as produced (uncompressed)
    by_table: dict[str, int] = field(default_factory=dict)
    by_partition: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0


def object_key(j: int) -> str:
    return f"obj-{j}"


def object_partition(key: str, partitions: int) -> int:
    """The log (and changelog) partition of object `key`: where its invocations and state live."""
    sid = InvocationTarget(OBJECT, "size", key).service_id
    assert sid is not None  # a keyed target always has a service id
    return partition_for_hash(sid.partition_key, partitions)


def object_keys_by_partition(partitions: int, objects: int, per_partition: int = 3) -> dict[int, list[str]]:
    """Up to `per_partition` loaded object keys on each partition (fewer when M is tiny)."""
    out: dict[int, list[str]] = {p: [] for p in range(partitions)}
    for j in range(objects):
        keys = out[object_partition(object_key(j), partitions)]
        if len(keys) < per_partition:
            keys.append(object_key(j))
        if all(len(k) >= per_partition for k in out.values()):
            break
    return out


def random_blob(value_bytes: int) -> bytes:
    """A JSON string of exactly `value_bytes` bytes, random so that compression does not flatter the sizes."""
    chars = base64.b64encode(os.urandom(value_bytes)).decode()[: max(0, value_bytes - 2)]
    return json.dumps(chars).encode()


class Loader:
    """Applies commands per log partition, drains every `chunk` invocations, produces the rows."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, *, chunk: int = 5_000,
                 progress: Callable[[str], None] = print) -> None:
        self.topic = topic
        self.partitions = partitions
        self.chunk = chunk
        self.cfg = Config()
        self.progress = progress
        self.stats = LoadStats()
        self._errors: list[str] = []
        self._producer = Producer({
            "bootstrap.servers": bootstrap,
            "linger.ms": 200,
            "batch.size": 1_000_000,
            "batch.num.messages": 100_000,
            "queue.buffering.max.kbytes": 256 * 1024,
            "queue.buffering.max.messages": 1_000_000,
            "compression.type": "lz4",
            "enable.idempotence": True,
        })

    # ---- commands (the builders the state machine tests use) ------------------------------------

    def _run(self, tables: dict[int, Tables], now: int, commands: list[Command]) -> None:
        """Apply one invocation's commands on the tables of the partition its InvokeCommand goes to."""
        partition = command_record(commands[0][0], commands[0][1], self.partitions).partition
        t = tables.setdefault(partition, Tables())
        for i, command in enumerate(commands):
            apply(t, command, now + i, self.cfg)

    def completed_invocation(self, tables: dict[int, Tables], now: int, idempotent: bool) -> None:
        target = service_target(SERVICE, "done")
        t = InvocationTarget(SERVICE, "done", None)
        rand = os.urandom(15)
        if idempotent:
            ikey = rand.hex()
            iid = str(InvocationId.new(PartitionKey(idempotency_partition_key(t, ikey)), random=rand))
        else:
            ikey, iid = None, str(InvocationId.for_target(t, random=rand))
        self._run(tables, now, [
            invoke(target, iid, b'"load"', idempotency_key=ikey, created_at_ms=now),
            append(iid, 1, 1, output(b'"done"')),
        ])

    def object_with_state(self, tables: dict[int, Tables], now: int, key: str, blob: bytes) -> None:
        target = object_target(OBJECT, key, "put")
        iid = str(InvocationId.for_target(InvocationTarget(OBJECT, "put", key), random=os.urandom(15)))
        self._run(tables, now, [
            invoke(target, iid, blob, created_at_ms=now),
            append(iid, 1, 1, set_state(STATE_KEY, blob)),
            append(iid, 1, 2, output(b"null")),
        ])

    # ---- the load -------------------------------------------------------------------------------

    def load(self, invocations: int, objects: int, value_bytes: int, idempotent_share: float) -> LoadStats:
        """Load both sets; returns the stats once every record is acknowledged by the broker."""
        start = time.monotonic()
        every = round(1 / idempotent_share) if idempotent_share > 0 else 0
        for first in range(0, invocations, self.chunk):
            tables: dict[int, Tables] = {}
            now = int(time.time() * 1000)
            for i in range(first, min(first + self.chunk, invocations)):
                self.completed_invocation(tables, now, every > 0 and i % every == 0)
            self._produce(tables)
            self.stats.invocations = min(first + self.chunk, invocations)
            self._report(start, "invocations")
        for first in range(0, objects, self.chunk):
            tables = {}
            now = int(time.time() * 1000)
            for j in range(first, min(first + self.chunk, objects)):
                self.object_with_state(tables, now, object_key(j), random_blob(value_bytes))
            self._produce(tables)
            self.stats.objects = min(first + self.chunk, objects)
            self._report(start, "objects")
        self.progress("flushing the producer...")
        while self._producer.flush(5.0) > 0:
            self._check()
        self._check()
        self.stats.seconds = time.monotonic() - start
        return self.stats

    def _report(self, start: float, what: str) -> None:
        self._check()
        n = self.stats.invocations + self.stats.objects
        if n % (self.chunk * 20) == 0 or what == "objects" and self.stats.objects % (self.chunk * 4) == 0:
            s = time.monotonic() - start
            self.progress(f"  loaded {self.stats.invocations} invocations, {self.stats.objects} objects, "
                          f"{self.stats.records} records, {self.stats.bytes / 1e6:.0f} MB in {s:.0f} s")

    def _produce(self, tables: dict[int, Tables]) -> None:
        for partition, t in tables.items():
            last: dict[tuple[str, Any], Any] = {}
            for table, key, value in t.drain():
                last[(table, key)] = value  # coalesce: one record per row, its last value
            for (table, key), value in last.items():
                if value is None:
                    continue  # a row created and deleted within the chunk (fresh tables): nothing to keep
                k, v, headers = row_record(table, key, value)
                self._send(partition, k, v, headers)
                self.stats.records += 1
                self.stats.bytes += len(k) + len(v or b"") + sum(len(h) + len(b) for h, b in headers or ())
                self.stats.by_table[table] = self.stats.by_table.get(table, 0) + 1
                self.stats.by_partition[partition] = self.stats.by_partition.get(partition, 0) + 1

    def _send(self, partition: int, key: bytes, value: bytes | None, headers: list[tuple[str, bytes]] | None) -> None:
        while True:
            try:
                self._producer.produce(self.topic, value=value, key=key, partition=partition, headers=headers,
                                       on_delivery=self._delivered)
                break
            except BufferError:  # the local queue is full: let it drain
                self._producer.poll(0.1)
        self._producer.poll(0)

    def _delivered(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None and len(self._errors) < 10:
            self._errors.append(f"{msg.topic()}[{msg.partition()}]: {err}")

    def _check(self) -> None:
        if self._errors:
            raise RuntimeError(f"the bulk load failed to produce to {self.topic}: {self._errors[:3]}; is the topic there?")


def read_back(bootstrap: str, topic: str, partitions: int, per_end: int = 200) -> Iterator[tuple[int, str, Any, Any]]:
    """Records from the head and the tail of each changelog partition, decoded: (partition, table, key, value).

    Both ends, because objects are loaded after the invocations: the state rows sit at the tail.
    """
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "scale-read-back", "enable.auto.commit": False,
                         "enable.partition.eof": True})
    try:
        for p in range(partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            starts = [low] if high - low <= 2 * per_end else [low, high - per_end]
            for start in starts:
                yield from _read_from(consumer, topic, p, start, per_end)
    finally:
        consumer.close()


def _read_from(consumer: Consumer, topic: str, p: int, start: int, count: int) -> Iterator[tuple[int, str, Any, Any]]:
    consumer.assign([TopicPartition(topic, p, start)])
    seen, deadline = 0, time.monotonic() + 30
    while seen < count and time.monotonic() < deadline:
        msg = consumer.poll(1.0)
        if msg is None:
            continue
        err = msg.error()
        if err is not None:
            if err.code() == KafkaError._PARTITION_EOF:
                return
            raise RuntimeError(f"reading {topic}[{p}] back failed: {err}")
        table, key = split_key(msg.key() or b"")
        yield p, table, key, decode_value(table, msg.value())
        seen += 1
