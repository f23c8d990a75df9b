"""Virtual-object inbox stories: one exclusive handler per key at a time, in arrival order; shared ones run."""

from __future__ import annotations

from keystate.processors.state_machine import Config, Invoke, RetryPolicy

from .builders import (
    Story,
    attempt_failed,
    invoke,
    new_id,
    object_target,
    of_type,
    output,
    service_target,
    set_state,
    sleep,
    suspend,
    workflow_target,
)

ADD = object_target("Counter", "alice", "add")
GET = object_target("Counter", "alice", "get", shared=True)


def test_a_second_exclusive_invocation_on_a_locked_key_is_inboxed():
    story = Story()
    first = story.invoke(ADD)

    cmd_id = new_id(ADD)
    actions = story.when(invoke(ADD, cmd_id))

    assert actions == []
    assert story.status(cmd_id)["status"] == "INBOXED"
    assert story.status(cmd_id)["attempt"] == 0
    assert story.lock("Counter", "alice") == first
    assert story.inbox("Counter", "alice") == [cmd_id]


def test_the_inboxed_invocation_starts_when_the_first_completes():
    story = Story()
    first = story.invoke(ADD)
    second = story.invoke(ADD)
    story.step(first, set_state("count", b"1"))

    actions = story.step(first, output())

    [inv] = of_type(actions, Invoke)
    assert inv.invocation_id == second
    assert inv.attempt == 1
    assert inv.state == [{"key": "count", "value": b"1"}]  # sees the first one's writes
    assert story.status(second)["status"] == "INVOKED"
    assert story.lock("Counter", "alice") == second
    assert story.inbox("Counter", "alice") == []


def test_the_lock_is_freed_when_the_last_invocation_completes():
    story = Story()
    first = story.invoke(ADD)

    story.step(first, output())

    assert story.tables.objects.get(("Counter", "alice")) is None
    assert story.tables.snapshot()["inbox"] == {}


def test_exclusive_invocations_run_in_arrival_order():
    story = Story()
    ids = [story.invoke(ADD) for _ in range(5)]
    started = [ids[0]]

    for _ in range(4):
        running = started[-1]
        actions = story.step(running, output())
        [inv] = of_type(actions, Invoke)
        started.append(inv.invocation_id)
        assert [i for i in ids if story.status(i)["status"] == "INVOKED"] == [inv.invocation_id]

    assert started == ids
    story.step(ids[-1], output())
    assert story.tables.objects.get(("Counter", "alice")) is None


def test_a_suspended_or_backing_off_invocation_keeps_the_lock():
    story = Story(Config(retry_policy=RetryPolicy(max_attempts=None)))
    first = story.invoke(ADD)
    second = story.invoke(ADD)
    story.step(first, sleep(50_000))
    story.when(suspend(first, 1, 1))
    assert story.lock("Counter", "alice") == first

    story.fire(story.last_timer("SLEEP"))
    story.when(attempt_failed(first, 2))

    assert story.status(first)["status"] == "BACKING_OFF"
    assert story.lock("Counter", "alice") == first
    assert story.status(second)["status"] == "INBOXED"


def test_a_failed_exclusive_invocation_releases_the_key():
    story = Story(Config(retry_policy=RetryPolicy(max_attempts=1)))
    first = story.invoke(ADD)
    second = story.invoke(ADD)

    actions = story.when(attempt_failed(first, 1))

    assert [i.invocation_id for i in of_type(actions, Invoke)] == [second]
    assert story.lock("Counter", "alice") == second


def test_shared_handlers_start_at_once_on_a_locked_key():
    story = Story()
    writer = story.invoke(ADD)
    story.step(writer, set_state("count", b"5"))

    reader = story.invoke(GET)

    assert story.status(reader)["status"] == "INVOKED"
    assert story.last_invoke(reader).state == [{"key": "count", "value": b"5"}]
    assert story.lock("Counter", "alice") == writer
    story.step(reader, output())
    assert story.lock("Counter", "alice") == writer  # a shared handler never holds the lock


def test_other_keys_are_independent():
    story = Story()
    alice = story.invoke(ADD)
    bob = story.invoke(object_target("Counter", "bob", "add"))

    assert story.status(alice)["status"] == "INVOKED"
    assert story.status(bob)["status"] == "INVOKED"


def test_eager_state_is_sent_to_keyed_targets_only():
    story = Story()
    obj = story.invoke(ADD)
    svc = story.invoke(object_target("Counter", "carol", "add"))
    greeter = story.invoke(service_target())

    assert story.last_invoke(obj).state == []
    assert story.last_invoke(svc).state == []
    assert story.last_invoke(greeter).state is None


def test_a_workflow_runs_once_and_its_shared_handlers_run_beside_it():
    story = Story()
    run = story.invoke(workflow_target("Signup", "wf-1", "run"))
    again = story.invoke(workflow_target("Signup", "wf-1", "run"))
    query = story.invoke(workflow_target("Signup", "wf-1", "status", shared=True))

    assert story.status(run)["status"] == "INVOKED"
    assert story.status(again) is None  # the second run is the first one
    assert story.status(query)["status"] == "INVOKED"


def test_a_delayed_exclusive_invocation_queues_when_its_timer_fires():
    story = Story(now=1_000)
    delayed = story.invoke(ADD, execute_at_ms=10_000)
    running = story.invoke(ADD)
    assert story.lock("Counter", "alice") == running  # a scheduled invocation holds no place

    assert story.fire(story.last_timer("DELAYED_INVOKE")) == []

    assert story.status(delayed)["status"] == "INBOXED"
    assert story.inbox("Counter", "alice") == [delayed]
