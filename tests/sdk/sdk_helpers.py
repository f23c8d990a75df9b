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
          partial_state: bool = False, duration_since_first_attempt_ms: int = 0) -> tuple[str, dict[str, Any]]:
    return (NS + "StartMessage", {
        "invocation_id": invocation_id, "attempt": retry_count, "target": tgt,
        "known_entries": known_entries,
        "state": [{"key": k, "value": v} for k, v in (state or {}).items()],
        "partial_state": partial_state, "random_seed": random_seed, "retry_count": retry_count,
        "duration_since_first_attempt_ms": duration_since_first_attempt_ms,
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

    def __init__(
        self, fn: Any, *, suspend_after: float = 10.0, clock: Any = None, request_response: bool = False
    ) -> None:
        self.machine = Machine()
        kwargs = {"clock": clock} if clock is not None else {}
        self.core = InvocationCore(
            self.machine, handler_of(fn), suspend_after=suspend_after, request_response=request_response, **kwargs
        )
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


class BatchProcessor:
    """Plays the processor over the request/response transport: keeps the journal, POSTs it, appends
    the new entries it gets back. The test completes entries by `complete` between invocations."""

    CONTENT_TYPE = "application/vnd.keystate.batch+avro"

    def __init__(self, client: Any, tgt: dict[str, Any], argument: bytes = b"", *,
                 invocation_id: str = PARENT_ID, state: dict[str, bytes] | None = None,
                 random_seed: int = 7) -> None:
        self.client = client
        self.random_seed = random_seed
        self.target = tgt
        self.invocation_id = invocation_id
        self.state = state
        self.journal: list[tuple[str, dict[str, Any]]] = [(NS + "InputEntry", {"argument": argument, "headers": {}})]
        self.completions: list[tuple[str, dict[str, Any]]] = []
        # A SleepEntry holds only `fired`: a failed (cancelled) sleep is re-sent as a completion.
        self.sleep_failures: dict[int, tuple[str, dict[str, Any]]] = {}
        self.attempts = 0

    def complete(self, index: int, result: tuple[str, dict[str, Any]], *, in_journal: bool = False) -> None:
        """Complete entry `index`: in the journaled entry itself, or as a CompletionMessage."""
        if in_journal:
            name, record = self.journal[index]
            if name == NS + "SleepEntry" and result[0] == NS + "Failure":
                self.sleep_failures[index] = result
            elif name == NS + "SleepEntry":
                self.journal[index] = (name, {**record, "fired": True})
            else:
                self.journal[index] = (name, {**record, "result": result})
        else:
            self.completions.append(completion(index, result))

    def batch(self) -> bytes:
        from keystate.schemas._codec import codec

        messages = [
            start(self.target, len(self.journal), invocation_id=self.invocation_id, state=self.state,
                  retry_count=self.attempts, random_seed=self.random_seed),
            *[entry(i, name.removeprefix(NS), record) for i, (name, record) in enumerate(self.journal)],
            *[completion(i, r) for i, r in sorted(self.sleep_failures.items())],
            *self.completions,
        ]
        return codec().encode(NS + "MessageBatch", {"messages": [codec().encode(n, r) for n, r in messages]})

    async def invoke(self) -> list[tuple[str, dict[str, Any]]]:
        """One attempt: POST the journal, journal the new entries, return every message answered."""
        from keystate.schemas._codec import codec

        t = self.target
        response = await self.client.post(
            f"/invoke/{t['service']}/{t['handler']}", data=self.batch(), headers={"content-type": self.CONTENT_TYPE}
        )
        assert response.status == 200, await response.text()
        assert response.content_type == self.CONTENT_TYPE
        name, batch = codec().decode(await response.read())
        assert name == NS + "MessageBatch"
        out = [codec().decode(item) for item in batch["messages"]]
        self.attempts += 1
        for index, short, record in entries_of(out):
            assert index == len(self.journal), f"entry {index} does not extend a journal of {len(self.journal)}"
            self.journal.append((NS + short, record))
        # Completions are folded into the journal, as the processor would on the next attempt.
        for _, rec in self.completions:
            self.complete(rec["index"], rec["result"], in_journal=True)
        self.completions = []
        assert out and out[-1][0] in (NS + "EndMessage", NS + "SuspensionMessage", NS + "ErrorMessage"), out
        assert all(n == NS + "EntryMessage" for n, _ in out[:-1]), out
        return out
