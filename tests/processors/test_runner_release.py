"""run_batch hands a batch's effects over as soon as its transaction committed, before the stores write."""

from __future__ import annotations

from typing import Any

import pytest

from keystate.processors.errors import BatchFailed
from keystate.processors.runner import run_batch
from keystate.processors.state_machine import Invoke
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
