"""Plain records between the Kafka session and the pure batch step (no confluent_kafka here)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import Enum

__all__ = ["DeliveryFailure", "InRecord", "KafkaHeaders", "Origin", "OutKind", "OutRecord", "FOLDED_TOPIC", "PENDING_TOPIC"]

KafkaHeaders = Sequence[tuple[str, str | bytes | None]] | Mapping[str, str | bytes | None]
"""A record's Kafka headers as confluent_kafka gives them (a consumed record: a list of pairs)."""

Origin = tuple[str, int, int]
"""(topic, partition, offset) of the consumed record that caused a produced record."""

# Commands the shell itself appends (takeover resumes, sweeps) have no consumed record behind them;
# they get a synthetic origin on this pseudo-topic so a failing one can be isolated like any other.
PENDING_TOPIC = "<pending>"
# Entries of attempts started early that the batch's own transaction writes to the log and applies
# (keystate.processors.early): not consumed, so no offset; their origin is on this pseudo-topic.
FOLDED_TOPIC = "<folded>"


@dataclass(frozen=True, slots=True)
class InRecord:
    """One consumed record, as the batch step sees it."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp_ms: int
    # Kafka headers, read only for keystate.requests records (their correlation headers); None otherwise.
    headers: KafkaHeaders | None = None

    @property
    def origin(self) -> Origin:
        return (self.topic, self.partition, self.offset)


class OutKind(Enum):
    """What a produced record is for; decides how a failure to write it is isolated."""

    COMMAND = "command"  # a command for keystate.log
    CHANGELOG = "changelog"  # a table write
    PUBLISH = "publish"  # a result or reply to an output topic
    DEAD_LETTER = "dead_letter"  # a rejected record, to the DLQ


@dataclass(frozen=True, slots=True)
class OutRecord:
    """One record to produce inside the batch's transaction, remembering which record caused it."""

    kind: OutKind
    topic: str
    partition: int | None
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]] | None
    origin: Origin | None
    invocation_id: str | None = None

    def size(self) -> int:
        """Bytes Kafka counts against the record size limit (key, value and headers)."""
        headers = sum(len(k) + len(v) for k, v in self.headers or ())
        return len(self.key or b"") + len(self.value or b"") + headers


@dataclass(frozen=True, slots=True)
class DeliveryFailure:
    """A produced record that Kafka refused; `record_fault` when the record itself is to blame."""

    index: int
    error: str
    record_fault: bool
