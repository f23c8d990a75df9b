"""run_batch hands a batch's effects over as soon as its transaction committed, before the stores write."""

from __future__ import annotations

from typing import Any

import pytest

from keystate.processors.early import split_early
from keystate.processors.errors import BatchFailed
from keystate.processors.runner import run_batch
from keystate.processors.state_machine import Invoke, NotifyCompletion, StopInvocation
from keystate.processors.step import StepResult
from keystate.schemas.ids import InvocationId

from driver_support import PARTITIONS, driver
from state_machine.builders import invoke, service_target


def _invoke(d: Any) -> tuple[str, Any]:
    name, record = invoke(service_target(), argument=b"hi")
    return record["invocation_id"], d.command(name, record)


def test_effects_are_released_after_the_commit_and_before_the_store_write() -> None:
    d = driver()
    iid, record = _invoke(d)
    store = d.step.partitions[InvocationId.parse(iid).partition(PARTITIONS)].store
    seen: list[tuple[list[Any], Any, int]] = []

    def release(result: StepResult) -> None:
        seen.append((result.effects, store.checkpoint(), d.txn.begun))

    checkpoint_before = store.checkpoint()
    result, _ = run_batch(d.step, [record], d.now_ms, d.txn, release)

    ((effects, checkpoint_at_release, begun),) = seen
    assert effects is result.effects
    assert any(isinstance(a, Invoke) and a.invocation_id == iid for _, a in effects)
    assert begun == 1 and d.records(d.topics_names.changelog_topic)  # committed by then
    assert checkpoint_at_release == checkpoint_before  # the store had not written the batch yet
    assert store.checkpoint() != checkpoint_before  # and did right after


def test_nothing_is_released_when_the_transaction_fails() -> None:
    d = driver()
    d.fail_records(error="Broker: Not coordinator", record_fault=False, times=1)
    _, record = _invoke(d)
    released: list[StepResult] = []
    with pytest.raises(BatchFailed):
        run_batch(d.step, [record], d.now_ms, d.txn, released.append)
    assert released == []


# ---- attempts started while the batch commits (keystate.processors.early) ----------------------


class _Early:
    """Records what run_batch asks of the `early` hook's EarlyRun, in order with `release`."""

    def __init__(self, d: Any, folded: list[Any] | None = None) -> None:
        self.d = d
        self.folded = folded or []
        self.events: list[tuple[str, Any]] = []

    def early(self, result: StepResult) -> Any:
        self.events.append(("early", self.d.txn.begun))
        return self

    def collect(self) -> list[Any]:
        self.events.append(("collect", len(self.folded)))
        return self.folded

    def more(self, result: StepResult) -> list[Any] | None:
        self.events.append(("more", None))
        return None

    def close(self, folded: int) -> None:
        self.events.append(("close", folded))

    def trim(self, result: StepResult) -> None:
        self.events.append(("trim", None))

    def settle(self, committed: bool) -> None:
        self.events.append(("settle", committed))

    def release(self, result: StepResult) -> None:
        self.events.append(("release", None))


def test_early_work_starts_before_the_transaction_and_hears_of_the_commit_before_release() -> None:
    d = driver()
    _, record = _invoke(d)
    hooks = _Early(d)

    run_batch(d.step, [record], d.now_ms, d.txn, hooks.release, hooks.early)

    assert hooks.events == [("early", 0), ("collect", 0), ("close", 0), ("trim", None), ("settle", True), ("release", None)]


def test_early_work_hears_of_a_failed_transaction_and_nothing_is_released() -> None:
    d = driver()
    d.fail_records(error="Broker: Not coordinator", record_fault=False, times=1)
    _, record = _invoke(d)
    hooks = _Early(d)

    with pytest.raises(BatchFailed):
        run_batch(d.step, [record], d.now_ms, d.txn, hooks.release, hooks.early)

    assert hooks.events == [("early", 0), ("collect", 0), ("close", 0), ("trim", None), ("settle", False)]


def test_a_re_run_without_a_blamed_record_settles_each_run_once() -> None:
    d = driver()
    _, good = _invoke(d)
    name, bad_record = invoke(service_target(), argument=b"bad")
    bad = d.command(name, bad_record)
    # The first run's transaction refuses the result row of `bad`: it is isolated and the batch re-run.
    d.fail_records(predicate=lambda r: r.invocation_id == bad_record["invocation_id"], times=1)
    hooks = _Early(d)

    run_batch(d.step, [good, bad], d.now_ms, d.txn, hooks.release, hooks.early)

    assert [e for e in hooks.events if e[0] not in ("early", "collect", "close", "trim")] == [
        ("settle", False),
        ("settle", True),
        ("release", None),
    ]
    assert [e[0] for e in hooks.events].count("early") == 2


def test_only_invokes_no_other_effect_of_the_batch_concerns_start_early() -> None:
    target = {"service": "Greeter", "handler": "greet", "key": None}
    alone = Invoke("inv_a", 1, target, [], None, None, 0, 1, 0)
    restarted = Invoke("inv_b", 2, target, [], None, None, 0, 1, 0)
    stop_b = StopInvocation("inv_b")
    notify_c = NotifyCompletion("inv_c", 1, 3, {"value": b"x"})

    early, rest = split_early([(0, stop_b), (1, alone), (0, restarted), (2, notify_c)])

    assert early == [(1, alone)]
    assert rest == [(0, stop_b), (0, restarted), (2, notify_c)]
