"""Journal entry stories: state writes, calls and their results, completions, suspension, sleeps, sends."""

from __future__ import annotations


from keystate.processors.state_machine import (
    Invoke,
    NotifyCompletion,
    Publish,
    RegisterTimer,
    SendToPartition,
    StopInvocation,
)
from keystate.schemas.ids import InvocationId, PartitionKey, positive_hash

from .builders import (
    Story,
    append,
    attempt_failed,
    awakeable,
    call,
    clear_all,
    clear_state,
    completion,
    failure,
    get_state,
    input_entry,
    new_id,
    object_target,
    of_type,
    output,
    output_failure,
    run_entry,
    send,
    service_target,
    set_state,
    sleep,
    suspend,
    value,
)

COUNTER = object_target("Counter", "alice", "add")
COUNTER_GET = object_target("Counter", "alice", "get", shared=True)
GREETER = service_target("Greeter", "greet")


def test_set_state_writes_the_state_table():
    story = Story()
    iid = story.invoke(COUNTER)

    actions = story.step(iid, set_state("count", b"1"))

    assert actions == []
    assert story.state("Counter", "alice") == {"count": b"1"}
    assert story.tables.state.get(("Counter", "alice", "count")) == {"value": b"1"}


def test_state_belongs_to_its_key():
    story = Story()
    iid = story.invoke(object_target("Counter", "bob", "add"))

    story.step(iid, set_state("count", b"7"))

    assert story.state("Counter", "bob") == {"count": b"7"}
    assert story.state("Counter", "alice") == {}


def test_clear_state_deletes_one_key():
    story = Story()
    iid = story.invoke(COUNTER)
    story.step(iid, set_state("a", b"1"))
    story.step(iid, set_state("b", b"2"))

    story.step(iid, clear_state("a"))

    assert story.state("Counter", "alice") == {"b": b"2"}


def test_clear_all_deletes_every_key_of_the_object_only():
    story = Story()
    iid = story.invoke(COUNTER)
    other = story.invoke(object_target("Counter", "bob", "add"))
    story.step(other, set_state("a", b"bob"))
    story.step(iid, set_state("a", b"1"))
    story.step(iid, set_state("b", b"2"))

    story.step(iid, clear_all())

    assert story.state("Counter", "alice") == {}
    assert story.state("Counter", "bob") == {"a": b"bob"}


def test_state_survives_the_invocation_and_is_sent_eagerly_to_the_next():
    story = Story()
    first = story.invoke(COUNTER)
    story.step(first, set_state("count", b"1"))
    story.step(first, output())

    second = story.invoke(COUNTER)
    reader = story.invoke(COUNTER_GET)

    assert story.last_invoke(second).state == [{"key": "count", "value": b"1"}]
    assert story.last_invoke(reader).state == [{"key": "count", "value": b"1"}]


def test_a_shared_handler_writing_state_fails_the_invocation():
    story = Story()
    iid = story.invoke(COUNTER_GET)

    actions = story.step(iid, set_state("count", b"1"))

    [published] = of_type(actions, Publish)
    assert published.record["status"] == "FAILED"
    assert published.record["failure"] == {"code": 500, "message": "get may not write state"}
    assert StopInvocation(iid) in actions
    assert story.state("Counter", "alice") == {}
    assert story.status(iid)["status"] == "COMPLETED"


def test_a_service_clearing_state_fails_the_invocation():
    story = Story()
    iid = story.invoke(GREETER)

    actions = story.step(iid, clear_all())

    assert of_type(actions, Publish)[0].record["status"] == "FAILED"


def test_reading_state_is_journaled_without_writes():
    story = Story()
    iid = story.invoke(COUNTER_GET)

    assert story.step(iid, get_state("count", b"1")) == []
    assert story.journal(iid)[1] == get_state("count", b"1")
    assert story.state("Counter", "alice") == {}


def test_a_call_sends_an_invoke_command_with_the_caller_to_the_callees_partition():
    story = Story()
    caller = story.invoke(GREETER)
    callee = new_id(COUNTER)

    actions = story.when(append(caller, 1, 1, call(COUNTER, callee, b"arg", headers={"h": "1"})), at=5_000)

    assert actions == [
        SendToPartition(
            partition_key=positive_hash("Counter/alice"),
            key=b"Counter/alice",
            name="keystate.InvokeCommand",
            record={
                "invocation_id": callee,
                "target": COUNTER,
                "argument": b"arg",
                "headers": {"h": "1"},
                "idempotency_key": None,
                "caller": {"invocation_id": caller, "entry_index": 1},
                "reply_topic": None,
                "execute_at_ms": None,
                "created_at_ms": 5_000,
                "source": caller,
            },
            invocation_id=callee,
        )
    ]
    assert InvocationId.parse(callee).partition_key == positive_hash("Counter/alice")


def test_a_call_to_a_service_is_keyed_by_the_callee_id():
    story = Story()
    caller = story.invoke(COUNTER)
    callee = new_id(GREETER)

    [sent] = story.step(caller, call(GREETER, callee))

    assert sent.key == callee.encode()
    assert sent.partition_key == InvocationId.parse(callee).partition_key


def test_the_callees_output_completes_the_callers_entry():
    story = Story()
    caller = story.invoke(GREETER)
    [sent] = story.step(caller, call(COUNTER))
    story.deliver(sent)
    callee = sent.invocation_id

    actions = story.step(callee, output(b"42"))

    [reply] = of_type(actions, SendToPartition)
    assert reply == SendToPartition(
        partition_key=InvocationId.parse(caller).partition_key,
        key=caller.encode(),
        name="keystate.CompletionCommand",
        record={"invocation_id": caller, "entry_index": 1, "result": value(b"42")},
        invocation_id=caller,
    )


def test_a_failed_callee_completes_the_callers_entry_with_the_failure():
    story = Story()
    caller = story.invoke(GREETER)
    [sent] = story.step(caller, call(COUNTER))
    story.deliver(sent)

    actions = story.step(sent.invocation_id, output_failure(404, "nope"))

    [reply] = of_type(actions, SendToPartition)
    assert reply.record["result"] == failure(404, "nope")


def test_a_completion_of_a_live_attempt_notifies_it():
    story = Story()
    caller = story.invoke(GREETER)
    story.step(caller, call(COUNTER))

    actions = story.when(completion(caller, 1, value(b"42")))

    assert actions == [NotifyCompletion(caller, 1, 1, value(b"42"))]
    assert story.journal(caller)[1]["entry"][1]["result"] == value(b"42")
    assert story.status(caller)["status"] == "INVOKED"


def test_a_completion_of_a_suspended_invocation_waiting_on_it_starts_a_new_attempt():
    story = Story()
    caller = story.invoke(GREETER, argument=b"in")
    callee = new_id(COUNTER)
    story.step(caller, call(COUNTER, callee))
    story.when(suspend(caller, 1, 1))
    assert story.status(caller)["status"] == "SUSPENDED"

    actions = story.when(completion(caller, 1, value(b"42")))

    [inv] = actions
    assert isinstance(inv, Invoke)
    assert inv.attempt == 2
    assert inv.journal == [input_entry(b"in"), call(COUNTER, callee, result=value(b"42"))]
    status = story.status(caller)
    assert status["status"] == "INVOKED"
    assert status["waiting_on"] == []


def test_a_completion_the_suspended_invocation_does_not_wait_on_only_records_the_result():
    story = Story()
    caller = story.invoke(GREETER)
    story.step(caller, awakeable("a1"))
    story.step(caller, awakeable("a2"))
    story.when(suspend(caller, 1, 2))

    actions = story.when(completion(caller, 1, value(b"x")))

    assert actions == []
    assert story.status(caller)["status"] == "SUSPENDED"
    assert story.journal(caller)[1] == awakeable("a1", value(b"x"))


def test_suspending_on_an_entry_already_completed_restarts_at_once():
    story = Story()
    caller = story.invoke(GREETER)
    story.step(caller, call(COUNTER))
    story.when(completion(caller, 1, value(b"42")))  # the attempt had not seen it yet

    actions = story.when(suspend(caller, 1, 1))

    [inv] = of_type(actions, Invoke)
    assert inv.attempt == 2
    assert inv.journal[1]["entry"][1]["result"] == value(b"42")
    assert story.status(caller)["status"] == "INVOKED"


def test_a_duplicate_completion_changes_nothing():
    story = Story()
    caller = story.invoke(GREETER)
    story.step(caller, call(COUNTER))
    story.when(completion(caller, 1, value(b"42")))
    before = story.tables.snapshot()

    assert story.when(completion(caller, 1, value(b"other"))) == []
    assert story.tables.snapshot() == before


def test_a_completion_of_an_entry_that_waits_for_nothing_is_ignored():
    story = Story()
    iid = story.invoke(GREETER)
    story.step(iid, run_entry("a", b"1"))
    before = story.tables.snapshot()

    assert story.when(completion(iid, 1, value(b"2"))) == []
    assert story.when(completion(iid, 0, value(b"2"))) == []
    assert story.tables.snapshot() == before


def test_a_sleep_registers_a_timer_whose_firing_completes_it():
    story = Story()
    iid = story.invoke(GREETER)

    [timer] = story.step(iid, sleep(90_000))

    assert timer == RegisterTimer(
        (iid, "SLEEP", 1),
        90_000,
        {"invocation_id": iid, "timer_kind": "SLEEP", "entry_index": 1, "attempt": None, "fire_at_ms": 90_000},
    )
    story.when(suspend(iid, 1, 1))

    actions = story.fire(timer)

    [inv] = of_type(actions, Invoke)
    assert inv.journal[1] == sleep(90_000, fired=True)
    assert story.timers(iid) == {}


def test_a_sleep_firing_while_the_attempt_runs_notifies_it():
    story = Story()
    iid = story.invoke(GREETER)
    [timer] = story.step(iid, sleep(90_000))

    actions = story.fire(timer)

    [notify] = actions
    assert isinstance(notify, NotifyCompletion)
    assert (notify.invocation_id, notify.attempt, notify.index) == (iid, 1, 1)
    assert story.journal(iid)[1] == sleep(90_000, fired=True)
    assert story.when(append(iid, 1, 1, sleep(90_000))) == []  # replayed, nothing new


def test_a_sleep_journaled_as_fired_registers_no_timer():
    story = Story()
    iid = story.invoke(GREETER)

    assert story.step(iid, sleep(90_000, fired=True)) == []
    assert story.timers(iid) == {}


def test_a_send_produces_an_invoke_command_without_caller():
    story = Story()
    iid = story.invoke(GREETER)

    [sent] = story.step(iid, send(COUNTER, argument=b"x"))

    assert sent.name == "keystate.InvokeCommand"
    assert sent.record["caller"] is None
    assert sent.record["execute_at_ms"] is None
    assert sent.record["argument"] == b"x"


def test_a_delayed_send_produces_an_invoke_command_with_execute_at():
    story = Story(now=1_000)
    iid = story.invoke(GREETER)
    callee = new_id(COUNTER)

    [sent] = story.step(iid, send(COUNTER, callee, invoke_at_ms=60_000))

    assert sent.record["execute_at_ms"] == 60_000
    # and the callee waits for it on its partition
    story.deliver(sent)
    assert story.status(callee)["status"] == "SCHEDULED"
    assert story.last_timer("DELAYED_INVOKE").fire_at_ms == 60_000


def test_a_completion_of_a_backing_off_invocation_is_kept_for_the_retry():
    story = Story()
    caller = story.invoke(GREETER)
    story.step(caller, call(COUNTER))
    story.when(attempt_failed(caller, 1))

    assert story.when(completion(caller, 1, value(b"42"))) == []

    [inv] = of_type(story.fire(story.last_timer("RETRY")), Invoke)
    assert inv.journal[1]["entry"][1]["result"] == value(b"42")


def test_suspending_on_nothing_restarts_at_once():
    story = Story()
    iid = story.invoke(GREETER)

    [inv] = story.when(suspend(iid, 1))

    assert isinstance(inv, Invoke)
    assert inv.attempt == 2


# ---------------------------------------------------------------- found bugs


def test_a_call_to_an_object_never_leaves_the_objects_partition():
    story = Story()
    caller = story.invoke(GREETER)
    wrong = str(InvocationId.new(PartitionKey(12345), random=bytes(15)))  # not the hash of Counter/alice

    actions = story.step(caller, call(COUNTER, wrong))

    assert all(s.partition_key == positive_hash("Counter/alice") for s in of_type(actions, SendToPartition))
