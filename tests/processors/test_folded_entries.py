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
from state_machine.builders import append, get_state, invoke, object_target, output, service_target, set_state


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

    def more(self, result: StepResult) -> list[LogRecord] | None:
        self.events.append("more")
        return None

    def close(self, folded: int) -> None:
        self.events.append(f"close {folded}")

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
    assert fold.events == ["collect", "more", "close 1", "trim", "settle True"]
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

    assert fold.events == ["collect", "close 0", "trim", "settle True"]
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
    assert fold.events == ["collect", "more", "close 1", "trim", "settle False", "settle True"]
    assert len(d.log_commands()) == log_before  # the entry is the attempt's to append again
    status = d.tables(InvocationId.parse(iid).partition(PARTITIONS)).status.get((iid,))
    assert status is not None and status["status"] == "INVOKED"
    assert d.dead_letters() == []


class _Chain(_Fold):
    """Folds the outputs of a queue of calls on one object: each run with entries starts the next call,
    whose entries (state read and write, output) it hands back in turn, up to `limit` calls."""

    def __init__(self, target: dict[str, Any], limit: int) -> None:
        super().__init__([])
        self.target = target
        self.limit = limit
        self.chained: list[str] = []
        self.stopped: list[str] = []

    def _entries_of(self, iid: str, before: int) -> list[LogRecord]:
        return [
            command_record(*append(iid, 1, 1, get_state("count", str(before).encode())), PARTITIONS, target=self.target),
            command_record(*append(iid, 1, 2, set_state("count", str(before + 1).encode())), PARTITIONS, target=self.target),
            command_record(*append(iid, 1, 3, output(str(before).encode())), PARTITIONS, target=self.target),
        ]

    def early(self, result: StepResult) -> Any:
        (first,) = [a for _, a in result.effects if isinstance(a, Invoke)]  # the object's first call runs
        self.started = [first]
        self.entries = self._entries_of(first.invocation_id, 0)
        return self

    def more(self, result: StepResult) -> list[LogRecord] | None:
        self.events.append("more")
        known = {a.invocation_id for a in self.started}
        new = [a for _, a in result.effects if isinstance(a, Invoke) and a.invocation_id not in known]
        if not new or len(self.started) >= self.limit:
            return None
        (nxt,) = new  # one at a time: the object's next call starts once the one before it ended
        self.started.append(nxt)
        self.chained.append(nxt.invocation_id)
        self.entries = self.entries + self._entries_of(nxt.invocation_id, len(self.started) - 1)
        return self.entries

    def trim(self, result: StepResult) -> None:
        self.events.append("trim")
        started = {a.invocation_id for a in self.started}
        self.trimmed = [a for _, a in result.effects if isinstance(a, Invoke) and a.invocation_id in started]
        result.effects = [(p, a) for p, a in result.effects if not (isinstance(a, Invoke) and a.invocation_id in started)]


def test_calls_queued_on_one_object_complete_one_after_another_in_one_transaction() -> None:
    d = driver()
    target = object_target("Counter", "k1", "add")
    commands = [invoke(target, argument=b"1", reply_topic="keystate.replies.test", request_id=f"r{n}") for n in range(4)]
    records = [d.command(name, cmd, target=target) for name, cmd in commands]
    iids = [cmd["invocation_id"] for _, cmd in commands]
    fold = _Chain(target, limit=3)

    result, _ = run_batch(d.step, records, d.now_ms, d.txn, None, fold.early)

    assert d.txn.begun == 1
    assert fold.chained == iids[1:3]  # each started by the run in which the one before it ended
    assert fold.events == ["collect", "more", "more", "more", "close 9", "trim", "settle True"]
    partition = InvocationId.parse(iids[0]).partition(PARTITIONS)
    statuses = [d.tables(partition).status.get((iid,)) for iid in iids]
    assert [s["status"] if s else None for s in statuses] == ["COMPLETED", "COMPLETED", "COMPLETED", "INVOKED"]
    # The fourth call started in this batch too (not early): its attempt is the batch's to release.
    released = [a.invocation_id for _, a in result.effects if isinstance(a, Invoke)]
    assert released == [iids[3]]
    replies = [d.codec.decode(r.value) for r in d.records("keystate.replies.test") if r.value]
    results = [(n, c["invocation_id"]) for n, c in replies if c.get("invocation_id") in iids and n.endswith("InvocationResult")]
    assert sorted(iid for _, iid in results) == sorted(iids[:3])


def test_a_chained_entry_the_batch_cannot_take_keeps_the_run_before_it() -> None:
    d = driver(max_record_bytes=2048)
    target = object_target("Counter", "k2", "add")
    commands = [invoke(target, argument=b"1") for _ in range(2)]
    records = [d.command(name, cmd, target=target) for name, cmd in commands]
    iids = [cmd["invocation_id"] for _, cmd in commands]
    fold = _Chain(target, limit=2)
    original = fold._entries_of

    def oversized_second(iid: str, before: int) -> list[LogRecord]:
        entries = original(iid, before)
        if iid == iids[1]:  # the second call's output is over this step's record limit
            entries[-1] = command_record(*append(iid, 1, 3, output(b"x" * 4096)), PARTITIONS, target=target)
        return entries

    fold._entries_of = oversized_second  # type: ignore[method-assign]

    result, _ = run_batch(d.step, records, d.now_ms, d.txn, None, fold.early)

    assert d.txn.begun == 1
    assert fold.events == ["collect", "more", "close 3", "trim", "settle True"]  # the first call's three entries
    partition = InvocationId.parse(iids[0]).partition(PARTITIONS)
    first, second = (d.tables(partition).status.get((iid,)) for iid in iids)
    assert first is not None and first["status"] == "COMPLETED"
    assert second is not None and second["status"] == "INVOKED"  # started; its entries come the usual way
    assert [a.invocation_id for a in fold.trimmed] == iids  # both started early: neither starts again
    assert not [a for _, a in result.effects if isinstance(a, Invoke)]
