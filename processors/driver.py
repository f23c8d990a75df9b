"""A broker-free driver of the batch step, like Kafka Streams' TopologyTestDriver.

Feed it records; it runs the same batch step and the same isolation logic as the Kafka session,
against an in-memory transaction that can be told to refuse given records. Committed records are
kept per topic (aborted ones vanish), partitions keep their tables in real partition stores (RocksDB
in a temporary directory unless given one) and restore from the committed changelog, and the log
can be fed back in, so a test reads as: given these records, when this batch, then these records,
effects and dead letters.
"""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keystate.schemas._codec import codec
from keystate.schemas.topics import Topics
from keystate.server.commands import command_record
from keystate.server.meta import MetaState

from .errors import BatchFailed
from .partition import PartitionProcessor
from .quarantine import Quarantine
from .records import DeliveryFailure, InRecord, KafkaHeaders, OutKind, OutRecord
from .state_machine import RegisterTimer
from .runner import run_batch
from .state_machine import Config
from .step import BatchStep, Effect, StepLookups, StepSettings
from .store import Checkpoint, PartitionStore, StoreSettings, StoreTables

__all__ = ["BatchOutput", "ProcessorDriver", "RecordFailure"]


@dataclass(slots=True)
class RecordFailure:
    """Refuse records matching `predicate` with `error`, `times` times (None: always)."""

    predicate: Callable[[OutRecord], bool]
    error: str
    times: int | None = None
    record_fault: bool = True


@dataclass(slots=True)
class BatchOutput:
    """What one piped batch committed."""

    produced: list[OutRecord]
    effects: list[Effect]
    quarantine: Quarantine
    dropped_unowned: int


@dataclass(slots=True)
class _MemoryTransaction:
    topics: dict[str, list[OutRecord]]
    failures: list[RecordFailure]
    offsets: dict[tuple[str, int], int]
    open: list[OutRecord] = field(default_factory=list)
    begun: int = 0
    aborted: int = 0
    last: dict[tuple[str, int], int] = field(default_factory=dict)

    def begin(self) -> None:
        self.begun += 1
        self.open = []
        self.last = {}

    def produce(self, records: Sequence[OutRecord]) -> list[DeliveryFailure]:
        # As with Kafka, a refused record shows when the transaction flushes: in commit.
        self.open = list(records)
        return []

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> list[DeliveryFailure]:
        out: list[DeliveryFailure] = []
        for i, record in enumerate(self.open):
            for rule in self.failures:
                if rule.times != 0 and rule.predicate(record):
                    if rule.times is not None:
                        rule.times -= 1
                    out.append(DeliveryFailure(i, rule.error, rule.record_fault))
                    break
        if out:
            return out  # nothing is written; the caller aborts
        for record in self.open:
            written = self.topics.setdefault(record.topic, [])
            written.append(record)
            if record.partition is not None:
                # Offsets within the partition, as Kafka would give them.
                where = (record.topic, record.partition)
                self.last[where] = sum(1 for r in written if r.partition == record.partition) - 1
        self.offsets.update(offsets)
        self.open = []
        return []

    def delivered(self) -> Mapping[tuple[str, int], int]:
        return self.last

    def abort(self) -> None:
        self.aborted += 1
        self.open = []


class ProcessorDriver:
    """One processor process without Kafka: assign partitions, pipe records, read what was committed."""

    def __init__(
        self,
        meta: MetaState | None = None,
        *,
        partitions: int = 4,
        topics: Topics | None = None,
        config: Config | None = None,
        max_record_bytes: int = 1024 * 1024,
        existing_topics: set[str] | None = None,
        now_ms: int = 1_000_000,
        state_dir: Path | None = None,
    ) -> None:
        self.topics_names = topics or Topics()
        self.meta = meta or MetaState()
        self.config = config or Config()
        self.now_ms = now_ms
        self.existing_topics = existing_topics if existing_topics is not None else set()
        self.committed: dict[str, list[OutRecord]] = {}
        self.offsets: dict[tuple[str, int], int] = {}
        self.failures: list[RecordFailure] = []
        self.codec = codec()
        lookups = StepLookups(meta=lambda: self.meta, topic_exists=self.existing_topics.__contains__)
        self.step = BatchStep(StepSettings(self.topics_names, partitions, max_record_bytes), lookups, self.codec)
        self.txn = _MemoryTransaction(self.committed, self.failures, self.offsets)
        self._log_read: dict[int, int] = {}
        self._request_offsets: dict[int, int] = {}
        self._own_dir = state_dir is None
        self.state_dir = Path(tempfile.mkdtemp(prefix="keystate-driver-")) if state_dir is None else state_dir
        self.stores: dict[int, PartitionStore] = {}
        self.step.changelog_id = "driver"
        # A driver nobody closes still releases its stores and temporary directory when collected.
        self._finalizer = weakref.finalize(self, _release, self.stores, self.state_dir if self._own_dir else None)

    def close(self) -> None:
        """Close the stores (and remove their directory if the driver made it)."""
        self._finalizer()

    def __enter__(self) -> ProcessorDriver:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- group membership ---------------------------------------------------------------------
    def assign(self, *partitions: int) -> list[Effect]:
        """Take over partitions, restored from the committed changelogs; returns their timers to schedule."""
        effects: list[Effect] = []
        for p in partitions:
            proc = self._restore_one(p)
            self.step.adopt(proc, self.now_ms)
            effects.extend((p, RegisterTimer(k, int(r["fire_at_ms"]), r)) for k, r in proc.store.due_timers(2**62))
        return effects

    def revoke(self, *partitions: int) -> None:
        self.step.forget_partitions(set(partitions))
        for p in partitions:
            store = self.stores.pop(p, None)
            if store is not None:
                store.close()

    # ---- failures -----------------------------------------------------------------------------
    def fail_records(
        self,
        *,
        topic: str | None = None,
        key: bytes | None = None,
        predicate: Callable[[OutRecord], bool] | None = None,
        error: str = "Broker: Unknown topic or partition",
        times: int | None = None,
        record_fault: bool = True,
    ) -> None:
        """Make the transaction refuse matching records (by topic, key and/or predicate)."""

        def matches(r: OutRecord) -> bool:
            return (topic is None or r.topic == topic) and (key is None or r.key == key) and (predicate is None or predicate(r))

        self.failures.append(RecordFailure(matches, error, times, record_fault))

    # ---- input --------------------------------------------------------------------------------
    def request(
        self,
        partition: int = 0,
        key: bytes | None = None,
        value: bytes | None = None,
        kafka_headers: KafkaHeaders | None = None,
        **request: Any,
    ) -> InRecord:
        """A keystate.requests record (with `kafka_headers`): `value` as given, else an InvocationRequest built from `request`."""
        if value is None:
            fields = {"key": None, "headers": {}, "idempotency_key": None, "reply_topic": None, "delay_ms": None, **request}
            value = self.codec.encode("keystate.InvocationRequest", fields)
        offset = self._request_offsets.get(partition, 0)
        self._request_offsets[partition] = offset + 1
        return InRecord(self.topics_names.requests, partition, offset, key, value, self.now_ms, kafka_headers)

    def log_record(self, partition: int, value: bytes | None, key: bytes | None = None) -> InRecord:
        """A raw record on keystate.log at the partition's next offset (committed and read at once)."""
        record = OutRecord(OutKind.COMMAND, self.topics_names.log, partition, key, value, None, None)
        self.committed.setdefault(self.topics_names.log, []).append(record)
        return self._log_records(partition)[-1]

    def command(self, name: str, record: dict[str, Any], **kwargs: Any) -> InRecord:
        """A command appended to the log the one way commands are written (`command_record`)."""
        out = command_record(name, record, self.step.settings.log_partitions, **kwargs)
        self.committed.setdefault(self.topics_names.log, []).append(
            OutRecord(OutKind.COMMAND, self.topics_names.log, out.partition, out.key, out.value, out.headers, None, out.invocation_id)
        )
        return self._log_records(out.partition)[-1]

    # ---- running ------------------------------------------------------------------------------
    def pipe(self, records: Sequence[InRecord]) -> BatchOutput:
        """Run one batch through one (re-run as needed) transaction; what it committed."""
        before = {t: len(rs) for t, rs in self.committed.items()}
        result, quarantine = run_batch(self.step, list(records), self.now_ms, self.txn)
        for r in records:
            if r.topic == self.topics_names.log and r.partition in self.step.partitions:
                self._log_read[r.partition] = max(self._log_read.get(r.partition, 0), r.offset + 1)
        produced = [r for t, rs in self.committed.items() for r in rs[before.get(t, 0) :]]
        return BatchOutput(produced, result.effects, quarantine, result.dropped_unowned)

    def pipe_log(self, max_batches: int = 100) -> list[Effect]:
        """Pipe unread committed log records of owned partitions until none are left; all effects."""
        effects: list[Effect] = []
        for _ in range(max_batches):
            unread = [
                r for p in sorted(self.step.partitions) for r in self._log_records(p)[self._log_read.get(p, 0) :]
            ]
            if not unread and not self.step.pending:
                return effects
            effects.extend(self.pipe(unread).effects)
        raise BatchFailed(f"the log did not settle within {max_batches} batches")

    # ---- output -------------------------------------------------------------------------------
    def records(self, topic: str) -> list[OutRecord]:
        return list(self.committed.get(topic, []))

    def dead_letters(self) -> list[dict[str, Any]]:
        return [self.codec.decode_as("keystate.DeadLetter", r.value) for r in self.records(self.topics_names.requests_dlq) if r.value]

    def log_commands(self, partition: int | None = None) -> list[tuple[str, dict[str, Any]]]:
        return [
            self.codec.decode(r.value)
            for r in self.committed.get(self.topics_names.log, [])
            if r.value is not None and (partition is None or r.partition == partition)
        ]

    def tables(self, partition: int) -> StoreTables:
        return self.step.partitions[partition].tables

    # ---- internals ----------------------------------------------------------------------------
    def _log_records(self, partition: int) -> list[InRecord]:
        return [
            InRecord(self.topics_names.log, partition, i, r.key, r.value, self.now_ms)
            for i, r in enumerate(x for x in self.committed.get(self.topics_names.log, []) if x.partition == partition)
        ]

    def _restore_one(self, partition: int) -> PartitionProcessor:
        """The partition's store, brought up to the end of its committed changelog records."""
        store = self.stores.get(partition)
        if store is None:
            store = self.stores[partition] = PartitionStore.open(self.state_dir / f"p{partition}", partition, StoreSettings())
        written = [r for r in self.committed.get(self.topics_names.changelog_topic, []) if r.partition == partition]
        checkpoint = store.checkpoint()
        start = 0 if checkpoint is None else checkpoint.offset
        rows = [(r.key or b"", r.value, r.headers) for r in written[start:]]
        store.apply(rows, Checkpoint("driver", len(written), self.now_ms))
        return PartitionProcessor(partition, self.config, store)


def _release(stores: dict[int, PartitionStore], directory: Path | None) -> None:
    for store in stores.values():
        store.close()
    stores.clear()
    if directory is not None:
        shutil.rmtree(directory, ignore_errors=True)
