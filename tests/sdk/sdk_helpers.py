"""Helpers for SDK tests: protocol messages as the processor would send them, and a sans-socket driver."""

from __future__ import annotations

import asyncio
from typing import Any

from keystate._context import InvocationCore
from keystate._machine import Machine
from keystate._service import handler_of
from keystate.schemas.ids import InvocationId, positive_hash

NS = "keystate."
PARENT_ID = str(InvocationId.new(positive_hash("parent"), random=bytes(range(15))))


def target(service: str, handler: str, key: str | None = None, service_type: str = "SERVICE",
           handler_kind: str = "EXCLUSIVE") -> dict[str, Any]:
    return {"service": service, "handler": handler, "key": key, "service_type": service_type,
            "handler_kind": handler_kind}


def start(tgt: dict[str, Any], known_entries: int = 1, *, state: dict[str, bytes] | None = None,
          random_seed: int = 7, retry_count: int = 0, invocation_id: str = PARENT_ID,
          partial_state: bool = False) -> tuple[str, dict[str, Any]]:
    return (NS + "StartMessage", {
        "invocation_id": invocation_id, "attempt": retry_count, "target": tgt,
        "known_entries": known_entries,
        "state": [{"key": k, "value": v} for k, v in (state or {}).items()],
        "partial_state": partial_state, "random_seed": random_seed, "retry_count": retry_count,
        "duration_since_first_attempt_ms": 0,
    })


def entry(index: int, name: str, record: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    return (NS + "EntryMessage", {"index": index, "entry": {"entry": (NS + name, record)}})


def input_entry(argument: bytes = b"", headers: dict[str, str] | None = None) -> tuple[str, dict[str, Any]]:
    return entry(0, "InputEntry", {"argument": argument, "headers": headers or {}})


def value(data: bytes) -> tuple[str, dict[str, Any]]:
    return (NS + "Value", {"value": data})


def failure(code: int, message: str) -> tuple[str, dict[str, Any]]:
    return (NS + "Failure", {"code": code, "message": message})


def ack(index: int) -> tuple[str, dict[str, Any]]:
    return (NS + "AckMessage", {"index": index})


def completion(index: int, result: tuple[str, dict[str, Any]]) -> tuple[str, dict[str, Any]]:
    return (NS + "CompletionMessage", {"index": index, "result": result})


def entries_of(output: list[tuple[str, dict[str, Any]]]) -> list[tuple[int, str, dict[str, Any]]]:
    """(index, short entry name, entry) of the EntryMessages in an output."""
    return [
        (rec["index"], rec["entry"]["entry"][0].removeprefix(NS), rec["entry"]["entry"][1])
        for name, rec in output
        if name == NS + "EntryMessage"
    ]


def kinds(output: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """Short names of the messages, with the entry type for EntryMessages."""
    out = []
    for name, rec in output:
        short = name.removeprefix(NS)
        if short == "EntryMessage":
            short = f"{rec['index']}:{rec['entry']['entry'][0].removeprefix(NS)}"
        out.append(short)
    return out


class Driver:
    """Runs a decorated handler on an InvocationCore without any socket: the processor is the test."""

    def __init__(self, fn: Any, *, suspend_after: float = 10.0, clock: Any = None) -> None:
        self.machine = Machine()
        kwargs = {"clock": clock} if clock is not None else {}
        self.core = InvocationCore(self.machine, handler_of(fn), suspend_after=suspend_after, **kwargs)
        self.output: list[tuple[str, dict[str, Any]]] = []

    def feed(self, *messages: tuple[str, dict[str, Any]]) -> None:
        for name, record in messages:
            self.core.feed(name, record)

    async def settle(self, seconds: float = 0.05) -> list[tuple[str, dict[str, Any]]]:
        """Let the handler run for a while; returns what it emitted meanwhile."""
        await asyncio.sleep(seconds)
        new = self.machine.take_output()
        self.output += new
        return new

    async def finish(self, timeout: float = 3.0) -> list[tuple[str, dict[str, Any]]]:
        """Until the attempt ends; returns everything emitted in this attempt."""
        await asyncio.wait_for(self.core.finished.wait(), timeout)
        if self.core.handler_task is not None:
            await asyncio.wait_for(asyncio.gather(self.core.handler_task, return_exceptions=True), timeout)
        self.output += self.machine.take_output()
        return self.output
