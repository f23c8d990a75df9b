"""keystate's Avro enums as StrEnums: a member equals its symbol, so records stay plain Avro dicts.

fastavro encodes a member as its symbol and decodes a symbol as a plain `str`, which compares equal
to the member; `Enum(symbol)` turns a decoded symbol back into a member. A test checks that the
members of each class are exactly the symbols of its `.avsc` file (see `AVRO_ENUMS`).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "AVRO_ENUMS",
    "CompletionStatus",
    "HandlerKind",
    "InvocationState",
    "OnMaxAttempts",
    "OutputStatus",
    "ServiceType",
    "TimerKind",
]


class ServiceType(StrEnum):
    """Stateless service, virtual object (keyed, one writer per key) or workflow (keyed, runs once per id)."""

    SERVICE = "SERVICE"
    VIRTUAL_OBJECT = "VIRTUAL_OBJECT"
    WORKFLOW = "WORKFLOW"

    @property
    def keyed(self) -> bool:
        return self is not ServiceType.SERVICE


class HandlerKind(StrEnum):
    """EXCLUSIVE: one at a time per key; SHARED: concurrent, reads state; WORKFLOW: a workflow's run."""

    EXCLUSIVE = "EXCLUSIVE"
    SHARED = "SHARED"
    WORKFLOW = "WORKFLOW"


class InvocationState(StrEnum):
    """Lifecycle state of an invocation in the status table."""

    SCHEDULED = "SCHEDULED"
    INBOXED = "INBOXED"
    INVOKED = "INVOKED"
    SUSPENDED = "SUSPENDED"
    BACKING_OFF = "BACKING_OFF"
    COMPLETED = "COMPLETED"
    # Attempts exhausted with on_max_attempts PAUSE; a ResumeCommand starts it again.
    PAUSED = "PAUSED"


class TimerKind(StrEnum):
    """Why a timer exists."""

    SLEEP = "SLEEP"
    RETRY = "RETRY"
    DELAYED_INVOKE = "DELAYED_INVOKE"
    PURGE = "PURGE"


class CompletionStatus(StrEnum):
    """How a finished invocation ended."""

    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    KILLED = "KILLED"


class OnMaxAttempts(StrEnum):
    """What happens when retries run out: FAIL the invocation or PAUSE it for an operator."""

    FAIL = "FAIL"
    PAUSE = "PAUSE"


class OutputStatus(StrEnum):
    """What a query learns of an invocation's output: UNKNOWN (none, or purged), RUNNING, or how it ended."""

    UNKNOWN = "UNKNOWN"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    KILLED = "KILLED"


AVRO_ENUMS: dict[str, type[StrEnum]] = {
    "keystate." + cls.__name__: cls
    for cls in (ServiceType, HandlerKind, InvocationState, TimerKind, CompletionStatus, OnMaxAttempts, OutputStatus)
}
"""Full Avro name -> its class: every enum of schemas/avro must be here (checked by a test)."""
