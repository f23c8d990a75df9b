"""Sans-I/O journal/replay machine of one attempt: protocol messages in, protocol messages out.

The driver feeds every decoded message from the processor to `notify_input` and sends whatever
`take_output` returns; the handler side calls the `sys_*` methods, in the order the handler issues
its commands. While the handler re-executes, each command is matched against the journal entry at
the next index; after the known journal, each command becomes a new entry. No sockets, no asyncio,
no clock: time (`now_ms`) comes in as an argument, so the same inputs always give the same outputs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

from keystate.schemas.ids import (
    HandlerKind,
    InvocationId,
    InvocationTarget,
    PartitionKey,
    ServiceType,
    idempotency_partition_key,
    positive_hash,
)
from keystate.schemas.limits import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    headers_size,
    max_payload_bytes,
    payload_too_large,
    truncate_text,
)

from .errors import AttemptEnded, ProtocolError, TerminalError

__all__ = [
    "Failure",
    "Machine",
    "Message",
    "Result",
    "StartInfo",
    "Value",
    "child_invocation_id",
    "describe_entry",
]

NS = "keystate."
Message = tuple[str, dict[str, Any]]
"""A protocol record as the codec sees it: full record name and the record dict."""

JOURNAL_MISMATCH = 570
PROTOCOL_VIOLATION = 571

START = NS + "StartMessage"
ENTRY = NS + "EntryMessage"
ACK = NS + "AckMessage"
COMPLETION = NS + "CompletionMessage"
SUSPENSION = NS + "SuspensionMessage"
ERROR = NS + "ErrorMessage"
END = NS + "EndMessage"

INPUT = NS + "InputEntry"
OUTPUT = NS + "OutputEntry"
GET_STATE = NS + "GetStateEntry"
SET_STATE = NS + "SetStateEntry"
CLEAR_STATE = NS + "ClearStateEntry"
CLEAR_ALL_STATE = NS + "ClearAllStateEntry"
GET_STATE_KEYS = NS + "GetStateKeysEntry"
RUN = NS + "RunEntry"
CALL = NS + "CallEntry"
SEND = NS + "SendEntry"
SLEEP = NS + "SleepEntry"
AWAKEABLE = NS + "AwakeableEntry"
COMPLETE_AWAKEABLE = NS + "CompleteAwakeableEntry"
GET_PROMISE = NS + "GetPromiseEntry"
PEEK_PROMISE = NS + "PeekPromiseEntry"
COMPLETE_PROMISE = NS + "CompletePromiseEntry"
CANCEL_INVOCATION = NS + "CancelInvocationEntry"

# Entries whose result arrives later in a CompletionMessage (null result = not completed yet).
COMPLETABLE = frozenset({CALL, SLEEP, AWAKEABLE, GET_PROMISE, PEEK_PROMISE, COMPLETE_PROMISE})


@dataclass(frozen=True, slots=True)
class Value:
    """A successful result: serialized bytes."""

    value: bytes


@dataclass(frozen=True, slots=True)
class Failure:
    """A terminal failure: HTTP-like code and message."""

    code: int
    message: str


Result = Value | Failure


def result_to_avro(result: Result) -> tuple[str, dict[str, Any]]:
    if isinstance(result, Value):
        return (NS + "Value", {"value": result.value})
    return (NS + "Failure", {"code": result.code, "message": result.message})


def result_from_avro(data: Any) -> Result | None:
    """A `Value|Failure` union as decoded by the codec (`(full_name, dict)`), or None for null."""
    if data is None:
        return None
    if not (isinstance(data, tuple) and len(data) == 2 and isinstance(data[1], dict)):
        raise ProtocolError(f"expected a (record name, record) result, got {type(data).__name__}")
    name, record = data
    if name == NS + "Value":
        return Value(bytes(record["value"]))
    if name == NS + "Failure":
        return Failure(int(record["code"]), str(record["message"]))
    raise ProtocolError(f"expected a Value or a Failure, got {name}")


def target_to_avro(target: InvocationTarget) -> dict[str, Any]:
    return target.to_record()


def target_from_avro(data: dict[str, Any]) -> InvocationTarget:
    return InvocationTarget(
        service=data["service"],
        handler=data["handler"],
        key=data.get("key"),
        service_type=ServiceType(data["service_type"]),
        handler_kind=HandlerKind(data["handler_kind"]),
    )


def describe_entry(name: str, entry: dict[str, Any]) -> str:
    """Short text of an entry: what must match on replay (type and name/target/key, not values)."""
    short = name.removeprefix(NS)
    if name == RUN:
        return f"run {entry['name']!r}"
    if name in (GET_STATE, SET_STATE, CLEAR_STATE):
        verb = {GET_STATE: "get_state", SET_STATE: "set_state", CLEAR_STATE: "clear_state"}[name]
        return f"{verb} {entry['key']!r}"
    if name in (CALL, SEND):
        verb = "call" if name == CALL else "send"
        return f"{verb} {target_from_avro(entry['target'])}"
    if name in (GET_PROMISE, PEEK_PROMISE, COMPLETE_PROMISE):
        verb = {GET_PROMISE: "get_promise", PEEK_PROMISE: "peek_promise", COMPLETE_PROMISE: "complete_promise"}[name]
        return f"{verb} {entry['name']!r}"
    if name == COMPLETE_AWAKEABLE:
        return f"complete_awakeable {entry['awakeable_id']!r}"
    if name == CANCEL_INVOCATION:
        return f"cancel_invocation {entry['invocation_id']!r}"
    return {
        INPUT: "input",
        OUTPUT: "output",
        CLEAR_ALL_STATE: "clear_all_state",
        GET_STATE_KEYS: "state_keys",
        SLEEP: "sleep",
        AWAKEABLE: "awakeable",
    }.get(name, short)


def child_invocation_id(
    parent_id: str, index: int, target: InvocationTarget, idempotency_key: str | None = None
) -> InvocationId:
    """The callee's id of a call/send at `index`: derived from the parent, so replays agree.

    With an idempotency key the id is routed by `idempotency_partition_key`, so the invocation
    lands on the partition that holds its idempotency row; the random part stays derived.
    """
    digest = hashlib.sha256(f"{parent_id}/{index}".encode()).digest()
    if idempotency_key is not None:
        partition_key = idempotency_partition_key(target, idempotency_key)
    elif target.key is not None:
        partition_key = positive_hash(f"{target.service}/{target.key}")
    else:
        partition_key = PartitionKey(int.from_bytes(digest[15:19], "big") & 0x7FFFFFFF)
    return InvocationId.new(partition_key, random=digest[:15])


def _check_idempotency_key(key: str | None) -> None:
    if key is not None and (not isinstance(key, str) or not key):
        raise ValueError(f"idempotency_key must be a non-empty string or None, got {key!r}")


@dataclass(slots=True)
class StartInfo:
    """What the StartMessage and the input entry say about this attempt."""

    invocation_id: str
    attempt: int
    target: InvocationTarget
    random_seed: int
    retry_count: int
    duration_since_first_attempt_ms: int
    partial_state: bool
    # The runtime's payload limit from the StartMessage (or this process's default).
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    argument: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class Machine:
    """The journal of one attempt; see the module docstring for how it is driven."""

    def __init__(self) -> None:
        self.start: StartInfo | None = None
        self._known = -1
        self._journal: list[Message] = []
        self._kinds: dict[int, str] = {}
        self._state: dict[str, bytes] = {}
        self._next = 1  # entry 0 is the input, consumed before the handler starts
        self._flush_from = 0
        self._slots: dict[int, Message | None] = {}  # new entries not sent yet; None = run in flight
        self._run_results: dict[int, Result] = {}  # new runs sent, waiting for their ack
        self._results: dict[int, Result] = {}
        self._notified: list[int] = []
        self._out: list[Message] = []
        self._end_pending = False
        self._closed = False

    # ---- input side -------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """The start message and the whole known journal arrived: the handler may run."""
        return self.start is not None and len(self._journal) == self._known

    @property
    def closed(self) -> bool:
        """The attempt is over (End, Suspension or Error queued); nothing more will be emitted."""
        return self._closed

    @property
    def known_entries(self) -> int:
        return max(self._known, 0)

    @property
    def received_entries(self) -> int:
        """Known journal entries received so far (`ready` once all `known_entries` arrived)."""
        return len(self._journal)

    def notify_input(self, name: str, record: dict[str, Any]) -> None:
        """Apply one message from the processor; raises ProtocolError if it breaks the protocol."""
        if self._closed:
            return  # acks and completions racing the end of the attempt are harmless
        try:
            if self.start is None:
                self._on_start(name, record)
            elif name == ENTRY:
                self._on_entry(record)
            elif name == COMPLETION:
                self._on_completion(record)
            elif name == ACK:
                self._on_ack(record)
            else:
                raise ProtocolError(f"unexpected {name} from the processor after the start message")
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"malformed {name}: {type(exc).__name__}: {exc}") from exc

    def take_output(self) -> list[Message]:
        """Messages to send to the processor, in order; each is returned once."""
        out, self._out = self._out, []
        return out

    def take_notifications(self) -> list[int]:
        """Indexes whose result became known (completion, or ack of a new run) since the last call."""
        out, self._notified = self._notified, []
        return out

    def _on_start(self, name: str, record: dict[str, Any]) -> None:
        if name != START:
            raise ProtocolError(f"expected a StartMessage first, got {name}")
        known = int(record["known_entries"])
        if known < 1:
            raise ProtocolError(f"known_entries is {known}: the journal must start with an InputEntry")
        self.start = StartInfo(
            invocation_id=str(record["invocation_id"]),
            attempt=int(record["attempt"]),
            target=target_from_avro(record["target"]),
            random_seed=int(record["random_seed"]),
            retry_count=int(record["retry_count"]),
            duration_since_first_attempt_ms=int(record["duration_since_first_attempt_ms"]),
            partial_state=bool(record["partial_state"]),
            max_payload_bytes=_limit_of(record.get("max_payload_bytes")),
        )
        self._state = {e["key"]: bytes(e["value"]) for e in record["state"]}
        self._known = known
        self._flush_from = known

    def _on_entry(self, record: dict[str, Any]) -> None:
        index = int(record["index"])
        if len(self._journal) >= self._known:
            raise ProtocolError(f"entry {index} after the {self._known} known entries")
        if index != len(self._journal):
            raise ProtocolError(f"expected journal entry {len(self._journal)}, got entry {index}")
        union = record["entry"]["entry"]
        if not (isinstance(union, tuple) and len(union) == 2):
            raise ProtocolError(f"entry {index} is not a (record name, record) union")
        name, entry = union
        if index == 0:
            if name != INPUT:
                raise ProtocolError(f"entry 0 must be an InputEntry, got {name}")
            assert self.start is not None
            self.start.argument = bytes(entry["argument"])
            self.start.headers = dict(entry["headers"])
        self._journal.append((name, entry))
        self._kinds[index] = name
        result = self._journaled_result(name, entry)
        if result is not None:
            self._results[index] = result

    @staticmethod
    def _journaled_result(name: str, entry: dict[str, Any]) -> Result | None:
        if name == SLEEP:
            if not entry["fired"]:
                return None
            # A sleep ended by a cancel carries its 409 failure; a fired timer an empty value.
            return result_from_avro(entry.get("result")) or Value(b"")
        if name == RUN or name in COMPLETABLE:
            return result_from_avro(entry.get("result"))
        return None

    def _on_completion(self, record: dict[str, Any]) -> None:
        index = int(record["index"])
        kind = self._kinds.get(index)
        if kind is None or index >= max(self._flush_from, len(self._journal)):
            raise ProtocolError(f"completion for entry {index}, which the processor does not have")
        if kind not in COMPLETABLE:
            raise ProtocolError(f"completion for entry {index}, a {kind.removeprefix(NS)} that takes none")
        result = result_from_avro(record["result"])
        if index in self._results or result is None:
            return  # a redelivered completion changes nothing
        self._results[index] = result
        self._notified.append(index)

    def _on_ack(self, record: dict[str, Any]) -> None:
        index = int(record["index"])
        if index >= self._flush_from:
            raise ProtocolError(f"ack for entry {index}, which was not sent yet")
        result = self._run_results.pop(index, None)
        if result is not None:
            self._results[index] = result
            self._notified.append(index)

    # ---- handler side -----------------------------------------------------------------------

    def result(self, index: int) -> Result | None:
        """The result of a completable entry or run, once known (a new run: once acked)."""
        return self._results.get(index)

    @property
    def replaying(self) -> bool:
        return self._next < self._known

    def _info(self) -> StartInfo:
        self._check_open()
        if self.start is None or not self.ready:
            raise ProtocolError("the handler ran before the known journal arrived")
        return self.start

    def _check_open(self) -> None:
        if self._closed:
            raise AttemptEnded("the attempt is over; the handler must not issue more commands")

    def _command(self, name: str, entry: dict[str, Any], *, pending: bool = False) -> tuple[int, dict[str, Any] | None]:
        """Next index for a command: the matching journal entry when replaying, else a new entry."""
        self._info()
        index = self._next
        self._next += 1
        if index < self._known:
            jname, jentry = self._journal[index]
            expected, got = describe_entry(jname, jentry), describe_entry(name, entry)
            if jname != name or expected != got:
                self._mismatch(index, expected, got)
            return index, jentry
        self._kinds[index] = name
        self._slots[index] = None if pending else (name, entry)
        self._flush()
        return index, None

    def _mismatch(self, index: int, expected: str, got: str) -> None:
        message = f"journal mismatch at entry {index}: expected {expected}, got {got}"
        self.sys_fail(JOURNAL_MISMATCH, message, retryable=True, related_entry_index=index)
        raise AttemptEnded(message)

    def _flush(self) -> None:
        # Entries leave strictly in index order: an entry issued after a run still in flight waits.
        while self._slots.get(self._flush_from) is not None:
            msg = self._slots.pop(self._flush_from)
            assert msg is not None
            self._out.append((ENTRY, {"index": self._flush_from, "entry": {"entry": msg}}))
            self._flush_from += 1
        if self._end_pending and not self._slots:
            self._out.append((END, {}))
            self._closed = True

    @property
    def input(self) -> tuple[bytes, dict[str, str]]:
        info = self._info()
        return info.argument, info.headers

    def sys_get_state(self, key: str) -> bytes | None:
        info = self._info()
        if not self.replaying and info.partial_state and key not in self._state:
            self._lazy_state_unsupported(key)
        value = self._state.get(key)
        _, journaled = self._command(GET_STATE, {"key": key, "value": value})
        if journaled is not None:
            return None if journaled.get("value") is None else bytes(journaled["value"])
        return value

    def sys_state_keys(self) -> list[str]:
        info = self._info()
        if not self.replaying and info.partial_state:
            self._lazy_state_unsupported(None)
        keys = sorted(self._state)
        _, journaled = self._command(GET_STATE_KEYS, {"keys": keys})
        return list(journaled["keys"]) if journaled is not None else keys

    def _lazy_state_unsupported(self, key: str | None) -> None:
        what = "the state keys" if key is None else f"state key {key!r}"
        message = (
            f"the processor sent partial state and the handler reads {what}: this SDK needs the "
            "full state of the object in StartMessage (partial_state=false)"
        )
        self.sys_fail(PROTOCOL_VIOLATION, message, retryable=True, related_entry_index=self._next)
        raise AttemptEnded(message)

    def _check_payload(self, what: str, size: int) -> None:
        """TerminalError if a new entry's payload is over the limit; journaled entries passed already."""
        info = self._info()
        if self.replaying:
            return
        message = payload_too_large(what, size, info.max_payload_bytes)
        if message is not None:
            raise TerminalError(message)

    def _bounded(self, what: str, result: Result) -> Result:
        """A result that fits a record: a value over the limit becomes a terminal failure saying so."""
        if isinstance(result, Failure):
            return Failure(result.code, truncate_text(result.message))
        info = self._info()
        message = payload_too_large(what, len(result.value), info.max_payload_bytes)
        return result if message is None else Failure(500, message)

    def sys_set_state(self, key: str, value: bytes) -> None:
        self._check_payload(f"the value of state key {key!r}", len(key.encode()) + len(value))
        self._command(SET_STATE, {"key": key, "value": value})
        # Replayed writes are applied too: the start state already holds them, so this is a no-op
        # in effect, and it keeps later reads right whichever state the processor sent.
        self._state[key] = value

    def sys_clear_state(self, key: str) -> None:
        self._command(CLEAR_STATE, {"key": key})
        self._state.pop(key, None)

    def sys_clear_all_state(self) -> None:
        self._command(CLEAR_ALL_STATE, {})
        self._state.clear()

    def sys_run(self, name: str) -> tuple[int, Result | None]:
        """Index of a run step and its journaled result; None means: execute it, then `sys_run_done`."""
        index, journaled = self._command(RUN, {"name": name}, pending=True)
        if journaled is not None:
            return index, result_from_avro(journaled["result"])
        return index, None

    def sys_run_done(self, index: int, name: str, result: Result) -> None:
        """Journal the outcome of a run executed in this attempt; it counts once acked."""
        self._check_open()
        if index not in self._slots or self._slots[index] is not None:
            raise ValueError(f"entry {index} is not a run in flight")
        result = self._bounded(f"the result of ctx.run {name!r}", result)
        self._slots[index] = (RUN, {"name": name, "result": result_to_avro(result)})
        self._run_results[index] = result
        self._flush()

    def sys_call(
        self,
        target: InvocationTarget,
        argument: bytes,
        headers: dict[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> tuple[int, str]:
        """Index of a call entry and the callee's invocation id."""
        info = self._info()
        _check_idempotency_key(idempotency_key)
        self._check_argument(f"the argument of the call to {target}", argument, headers, idempotency_key)
        callee = str(child_invocation_id(info.invocation_id, self._next, target, idempotency_key))
        entry = {
            "target": target_to_avro(target),
            "argument": argument,
            "headers": dict(headers or {}),
            "idempotency_key": idempotency_key,
            "invocation_id": callee,
            "result": None,
        }
        index, journaled = self._command(CALL, entry)
        return index, str(journaled["invocation_id"]) if journaled is not None else callee

    def sys_send(
        self,
        target: InvocationTarget,
        argument: bytes,
        headers: dict[str, str] | None = None,
        idempotency_key: str | None = None,
        invoke_at_ms: int | None = None,
    ) -> tuple[int, str]:
        """Index of a send entry and the callee's invocation id."""
        info = self._info()
        _check_idempotency_key(idempotency_key)
        self._check_argument(f"the argument of the send to {target}", argument, headers, idempotency_key)
        callee = str(child_invocation_id(info.invocation_id, self._next, target, idempotency_key))
        entry = {
            "target": target_to_avro(target),
            "argument": argument,
            "headers": dict(headers or {}),
            "idempotency_key": idempotency_key,
            "invocation_id": callee,
            "invoke_at_ms": invoke_at_ms,
        }
        index, journaled = self._command(SEND, entry)
        return index, str(journaled["invocation_id"]) if journaled is not None else callee

    def _check_argument(
        self, what: str, argument: bytes, headers: dict[str, str] | None, idempotency_key: str | None
    ) -> None:
        # The callee's InvokeCommand carries all three: together they are one payload.
        size = len(argument) + headers_size(headers) + len((idempotency_key or "").encode())
        self._check_payload(f"{what} (with its headers)" if headers else what, size)

    def sys_sleep(self, wake_up_at_ms: int) -> int:
        index, _ = self._command(SLEEP, {"wake_up_at_ms": wake_up_at_ms, "fired": False})
        return index

    def sys_awakeable(self) -> tuple[int, str]:
        """Index of an awakeable and its id, `awk_<invocation id>_<index>`, routable by itself."""
        info = self._info()
        awakeable_id = f"awk_{info.invocation_id}_{self._next}"
        index, journaled = self._command(AWAKEABLE, {"awakeable_id": awakeable_id, "result": None})
        return index, str(journaled["awakeable_id"]) if journaled is not None else awakeable_id

    def sys_complete_awakeable(self, awakeable_id: str, result: Result) -> None:
        result = self._checked_result(f"the value resolving awakeable {awakeable_id}", result)
        self._command(COMPLETE_AWAKEABLE, {"awakeable_id": awakeable_id, "result": result_to_avro(result)})

    def sys_get_promise(self, name: str) -> int:
        return self._command(GET_PROMISE, {"name": name, "result": None})[0]

    def sys_peek_promise(self, name: str) -> int:
        return self._command(PEEK_PROMISE, {"name": name, "result": None})[0]

    def sys_complete_promise(self, name: str, completion: Result) -> int:
        completion = self._checked_result(f"the value resolving promise {name!r}", completion)
        entry = {"name": name, "completion": result_to_avro(completion), "result": None}
        return self._command(COMPLETE_PROMISE, entry)[0]

    def _checked_result(self, what: str, result: Result) -> Result:
        """A value to journal, refused (TerminalError) over the limit; a failure's message is cut instead."""
        if isinstance(result, Failure):
            return Failure(result.code, truncate_text(result.message))
        self._check_payload(what, len(result.value))
        return result

    def sys_cancel_invocation(self, invocation_id: str) -> None:
        self._command(CANCEL_INVOCATION, {"invocation_id": invocation_id})

    def sys_write_output(self, result: Result) -> None:
        """The handler's result; End follows once every earlier entry has been sent."""
        info = self._info()
        result = self._bounded(f"the output of {info.target}", result)
        self._command(OUTPUT, {"result": result_to_avro(result)})
        self._end_pending = True
        self._flush()

    def sys_suspend(self, waiting_on: list[int]) -> None:
        """End the attempt until one of `waiting_on` completes."""
        self._check_open()
        if not waiting_on:
            raise ValueError("suspension needs at least one entry to wait on")
        if any(i >= self._flush_from for i in waiting_on):
            raise ValueError(f"cannot suspend on entries not sent yet: {waiting_on}")
        self._out.append((SUSPENSION, {"waiting_on": sorted(waiting_on)}))
        self._closed = True

    def sys_fail(
        self,
        code: int,
        message: str,
        *,
        retryable: bool = True,
        related_entry_index: int | None = None,
        retry_after_ms: int | None = None,
        stacktrace: str | None = None,
    ) -> None:
        """End the attempt with an error; entries still buffered behind a run are dropped."""
        if self._closed:
            return
        self._out.append(
            (
                ERROR,
                {
                    "code": code,
                    "message": truncate_text(message),
                    "retryable": retryable,
                    "related_entry_index": related_entry_index,
                    "retry_after_ms": retry_after_ms,
                    "stacktrace": None if stacktrace is None else truncate_text(stacktrace),
                },
            )
        )
        self._slots.clear()
        self._closed = True


def _limit_of(value: Any) -> int:
    """The limit the processor sent; an older processor sends none: this process's default."""
    return int(value) if value is not None else max_payload_bytes()
