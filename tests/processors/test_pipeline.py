"""Pipelined group commit (runner.Pipeline): batch N+1 is applied over batch N's overlay while N's
transaction commits on another thread. What commits must be what one batch after another commits,
also when N's transaction fails after N+1 was applied over it."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from keystate.processors.driver import ProcessorDriver
from keystate.processors.errors import TransactionFailed
from keystate.processors.records import DeliveryFailure, OutRecord
from keystate.processors.runner import Pipeline, run_batch
from keystate.processors.state_machine import Invoke
from keystate.processors.step import StepResult
from keystate.schemas.ids import InvocationId

from driver_support import PARTITIONS, driver
from state_machine.builders import append, invoke, object_target, output, set_state

Command = tuple[str, dict[str, Any]]


def _script() -> list[list[Command]]:
    """Three batches on one object, each depending on the rows of the one before:
    X starts; Y queues behind X while X ends (so Y starts); Y ends."""
    _, x = invoke(object_target("Counter", "k"), argument=b"1")
    _, y = invoke(object_target("Counter", "k"), argument=b"2")
    xid, yid = str(x["invocation_id"]), str(y["invocation_id"])
    return [
        [invoke(object_target("Counter", "k"), xid, b"1")],
        [invoke(object_target("Counter", "k"), yid, b"2"), append(xid, 1, 1, set_state("count", b"1")), append(xid, 1, 2, output(b"1"))],
        [append(yid, 1, 1, set_state("count", b"3")), append(yid, 1, 2, output(b"3"))],
    ]


def _committed(d: ProcessorDriver) -> dict[str, list[tuple[int | None, bytes | None, bytes | None]]]:
    return {topic: [(r.partition, r.key, r.value) for r in records] for topic, records in sorted(d.committed.items())}


def _tables(d: ProcessorDriver) -> list[dict[str, dict[Any, Any]]]:
    return [d.tables(p).snapshot() for p in range(PARTITIONS)]


def _invokes(effects: list[StepResult]) -> list[str]:
    return [a.invocation_id for result in effects for _, a in result.effects if isinstance(a, Invoke)]


@pytest.fixture
def committer() -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(1) as pool:
        yield pool


def _one_after_another(script: list[list[Command]], setup: Callable[[ProcessorDriver], None] = lambda d: None) -> tuple[ProcessorDriver, list[StepResult]]:
    d = driver()
    setup(d)
    released: list[StepResult] = []
    for batch in script:
        records = [d.command(*c) for c in batch]
        run_batch(d.step, records, d.now_ms, d.txn, released.append)
    return d, released


def test_pipelined_batches_commit_and_release_what_batches_one_after_another_do(committer: ThreadPoolExecutor) -> None:
    script = _script()
    expected, expected_released = _one_after_another(script)

    d = driver()
    released: list[StepResult] = []
    pipeline = Pipeline(d.step, d.txn, committer.submit, released.append)
    for batch in script:
        pipeline.run([d.command(*c) for c in batch], d.now_ms)
        assert pipeline.busy  # its transaction commits while the next batch is applied
    pipeline.drain()

    assert not pipeline.busy and d.txn.begun == expected.txn.begun == 3
    assert _committed(d) == _committed(expected)
    assert _tables(d) == _tables(expected)
    assert _invokes(released) == _invokes(expected_released)  # X, then Y once X ended: in order
    assert len(_invokes(released)) == 2


def test_the_next_batch_reads_the_committing_batch_s_rows_and_the_store_takes_each_at_its_commit(
    committer: ThreadPoolExecutor,
) -> None:
    script = _script()
    d = driver()
    xid = str(script[0][0][1]["invocation_id"])
    p = InvocationId.parse(xid).partition(PARTITIONS)
    store = d.step.partitions[p].store
    gate: Future[None] = Future()
    seen: list[tuple[int, Any, Any]] = []

    def held_submit(fn: Callable[[], Any]) -> Future[Any]:
        def after_gate() -> Any:
            gate.result(timeout=10)
            return fn()

        return committer.submit(after_gate)

    def early(result: StepResult) -> None:
        # Called once a run is applied, before its batch waits for the one committing.
        status = d.tables(p).status.get((xid,))
        seen.append((d.txn.begun, status and status["status"], store.checkpoint()))
        if len(seen) == 2:
            gate.set_result(None)  # only now may N's transaction begin

    pipeline = Pipeline(d.step, d.txn, held_submit, early=early)
    pipeline.run([d.command(*c) for c in script[0]], d.now_ms)
    pipeline.run([d.command(*c) for c in script[1]], d.now_ms)

    # N+1 ended X over N's rows before N's transaction had even begun, and before the store had them.
    (_, _, before), (begun, status, checkpoint) = seen
    assert begun == 0 and status == "COMPLETED" and checkpoint == before
    assert store.checkpoint() != before  # N's rows reached the store when N committed
    pipeline.drain()
    rows = store.tables
    assert rows.status.get((xid,))["status"] == "COMPLETED" and not rows.status.below and not rows.status.overlay


def test_a_record_refused_in_the_committing_batch_reruns_both_batches_alone(committer: ThreadPoolExecutor) -> None:
    script = _script()
    xid = str(script[0][0][1]["invocation_id"])

    def refuse_x_start(d: ProcessorDriver) -> None:
        # X's first status row is refused once: the batch is re-run, X's command rejected.
        d.fail_records(topic=d.topics_names.changelog_topic, key=b'["status","' + xid.encode() + b'"]', times=1)

    expected, expected_released = _one_after_another(script, refuse_x_start)

    d = driver()
    refuse_x_start(d)
    released: list[StepResult] = []
    pipeline = Pipeline(d.step, d.txn, committer.submit, released.append)
    for batch in script:
        pipeline.run([d.command(*c) for c in batch], d.now_ms)
    pipeline.drain()

    assert d.txn.aborted == expected.txn.aborted == 1
    assert _committed(d) == _committed(expected)
    assert _tables(d) == _tables(expected)
    assert _invokes(released) == _invokes(expected_released)


class _FailingCommit:
    """The driver's transaction, whose next commit raises as a fatal Kafka error would."""

    def __init__(self, d: ProcessorDriver) -> None:
        self.txn = d.txn
        self.fail_next = False

    def begin(self) -> None:
        self.txn.begin()

    def produce(self, records: Sequence[OutRecord]) -> list[DeliveryFailure]:
        return self.txn.produce(records)

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> list[DeliveryFailure]:
        if self.fail_next:
            self.fail_next = False
            raise TransactionFailed("commit failed: the broker went away", fatal=True)
        return self.txn.commit(offsets)

    def abort(self) -> None:
        self.txn.abort()

    def delivered(self) -> Mapping[tuple[str, int], int]:
        return self.txn.delivered()


class _Early:
    """An early run that folds nothing; records how it was settled."""

    def __init__(self) -> None:
        self.settled: list[bool] = []

    def collect(self) -> list[Any]:
        return []

    def more(self, result: StepResult) -> None:
        return None

    def close(self, folded: int) -> None:
        pass

    def trim(self, result: StepResult) -> None:
        pass

    def settle(self, committed: bool) -> None:
        self.settled.append(committed)


def test_a_commit_that_raises_drops_both_batches_and_stops_the_next_batch_s_attempts(committer: ThreadPoolExecutor) -> None:
    script = _script()
    d = driver()
    before = _tables(d)
    txn = _FailingCommit(d)
    runs: list[_Early] = []

    def early(result: StepResult) -> _Early:
        runs.append(_Early())
        return runs[-1]

    pipeline = Pipeline(d.step, txn, committer.submit, early=early)
    first = [d.command(*c) for c in script[0]]
    txn.fail_next = True
    pipeline.run(first, d.now_ms)
    second = [d.command(*c) for c in script[1]]
    with pytest.raises(TransactionFailed):
        pipeline.run(second, d.now_ms)

    assert pipeline.unwritten == first + second  # the session reads both again (or rejoins)
    assert [r.settled for r in runs] == [[False], [False]]  # no attempt of either writes
    assert _tables(d) == before  # neither batch left a row in any overlay
    assert d.committed.get(d.topics_names.changelog_topic, []) == []
    assert not pipeline.busy


def test_a_batch_that_writes_nothing_waits_for_the_committing_one(committer: ThreadPoolExecutor) -> None:
    script = _script()
    d = driver()
    released: list[StepResult] = []
    pipeline = Pipeline(d.step, d.txn, committer.submit, released.append)
    pipeline.run([d.command(*c) for c in script[0]], d.now_ms)
    done = pipeline.run([], d.now_ms)  # nothing to apply: N settles first, then the empty batch

    assert [c.records for c in done] == [1, 0] and not pipeline.busy
    assert _invokes(released) == [str(script[0][0][1]["invocation_id"])]



def test_reads_and_scans_see_the_open_overlay_over_the_committing_one_and_an_abort_drops_both() -> None:
    d = driver()
    tables = d.tables(0)
    tables.state.put(("Counter", "k", "a"), {"value": b"1"})
    tables.state.put(("Counter", "k", "b"), {"value": b"1"})
    tables.drain()
    tables.hold()  # that batch commits; the next one writes over it
    tables.state.put(("Counter", "k", "a"), {"value": b"2"})
    tables.state.delete(("Counter", "k", "b"))

    assert dict(tables.state.scan(("Counter", "k"))) == {("Counter", "k", "a"): {"value": b"2"}}
    assert dict(tables.state.pending()) == {("Counter", "k", "a"): {"value": b"2"}, ("Counter", "k", "b"): None}
    tables.discard()  # the open batch re-runs: the committing one's rows stay
    assert dict(tables.state.scan(("Counter", "k"))) == {("Counter", "k", "a"): {"value": b"1"}, ("Counter", "k", "b"): {"value": b"1"}}
    tables.state.put(("Counter", "k", "a"), {"value": b"3"})
    tables.discard_all()  # the committing one aborted
    assert dict(tables.state.scan(("Counter", "k"))) == {}
