"""The timer service: schedules timer rows on the event loop and fires them onto the log."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from keystate.schemas._codec import codec
from keystate.server.kafka import AsyncProducer, KafkaUnavailable

__all__ = ["TimerService"]

log = logging.getLogger(__name__)


class TimerService:
    """In-memory schedule of the timers tables; the tables stay the truth.

    Firing appends a TimerFiredCommand to the owning partition; a timer that was deleted in the
    meantime fires into nothing, because the state machine only acts on rows it still has.
    """

    def __init__(self, producer: AsyncProducer, log_topic: str) -> None:
        self._producer = producer
        self._topic = log_topic
        self._handles: dict[tuple[int, tuple[Any, ...]], asyncio.TimerHandle] = {}
        self._codec = codec()

    def schedule(self, partition: int, key: tuple[Any, ...], record: dict[str, Any]) -> None:
        loop = asyncio.get_running_loop()
        slot = (partition, key)
        old = self._handles.pop(slot, None)
        if old is not None:
            old.cancel()
        delay = max(0.0, record["fire_at_ms"] / 1000 - time.time())
        self._handles[slot] = loop.call_later(delay, self._fire, partition, key, record)

    def cancel_partition(self, partition: int) -> None:
        for slot in [s for s in self._handles if s[0] == partition]:
            self._handles.pop(slot).cancel()

    def pending(self) -> int:
        return len(self._handles)

    def _fire(self, partition: int, key: tuple[Any, ...], record: dict[str, Any]) -> None:
        self._handles.pop((partition, key), None)
        command = {
            "invocation_id": record["invocation_id"],
            "timer_kind": record["timer_kind"],
            "entry_index": record.get("entry_index"),
            "attempt": record.get("attempt"),
            "fire_at_ms": record["fire_at_ms"],
        }
        try:
            future = self._producer.produce(
                self._topic,
                self._codec.encode("keystate.TimerFiredCommand", command),
                key=record["invocation_id"].encode(),
                partition=partition,
                headers=[("type", b"keystate.TimerFiredCommand"), ("invocation_id", record["invocation_id"].encode())],
            )
        except KafkaUnavailable as exc:
            log.error("timer %s could not fire, retrying in 1 s: %s", key, exc)
            self._handles[(partition, key)] = asyncio.get_running_loop().call_later(1.0, self._fire, partition, key, record)
            return
        future.add_done_callback(lambda f: self._delivered(f, partition, key, record))

    def _delivered(self, future: asyncio.Future[Any], partition: int, key: tuple[Any, ...], record: dict[str, Any]) -> None:
        if future.cancelled() or future.exception() is None:
            return
        log.error("timer %s could not fire, retrying in 1 s: %s", key, future.exception())
        if (partition, key) not in self._handles:
            self._handles[(partition, key)] = asyncio.get_running_loop().call_later(1.0, self._fire, partition, key, record)
