"""A batch that started an attempt early writes and applies the entries it journaled meanwhile in its
own transaction (keystate.processors.early): a short invocation costs one transaction, not two."""

from __future__ import annotations

from typing import Any

from keystate.processors.runner import run_batch
from keystate.processors.state_machine import Invoke
from keystate.processors.step import StepResult
from keystate.schemas.ids import InvocationId
from keystate.server.commands import LogRecord, command_record

from driver_support import PARTITIONS, driver
from state_machine.builders import append, invoke, output, service_target


class _Fold:
    """An EarlyRun handing back fixed entries, recording what the runner asked."""

    def __init__(self, entries: list[LogRecord]) -> None:
        self.entries = entries
        self.events: list[str] = []
        self.trimmed: list[Any] = []

    def early(self, result: StepResult) -> Any:
        self.started = [a for _, a in result.effects if isinstance(a, Invoke)]
        return self

    def collect(self) -> list[LogRecord]:
        self.events.append("collect")
        return self.entries

    def unfold(self) -> None:
        self.events.append("unfold")

    def trim(self, result: StepResult) -> None:
        self.events.append("trim")
        self.trimmed = [a for _, a in result.effects if isinstance(a, Invoke)]
        result.effects = [(p, a) for p, a in result.effects if not isinstance(a, Invoke)]

    def settle(self, committed: bool) -> None:
        self.events.append(f"settle {committed}")


def _output_of(iid: str, target: dict[str, Any], index: int = 1) -> LogRecord:
    name, record = append(iid, 1, index, output(b'"Hello!"'))
    return command_record(name, record, PARTITIONS, target=target)


def test_a_short_invocation_completes_in_the_transaction_that_started_it() -> None:
    d = driver()
    target = service_target()
    name, cmd = invoke(target, argument=b'"you"', reply_topic="keystate.replies.test", request_id="r1")
    iid = cmd["invocation_id"]
    record = d.command(name, cmd, target=target)
    fold = _Fold([_output_of(iid, target)])
    log_before = len(d.log_commands())

    result, _ = run_batch(d.step, [record], d.now_ms, d.txn, None, fold.early)

    assert d.txn.begun == 1  # one transaction for the whole invocation
    assert fold.events == ["collect", "trim", "settle True"]
    assert [a.invocation_id for a in fold.trimmed] == [iid]  # started early: not started again
    assert result.offsets == {(record.topic, record.partition): record.offset + 1}  # the entry was not consumed
    logged = d.log_commands()[log_before:]
    assert [(n, c["invocation_id"], c["entry_index"]) for n, c in logged] == [("keystate.JournalAppendCommand", iid, 1)]
    status = d.tables(InvocationId.parse(iid).partition(PARTITIONS)).status.get((iid,))
    assert status is not None and status["status"] == "COMPLETED"
    replies = [d.codec.decode(r.value) for r in d.records("keystate.replies.test") if r.value]
    assert any(c.get("invocation_id") == iid for _, c in replies)


def test_the_folded_entry_read_back_from_the_log_changes_nothing() -> None:
    d = driver()
    target = service_target()
    name, cmd = invoke(target, argument=b'"you"')
    iid = cmd["invocation_id"]
    record = d.command(name, cmd, target=target)
    fold = _Fold([_output_of(iid, target)])
    run_batch(d.step, [record], d.now_ms, d.txn, None, fold.early)
    d.pipe([record])  # mark the consumed command read; the folded entry is next on the log
    partition = InvocationId.parse(iid).partition(PARTITIONS)
    rows_before = d.tables(partition).status.get((iid,))
    changelog_before = len(d.records(d.topics_names.changelog_topic))

    out = d.pipe_log()

    assert d.tables(partition).status.get((iid,)) == rows_before
    assert len(d.records(d.topics_names.changelog_topic)) == changelog_before
    assert out == []


def test_an_entry_the_batch_cannot_write_is_given_back_and_the_batch_commits_without_it() -> None:
    d = driver(max_record_bytes=2048)
    target = service_target()
    name, cmd = invoke(target, argument=b'"you"')
    iid = cmd["invocation_id"]
    record = d.command(name, cmd, target=target)
    name, entry = append(iid, 1, 1, output(b'"' + b"x" * 4096 + b'"'))
    too_big = command_record(name, entry, PARTITIONS, target=target)  # over this step's record limit
    fold = _Fold([too_big])
    log_before = len(d.log_commands())

    run_batch(d.step, [record], d.now_ms, d.txn, None, fold.early)

    assert fold.events == ["collect", "unfold", "trim", "settle True"]
    assert d.txn.begun == 1 and len(d.log_commands()) == log_before  # nothing of it in the transaction
    status = d.tables(InvocationId.parse(iid).partition(PARTITIONS)).status.get((iid,))
    assert status is not None and status["status"] == "INVOKED"  # it completes when the entry arrives the usual way
    assert d.dead_letters() == []


def test_a_folded_entry_kafka_refuses_reruns_the_batch_without_folding() -> None:
    d = driver()
    target = service_target()
    name, cmd = invoke(target, argument=b'"you"')
    iid = cmd["invocation_id"]
    record = d.command(name, cmd, target=target)
    fold = _Fold([_output_of(iid, target)])
    d.fail_records(predicate=lambda r: r.origin is not None and r.origin[0] == "<folded>", times=1)
    log_before = len(d.log_commands())

    run_batch(d.step, [record], d.now_ms, d.txn, None, fold.early)

    # The first run (folded) is refused and settled False; the second does not fold and commits.
    assert fold.events == ["collect", "trim", "settle False", "settle True"]
    assert len(d.log_commands()) == log_before  # the entry is the attempt's to append again
    status = d.tables(InvocationId.parse(iid).partition(PARTITIONS)).status.get((iid,))
    assert status is not None and status["status"] == "INVOKED"
    assert d.dead_letters() == []
