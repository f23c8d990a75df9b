"""Idempotency stories: one invocation per idempotency key, one `run` per workflow, duplicates answered."""

from __future__ import annotations


from keystate.processors.state_machine import Config, Invoke, Publish, SendToPartition, StopInvocation
from keystate.schemas.ids import InvocationId

from .builders import (
    Story,
    call,
    complete_promise,
    failure,
    get_promise,
    idempotent_id,
    invoke,
    object_target,
    of_type,
    output,
    output_failure,
    purge,
    replies,
    results,
    send,
    sends,
    service_target,
    set_state,
    value,
    workflow_target,
)

GREETER = service_target("Greeter", "greet")
CALLER = service_target("Caller", "go")
ADD = object_target("Counter", "alice", "add")
RUN = workflow_target("Signup", "wf-1", "run")
RETAIN = Config(completion_retention_ms=60_000)


def reply(request_id: str, iid: str, *, previously_accepted: bool, status: str = "RUNNING", result=None, expires=None):
    return Publish(
        None,
        iid.encode(),
        "keystate.QueryOutputReply",
        {
            "request_id": request_id,
            "invocation_id": iid,
            "previously_accepted": previously_accepted,
            "status": status,
            "result": result,
            "expires_at_ms": expires,
        },
    )


def statuses(story: Story) -> list[str]:
    return [iid for (iid,), _ in story.tables.status.items()]


# ---------------------------------------------------------------- invoking twice


def test_an_idempotent_invoke_is_told_it_is_new_and_runs():
    story = Story()
    iid = idempotent_id(GREETER, "k")

    actions = story.when(invoke(GREETER, iid, idempotency_key="k", request_id="r1"))

    assert replies(actions) == [reply("r1", iid, previously_accepted=False)]
    assert [a.invocation_id for a in of_type(actions, Invoke)] == [iid]
    assert story.tables.idempotency.get(("Greeter", "", "greet", "k")) == {"invocation_id": iid}


def test_the_same_idempotency_key_twice_gives_one_status_and_the_second_gets_the_first_id():
    story = Story()
    first = story.invoke(GREETER, idempotency_key="k", request_id="r1")
    second = idempotent_id(GREETER, "k")
    assert InvocationId.parse(second).partition_key == InvocationId.parse(first).partition_key

    actions = story.when(invoke(GREETER, second, idempotency_key="k", request_id="r2"))

    assert actions == [reply("r2", first, previously_accepted=True)]  # on keystate.results, keyed by the first id
    assert statuses(story) == [first]
    assert story.status(second) is None
    assert story.journal(second) == []


def test_a_duplicate_without_request_id_from_the_ingress_changes_nothing():
    story = Story()
    story.invoke(GREETER, idempotency_key="k")
    before = story.tables.snapshot()

    assert story.when(invoke(GREETER, idempotency_key="k")) == []
    assert story.tables.snapshot() == before


def test_a_duplicate_of_a_completed_invocation_gets_its_result_and_expiry():
    story = Story(RETAIN)
    first = story.invoke(GREETER, idempotency_key="k")
    story.step(first, output(b"42"))
    done_at = story.now

    actions = story.when(invoke(GREETER, idempotency_key="k", request_id="r2"))

    assert actions == [
        reply(
            "r2", first, previously_accepted=True, status="SUCCEEDED", result=value(b"42"), expires=done_at + 60_000
        )
    ]
    assert statuses(story) == [first]


def test_a_duplicate_of_a_failed_invocation_gets_the_failure():
    story = Story(RETAIN)
    first = story.invoke(GREETER, idempotency_key="k")
    story.step(first, output_failure(400, "bad input"))

    [r] = replies(story.when(invoke(GREETER, idempotency_key="k", request_id="r2")))

    assert r.record["status"] == "FAILED"
    assert r.record["result"] == failure(400, "bad input")


def test_idempotency_keys_are_per_handler_and_per_object_key():
    story = Story()
    a = story.invoke(ADD, idempotency_key="k")
    other_handler = story.invoke(object_target("Counter", "alice", "reset"), idempotency_key="k")
    other_key = story.invoke(object_target("Counter", "bob", "add"), idempotency_key="k")
    service = story.invoke(GREETER, idempotency_key="k")

    assert all(story.status(i) is not None for i in (a, other_handler, other_key, service))
    assert len(story.tables.idempotency) == 4


def test_an_idempotent_object_invocation_waits_in_the_inbox_like_any_other():
    story = Story()
    running = story.invoke(ADD)
    queued = story.invoke(ADD, idempotency_key="k")

    assert story.when(invoke(ADD, idempotency_key="k")) == []  # the duplicate does not queue again

    assert story.inbox("Counter", "alice") == [queued]
    [started] = of_type(story.step(running, output()), Invoke)
    assert started.invocation_id == queued


# ---------------------------------------------------------------- duplicates from handlers


def duplicate_call(story: Story, caller: str, key: str = "k") -> SendToPartition:
    """`caller` calls Greeter with idempotency key `key`; the InvokeCommand its call produces."""
    [sent] = story.step(caller, call(GREETER, idempotent_id(GREETER, key), idempotency_key=key))
    return sent


def test_a_duplicate_call_while_the_first_runs_attaches_the_caller():
    story = Story()
    first = story.invoke(GREETER, idempotency_key="k")
    caller = story.invoke(CALLER)
    sent = duplicate_call(story, caller)

    actions = story.deliver(sent)

    assert actions == []
    assert story.status(sent.invocation_id) is None
    assert story.status(first)["attached_callers"] == [{"invocation_id": caller, "entry_index": 1}]


def test_an_attached_caller_is_answered_when_the_first_completes():
    story = Story()
    first = story.invoke(GREETER, idempotency_key="k")
    caller = story.invoke(CALLER)
    story.deliver(duplicate_call(story, caller))

    actions = story.step(first, output(b"42"))

    [answer] = sends(actions, "CompletionCommand")
    assert answer.record == {"invocation_id": caller, "entry_index": 1, "result": value(b"42")}
    assert answer.partition_key == InvocationId.parse(caller).partition_key
    story.deliver(answer)
    assert story.journal(caller)[1]["entry"][1]["result"] == value(b"42")


def test_the_first_invocations_own_caller_and_attached_callers_all_get_the_result():
    story = Story()
    callers = [story.invoke(CALLER) for _ in range(3)]
    story.deliver(duplicate_call(story, callers[0]))
    first = sends(story.actions, "InvokeCommand")[0].invocation_id
    story.deliver(duplicate_call(story, callers[1]))
    story.deliver(duplicate_call(story, callers[2]))

    actions = story.step(first, output(b"42"))

    answered = sorted((s.record["invocation_id"], s.record["result"]) for s in sends(actions, "CompletionCommand"))
    assert answered == sorted((c, value(b"42")) for c in callers)
    assert story.status(first)["attached_callers"] == []


def test_a_duplicate_call_after_completion_is_answered_at_once_with_the_stored_result():
    story = Story(RETAIN)
    first = story.invoke(GREETER, idempotency_key="k")
    story.step(first, output(b"42"))
    caller = story.invoke(CALLER)

    actions = story.deliver(duplicate_call(story, caller))

    [answer] = actions
    assert answer.name == "keystate.CompletionCommand"
    assert answer.record == {"invocation_id": caller, "entry_index": 1, "result": value(b"42")}
    assert statuses(story) == [first, caller]


def test_a_duplicate_send_is_dropped():
    story = Story()
    first = story.invoke(GREETER, idempotency_key="k")
    sender = story.invoke(CALLER)
    [sent] = story.step(sender, send(GREETER, idempotent_id(GREETER, "k"), idempotency_key="k"))

    assert story.deliver(sent) == []
    assert story.status(first)["attached_callers"] == []


def test_a_redelivered_duplicate_call_attaches_its_caller_once():
    story = Story()
    first = story.invoke(GREETER, idempotency_key="k")
    caller = story.invoke(CALLER)
    sent = duplicate_call(story, caller)
    story.deliver(sent)
    before = story.tables.snapshot()
    story.tables.drain()

    assert story.deliver(sent) == []
    assert story.tables.drain() == []
    assert story.tables.snapshot() == before
    assert len(sends(story.step(first, output()), "CompletionCommand")) == 1


# ---------------------------------------------------------------- retention and purge


def test_after_the_purge_timer_the_key_can_run_again():
    story = Story(RETAIN)
    first = story.invoke(GREETER, idempotency_key="k")
    story.step(first, output())
    story.fire(story.last_timer("PURGE"))
    assert story.tables.idempotency.get(("Greeter", "", "greet", "k")) is None

    again = idempotent_id(GREETER, "k")
    actions = story.when(invoke(GREETER, again, idempotency_key="k", request_id="r2"))

    assert replies(actions) == [reply("r2", again, previously_accepted=False)]
    assert story.status(again)["status"] == "INVOKED"
    assert story.tables.idempotency.get(("Greeter", "", "greet", "k")) == {"invocation_id": again}


def test_after_a_purge_command_the_key_can_run_again():
    story = Story(RETAIN)
    first = story.invoke(GREETER, idempotency_key="k")
    story.step(first, output())
    story.when(purge(first))

    again = story.invoke(GREETER, idempotency_key="k")

    assert story.status(first) is None
    assert story.status(again)["status"] == "INVOKED"


def test_with_retention_0_the_key_is_free_as_soon_as_the_invocation_completes():
    story = Story(Config(completion_retention_ms=0))
    first = story.invoke(GREETER, idempotency_key="k")
    story.step(first, output())

    assert story.tables.idempotency.get(("Greeter", "", "greet", "k")) is None
    assert story.status(story.invoke(GREETER, idempotency_key="k"))["status"] == "INVOKED"


def test_the_service_retention_decides_when_the_key_frees():
    retention = {"Greeter": 5_000}
    story = Story(Config(completion_retention_ms=60_000, service_retention_ms=retention.get))
    first = story.invoke(GREETER, idempotency_key="k")
    story.step(first, output())

    assert story.last_timer("PURGE").fire_at_ms == story.now + 5_000


# ---------------------------------------------------------------- workflows run once


def test_a_second_workflow_run_is_previously_accepted():
    story = Story()
    first = story.invoke(RUN, request_id="r1")
    second = story.when(invoke(RUN, request_id="r2"))

    assert second == [reply("r2", first, previously_accepted=True)]
    assert statuses(story) == [first]
    assert story.tables.idempotency.get(("Signup", "wf-1", "", "")) == {"invocation_id": first}


def test_a_handler_calling_a_running_workflow_run_gets_409():
    story = Story()
    story.invoke(RUN)
    caller = story.invoke(CALLER)
    [sent] = story.step(caller, call(RUN))

    [answer] = story.deliver(sent)

    assert answer.name == "keystate.CompletionCommand"
    assert answer.record["invocation_id"] == caller
    assert answer.record["result"][0] == "keystate.Failure"
    assert answer.record["result"][1]["code"] == 409


def test_a_handler_calling_a_finished_workflow_run_gets_409_too():
    story = Story(RETAIN)
    first = story.invoke(RUN)
    story.step(first, output(b"done"))
    caller = story.invoke(CALLER)
    [sent] = story.step(caller, call(RUN))

    [answer] = story.deliver(sent)

    assert answer.record["result"][1]["code"] == 409


def test_another_workflow_key_runs_independently():
    story = Story()
    a = story.invoke(RUN)
    b = story.invoke(workflow_target("Signup", "wf-2", "run"))

    assert story.status(a)["status"] == story.status(b)["status"] == "INVOKED"


def workflow_with_state_and_promise(story: Story, key: str = "wf-1") -> str:
    run = story.invoke(workflow_target("Signup", key, "run"))
    story.step(run, set_state("email", key.encode()))
    story.step(run, complete_promise("approved", value(b"yes")))
    return run


def test_the_purge_timer_of_a_workflow_run_deletes_the_workflows_state_and_promises():
    story = Story(RETAIN)
    run = workflow_with_state_and_promise(story, "wf-1")
    other = workflow_with_state_and_promise(story, "wf-2")
    story.step(run, output())
    assert story.state("Signup", "wf-1") == {"email": b"wf-1"}  # kept while retained

    story.fire(story.last_timer("PURGE"))

    assert story.status(run) is None
    assert story.state("Signup", "wf-1") == {}
    assert list(story.tables.promises.scan(("Signup", "wf-1"))) == []
    assert story.tables.idempotency.get(("Signup", "wf-1", "", "")) is None
    # another key of the same workflow keeps everything
    assert story.state("Signup", "wf-2") == {"email": b"wf-2"}
    assert len(list(story.tables.promises.scan(("Signup", "wf-2")))) == 1
    assert story.status(other)["status"] == "INVOKED"


def test_a_purged_workflow_can_run_again_from_scratch():
    story = Story(RETAIN)
    run = workflow_with_state_and_promise(story)
    story.step(run, output())
    story.fire(story.last_timer("PURGE"))

    again = story.invoke(RUN)
    [inv] = [a for a in story.actions if isinstance(a, Invoke) and a.invocation_id == again]
    story.step(again, get_promise("approved"))

    assert inv.state == []
    assert story.journal(again)[1]["entry"][1]["result"] is None  # the old promise is gone: it waits


def test_a_shared_workflow_handler_is_not_deduplicated():
    story = Story()
    story.invoke(RUN)
    a = story.invoke(workflow_target("Signup", "wf-1", "status", shared=True))
    b = story.invoke(workflow_target("Signup", "wf-1", "status", shared=True))

    assert story.status(a)["status"] == story.status(b)["status"] == "INVOKED"


def test_the_result_of_an_idempotent_invocation_names_its_key():
    story = Story()
    first = story.invoke(GREETER, idempotency_key="k")

    actions = story.step(first, output())

    [published] = results(actions)
    assert published.record["idempotency_key"] == "k"
    assert StopInvocation(first) in actions
