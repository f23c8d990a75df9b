"""Typed views of the processor's table rows: frozen dataclasses that convert to and from Avro dicts.

Tables and changelogs hold Avro dicts (the codec encodes dicts); code that reads or writes a row goes
through these classes, so a misspelt field is a type error rather than a KeyError that stops a
partition. `from_avro` accepts what `Codec.decode` returns (optional fields may be missing) and
`to_avro` gives every field of the schema, lists for arrays, enum members for enums.

A test checks each class against its `.avsc` file: field names and order, types, optionality,
defaults. Change both together.

Unions of several records stay in fastavro's tuple form, `(full record name, record)`: `Result`
for `Value`/`Failure` results, `Entry` for the `*Entry` records of a journal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Self, TypeVar

from .enums import CompletionStatus, HandlerKind, InvocationState, ServiceType, TimerKind
from .ids import InvocationIdStr, ServiceId
from .state import SetStateCommand

__all__ = [
    "CallerRef",
    "Correlation",
    "Entry",
    "Failure",
    "IdempotencyValue",
    "InboxItem",
    "InvocationStatus",
    "JournalRecord",
    "ObjectStatus",
    "PromiseValue",
    "Result",
    "SetStateCommand",
    "StateValue",
    "Target",
    "TimerValue",
]

Avro = dict[str, Any]

Result = tuple[str, dict[str, Any]]
"""A `Value` or `Failure` result: `("keystate.Value", {"value": b"..."})` or `("keystate.Failure", {...})`."""

Entry = tuple[str, dict[str, Any]]
"""A journal entry: `("keystate.SetStateEntry", {"key": ..., "value": ...})` and the like."""

E = TypeVar("E", bound=StrEnum)


def _members(cls: type[E]) -> dict[str, E]:
    # A dict lookup is five times faster than `cls(symbol)`, and rows are read on every command.
    return {member.value: member for member in cls}


_SERVICE_TYPES = _members(ServiceType)
_HANDLER_KINDS = _members(HandlerKind)
_STATES = _members(InvocationState)
_COMPLETIONS = _members(CompletionStatus)
_TIMER_KINDS = _members(TimerKind)

@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """`keystate.Target`: the handler an invocation runs."""

    service: str
    handler: str
    key: str | None = None
    service_type: ServiceType
    handler_kind: HandlerKind

    @classmethod
    def from_avro(cls, record: Avro) -> Self:
        return cls(
            service=record["service"],
            handler=record["handler"],
            key=record.get("key"),
            service_type=_SERVICE_TYPES[record["service_type"]],
            handler_kind=_HANDLER_KINDS[record["handler_kind"]],
        )

    def to_avro(self) -> Avro:
        return {
            "service": self.service,
            "handler": self.handler,
            "key": self.key,
            "service_type": self.service_type,
            "handler_kind": self.handler_kind,
        }

    @property
    def keyed(self) -> bool:
        return self.service_type.keyed

    @property
    def exclusive(self) -> bool:
        """Exclusive handlers of one key run one at a time (a workflow's run too)."""
        return self.keyed and self.handler_kind in (HandlerKind.EXCLUSIVE, HandlerKind.WORKFLOW)

    @property
    def workflow_run(self) -> bool:
        return self.service_type is ServiceType.WORKFLOW and self.handler_kind is HandlerKind.WORKFLOW

    @property
    def service_id(self) -> ServiceId | None:
        return None if self.key is None else ServiceId(self.service, self.key)

    def object_key(self) -> tuple[str, str]:
        """(service, key) of a keyed target, the prefix of its rows in the state, inbox and promise tables."""
        if self.key is None:
            raise ValueError(f"{self.service}/{self.handler} has no key: only objects and workflows have rows by key")
        return (self.service, self.key)


@dataclass(frozen=True, slots=True, kw_only=True)
class CallerRef:
    """`keystate.CallerRef`: the invocation and journal entry waiting for a result."""

    invocation_id: InvocationIdStr
    entry_index: int

    @classmethod
    def from_avro(cls, record: Avro) -> Self:
        return cls(invocation_id=record["invocation_id"], entry_index=record["entry_index"])

    def to_avro(self) -> Avro:
        return {"invocation_id": self.invocation_id, "entry_index": self.entry_index}


@dataclass(frozen=True, slots=True, kw_only=True)
class Correlation:
    """`keystate.Correlation`: a keystate.requests record's Kafka key and headers, echoed on its result."""

    key: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_avro(cls, record: Avro) -> Self:
        return cls(key=record.get("key"), headers=dict(record.get("headers") or {}))

    def to_avro(self) -> Avro:
        return {"key": self.key, "headers": dict(self.headers)}


@dataclass(frozen=True, slots=True, kw_only=True)
class Failure:
    """`keystate.Failure`: an HTTP-like code and a message."""

    code: int = 500
    message: str

    @classmethod
    def from_avro(cls, record: Avro) -> Self:
        return cls(code=record.get("code", 500), message=record["message"])

    def to_avro(self) -> Avro:
        return {"code": self.code, "message": self.message}


def _opt_caller(record: Avro | None) -> CallerRef | None:
    return None if record is None else CallerRef.from_avro(record)


def _opt_failure(record: Avro | None) -> Failure | None:
    return None if record is None else Failure.from_avro(record)


@dataclass(frozen=True, slots=True, kw_only=True)
class InvocationStatus:
    """`keystate.InvocationStatus`, the status table's row: everything known about one invocation."""

    invocation_id: InvocationIdStr
    target: Target
    status: InvocationState
    attempt: int
    journal_length: int
    waiting_on: tuple[int, ...]
    deployment_id: str | None = None
    headers: dict[str, str]
    idempotency_key: str | None = None
    caller: CallerRef | None = None
    reply_topic: str | None = None
    created_at_ms: int
    modified_at_ms: int
    execute_at_ms: int | None = None
    result: Result | None = None
    completion_status: CompletionStatus | None = None
    last_failure: Failure | None = None
    retry_count: int
    retention_ms: int
    source: str
    cancel_requested: bool = False
    attached_callers: tuple[CallerRef, ...] = ()
    dedup_key: str | None = None
    cancel_pending: bool = False
    correlation: Correlation | None = None
    reply_topics: tuple[str, ...] = ()

    @classmethod
    def from_avro(cls, record: Avro) -> Self:
        completion = record.get("completion_status")
        correlation = record.get("correlation")
        attached = record.get("attached_callers")
        return cls(
            invocation_id=record["invocation_id"],
            target=Target.from_avro(record["target"]),
            status=_STATES[record["status"]],
            attempt=record["attempt"],
            journal_length=record["journal_length"],
            waiting_on=tuple(record["waiting_on"]),
            deployment_id=record.get("deployment_id"),
            headers=record["headers"],
            idempotency_key=record.get("idempotency_key"),
            caller=_opt_caller(record.get("caller")),
            reply_topic=record.get("reply_topic"),
            created_at_ms=record["created_at_ms"],
            modified_at_ms=record["modified_at_ms"],
            execute_at_ms=record.get("execute_at_ms"),
            result=record.get("result"),
            completion_status=None if completion is None else _COMPLETIONS[completion],
            last_failure=_opt_failure(record.get("last_failure")),
            retry_count=record["retry_count"],
            retention_ms=record["retention_ms"],
            source=record["source"],
            cancel_requested=record.get("cancel_requested", False),
            attached_callers=tuple([CallerRef.from_avro(c) for c in attached]) if attached else (),
            dedup_key=record.get("dedup_key"),
            cancel_pending=record.get("cancel_pending", False),
            correlation=None if correlation is None else Correlation.from_avro(correlation),
            reply_topics=tuple(record.get("reply_topics") or ()),
        )

    def to_avro(self) -> Avro:
        return {
            "invocation_id": self.invocation_id,
            "target": self.target.to_avro(),
            "status": self.status,
            "attempt": self.attempt,
            "journal_length": self.journal_length,
            "waiting_on": list(self.waiting_on),
            "deployment_id": self.deployment_id,
            "headers": self.headers,
            "idempotency_key": self.idempotency_key,
            "caller": None if self.caller is None else self.caller.to_avro(),
            "reply_topic": self.reply_topic,
            "created_at_ms": self.created_at_ms,
            "modified_at_ms": self.modified_at_ms,
            "execute_at_ms": self.execute_at_ms,
            "result": self.result,
            "completion_status": self.completion_status,
            "last_failure": None if self.last_failure is None else self.last_failure.to_avro(),
            "retry_count": self.retry_count,
            "retention_ms": self.retention_ms,
            "source": self.source,
            "cancel_requested": self.cancel_requested,
            "attached_callers": [c.to_avro() for c in self.attached_callers],
            "dedup_key": self.dedup_key,
            "cancel_pending": self.cancel_pending,
            "correlation": None if self.correlation is None else self.correlation.to_avro(),
            "reply_topics": list(self.reply_topics),
        }

    @property
    def completed(self) -> bool:
        return self.status is InvocationState.COMPLETED


@dataclass(frozen=True, slots=True, kw_only=True)
class JournalRecord:
    """`keystate.JournalRecord`, the journal table's row: one entry of an invocation's journal."""

    entry: Entry

    @classmethod
    def from_avro(cls, record: Avro) -> Self:
        name, body = record["entry"]
        return cls(entry=(name, body))

    def to_avro(self) -> Avro:
        return {"entry": self.entry}

    @property
    def name(self) -> str:
        """Full record name of the entry, e.g. "keystate.CallEntry"."""
        return self.entry[0]

    @property
    def body(self) -> dict[str, Any]:
        return self.entry[1]


@dataclass(frozen=True, slots=True, kw_only=True)
class StateValue:
    """`keystate.StateValue`, the state table's row: one user state key's serialized value."""

    value: bytes

    @classmethod
    def from_avro(cls, record: Avro) -> Self:
        return cls(value=record["value"])

    def to_avro(self) -> Avro:
        return {"value": self.value}


@dataclass(frozen=True, slots=True, kw_only=True)
class InboxItem:
    """`keystate.InboxItem`, the inbox table's row: an invocation (or a state edit) waiting for its key."""

    invocation_id: InvocationIdStr
    seq: int
    state_edit: SetStateCommand | None = None

    @classmethod
    def from_avro(cls, record: Avro) -> Self:
        edit = record.get("state_edit")
        return cls(
            invocation_id=record["invocation_id"],
            seq=record["seq"],
            state_edit=None if edit is None else SetStateCommand.from_avro(edit),
        )

    def to_avro(self) -> Avro:
        edit = None if self.state_edit is None else self.state_edit.to_avro()
        return {"invocation_id": self.invocation_id, "seq": self.seq, "state_edit": edit}


@dataclass(frozen=True, slots=True, kw_only=True)
class ObjectStatus:
    """`keystate.ObjectStatus`, the objects table's row: a key's exclusive lock and inbox counters."""

    locked_by: InvocationIdStr | None = None
    next_seq: int
    head_seq: int

    @classmethod
    def from_avro(cls, record: Avro) -> Self:
        return cls(locked_by=record.get("locked_by"), next_seq=record["next_seq"], head_seq=record["head_seq"])

    def to_avro(self) -> Avro:
        return {"locked_by": self.locked_by, "next_seq": self.next_seq, "head_seq": self.head_seq}

    @property
    def queued(self) -> bool:
        """Whether invocations wait in the key's inbox."""
        return self.head_seq != self.next_seq


@dataclass(frozen=True, slots=True, kw_only=True)
class TimerValue:
    """`keystate.TimerValue`, the timers table's row: one pending timer."""

    invocation_id: InvocationIdStr
    timer_kind: TimerKind
    entry_index: int | None = None
    attempt: int | None = None
    fire_at_ms: int

    @classmethod
    def from_avro(cls, record: Avro) -> Self:
        return cls(
            invocation_id=record["invocation_id"],
            timer_kind=_TIMER_KINDS[record["timer_kind"]],
            entry_index=record.get("entry_index"),
            attempt=record.get("attempt"),
            fire_at_ms=record["fire_at_ms"],
        )

    def to_avro(self) -> Avro:
        return {
            "invocation_id": self.invocation_id,
            "timer_kind": self.timer_kind,
            "entry_index": self.entry_index,
            "attempt": self.attempt,
            "fire_at_ms": self.fire_at_ms,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class PromiseValue:
    """`keystate.PromiseValue`, the promises table's row: a workflow's durable promise and its waiters."""

    result: Result | None = None
    waiters: tuple[CallerRef, ...]

    @classmethod
    def from_avro(cls, record: Avro) -> Self:
        return cls(result=record.get("result"), waiters=tuple(CallerRef.from_avro(w) for w in record["waiters"]))

    def to_avro(self) -> Avro:
        return {"result": self.result, "waiters": [w.to_avro() for w in self.waiters]}


@dataclass(frozen=True, slots=True, kw_only=True)
class IdempotencyValue:
    """`keystate.IdempotencyValue`, the idempotency table's row: the invocation that owns a key."""

    invocation_id: InvocationIdStr

    @classmethod
    def from_avro(cls, record: Avro) -> Self:
        return cls(invocation_id=record["invocation_id"])

    def to_avro(self) -> Avro:
        return {"invocation_id": self.invocation_id}
