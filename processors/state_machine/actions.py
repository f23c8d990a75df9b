"""What the state machine orders: records produced inside the transaction, effects run after commit."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from keystate.schemas.ids import InvocationIdStr, PartitionKey

__all__ = [
    "Action",
    "Invoke",
    "NotifyCompletion",
    "Publish",
    "RegisterTimer",
    "SendToPartition",
    "StopInvocation",
    "in_transaction",
]


@dataclass(frozen=True, slots=True)
class SendToPartition:
    """Append a command to the log partition that owns `partition_key` (in the transaction)."""

    partition_key: PartitionKey
    key: bytes
    name: str
    record: dict[str, Any]
    invocation_id: InvocationIdStr


@dataclass(frozen=True, slots=True)
class Publish:
    """Write a record to an output topic, `None` meaning keystate.results (in the transaction)."""

    topic: str | None
    key: bytes
    name: str
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Invoke:
    """Start attempt `attempt` of an invocation on its deployment, with its journal so far."""

    invocation_id: InvocationIdStr
    attempt: int
    target: dict[str, Any]
    journal: list[dict[str, Any]]
    state: list[dict[str, Any]] | None
    deployment_id: str | None
    retry_count: int
    random_seed: int
    first_attempt_at_ms: int


@dataclass(frozen=True, slots=True)
class NotifyCompletion:
    """Push a completed entry's result to the live attempt, if it is still that attempt."""

    invocation_id: InvocationIdStr
    attempt: int
    index: int
    result: Any


@dataclass(frozen=True, slots=True)
class StopInvocation:
    """Close the live attempt of an invocation, if any (it ended, or is no longer ours)."""

    invocation_id: InvocationIdStr


@dataclass(frozen=True, slots=True)
class RegisterTimer:
    """A timer row was written: the shell schedules it (the table stays the source of truth)."""

    key: tuple[Any, ...]
    fire_at_ms: int
    record: dict[str, Any] = field(hash=False)


Action = SendToPartition | Publish | Invoke | NotifyCompletion | StopInvocation | RegisterTimer


def in_transaction(action: Action) -> bool:
    """True for records the shell produces inside the batch's transaction."""
    return isinstance(action, (SendToPartition, Publish))
