"""Invocation lifecycle stories: start, complete, retain and purge, retry and give up, fencing, delays."""

from __future__ import annotations


from keystate.processors.state_machine import (
    Config,
    Invoke,
    Publish,
    RegisterTimer,
    RetryPolicy,
    StopInvocation,
    Tables,
    apply,
)

from .builders import (
    Story,
    append,
    attempt_failed,
    input_entry,
    invoke,
    object_target,
    of_type,
    output,
    output_failure,
    run_entry,
    service_target,
    sleep,
    suspend,
    timer_fired,
    value,
)

GREETER = service_target("Greeter", "greet")


def test_invoking_a_service_starts_attempt_1_with_the_input_entry():
    story = Story()
    cmd = invoke(GREETER, argument=b"bob", headers={"h": "v"})
    iid = cmd[1]["invocation_id"]

    actions = story.when(cmd)

    status = story.status(iid)
    assert status["status"] == "INVOKED"
    assert status["attempt"] == 1
    assert status["journal_length"] == 1
    assert actions == [
        Invoke(
            invocation_id=iid,
            attempt=1,
            target=GREETER,
            journal=[input_entry(b"bob", {"h": "v"})],
            state=None,  # services have no state
            deployment_id=None,
            retry_count=0,
            random_seed=actions[0].random_seed,
            first_attempt_at_ms=0,
        )
    ]
    assert story.journal(iid) == [input_entry(b"bob", {"h": "v"})]


def test_the_deployment_is_pinned_at_the_first_attempt():
    deployments = iter(["dp-1", "dp-2"])
    story = Story(Config(deployment_for=lambda service: next(deployments)))
    iid = story.invoke(GREETER)
    story.when(attempt_failed(iid, 1))

    story.fire(story.last_timer("RETRY"))

    assert story.last_invoke(iid).deployment_id == "dp-1"
    assert story.status(iid)["deployment_id"] == "dp-1"


def test_output_publishes_the_result_stops_the_attempt_and_keeps_the_status_for_retention():
    story = Story(Config(completion_retention_ms=60_000))
    iid = story.invoke(GREETER)
    story.step(iid, run_entry())

    actions = story.when(append(iid, 1, 2, output(b"hello")), at=5_000)

    assert StopInvocation(iid) in actions
    [published] = of_type(actions, Publish)
    assert published.topic is None  # keystate.results
    assert published.key == iid.encode()
    assert published.name == "keystate.InvocationResult"
    assert published.record == {
        "invocation_id": iid,
        "target": GREETER,
        "status": "SUCCEEDED",
        "output": b"hello",
        "failure": None,
        "idempotency_key": None,
        "completed_at_ms": 5_000,
        "correlation": None,
    }
    assert story.journal(iid) == []
    status = story.status(iid)
    assert status["status"] == "COMPLETED"
    assert status["completion_status"] == "SUCCEEDED"
    assert status["result"] == value(b"hello")
    [purge] = of_type(actions, RegisterTimer)
    assert purge.record["timer_kind"] == "PURGE"
    assert purge.fire_at_ms == 65_000
    assert list(story.timers(iid).values()) == [purge.record]


def test_a_failed_output_publishes_a_failed_result():
    story = Story()
    iid = story.invoke(GREETER)

    actions = story.step(iid, output_failure(409, "taken"))

    [published] = of_type(actions, Publish)
    assert published.record["status"] == "FAILED"
    assert published.record["output"] is None
    assert published.record["failure"] == {"code": 409, "message": "taken"}


def test_a_reply_topic_gets_the_result_too():
    story = Story()
    iid = story.invoke(GREETER, reply_topic="my.replies")

    actions = story.step(iid, output(b"x"))

    assert [p.topic for p in of_type(actions, Publish)] == [None, "my.replies"]


def test_retention_0_deletes_the_status_at_completion():
    story = Story(Config(completion_retention_ms=0))
    iid = story.invoke(GREETER)

    actions = story.step(iid, output(b"x"))

    assert story.status(iid) is None
    assert story.timers(iid) == {}
    assert of_type(actions, RegisterTimer) == []
    assert len(of_type(actions, Publish)) == 1


def test_the_purge_timer_deletes_the_status():
    story = Story()
    iid = story.invoke(GREETER)
    story.step(iid, output(b"x"))

    actions = story.fire(story.last_timer("PURGE"))

    assert actions == []
    assert story.status(iid) is None
    assert story.tables.snapshot()["timers"] == {}


def test_a_retryable_failure_backs_off_by_the_policy_delay():
    story = Story(Config(retry_policy=RetryPolicy(initial_interval_ms=250, factor=2.0)))
    iid = story.invoke(GREETER)

    actions = story.when(attempt_failed(iid, 1, "flaky"), at=10_000)

    status = story.status(iid)
    assert status["status"] == "BACKING_OFF"
    assert status["retry_count"] == 1
    assert status["last_failure"] == {"code": 500, "message": "flaky"}
    assert actions == [
        RegisterTimer(
            (iid, "RETRY", 1),
            10_250,
            {"invocation_id": iid, "timer_kind": "RETRY", "entry_index": None, "attempt": 1, "fire_at_ms": 10_250},
        )
    ]


def test_the_second_retry_waits_longer():
    story = Story(Config(retry_policy=RetryPolicy(initial_interval_ms=250, factor=2.0)))
    iid = story.invoke(GREETER)
    story.when(attempt_failed(iid, 1))
    story.fire(story.last_timer("RETRY"))

    [timer] = story.when(attempt_failed(iid, 2), at=20_000)

    assert timer.fire_at_ms == 20_500


def test_the_retry_timer_starts_attempt_2_with_the_whole_journal():
    story = Story()
    iid = story.invoke(GREETER, argument=b"in")
    story.step(iid, run_entry("a", b"1"))
    story.step(iid, run_entry("b", b"2"))
    story.when(attempt_failed(iid, 1))

    actions = story.fire(story.last_timer("RETRY"))

    [inv] = of_type(actions, Invoke)
    assert inv.attempt == 2
    assert inv.retry_count == 1
    assert inv.journal == [input_entry(b"in"), run_entry("a", b"1"), run_entry("b", b"2")]
    assert story.status(iid)["status"] == "INVOKED"
    assert story.timers(iid) == {}


def test_retry_after_overrides_the_policy_delay():
    story = Story(Config(retry_policy=RetryPolicy(initial_interval_ms=250)))
    iid = story.invoke(GREETER)

    [timer] = story.when(attempt_failed(iid, 1, retry_after_ms=7_000), at=10_000)

    assert timer.fire_at_ms == 17_000


def test_exhausted_attempts_fail_the_invocation():
    story = Story(Config(retry_policy=RetryPolicy(max_attempts=3)))
    iid = story.invoke(GREETER)
    for attempt in (1, 2):
        story.when(attempt_failed(iid, attempt, "down"))
        story.fire(story.last_timer("RETRY"))

    actions = story.when(attempt_failed(iid, 3, "down"))

    [published] = of_type(actions, Publish)
    assert published.record["status"] == "FAILED"
    assert published.record["failure"] == {"code": 500, "message": "gave up after 3 attempts: down"}
    assert StopInvocation(iid) in actions
    assert story.status(iid)["status"] == "COMPLETED"


def test_the_service_policy_wins_over_the_default():
    cfg = Config(
        retry_policy=RetryPolicy(max_attempts=None),
        service_retry_policy=lambda svc, handler: RetryPolicy(max_attempts=1) if svc == "Greeter" else None,
    )
    story = Story(cfg)
    iid = story.invoke(GREETER)

    actions = story.when(attempt_failed(iid, 1, "down"))

    assert of_type(actions, Publish)[0].record["failure"]["message"] == "gave up after 1 attempts: down"


def test_a_non_retryable_failure_fails_at_once():
    story = Story()
    iid = story.invoke(GREETER)

    actions = story.when(attempt_failed(iid, 1, "bad input", code=400, retryable=False))

    [published] = of_type(actions, Publish)
    assert published.record["failure"] == {"code": 400, "message": "bad input"}
    assert story.status(iid)["completion_status"] == "FAILED"
    assert [a.record["timer_kind"] for a in of_type(actions, RegisterTimer)] == ["PURGE"]


def test_entries_from_a_stale_attempt_are_ignored():
    story = Story()
    iid = story.invoke(GREETER)
    story.when(attempt_failed(iid, 1))
    story.fire(story.last_timer("RETRY"))
    before = story.tables.snapshot()

    for stale in (
        append(iid, 1, 1, run_entry()),
        append(iid, 1, 1, output(b"late")),
        suspend(iid, 1, 1),
        attempt_failed(iid, 1),
    ):
        assert story.when(stale) == []
    assert story.tables.snapshot() == before


def test_a_duplicate_entry_index_is_ignored():
    story = Story()
    iid = story.invoke(GREETER)
    story.step(iid, run_entry("a", b"1"))
    before = story.tables.snapshot()

    actions = story.when(append(iid, 1, 1, run_entry("a", b"other")))

    assert actions == []
    assert story.tables.snapshot() == before


def test_a_gap_in_entry_indexes_starts_a_new_attempt():
    story = Story()
    iid = story.invoke(GREETER)
    story.step(iid, run_entry("a"))

    actions = story.when(append(iid, 1, 3, run_entry("c")))  # index 2 went missing

    [inv] = of_type(actions, Invoke)
    assert inv.attempt == 2
    assert inv.journal == [input_entry(), run_entry("a")]
    assert story.status(iid)["journal_length"] == 2
    assert story.when(append(iid, 1, 2, run_entry("b"))) == []  # the old attempt is fenced


def test_a_delayed_invoke_waits_for_its_timer():
    story = Story(now=1_000)
    iid = story.invoke(GREETER, execute_at_ms=61_000)

    status = story.status(iid)
    assert status["status"] == "SCHEDULED"
    assert status["attempt"] == 0
    timer = story.last_timer("DELAYED_INVOKE")
    assert timer.fire_at_ms == 61_000
    assert of_type(story.actions, Invoke) == []

    actions = story.fire(timer)

    [inv] = of_type(actions, Invoke)
    assert inv.attempt == 1
    assert story.status(iid)["status"] == "INVOKED"
    assert story.timers(iid) == {}


def test_an_invoke_due_in_the_past_starts_at_once():
    story = Story(now=5_000)
    iid = story.invoke(GREETER, execute_at_ms=10)

    assert story.status(iid)["status"] == "INVOKED"


def test_a_duplicate_invoke_is_ignored():
    story = Story()
    cmd = invoke(GREETER, argument=b"first")
    story.given(cmd)
    before = story.tables.snapshot()

    assert story.when((cmd[0], {**cmd[1], "argument": b"second"})) == []
    assert story.tables.snapshot() == before


def test_a_redelivered_suspend_changes_nothing():
    story = Story()
    iid = story.invoke(GREETER)
    story.step(iid, sleep(90_000))
    story.when(suspend(iid, 1, 1))
    before = story.tables.snapshot()

    assert story.status(iid)["status"] == "SUSPENDED"
    assert story.status(iid)["waiting_on"] == [1]
    assert story.when(suspend(iid, 1, 1)) == []
    assert story.tables.snapshot() == before


def test_unknown_commands_change_nothing():
    tables = Tables()
    assert apply(tables, ("keystate.FromTheFutureCommand", {"x": 1}), 1, Config()) == []
    assert tables.drain() == []


# ---------------------------------------------------------------- found bugs


def test_a_retry_timer_without_attempt_is_idempotent():
    story = Story()
    iid = story.invoke(GREETER)
    command = timer_fired(iid, "RETRY", attempt=None)
    story.when(command)
    before = story.tables.snapshot()

    assert story.when(command) == []
    assert story.tables.snapshot() == before


def test_keyed_invocations_get_their_state_eagerly():
    story = Story()
    counter = object_target("Counter", "alice", "add")
    writer = story.invoke(counter)
    story.step(writer, output())

    iid = story.invoke(counter)

    assert story.last_invoke(iid).state == []


def test_a_retry_timer_names_the_attempt_that_failed_not_the_one_to_start():
    # TimerFiredCommand.avsc documents `attempt` as "Attempt to start"; the state machine fences on
    # the current (failed) attempt, so a timer written per that doc would never resume anything.
    story = Story()
    iid = story.invoke(GREETER)
    story.when(attempt_failed(iid, 1))

    assert story.when(timer_fired(iid, "RETRY", attempt=2)) == []
    assert story.status(iid)["status"] == "BACKING_OFF"
    assert of_type(story.when(timer_fired(iid, "RETRY", attempt=1)), Invoke)[0].attempt == 2
