"""The timer service: keeps timer rows in a heap on the event loop and fires them onto the log."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import time
from dataclasses import replace
from typing import Any

from keystate.server.commands import LogRecord, command_record
from keystate.server.kafka import AsyncProducer, KafkaUnavailable

__all__ = ["TimerService"]

log = logging.getLogger(__name__)

_FIRED = "keystate.TimerFiredCommand"
_RETRY_S = 1.0

Slot = tuple[int, tuple[Any, ...]]  # (partition, timer row key)


class TimerService:
    """In-memory schedule of the timers tables; the tables stay the truth.

    Firing appends a TimerFiredCommand to the owning partition; a timer that was deleted in the
    meantime fires into nothing, because the state machine only acts on rows it still has.

    One heap for all timers and one loop handle for the nearest: `schedule` is O(log n) however
    many timers a partition brings, and due timers fire in slices of `fire_batch` per turn of the
    event loop, so thousands due at once never stall the invoker or the ingress of the process.
    """

    def __init__(
        self, producer: AsyncProducer, log_topic: str, partitions: int | None = None, *, fire_batch: int = 200
    ) -> None:
        self._producer = producer
        self._topic = log_topic
        self._partitions = partitions
        self._fire_batch = fire_batch
        # (due at ms, sequence, slot); an entry whose sequence is no longer its slot's is stale.
        self._heap: list[tuple[int, int, Slot]] = []
        self._rows: dict[Slot, tuple[int, dict[str, Any]]] = {}  # slot -> (sequence, timer row)
        self._seq = itertools.count()
        # Bumped when a partition is dropped: a delivery failing afterwards is not retried.
        self._epochs: dict[int, int] = {}
        self._handle: asyncio.Handle | None = None
        self._armed_at: float | None = None  # ms the handle is due at

    def schedule(self, partition: int, key: tuple[Any, ...], record: dict[str, Any]) -> None:
        """Fire `record` (a timer row) at its `fire_at_ms`; replaces the row's earlier schedule."""
        self._push((partition, key), int(record["fire_at_ms"]), record)
        self._arm()

    def cancel_partition(self, partition: int) -> None:
        """Forget every timer of a partition (it was revoked; its new owner schedules them)."""
        self._epochs[partition] = self._epochs.get(partition, 0) + 1
        for slot in [s for s in self._rows if s[0] == partition]:
            del self._rows[slot]
        self._compact()

    def pending(self) -> int:
        """Timers scheduled and not fired yet (a firing whose produce failed counts again)."""
        return len(self._rows)

    def _push(self, slot: Slot, due_ms: int, record: dict[str, Any]) -> None:
        seq = next(self._seq)
        self._rows[slot] = (seq, record)
        heapq.heappush(self._heap, (due_ms, seq, slot))
        self._compact()

    def _compact(self) -> None:
        # Replaced and cancelled rows leave stale heap entries; rebuild once they dominate.
        if len(self._heap) > 2 * len(self._rows) + 1024:
            live = {seq for seq, _ in self._rows.values()}
            self._heap = [item for item in self._heap if item[1] in live]
            heapq.heapify(self._heap)

    def _arm(self) -> None:
        """One loop handle, due when the nearest timer is."""
        if not self._heap:
            return
        nearest = self._heap[0][0]
        if self._handle is not None and self._armed_at is not None and self._armed_at <= nearest:
            return
        if self._handle is not None:
            self._handle.cancel()
        loop = asyncio.get_running_loop()
        self._armed_at = nearest
        self._handle = loop.call_later(max(0.0, nearest / 1000 - time.time()), self._on_due)

    def _on_due(self) -> None:
        self._handle = None
        self._armed_at = None
        now_ms = time.time() * 1000
        budget = self._fire_batch
        while self._heap and self._heap[0][0] <= now_ms and budget > 0:
            _, seq, slot = heapq.heappop(self._heap)
            budget -= 1
            row = self._rows.get(slot)
            if row is None or row[0] != seq:
                continue  # replaced or cancelled since
            del self._rows[slot]
            self._fire(slot, row[1])
        if self._heap and self._heap[0][0] <= now_ms:
            # More are due: the next slice after whatever else waits on the loop.
            self._armed_at = now_ms
            self._handle = asyncio.get_running_loop().call_soon(self._on_due)
        else:
            self._arm()

    def _fire(self, slot: Slot, record: dict[str, Any]) -> None:
        partition = slot[0]
        command = self._command(partition, record)
        try:
            future = self._producer.produce(self._topic, command.value, **command.produce_kwargs())
        except KafkaUnavailable as exc:
            self._retry(slot, record, self._epochs.get(partition, 0), exc)
            return
        epoch = self._epochs.get(partition, 0)
        future.add_done_callback(lambda f: self._delivered(f, slot, record, epoch))

    def _command(self, partition: int, record: dict[str, Any]) -> LogRecord:
        fired = {
            "invocation_id": record["invocation_id"],
            "timer_kind": record["timer_kind"],
            "entry_index": record.get("entry_index"),
            "attempt": record.get("attempt"),
            "fire_at_ms": record["fire_at_ms"],
        }
        command = command_record(_FIRED, fired, self._partitions or partition + 1)
        # The row lives in `partition`'s table: that is where the firing must land.
        return command if command.partition == partition else replace(command, partition=partition)

    def _delivered(self, future: asyncio.Future[Any], slot: Slot, record: dict[str, Any], epoch: int) -> None:
        if future.cancelled() or future.exception() is None:
            return
        exc = future.exception()
        assert exc is not None
        self._retry(slot, record, epoch, exc)

    def _retry(self, slot: Slot, record: dict[str, Any], epoch: int, exc: BaseException) -> None:
        partition, key = slot
        if self._epochs.get(partition, 0) != epoch or slot in self._rows:
            return  # the partition was dropped, or the row rescheduled: nothing to retry
        log.error(
            "timer %s of invocation %s could not fire onto %s[%d], retrying in %g s: %s",
            key, record["invocation_id"], self._topic, partition, _RETRY_S, exc,
        )
        self._push(slot, int((time.time() + _RETRY_S) * 1000), record)
        self._arm()
