"""Operator stories: PAUSED after the last attempt and resumed, and purging completed invocations."""

from __future__ import annotations

from keystate.processors.state_machine import Config, Invoke, RetryPolicy

from .builders import (
    Story,
    attempt_failed,
    cancel,
    kill,
    object_target,
    of_type,
    output,
    output_failure,
    purge,
    results,
    resume,
    service_target,
    sleep,
    suspend,
)

GREETER = service_target("Greeter", "greet")
ADD = object_target("Counter", "alice", "add")
PAUSE = Config(
    retry_policy=RetryPolicy(initial_interval_ms=100, max_attempts=2, on_max_attempts="PAUSE"),
    completion_retention_ms=60_000,
)


def paused(story: Story, target=GREETER) -> str:
    """An invocation whose two attempts failed under the PAUSE policy."""
    iid = story.invoke(target)
    story.when(attempt_failed(iid, 1, "boom 1"))
    story.fire(story.last_timer("RETRY"))
    story.when(attempt_failed(iid, 2, "boom 2"))
    return iid


# ---------------------------------------------------------------- pause and resume


def test_the_pause_policy_parks_the_invocation_after_its_last_attempt():
    story = Story(PAUSE)
    iid = story.invoke(GREETER)
    story.when(attempt_failed(iid, 1))
    story.fire(story.last_timer("RETRY"))

    actions = story.when(attempt_failed(iid, 2, "boom 2"))

    assert actions == []  # no result, no retry timer
    status = story.status(iid)
    assert status["status"] == "PAUSED"
    assert status["last_failure"] == {"code": 500, "message": "boom 2"}
    assert status["retry_count"] == 2
    assert story.timers(iid) == {}


def test_the_fail_policy_still_gives_up():
    story = Story(Config(retry_policy=RetryPolicy(initial_interval_ms=100, max_attempts=2)))
    iid = story.invoke(GREETER)
    story.when(attempt_failed(iid, 1))
    story.fire(story.last_timer("RETRY"))

    [result] = results(story.when(attempt_failed(iid, 2)))

    assert result.record["status"] == "FAILED"


def test_a_non_retryable_failure_fails_even_under_the_pause_policy():
    story = Story(PAUSE)
    iid = story.invoke(GREETER)

    [result] = results(story.when(attempt_failed(iid, 1, retryable=False)))

    assert result.record["status"] == "FAILED"


def test_a_paused_object_invocation_keeps_the_key():
    story = Story(PAUSE)
    iid = paused(story, ADD)
    queued = story.invoke(ADD)

    assert story.lock("Counter", "alice") == iid
    assert story.status(queued)["status"] == "INBOXED"


def test_resume_starts_a_new_attempt_with_fresh_retries():
    story = Story(PAUSE)
    iid = paused(story)

    actions = story.when(resume(iid))

    [inv] = of_type(actions, Invoke)
    assert inv.invocation_id == iid and inv.attempt == 3
    assert inv.retry_count == 0
    assert story.status(iid)["status"] == "INVOKED"
    # it gets its full budget again: one more failure backs off instead of pausing
    story.when(attempt_failed(iid, 3))
    assert story.status(iid)["status"] == "BACKING_OFF"


def test_resume_of_an_invocation_that_is_not_paused_does_nothing():
    story = Story(PAUSE)
    iid = story.invoke(GREETER)
    before = story.tables.snapshot()

    assert story.when(resume(iid)) == []
    assert story.tables.snapshot() == before
    assert story.when(resume(iid + "x")) == []


def test_a_paused_invocation_ignores_its_old_attempts_entries():
    story = Story(PAUSE)
    iid = paused(story)

    assert story.step(iid, output()) == []
    assert story.status(iid)["status"] == "PAUSED"


def test_cancel_of_a_paused_invocation_starts_an_attempt_that_meets_the_409():
    story = Story(PAUSE)
    iid = paused(story)

    [inv] = of_type(story.when(cancel(iid)), Invoke)

    assert inv.attempt == 3
    assert story.status(iid)["cancel_pending"] is True
    [result] = results(story.step(iid, output_failure(409, "cancelled")))
    assert result.record["status"] == "CANCELLED"


def test_kill_of_a_paused_invocation_ends_it_and_frees_the_key():
    story = Story(PAUSE)
    iid = paused(story, ADD)
    queued = story.invoke(ADD)

    actions = story.when(kill(iid))

    assert results(actions)[0].record["status"] == "KILLED"
    assert [i.invocation_id for i in of_type(actions, Invoke)] == [queued]


# ---------------------------------------------------------------- purge


def test_purge_of_a_completed_invocation_deletes_it_and_its_purge_timer():
    story = Story(Config(completion_retention_ms=60_000))
    iid = story.invoke(GREETER)
    story.step(iid, output())
    timer = story.last_timer("PURGE")

    assert story.when(purge(iid)) == []

    assert story.status(iid) is None
    assert story.timers(iid) == {}
    assert story.journal(iid) == []
    assert story.fire(timer) == []


def test_purge_of_a_running_invocation_does_nothing():
    story = Story()
    iid = story.invoke(ADD)
    story.step(iid, sleep(99_000))
    story.when(suspend(iid, 1, 1))

    for status_iid in (iid, story.invoke(ADD)):  # suspended, inboxed
        before = story.tables.snapshot()
        assert story.when(purge(status_iid)) == []
        assert story.tables.snapshot() == before


def test_purge_of_a_paused_invocation_does_nothing():
    story = Story(PAUSE)
    iid = paused(story)

    story.when(purge(iid))

    assert story.status(iid)["status"] == "PAUSED"


def test_purge_of_an_unknown_invocation_does_nothing():
    story = Story()
    iid = story.invoke(GREETER)
    story.step(iid, output())  # retention 1 day: still there
    story.when(purge(iid))

    assert story.when(purge(iid)) == []
