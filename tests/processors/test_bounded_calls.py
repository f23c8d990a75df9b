"""Client calls that never return (librdkafka#5456: send_offsets_to_transaction ignores its timeout
while it looks for the group coordinator after a broker restart) cost a session, not the process."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from keystate.processors.bounded import BoundedCaller, stuck_calls
from keystate.processors.errors import CallAbandoned, TransactionFailed
from keystate.processors.kafka_txn import KafkaTransaction
from keystate.processors.watchdog import GiveUp, Stalled, Watchdog


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _wait_until(predicate: Any, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return False


def test_a_call_that_outlives_its_bound_is_abandoned_and_the_caller_goes_on() -> None:
    release = threading.Event()
    caller = BoundedCaller("test producer", grace_s=0.1)
    assert caller.call("flush", 1.0, lambda: 7) == 7
    with pytest.raises(KeyError):
        caller.call("flush", 1.0, lambda: {}["missing"])  # the call's own error, as is
    with pytest.raises(CallAbandoned) as raised:
        caller.call("send_offsets_to_transaction", 0.2, release.wait)
    # The waiting thread is back: the session can replace the producer (fatal) instead of exiting.
    assert isinstance(raised.value, TransactionFailed) and raised.value.fatal
    assert raised.value.operation == "send_offsets_to_transaction"
    assert "send_offsets_to_transaction did not return within 0.3 s" in str(raised.value)
    assert "librdkafka#5456" in str(raised.value)
    assert caller.abandoned == "send_offsets_to_transaction"
    assert [c.operation for c in stuck_calls() if c.owner == "test producer"] == ["send_offsets_to_transaction"]
    # Nothing else may touch an abandoned client: refused without running.
    ran: list[str] = []
    with pytest.raises(CallAbandoned, match="abandoned while stuck in send_offsets_to_transaction"):
        caller.call("abort_transaction", 1.0, lambda: ran.append("abort"))
    assert ran == []
    release.set()  # the stuck call returns at last: its helper thread ends and forgets it
    assert _wait_until(lambda: not [c for c in stuck_calls() if c.owner == "test producer"])


class _Group:
    def consumer_group_metadata(self) -> object:
        return object()


class _StuckProducer:
    """Stands in for a transactional producer whose send_offsets_to_transaction never returns."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: list[str] = []

    def begin_transaction(self) -> None:
        self.calls.append("begin_transaction")

    def send_offsets_to_transaction(self, positions: Any, group: Any, timeout: float) -> None:
        self.calls.append("send_offsets_to_transaction")
        self.release.wait()

    def commit_transaction(self, timeout: float) -> None:
        self.calls.append("commit_transaction")

    def abort_transaction(self, timeout: float) -> None:
        self.calls.append("abort_transaction")


def test_a_commit_stuck_in_send_offsets_fails_fatally_and_leaves_the_producer_alone() -> None:
    producer = _StuckProducer()
    dog = Watchdog(stall_reset_s=60, stuck_grace_s=30)
    caller = BoundedCaller("stuck producer", grace_s=0.1)
    txn = KafkaTransaction(producer, {"log": _Group()}, dog, 0.2, caller)  # type: ignore[dict-item]
    txn.begin()
    try:
        with pytest.raises(CallAbandoned) as raised:
            txn.commit({("log", 0): 5})
        assert raised.value.fatal
        with pytest.raises(CallAbandoned):
            txn.abort()  # what run_batch or the session might try next: refused
        assert producer.calls == ["begin_transaction", "send_offsets_to_transaction"]
        assert dog.check() is None  # the loop thread is out of the call: nothing is stuck
    finally:
        producer.release.set()


def test_watchdog_gives_up_after_setbacks_in_a_row_and_a_commit_forgives_them() -> None:
    clock = Clock()
    dog = Watchdog(stall_reset_s=120, stuck_grace_s=30, max_setbacks=3, clock=clock)
    dog.setback("send_offsets_to_transaction")
    dog.setback("init_transactions")
    assert dog.check() is None
    dog.committed()  # a batch went through: the new clients worked
    dog.setback("send_offsets_to_transaction")
    dog.progress()  # idle polls soon after do not forgive
    dog.setback("send_offsets_to_transaction")
    assert dog.check() is None
    dog.setback("commit_transaction")
    verdict = dog.check()
    assert verdict == GiveUp("commit_transaction", 3)


def test_watchdog_forgets_old_setbacks_of_an_idle_loop_and_stalls_still_reset() -> None:
    clock = Clock()
    dog = Watchdog(stall_reset_s=120, stuck_grace_s=30, max_setbacks=2, clock=clock)
    dog.setback("send_offsets_to_transaction")
    clock.now += 121
    dog.progress()  # idle and healthy for longer than a stall: a later setback starts a new count
    dog.setback("send_offsets_to_transaction")
    assert dog.check() is None
    dog.work_seen()
    clock.now += 121
    assert isinstance(dog.check(), Stalled)
