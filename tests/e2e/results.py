"""Reads keystate.results and the DLQ like a user's read_committed consumer would."""

from __future__ import annotations

import time
import uuid
from typing import Any

from confluent_kafka import Consumer

from keystate.schemas._codec import codec


def read_all(bootstrap: str, topic: str, until: Any = None, timeout: float = 60.0) -> list[dict[str, Any]]:
    """Every record of `topic` from the start, decoded; polls until `until(records)` or the timeout."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"test-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "isolation.level": "read_committed",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe([topic])
    records: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                if msg.error() is None:
                    records.append(codec().decode(msg.value())[1])
            if until is not None and until(records):
                break
    finally:
        consumer.close()
    return records
