"""Cancel and kill stories: a 409 at the handler's next wait, or an end at once, down the call tree."""

from __future__ import annotations


from keystate.processors.state_machine import (
    Config,
    Invoke,
    NotifyCompletion,
    RetryPolicy,
    SendToPartition,
    StopInvocation,
)
from keystate.schemas.ids import InvocationId

from .builders import (
    Story,
    attempt_failed,
    awakeable,
    awakeable_id,
    call,
    cancel,
    cancel_invocation,
    complete_awakeable,
    failure,
    invoke,
    kill,
    new_id,
    object_target,
    of_type,
    output,
    output_failure,
    results,
    run_entry,
    send,
    sends,
    service_target,
    set_state,
    sleep,
    suspend,
    value,
)

CALLER = service_target("Caller", "go")
GREETER = service_target("Greeter", "greet")
ADD = object_target("Counter", "alice", "add")
CANCELLED = failure(409, "cancelled")
KILLED = failure(409, "killed")


def with_running_child(story: Story, parent_target=CALLER) -> tuple[str, str]:
    """A parent that called Greeter (entry 1) and whose child runs; (parent, child)."""
    parent = story.invoke(parent_target)
    [sent] = story.step(parent, call(GREETER))
    story.deliver(sent)
    return parent, sent.invocation_id


def entry_result(story: Story, iid: str, index: int):
    return story.journal(iid)[index]["entry"][1].get("result")


# ---------------------------------------------------------------- cancel: blocked on a call


def test_cancel_of_an_invocation_blocked_on_a_call_cancels_the_child_and_fails_the_call_with_409():
    story = Story()
    parent, child = with_running_child(story)

    actions = story.when(cancel(parent, "operator"))

    assert actions == [
        SendToPartition(
            InvocationId.parse(child).partition_key,
            child.encode(),
            "keystate.CancelCommand",
            {"invocation_id": child, "reason": "operator"},
            child,
        ),
        NotifyCompletion(parent, 1, 1, CANCELLED),
    ]
    assert entry_result(story, parent, 1) == CANCELLED
    status = story.status(parent)
    assert (status["status"], status["cancel_requested"], status["cancel_pending"]) == ("INVOKED", True, False)


def test_the_child_cancelled_by_its_parent_meets_the_409_at_its_next_wait():
    story = Story()
    parent, child = with_running_child(story)
    [to_child] = sends(story.when(cancel(parent)), "CancelCommand")

    assert story.deliver(to_child) == []  # nothing pending in the child yet
    assert story.status(child)["cancel_pending"] is True

    [notify] = story.step(child, sleep(99_000))
    assert notify == NotifyCompletion(child, 1, 1, CANCELLED)


def test_cancel_of_an_invocation_suspended_on_a_call_starts_an_attempt_that_sees_the_409():
    story = Story()
    parent, _ = with_running_child(story)
    story.when(suspend(parent, 1, 1))

    actions = story.when(cancel(parent))

    [inv] = of_type(actions, Invoke)
    assert inv.attempt == 2
    assert inv.journal[1]["entry"][1]["result"] == CANCELLED
    assert story.status(parent)["status"] == "INVOKED"


def test_the_cancelled_childs_late_result_does_not_overwrite_the_409():
    story = Story()
    parent, child = with_running_child(story)
    story.when(cancel(parent))

    [late] = sends(story.step(child, output(b"too late")), "CompletionCommand")
    assert story.deliver(late) == []

    assert entry_result(story, parent, 1) == CANCELLED


def test_cancel_does_not_reach_one_way_sends():
    story = Story()
    parent = story.invoke(CALLER)
    [sent] = story.step(parent, send(GREETER))
    story.deliver(sent)

    actions = story.when(cancel(parent))

    assert sends(actions, "CancelCommand") == []
    assert story.status(sent.invocation_id)["cancel_requested"] is False


# ---------------------------------------------------------------- cancel: blocked on a sleep or an awakeable


def test_cancel_of_an_invocation_sleeping_in_its_attempt_notifies_the_409():
    story = Story()
    iid = story.invoke(GREETER)
    story.step(iid, sleep(99_000))

    actions = story.when(cancel(iid))

    assert actions == [NotifyCompletion(iid, 1, 1, CANCELLED)]


def test_cancel_of_an_invocation_suspended_on_a_sleep_reaches_the_handler_on_replay():
    story = Story()
    iid = story.invoke(GREETER)
    story.step(iid, sleep(99_000))
    story.when(suspend(iid, 1, 1))

    [inv] = of_type(story.when(cancel(iid)), Invoke)

    # The SDK replays a fired SleepEntry as its result (an empty Value when the timer fired).
    assert inv.journal[1] == sleep(99_000, fired=True, result=CANCELLED)


def test_a_retry_after_a_cancelled_sleep_still_sees_the_409():
    story = Story()
    iid = story.invoke(GREETER)
    story.step(iid, sleep(99_000))
    story.when(cancel(iid))  # the live attempt got the 409 ...
    story.when(attempt_failed(iid, 1))  # ... but crashed before acting on it

    [inv] = of_type(story.fire(story.last_timer("RETRY")), Invoke)

    assert inv.journal[1] == sleep(99_000, fired=True, result=CANCELLED)


def test_the_sleep_timer_of_a_cancelled_sleep_does_nothing_when_it_fires():
    story = Story()
    iid = story.invoke(GREETER)
    [timer] = story.step(iid, sleep(99_000))
    story.when(cancel(iid))

    assert story.fire(timer) == []


def test_cancel_of_an_invocation_suspended_on_an_awakeable_starts_an_attempt_with_the_409():
    story = Story()
    iid = story.invoke(GREETER)
    story.step(iid, awakeable(awakeable_id(iid, 1)))
    story.when(suspend(iid, 1, 1))

    [inv] = of_type(story.when(cancel(iid)), Invoke)

    assert inv.journal[1] == awakeable(awakeable_id(iid, 1), CANCELLED)


def test_an_awakeable_resolved_after_the_cancel_keeps_the_409():
    story = Story()
    iid = story.invoke(GREETER)
    story.step(iid, awakeable(awakeable_id(iid, 1)))
    story.when(cancel(iid))

    assert story.when(complete_awakeable(awakeable_id(iid, 1), value(b"late"))) == []
    assert entry_result(story, iid, 1) == CANCELLED


def test_cancel_completes_every_pending_entry():
    story = Story()
    iid = story.invoke(CALLER)
    story.step(iid, call(GREETER))
    story.step(iid, awakeable(awakeable_id(iid, 2)))
    story.step(iid, run_entry("done", b"1"))

    actions = story.when(cancel(iid))

    assert of_type(actions, NotifyCompletion) == [
        NotifyCompletion(iid, 1, 1, CANCELLED),
        NotifyCompletion(iid, 1, 2, CANCELLED),
    ]
    assert story.status(iid)["cancel_pending"] is False


# ---------------------------------------------------------------- cancel: nothing pending


def test_cancel_with_nothing_pending_waits_for_the_next_waiting_entry():
    story = Story()
    iid = story.invoke(ADD)

    assert story.when(cancel(iid)) == []
    assert story.status(iid)["cancel_pending"] is True

    assert story.step(iid, run_entry("a", b"1")) == []  # not a wait: runs normally
    assert story.step(iid, set_state("x", b"1")) == []
    assert story.status(iid)["cancel_pending"] is True


def test_the_pending_cancel_completes_the_next_call_with_409_without_invoking_the_callee():
    story = Story()
    iid = story.invoke(CALLER)
    story.when(cancel(iid))

    actions = story.step(iid, call(GREETER))

    assert actions == [NotifyCompletion(iid, 1, 1, CANCELLED)]
    assert story.status(iid)["cancel_pending"] is False


def test_the_cancel_is_delivered_once_so_a_compensating_call_runs_normally():
    story = Story()
    iid = story.invoke(CALLER)
    story.when(cancel(iid))
    story.step(iid, sleep(99_000))  # gets the 409

    compensation = new_id(GREETER)
    actions = story.step(iid, call(GREETER, compensation))

    [invoke_child] = sends(actions, "InvokeCommand")
    assert invoke_child.invocation_id == compensation
    assert of_type(actions, NotifyCompletion) == []
    story.deliver(invoke_child)
    [answer] = sends(story.step(compensation, output(b"undone")), "CompletionCommand")
    assert story.deliver(answer) == [NotifyCompletion(iid, 1, 2, value(b"undone"))]


def test_the_pending_cancel_reaches_a_backing_off_invocation_after_its_retry():
    story = Story()
    iid = story.invoke(GREETER)
    story.when(attempt_failed(iid, 1))
    story.when(cancel(iid))

    story.fire(story.last_timer("RETRY"))

    assert story.step(iid, sleep(99_000)) == [NotifyCompletion(iid, 2, 1, CANCELLED)]


# ---------------------------------------------------------------- how a cancelled invocation ends


def test_an_invocation_that_outputs_409_after_a_cancel_ends_cancelled():
    story = Story()
    parent, _ = with_running_child(story)
    story.when(cancel(parent))

    actions = story.step(parent, output_failure(409, "cancelled"))

    [result] = results(actions)
    assert result.record["status"] == "CANCELLED"
    assert result.record["failure"] == {"code": 409, "message": "cancelled"}
    assert story.status(parent)["completion_status"] == "CANCELLED"


def test_an_invocation_that_compensates_and_succeeds_after_a_cancel_ends_succeeded():
    story = Story()
    iid = story.invoke(GREETER)
    story.when(cancel(iid))

    [result] = results(story.step(iid, output(b"handled")))

    assert result.record["status"] == "SUCCEEDED"


def test_an_invocation_that_outputs_409_without_a_cancel_ends_failed():
    story = Story()
    iid = story.invoke(GREETER)

    [result] = results(story.step(iid, output_failure(409, "conflict")))

    assert result.record["status"] == "FAILED"


def test_the_caller_of_a_cancelled_invocation_gets_the_409():
    story = Story()
    parent, child = with_running_child(story)
    story.when(cancel(child))

    [answer] = sends(story.step(child, output_failure(409, "cancelled")), "CompletionCommand")

    assert answer.record == {"invocation_id": parent, "entry_index": 1, "result": CANCELLED}


def test_a_cancel_invocation_entry_sends_a_cancel_command_to_the_target():
    story = Story()
    iid = story.invoke(CALLER)
    victim = new_id(GREETER)

    [sent] = story.step(iid, cancel_invocation(victim))

    assert sent == SendToPartition(
        InvocationId.parse(victim).partition_key,
        victim.encode(),
        "keystate.CancelCommand",
        {"invocation_id": victim, "reason": f"cancelled by {iid}"},
        victim,
    )


def test_a_redelivered_cancel_does_not_cancel_the_compensation():
    story = Story()
    parent, _ = with_running_child(story)
    story.when(cancel(parent))  # the call got its 409: the handler compensates

    story.when(cancel(parent))  # the same command again (a producer retry)

    assert sends(story.step(parent, call(GREETER)), "InvokeCommand") != []


def test_a_redelivered_cancel_with_nothing_pending_writes_nothing():
    story = Story()
    iid = story.invoke(GREETER)
    story.when(cancel(iid))
    story.tables.drain()

    story.when(cancel(iid))

    assert story.tables.drain() == []


# ---------------------------------------------------------------- cancel before it ran


def test_cancel_of_an_inboxed_invocation_ends_it_and_takes_it_out_of_the_inbox():
    story = Story()
    running = story.invoke(ADD)
    queued = story.invoke(ADD)

    actions = story.when(cancel(queued))

    [result] = results(actions)
    assert result.record["status"] == "CANCELLED"
    assert result.record["failure"] == {"code": 409, "message": "cancelled"}
    assert of_type(actions, Invoke) == []
    assert story.inbox("Counter", "alice") == []
    assert story.lock("Counter", "alice") == running


def test_after_an_inboxed_invocation_is_cancelled_the_lock_owners_completion_starts_the_next_one():
    story = Story()
    running = story.invoke(ADD)
    cancelled = story.invoke(ADD)
    after = story.invoke(ADD)
    story.when(cancel(cancelled))

    [started] = of_type(story.step(running, output()), Invoke)

    assert started.invocation_id == after
    assert story.lock("Counter", "alice") == after
    story.step(after, output())
    assert story.tables.objects.get(("Counter", "alice")) is None  # no hole wedges the key
    assert story.status(story.invoke(ADD))["status"] == "INVOKED"


def test_when_the_only_inboxed_invocation_is_cancelled_the_key_frees_on_completion():
    story = Story()
    running = story.invoke(ADD)
    story.when(cancel(story.invoke(ADD)))

    story.step(running, output())

    assert story.tables.objects.get(("Counter", "alice")) is None
    assert story.status(story.invoke(ADD))["status"] == "INVOKED"


def test_cancel_of_a_scheduled_invocation_ends_it_and_deletes_its_timer():
    story = Story(Config(completion_retention_ms=60_000))
    iid = story.invoke(GREETER, execute_at_ms=50_000)
    delayed = story.last_timer("DELAYED_INVOKE")

    actions = story.when(cancel(iid))

    [result] = results(actions)
    assert result.record["status"] == "CANCELLED"
    assert (iid, "DELAYED_INVOKE", -1) not in story.timers(iid)
    assert story.fire(delayed) == []
    assert story.status(iid)["status"] == "COMPLETED"
    assert story.status(iid)["completion_status"] == "CANCELLED"


def test_cancel_of_a_scheduled_exclusive_invocation_leaves_the_key_alone():
    story = Story()
    scheduled = story.invoke(ADD, execute_at_ms=50_000)
    running = story.invoke(ADD)

    story.when(cancel(scheduled))

    assert story.lock("Counter", "alice") == running


def test_cancel_and_kill_of_finished_or_unknown_invocations_do_nothing():
    story = Story(Config(completion_retention_ms=60_000))
    done = story.invoke(GREETER)
    story.step(done, output())
    before = story.tables.snapshot()

    for command in (cancel(done), kill(done), cancel(new_id(GREETER)), kill(new_id(GREETER))):
        assert story.when(command) == []
    assert story.tables.snapshot() == before


# ---------------------------------------------------------------- kill


def test_kill_of_a_running_object_invocation_ends_it_killed_and_starts_the_next():
    story = Story()
    running = story.invoke(ADD)
    queued = story.invoke(ADD)

    actions = story.when(kill(running, "stuck"))

    [result] = results(actions)
    assert result.record["status"] == "KILLED"
    assert result.record["failure"] == {"code": 409, "message": "killed"}
    assert StopInvocation(running) in actions
    [started] = of_type(actions, Invoke)
    assert started.invocation_id == queued
    assert story.lock("Counter", "alice") == queued
    assert story.status(running)["completion_status"] == "KILLED"


def test_kill_sends_kill_commands_to_the_children_it_waits_on():
    story = Story()
    parent, child = with_running_child(story, ADD)

    actions = story.when(kill(parent, "stuck"))

    assert sends(actions, "KillCommand") == [
        SendToPartition(
            InvocationId.parse(child).partition_key,
            child.encode(),
            "keystate.KillCommand",
            {"invocation_id": child, "reason": "stuck"},
            child,
        )
    ]
    [result] = results(story.deliver(sends(actions, "KillCommand")[0]))
    assert result.record["status"] == "KILLED"


def test_the_caller_of_a_killed_invocation_gets_409():
    story = Story()
    parent, child = with_running_child(story)

    [answer] = sends(story.when(kill(child)), "CompletionCommand")

    assert answer.record == {"invocation_id": parent, "entry_index": 1, "result": KILLED}


def test_kill_of_a_suspended_invocation_deletes_its_timers():
    story = Story()
    iid = story.invoke(GREETER)
    [timer] = story.step(iid, sleep(99_000))
    story.when(suspend(iid, 1, 1))

    story.when(kill(iid))

    assert story.timers(iid) == {(iid, "PURGE", -1): story.last_timer("PURGE").record}
    assert story.fire(timer) == []


def test_kill_of_an_inboxed_invocation_takes_it_out_of_the_inbox():
    story = Story()
    running = story.invoke(ADD)
    queued = story.invoke(ADD)

    [result] = results(story.when(kill(queued)))

    assert result.record["status"] == "KILLED"
    assert story.inbox("Counter", "alice") == []
    assert story.lock("Counter", "alice") == running


def test_entries_of_a_killed_invocation_are_ignored():
    story = Story()
    iid = story.invoke(GREETER)
    story.when(kill(iid))

    assert story.when(invoke(GREETER, iid)) == []
    assert story.step(iid, output()) == []


def test_kill_of_a_backing_off_invocation_ends_it():
    story = Story(Config(retry_policy=RetryPolicy(max_attempts=5)))
    iid = story.invoke(ADD)
    story.when(attempt_failed(iid, 1))

    [result] = results(story.when(kill(iid)))

    assert result.record["status"] == "KILLED"
    assert story.timers(iid) == {(iid, "PURGE", -1): story.last_timer("PURGE").record}
    assert story.tables.objects.get(("Counter", "alice")) is None
