"""Operators' commands through the batch step: state edits kept across a restore, refusals logged and answered."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from keystate.schemas.ids import ServiceId
from keystate.schemas.state import state_version

from driver_support import PARTITIONS, driver
from state_machine.builders import append, invoke, object_target, output, set_state

COUNTER = object_target("Counter", "alice", "add")
REPLIES = "admin.replies"


def _edit(d: Any, new_state: dict[str, bytes], expected: str | None = None, request_id: str = "e1") -> Any:
    record = {"service": "Counter", "key": "alice", "new_state": new_state, "expected_version": expected,
              "request_id": request_id, "reply_topic": REPLIES}
    return d.command("keystate.SetStateCommand", record, partition_key=ServiceId("Counter", "alice").partition_key,
                     key=b"Counter/alice")


def _replies(d: Any) -> list[dict[str, Any]]:
    return [d.codec.decode(r.value)[1] for r in d.records(REPLIES)]


def test_an_edit_waiting_in_the_inbox_survives_a_restore_and_runs_after_the_holder() -> None:
    d = driver()
    name, record = invoke(COUNTER)
    iid = record["invocation_id"]
    partition = ServiceId("Counter", "alice").partition_key % PARTITIONS
    d.pipe([d.command(name, record)])
    d.pipe([_edit(d, {"n": b"9"})])
    assert _replies(d) == []  # waiting behind the running invocation

    d.revoke(partition)
    d.assign(partition)  # restored from its store and the changelog
    d.pipe([d.command(*append(iid, 1, 1, set_state("n", b"1")))])
    d.pipe([d.command(*append(iid, 1, 2, output()))])

    [reply] = _replies(d)
    assert reply["status"] == "SUCCEEDED"
    assert reply["result"][1]["value"].decode() == state_version({"n": b"9"})
    assert d.tables(partition).state.get(("Counter", "alice", "n")) == {"value": b"9"}


def test_a_refused_edit_is_logged_with_the_key_and_both_versions(caplog: pytest.LogCaptureFixture) -> None:
    d = driver()
    d.pipe([_edit(d, {"n": b"1"}, request_id="e0")])
    stale = state_version({})

    with caplog.at_level(logging.WARNING, logger="keystate.processors.partition"):
        d.pipe([_edit(d, {"n": b"2"}, expected=stale)])

    [logged] = [r.getMessage() for r in caplog.records if "SetStateCommand" in r.getMessage()]
    assert "Counter/alice" in logged and stale in logged and state_version({"n": b"1"}) in logged
    assert [r["status"] for r in _replies(d)] == ["SUCCEEDED", "FAILED"]
