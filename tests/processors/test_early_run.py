"""`EarlyRun` as the runner drives it: attempts started for re-runs with folded entries join the
batch's gate, and one the committed run does not start is stopped before it can write."""

from __future__ import annotations

import time

from keystate.processors.early import NO_PARTITION, EarlyRun, GatedInvoke
from keystate.processors.state_machine import Invoke, StopInvocation
from keystate.processors.step import Effect, StepResult

from state_machine.builders import new_id, object_target


def _invoke(iid: str) -> Invoke:
    return Invoke(iid, 1, object_target(), [], [], None, 0, 1, int(time.time() * 1000))


def _run(*actions: Invoke) -> StepResult:
    return StepResult(effects=[(0, a) for a in actions])


def test_a_chained_attempt_joins_the_gate_and_one_the_kept_run_lacks_is_stopped() -> None:
    submitted: list[Effect] = []
    first, second = _invoke(new_id(object_target())), _invoke(new_id(object_target()))
    early = EarlyRun([(0, first)], submitted.extend, window_s=5.0)
    early.gate.blocked(first.invocation_id)  # it ended: the window is not used up
    early.collect()
    early.gate.blocked(second.invocation_id)  # ...nor by `second`, once started

    assert early.more(_run(first, second)) == []  # started `second`; nothing journaled yet
    started = [a.action.invocation_id for _, a in submitted if isinstance(a, GatedInvoke)]
    assert started == [first.invocation_id, second.invocation_id]
    assert all(a.gate is early.gate for _, a in submitted if isinstance(a, GatedInvoke))

    kept = _run(first)  # the batch fell back to a run in which `second` did not start
    early.trim(kept)

    assert kept.effects == []  # `first` runs already
    assert submitted[-1] == (NO_PARTITION, StopInvocation(second.invocation_id))


def test_nothing_is_chained_without_a_window() -> None:
    submitted: list[Effect] = []
    first, second = _invoke(new_id(object_target())), _invoke(new_id(object_target()))
    early = EarlyRun([(0, first)], submitted.extend, window_s=0.0)
    early.collect()

    assert early.more(_run(first, second)) is None
    kept = _run(first, second)
    early.trim(kept)
    assert [a.invocation_id for _, a in kept.effects if isinstance(a, Invoke)] == [second.invocation_id]  # the batch releases it
    assert not any(isinstance(a, StopInvocation) for _, a in submitted)
