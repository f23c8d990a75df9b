"""The sans-I/O machine, as stories: given a start and a journal, when the handler does X, then messages Y."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from keystate._machine import Failure, Machine, Value, child_invocation_id
from keystate.errors import AttemptEnded, ProtocolError
from keystate.schemas.ids import HandlerKind, InvocationTarget, ServiceType, positive_hash

from sdk_helpers import NS, PARENT_ID, ack, completion, entries_of, entry, input_entry, kinds, start, target, value

GREETER = target("Greeter", "greet")


def given(*messages: tuple[str, dict]) -> Machine:
    machine = Machine()
    for name, record in messages:
        machine.notify_input(name, record)
    return machine


def test_fresh_run_emits_input_run_output_in_order_and_the_run_counts_once_acked() -> None:
    m = given(start(GREETER), input_entry(b'"bob"'))
    assert m.ready and m.input == (b'"bob"', {})

    index, replayed = m.sys_run("charge")
    assert (index, replayed) == (1, None)
    assert m.take_output() == []  # nothing to send while the step runs

    m.sys_run_done(1, "charge", Value(b"42"))
    assert entries_of(m.take_output()) == [(1, "RunEntry", {"name": "charge", "result": value(b"42")})]
    assert m.result(1) is None  # not durable yet

    m.notify_input(*ack(1))
    assert m.take_notifications() == [1] and m.result(1) == Value(b"42")

    m.sys_write_output(Value(b'"done"'))
    assert kinds(m.take_output()) == ["2:OutputEntry", "EndMessage"]
    assert m.closed


def test_an_entry_issued_behind_a_run_in_flight_waits_for_it() -> None:
    m = given(start(target("Counter", "add", "a", "VIRTUAL_OBJECT")), input_entry())
    m.sys_run("slow")
    m.sys_set_state("k", b"1")
    assert m.take_output() == []
    m.sys_run_done(1, "slow", Value(b"1"))
    assert kinds(m.take_output()) == ["1:RunEntry", "2:SetStateEntry"]


def test_replayed_run_returns_the_journaled_result_and_emits_nothing() -> None:
    m = given(start(GREETER, 2), input_entry(), entry(1, "RunEntry", {"name": "charge", "result": value(b"7")}))
    assert m.sys_run("charge") == (1, Value(b"7"))
    assert m.take_output() == []


def test_journal_mismatch_fails_the_attempt_with_the_exact_message() -> None:
    m = given(
        start(target("Counter", "add", "a", "VIRTUAL_OBJECT"), 2),
        input_entry(),
        entry(1, "RunEntry", {"name": "charge", "result": value(b"7")}),
    )
    with pytest.raises(AttemptEnded):
        m.sys_set_state("count", b"1")
    [(name, error)] = m.take_output()
    assert name == NS + "ErrorMessage"
    assert error["message"] == "journal mismatch at entry 1: expected run 'charge', got set_state 'count'"
    assert (error["code"], error["retryable"], error["related_entry_index"]) == (570, True, 1)
    assert m.closed
    with pytest.raises(AttemptEnded):
        m.sys_run("anything")


def test_same_type_with_another_name_is_a_mismatch_too() -> None:
    m = given(start(GREETER, 2), input_entry(), entry(1, "RunEntry", {"name": "charge", "result": value(b"7")}))
    with pytest.raises(AttemptEnded):
        m.sys_run("refund")
    assert m.take_output()[0][1]["message"] == (
        "journal mismatch at entry 1: expected run 'charge', got run 'refund'"
    )


def test_call_waits_for_its_completion_and_suspension_names_it() -> None:
    m = given(start(GREETER), input_entry())
    callee = InvocationTarget("Greeter", "greet")
    index, callee_id = m.sys_call(callee, b'"x"')
    assert [(i, n) for i, n, _ in entries_of(m.take_output())] == [(1, "CallEntry")]
    assert m.result(index) is None

    m.sys_suspend([index])
    assert m.take_output() == [(NS + "SuspensionMessage", {"waiting_on": [1]})]
    assert m.closed


def test_completion_message_completes_a_call_and_a_redelivery_changes_nothing() -> None:
    m = given(start(GREETER), input_entry())
    index, _ = m.sys_call(InvocationTarget("Greeter", "greet"), b"")
    m.notify_input(*completion(index, value(b'"hi"')))
    m.notify_input(*completion(index, value(b'"other"')))
    assert m.take_notifications() == [index]
    assert m.result(index) == Value(b'"hi"')


def test_child_invocation_ids_are_derived_from_the_parent_and_index() -> None:
    keyed = InvocationTarget("Counter", "add", "alice", ServiceType.VIRTUAL_OBJECT, HandlerKind.EXCLUSIVE)
    a = child_invocation_id(PARENT_ID, 3, keyed)
    assert a == child_invocation_id(PARENT_ID, 3, keyed)
    assert a.partition_key == positive_hash("Counter/alice")
    assert a != child_invocation_id(PARENT_ID, 4, keyed)
    svc = child_invocation_id(PARENT_ID, 3, InvocationTarget("Greeter", "greet"))
    assert svc.random == a.random  # same parent and index, different routing
    assert 0 <= svc.partition_key < 2**31


def test_journaled_call_keeps_its_invocation_id_and_result() -> None:
    journaled = {
        "target": target("Greeter", "greet"), "argument": b"", "headers": {}, "idempotency_key": None,
        "invocation_id": "inv_journaled", "result": value(b'"hey"'),
    }
    m = given(start(GREETER, 2), input_entry(), entry(1, "CallEntry", journaled))
    index, callee = m.sys_call(InvocationTarget("Greeter", "greet"), b"")
    assert (index, callee, m.result(index)) == (1, "inv_journaled", Value(b'"hey"'))


def test_eager_state_is_read_journaled_and_written() -> None:
    m = given(start(target("Counter", "add", "a", "VIRTUAL_OBJECT"), state={"count": b"41"}), input_entry())
    assert m.sys_get_state("count") == b"41"
    m.sys_set_state("count", b"42")
    assert m.sys_state_keys() == ["count"]
    m.sys_clear_all_state()
    assert m.sys_get_state("count") is None
    assert [(n, e) for _, n, e in entries_of(m.take_output())] == [
        ("GetStateEntry", {"key": "count", "value": b"41"}),
        ("SetStateEntry", {"key": "count", "value": b"42"}),
        ("GetStateKeysEntry", {"keys": ["count"]}),
        ("ClearAllStateEntry", {}),
        ("GetStateEntry", {"key": "count", "value": None}),
    ]


def test_failed_attempt_sends_an_error_message_and_drops_buffered_entries() -> None:
    m = given(start(GREETER), input_entry())
    m.sys_run("step")
    m.sys_fail(500, "RuntimeError('x')", retryable=True, related_entry_index=1, retry_after_ms=250)
    [(name, error)] = m.take_output()
    assert name == NS + "ErrorMessage"
    assert (error["related_entry_index"], error["retry_after_ms"]) == (1, 250)


@pytest.mark.parametrize(
    "messages",
    [
        [("keystate.AckMessage", {"index": 0})],  # before start
        [start(GREETER, 0)],  # no input entry
        [start(GREETER), entry(0, "RunEntry", {"name": "x", "result": value(b"")})],  # entry 0 not input
        [start(GREETER), entry(1, "InputEntry", {"argument": b"", "headers": {}})],  # wrong index
        [start(GREETER), input_entry(), input_entry()],  # more than known
        [start(GREETER), input_entry(), completion(5, value(b""))],  # unknown entry
        [start(GREETER), input_entry(), completion(0, value(b""))],  # input takes no completion
        [start(GREETER), input_entry(), ack(3)],  # ack for an entry never sent
        [start(GREETER), input_entry(), ("keystate.EndMessage", {})],  # SDK-only message
    ],
)
def test_out_of_protocol_messages_raise_protocol_error(messages: list[tuple[str, dict]]) -> None:
    m = Machine()
    with pytest.raises(ProtocolError):
        for name, record in messages:
            m.notify_input(name, record)


def test_awakeable_id_routes_to_the_invocation_and_entry() -> None:
    m = given(start(GREETER), input_entry())
    index, awakeable_id = m.sys_awakeable()
    assert awakeable_id == f"awk_{PARENT_ID}_{index}"
    m.sys_complete_awakeable("awk_other_3", Failure(400, "no"))
    assert [n for _, n, _ in entries_of(m.take_output())] == ["AwakeableEntry", "CompleteAwakeableEntry"]


def test_the_machine_does_no_io() -> None:
    source = Path(__file__).resolve().parents[2] / "sdk" / "_machine.py"
    imported: set[str] = set()
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module.split(".")[0])
    assert not imported & {"asyncio", "aiohttp", "socket", "time", "random", "threading"}
