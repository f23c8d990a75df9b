"""Rows that could hold two payloads: each keeps one, so every changelog record fits the payload limit."""

from __future__ import annotations

from keystate.processors.state_machine import Invoke
from keystate.schemas._codec import codec
from keystate.schemas.limits import MIN_PAYLOAD_BYTES, kafka_sizes

from .builders import (
    Story,
    call,
    completion,
    object_target,
    of_type,
    output,
    service_target,
    value,
)

LIMIT = 64 * 1024
RECORD = kafka_sizes(LIMIT).record_bytes
COUNTER = object_target("Counter", "alice", "add")
GREETER = service_target("Greeter", "greet")
BIG_HEADERS = {"x-big": "h" * (LIMIT - MIN_PAYLOAD_BYTES)}


def _encoded(name: str, record: dict) -> int:
    return len(codec().encode(name, record))


def test_a_completed_call_row_keeps_the_result_and_drops_the_argument():
    story = Story()
    caller = story.invoke(GREETER)
    [sent] = story.step(caller, call(COUNTER, argument=b"a" * LIMIT, headers={"h": "1"}))
    index = story.status(caller)["journal_length"] - 1

    story.when(completion(caller, index, value(b"r" * LIMIT)))

    row = story.tables.journal.get((caller, index))
    name, entry = row["entry"]
    assert name == "keystate.CallEntry"
    assert entry["result"] == value(b"r" * LIMIT)
    assert entry["argument"] == b"" and entry["headers"] == {}
    # What still matters on replay stays: the target and the callee's id.
    assert entry["target"] == COUNTER and entry["invocation_id"] == sent.invocation_id
    assert _encoded("keystate.JournalRecord", row) <= RECORD


def test_a_replayed_attempt_gets_the_completed_call_without_its_argument():
    story = Story()
    caller = story.invoke(GREETER)
    story.step(caller, call(COUNTER, argument=b"a" * LIMIT))
    story.when(completion(caller, 1, value(b"r")))
    status = story.status(caller)
    story.when(
        (
            "keystate.AttemptFailedCommand",
            {
                "invocation_id": caller,
                "attempt": status["attempt"],
                "failure": {"code": 500, "message": "crash"},
                "retryable": True,
                "retry_after_ms": 0,
                "entry_index": None,
            },
        )
    )
    retry = story.last_timer("RETRY")

    actions = story.fire(retry)

    [invoke] = of_type(actions, Invoke)
    name, entry = invoke.journal[1]["entry"]
    assert name == "keystate.CallEntry" and entry["argument"] == b"" and entry["result"] == value(b"r")


def test_a_pending_call_row_keeps_its_argument():
    story = Story()
    caller = story.invoke(GREETER)
    story.step(caller, call(COUNTER, argument=b"arg"))

    _, entry = story.tables.journal.get((caller, 1))["entry"]
    assert entry["argument"] == b"arg" and entry["result"] is None


def test_a_completed_status_row_keeps_the_result_and_drops_the_request_headers():
    story = Story()
    iid = story.invoke(GREETER, argument=b"in", headers=BIG_HEADERS)
    assert story.status(iid)["headers"] == BIG_HEADERS  # the running invocation keeps them

    story.step(iid, output(b"o" * LIMIT))

    status = story.status(iid)
    assert status["status"] == "COMPLETED"
    assert status["result"] == value(b"o" * LIMIT)
    assert status["headers"] == {}
    assert _encoded("keystate.InvocationStatus", status) <= RECORD
