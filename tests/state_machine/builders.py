"""Builders for state machine stories: targets, ids, entries, commands, and a runner that collects actions."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any, TypeVar

from keystate.processors.state_machine import (
    Action,
    Config,
    Invoke,
    Publish,
    RegisterTimer,
    SendToPartition,
    Tables,
    apply,
)
from keystate.processors.state_machine.model import failure, value
from keystate.schemas.ids import InvocationId, InvocationTarget, PartitionKey, idempotency_partition_key

__all__ = [
    "Story",
    "append",
    "as_command",
    "attempt_failed",
    "awakeable",
    "awakeable_id",
    "call",
    "cancel",
    "cancel_invocation",
    "clear_all",
    "clear_state",
    "complete_awakeable",
    "complete_awakeable_entry",
    "complete_promise",
    "completion",
    "failure",
    "fired",
    "get_promise",
    "get_state",
    "idempotent_id",
    "input_entry",
    "invoke",
    "kill",
    "new_id",
    "object_target",
    "of_type",
    "output",
    "output_failure",
    "peek_promise",
    "purge",
    "query",
    "replies",
    "results",
    "resume",
    "run",
    "run_commands",
    "run_entry",
    "send",
    "sends",
    "set_state",
    "service_target",
    "sleep",
    "suspend",
    "timer_fired",
    "value",
    "workflow_target",
]

Command = tuple[str, dict[str, Any]]
Record = dict[str, Any]
A = TypeVar("A")

NS = "keystate."

# ---------------------------------------------------------------- targets and ids


def service_target(service: str = "Greeter", handler: str = "greet") -> Record:
    return {
        "service": service,
        "handler": handler,
        "key": None,
        "service_type": "SERVICE",
        "handler_kind": "EXCLUSIVE",
    }


def object_target(
    service: str = "Counter", key: str = "alice", handler: str = "add", *, shared: bool = False
) -> Record:
    return {
        "service": service,
        "handler": handler,
        "key": key,
        "service_type": "VIRTUAL_OBJECT",
        "handler_kind": "SHARED" if shared else "EXCLUSIVE",
    }


def workflow_target(
    service: str = "Signup", key: str = "wf-1", handler: str = "run", *, shared: bool = False
) -> Record:
    return {
        "service": service,
        "handler": handler,
        "key": key,
        "service_type": "WORKFLOW",
        "handler_kind": "SHARED" if shared else "WORKFLOW",
    }


_ids = itertools.count(1)


def new_id(target: Record, n: int | None = None) -> str:
    """An invocation id routed like `target`; deterministic (a counter, or `n`) so failures replay."""
    n = next(_ids) if n is None else n
    t = InvocationTarget(target["service"], target["handler"], target["key"])
    return str(InvocationId.for_target(t, random=n.to_bytes(15, "big")))


def idempotent_id(target: Record, idempotency_key: str, n: int | None = None) -> str:
    """A fresh id for a request with an idempotency key, routed as the ingress and SDK route it."""
    n = next(_ids) if n is None else n
    t = InvocationTarget(target["service"], target["handler"], target["key"])
    pk = idempotency_partition_key(t, idempotency_key)
    return str(InvocationId.new(PartitionKey(pk), random=n.to_bytes(15, "big")))


def awakeable_id(invocation_id: str, index: int) -> str:
    """The id ctx.awakeable hands out: `awk_<invocation id>_<entry index>`."""
    return f"awk_{invocation_id}_{index}"


# ---------------------------------------------------------------- journal entries (JournalRecord dicts)


def _entry(record_name: str, /, **fields: Any) -> Record:
    return {"entry": (NS + record_name, fields)}


def input_entry(argument: bytes = b"", headers: dict[str, str] | None = None) -> Record:
    return _entry("InputEntry", argument=argument, headers=headers or {})


def output(data: bytes = b"ok") -> Record:
    return _entry("OutputEntry", result=value(data))


def output_failure(code: int = 500, message: str = "terminal") -> Record:
    return _entry("OutputEntry", result=failure(code, message))


def run_entry(name: str = "step", data: bytes = b"1") -> Record:
    return _entry("RunEntry", name=name, result=value(data))


run = run_entry


def get_state(key: str, data: bytes | None = None) -> Record:
    return _entry("GetStateEntry", key=key, value=data)


def set_state(key: str, data: bytes) -> Record:
    return _entry("SetStateEntry", key=key, value=data)


def clear_state(key: str) -> Record:
    return _entry("ClearStateEntry", key=key)


def clear_all() -> Record:
    return _entry("ClearAllStateEntry")


def call(
    target: Record,
    invocation_id: str | None = None,
    argument: bytes = b"",
    *,
    headers: dict[str, str] | None = None,
    idempotency_key: str | None = None,
    result: Any = None,
) -> Record:
    return _entry(
        "CallEntry",
        target=target,
        argument=argument,
        headers=headers or {},
        idempotency_key=idempotency_key,
        invocation_id=invocation_id or new_id(target),
        result=result,
    )


def send(
    target: Record,
    invocation_id: str | None = None,
    argument: bytes = b"",
    *,
    invoke_at_ms: int | None = None,
    headers: dict[str, str] | None = None,
    idempotency_key: str | None = None,
) -> Record:
    return _entry(
        "SendEntry",
        target=target,
        argument=argument,
        headers=headers or {},
        idempotency_key=idempotency_key,
        invocation_id=invocation_id or new_id(target),
        invoke_at_ms=invoke_at_ms,
    )


def sleep(wake_up_at_ms: int, fired: bool = False, result: Any = None) -> Record:
    """A sleep; once fired it carries how it ended: an empty Value (the timer), or a Failure (a cancel)."""
    if fired and result is None:
        result = value(b"")
    return _entry("SleepEntry", wake_up_at_ms=wake_up_at_ms, fired=fired, result=result)


def awakeable(awakeable_id: str = "awk-1", result: Any = None) -> Record:
    return _entry("AwakeableEntry", awakeable_id=awakeable_id, result=result)


def complete_awakeable_entry(awakeable_id: str, result: Any) -> Record:
    """ctx.resolve_awakeable (a Value) or ctx.reject_awakeable (a Failure)."""
    return _entry("CompleteAwakeableEntry", awakeable_id=awakeable_id, result=result)


def get_promise(name: str, result: Any = None) -> Record:
    return _entry("GetPromiseEntry", name=name, result=result)


def peek_promise(name: str, result: Any = None) -> Record:
    return _entry("PeekPromiseEntry", name=name, result=result)


def complete_promise(name: str, completion: Any, result: Any = None) -> Record:
    return _entry("CompletePromiseEntry", name=name, completion=completion, result=result)


def cancel_invocation(invocation_id: str) -> Record:
    return _entry("CancelInvocationEntry", invocation_id=invocation_id)


# ---------------------------------------------------------------- commands


def invoke(
    target: Record,
    invocation_id: str | None = None,
    argument: bytes = b"",
    *,
    headers: dict[str, str] | None = None,
    execute_at_ms: int | None = None,
    caller: Record | None = None,
    reply_topic: str | None = None,
    idempotency_key: str | None = None,
    request_id: str | None = None,
    created_at_ms: int = 0,
    source: str = "ingress",
    correlation: Record | None = None,
) -> Command:
    if invocation_id is None:
        invocation_id = new_id(target) if idempotency_key is None else idempotent_id(target, idempotency_key)
    return (
        NS + "InvokeCommand",
        {
            "invocation_id": invocation_id,
            "target": target,
            "argument": argument,
            "headers": headers or {},
            "idempotency_key": idempotency_key,
            "caller": caller,
            "reply_topic": reply_topic,
            "execute_at_ms": execute_at_ms,
            "created_at_ms": created_at_ms,
            "source": source,
            "request_id": request_id,
            "correlation": correlation,
        },
    )


def append(invocation_id: str, attempt: int, index: int, entry: Record) -> Command:
    return (
        NS + "JournalAppendCommand",
        {"invocation_id": invocation_id, "attempt": attempt, "entry_index": index, "entry": entry},
    )


def suspend(invocation_id: str, attempt: int, *waiting_on: int) -> Command:
    return (NS + "SuspendCommand", {"invocation_id": invocation_id, "attempt": attempt, "waiting_on": list(waiting_on)})


def attempt_failed(
    invocation_id: str,
    attempt: int,
    message: str = "boom",
    *,
    code: int = 500,
    retryable: bool = True,
    retry_after_ms: int | None = None,
    entry_index: int | None = None,
) -> Command:
    return (
        NS + "AttemptFailedCommand",
        {
            "invocation_id": invocation_id,
            "attempt": attempt,
            "failure": {"code": code, "message": message},
            "retryable": retryable,
            "retry_after_ms": retry_after_ms,
            "entry_index": entry_index,
        },
    )


def completion(invocation_id: str, index: int, result: Any) -> Command:
    return (NS + "CompletionCommand", {"invocation_id": invocation_id, "entry_index": index, "result": result})


def timer_fired(
    invocation_id: str, kind: str, *, entry_index: int | None = None, attempt: int | None = None, fire_at_ms: int = 0
) -> Command:
    return (
        NS + "TimerFiredCommand",
        {
            "invocation_id": invocation_id,
            "timer_kind": kind,
            "entry_index": entry_index,
            "attempt": attempt,
            "fire_at_ms": fire_at_ms,
        },
    )


def fired(timer: RegisterTimer) -> Command:
    """The TimerFiredCommand the timer service appends when `timer` is due (built from its row)."""
    r = timer.record
    return timer_fired(
        r["invocation_id"],
        r["timer_kind"],
        entry_index=r["entry_index"],
        attempt=r["attempt"],
        fire_at_ms=r["fire_at_ms"],
    )


def cancel(invocation_id: str, reason: str = "operator") -> Command:
    return (NS + "CancelCommand", {"invocation_id": invocation_id, "reason": reason})


def kill(invocation_id: str, reason: str = "operator") -> Command:
    return (NS + "KillCommand", {"invocation_id": invocation_id, "reason": reason})


def resume(invocation_id: str) -> Command:
    return (NS + "ResumeCommand", {"invocation_id": invocation_id})


def purge(invocation_id: str) -> Command:
    return (NS + "PurgeCommand", {"invocation_id": invocation_id})


def complete_awakeable(awakeable_id: str, result: Any) -> Command:
    return (NS + "CompleteAwakeableCommand", {"awakeable_id": awakeable_id, "result": result})


def query(
    request_id: str = "q-1",
    *,
    invocation_id: str | None = None,
    idempotency: tuple[Record, str] | None = None,
    workflow: Record | None = None,
    reply_topic: str = "keystate.results",
    attach: bool = False,
) -> Command:
    """A QueryOutputCommand by exactly one of: invocation id, (target, idempotency key), workflow target."""
    ref = None if idempotency is None else {"target": idempotency[0], "idempotency_key": idempotency[1]}
    return (
        NS + "QueryOutputCommand",
        {
            "invocation_id": invocation_id,
            "idempotency": ref,
            "workflow": workflow,
            "request_id": request_id,
            "reply_topic": reply_topic,
            "attach": attach,
        },
    )


def as_command(action: SendToPartition) -> Command:
    """The command a SendToPartition puts on the log, as the receiving partition decodes it."""
    return (action.name, action.record)


# ---------------------------------------------------------------- running


def of_type(actions: Iterable[Action], cls: type[A]) -> list[A]:
    return [a for a in actions if isinstance(a, cls)]


def replies(actions: Iterable[Action]) -> list[Publish]:
    """The QueryOutputReply records published among `actions`."""
    return [a for a in actions if isinstance(a, Publish) and a.name == NS + "QueryOutputReply"]


def results(actions: Iterable[Action]) -> list[Publish]:
    """The InvocationResult records published to keystate.results (topic None) among `actions`."""
    return [a for a in actions if isinstance(a, Publish) and a.name == NS + "InvocationResult" and a.topic is None]


def sends(actions: Iterable[Action], name: str) -> list[SendToPartition]:
    """The SendToPartition actions carrying a command named `name` (short or full)."""
    full = name if name.startswith(NS) else NS + name
    return [a for a in actions if isinstance(a, SendToPartition) and a.name == full]


def run_commands(
    tables: Tables, commands: Iterable[Command], cfg: Config | None = None, *, start: int = 1_000, step: int = 1
) -> list[Action]:
    """Apply `commands` in order at start, start+step, ...; all their actions, in order."""
    cfg = cfg or Config()
    out: list[Action] = []
    for i, command in enumerate(commands):
        out.extend(apply(tables, command, start + i * step, cfg))
    return out


class Story:
    """Given some commands, when one more, then these tables and actions; `now` only moves forward."""

    def __init__(self, cfg: Config | None = None, now: int = 1_000) -> None:
        self.tables = Tables()
        self.cfg = cfg or Config()
        self.now = now
        self.actions: list[Action] = []  # every action so far, for pulling out timers and sends

    # -- commands
    def given(self, *commands: Command) -> Story:
        for command in commands:
            self.when(command)
        return self

    def when(self, command: Command, *, at: int | None = None) -> list[Action]:
        """Apply one command at `at` (default: one ms after the last); its actions."""
        self.now = self.now + 1 if at is None else max(self.now, at)
        actions = apply(self.tables, command, self.now, self.cfg)
        self.actions.extend(actions)
        return actions

    def invoke(self, target: Record, **kw: Any) -> str:
        """Invoke `target` (kwargs as for `invoke`); its invocation id."""
        command = invoke(target, **kw)
        self.when(command)
        return command[1]["invocation_id"]

    def step(self, iid: str, entry: Record) -> list[Action]:
        """The current attempt of `iid` appends `entry` at the next index."""
        s = self.status(iid)
        assert s is not None, f"{iid} has no status"
        return self.when(append(iid, s["attempt"], s["journal_length"], entry))

    def fire(self, timer: RegisterTimer) -> list[Action]:
        """The timer service fires `timer` when it is due."""
        return self.when(fired(timer), at=timer.fire_at_ms)

    def deliver(self, send: SendToPartition) -> list[Action]:
        """Apply a SendToPartition's command here (tests run every partition on one set of tables)."""
        return self.when(as_command(send))

    # -- tables
    def status(self, iid: str) -> Record | None:
        return self.tables.status.get((iid,))

    def attempt(self, iid: str) -> int:
        s = self.status(iid)
        assert s is not None
        return s["attempt"]

    def journal(self, iid: str) -> list[Record]:
        return [r for _, r in sorted(self.tables.journal.scan((iid,)), key=lambda kv: kv[0][1])]

    def state(self, service: str, key: str) -> dict[str, bytes]:
        return {k[2]: v["value"] for k, v in self.tables.state.scan((service, key))}

    def timers(self, iid: str) -> dict[tuple[Any, ...], Record]:
        return dict(self.tables.timers.scan((iid,)))

    def lock(self, service: str, key: str) -> str | None:
        obj = self.tables.objects.get((service, key))
        return None if obj is None else obj["locked_by"]

    def inbox(self, service: str, key: str) -> list[str]:
        rows = sorted(self.tables.inbox.scan((service, key)), key=lambda kv: kv[0][2])
        return [r["invocation_id"] for _, r in rows]

    # -- actions so far
    def last_timer(self, kind: str) -> RegisterTimer:
        timers = [a for a in self.actions if isinstance(a, RegisterTimer) and a.record["timer_kind"] == kind]
        assert timers, f"no {kind} timer was registered"
        return timers[-1]

    def last_invoke(self, iid: str) -> Invoke:
        invokes = [a for a in self.actions if isinstance(a, Invoke) and a.invocation_id == iid]
        assert invokes, f"{iid} was never invoked"
        return invokes[-1]
