"""Awakeable and workflow promise stories: completions that come from other handlers."""

from __future__ import annotations

from keystate.processors.state_machine import Invoke, NotifyCompletion, SendToPartition
from keystate.schemas.ids import InvocationId

from .builders import (
    Story,
    as_command,
    awakeable,
    awakeable_id,
    cancel,
    complete_awakeable,
    complete_awakeable_entry,
    complete_promise,
    failure,
    get_promise,
    object_target,
    of_type,
    output,
    peek_promise,
    results,
    service_target,
    suspend,
    value,
    workflow_target,
)
from .test_properties import compacted, restored

GREETER = service_target("Greeter", "greet")
OTHER = service_target("Approver", "approve")
RUN = workflow_target("Signup", "wf-1", "run")
APPROVE = workflow_target("Signup", "wf-1", "approve", shared=True)
ALREADY = failure(409, "promise 'approved' was already completed")


def entry_result(story: Story, iid: str, index: int):
    return story.journal(iid)[index]["entry"][1].get("result")


# ---------------------------------------------------------------- awakeables


def waiting_on_awakeable(story: Story) -> tuple[str, str]:
    """An invocation suspended on an awakeable at entry 1; (its id, the awakeable id)."""
    owner = story.invoke(GREETER)
    awk = awakeable_id(owner, 1)
    story.step(owner, awakeable(awk))
    story.when(suspend(owner, 1, 1))
    return owner, awk


def test_resolving_an_awakeable_from_another_invocation_routes_to_the_owner():
    story = Story()
    owner, awk = waiting_on_awakeable(story)
    resolver = story.invoke(OTHER)

    [sent] = story.step(resolver, complete_awakeable_entry(awk, value(b"yes")))

    assert sent == SendToPartition(
        InvocationId.parse(owner).partition_key,
        owner.encode(),
        "keystate.CompleteAwakeableCommand",
        {"awakeable_id": awk, "result": value(b"yes")},
        owner,
    )


def test_the_owner_resumes_with_the_awakeables_value():
    story = Story()
    owner, awk = waiting_on_awakeable(story)
    resolver = story.invoke(OTHER)
    [sent] = story.step(resolver, complete_awakeable_entry(awk, value(b"yes")))

    actions = story.when(as_command(sent))

    [inv] = of_type(actions, Invoke)
    assert inv.invocation_id == owner and inv.attempt == 2
    assert inv.journal[1] == awakeable(awk, value(b"yes"))


def test_a_running_owner_is_notified():
    story = Story()
    owner = story.invoke(GREETER)
    awk = awakeable_id(owner, 1)
    story.step(owner, awakeable(awk))

    actions = story.when(complete_awakeable(awk, value(b"yes")))

    assert actions == [NotifyCompletion(owner, 1, 1, value(b"yes"))]


def test_rejecting_an_awakeable_completes_it_with_the_failure():
    story = Story()
    owner, awk = waiting_on_awakeable(story)
    resolver = story.invoke(OTHER)
    [sent] = story.step(resolver, complete_awakeable_entry(awk, failure(500, "nope")))

    [inv] = of_type(story.when(as_command(sent)), Invoke)

    assert inv.journal[1] == awakeable(awk, failure(500, "nope"))


def test_an_awakeable_completes_once():
    story = Story()
    owner, awk = waiting_on_awakeable(story)
    story.when(complete_awakeable(awk, value(b"first")))

    assert story.when(complete_awakeable(awk, value(b"second"))) == []
    assert entry_result(story, owner, 1) == value(b"first")


def test_completing_an_awakeable_id_that_names_no_awakeable_does_nothing():
    story = Story()
    owner, _ = waiting_on_awakeable(story)
    before = story.tables.snapshot()

    for bad in (awakeable_id(owner, 0), awakeable_id(owner, 7), "awk_not-an-id_1", "garbage"):
        assert story.when(complete_awakeable(bad, value(b"x"))) == []
    assert story.tables.snapshot() == before


def test_a_malformed_awakeable_id_in_an_entry_sends_nothing():
    story = Story()
    resolver = story.invoke(OTHER)

    assert story.step(resolver, complete_awakeable_entry("awk-1", value(b"x"))) == []


def test_completing_the_awakeable_of_a_finished_invocation_does_nothing():
    story = Story()
    owner = story.invoke(GREETER)
    awk = awakeable_id(owner, 1)
    story.step(owner, awakeable(awk))
    story.step(owner, output())

    assert story.when(complete_awakeable(awk, value(b"x"))) == []


# ---------------------------------------------------------------- workflow promises


def test_get_before_resolve_waits_then_completes_on_resolve():
    story = Story()
    run = story.invoke(RUN)
    story.step(run, get_promise("approved"))
    story.when(suspend(run, 1, 1))
    assert entry_result(story, run, 1) is None
    assert story.tables.promises.get(("Signup", "wf-1", "approved")) == {
        "result": None,
        "waiters": [{"invocation_id": run, "entry_index": 1}],
    }
    approver = story.invoke(APPROVE)

    actions = story.step(approver, complete_promise("approved", value(b"yes")))

    # both handlers of one workflow key live on one partition: no SendToPartition
    assert of_type(actions, SendToPartition) == []
    assert NotifyCompletion(approver, 1, 1, value(b"")) in actions
    [inv] = of_type(actions, Invoke)
    assert inv.invocation_id == run
    assert inv.journal[1] == get_promise("approved", value(b"yes"))
    assert story.tables.promises.get(("Signup", "wf-1", "approved")) == {"result": value(b"yes"), "waiters": []}


def test_get_after_resolve_completes_at_once():
    story = Story()
    run = story.invoke(RUN)
    approver = story.invoke(APPROVE)
    story.step(approver, complete_promise("approved", value(b"yes")))

    actions = story.step(run, get_promise("approved"))

    assert actions == [NotifyCompletion(run, 1, 1, value(b"yes"))]


def test_a_rejected_promise_completes_its_getters_with_the_failure():
    story = Story()
    run = story.invoke(RUN)
    story.step(run, get_promise("approved"))
    approver = story.invoke(APPROVE)

    story.step(approver, complete_promise("approved", failure(400, "denied")))

    assert entry_result(story, run, 1) == failure(400, "denied")


def test_every_getter_of_a_promise_gets_its_value():
    story = Story()
    run = story.invoke(RUN)
    story.step(run, get_promise("approved"))
    watcher = story.invoke(workflow_target("Signup", "wf-1", "watch", shared=True))
    story.step(watcher, get_promise("approved"))
    approver = story.invoke(APPROVE)

    story.step(approver, complete_promise("approved", value(b"yes")))

    assert entry_result(story, run, 1) == value(b"yes")
    assert entry_result(story, watcher, 1) == value(b"yes")


def test_resolving_a_promise_twice_fails_the_second_with_409():
    story = Story()
    run = story.invoke(RUN)
    story.step(run, complete_promise("approved", value(b"first")))
    approver = story.invoke(APPROVE)

    actions = story.step(approver, complete_promise("approved", value(b"second")))

    assert actions == [NotifyCompletion(approver, 1, 1, ALREADY)]
    assert entry_result(story, approver, 1) == ALREADY
    assert story.tables.promises.get(("Signup", "wf-1", "approved"))["result"] == value(b"first")


def test_peek_of_an_unresolved_promise_is_an_empty_value():
    story = Story()
    run = story.invoke(RUN)

    actions = story.step(run, peek_promise("approved"))

    assert actions == [NotifyCompletion(run, 1, 1, value(b""))]
    assert story.tables.promises.get(("Signup", "wf-1", "approved")) is None  # a peek registers no waiter


def test_peek_of_a_resolved_promise_is_its_value():
    story = Story()
    run = story.invoke(RUN)
    story.step(run, complete_promise("approved", value(b"yes")))
    peeker = story.invoke(APPROVE)

    assert story.step(peeker, peek_promise("approved")) == [NotifyCompletion(peeker, 1, 1, value(b"yes"))]


def test_promises_belong_to_their_workflow_key():
    story = Story()
    run = story.invoke(RUN)
    story.step(run, complete_promise("approved", value(b"yes")))
    other = story.invoke(workflow_target("Signup", "wf-2", "run"))

    assert story.step(other, peek_promise("approved")) == [NotifyCompletion(other, 1, 1, value(b""))]


def test_promise_entries_outside_a_workflow_fail_with_400():
    story = Story()
    for target in (GREETER, object_target("Counter", "alice", "add")):
        for entry in (get_promise("p"), peek_promise("p"), complete_promise("p", value(b"x"))):
            iid = story.invoke(target)

            actions = story.step(iid, entry)

            assert actions == [NotifyCompletion(iid, 1, 1, failure(400, "promises exist only in workflows"))]
            assert entry_result(story, iid, 1) == failure(400, "promises exist only in workflows")
            story.step(iid, output())
    assert len(story.tables.promises) == 0


def test_a_resolved_promise_outlives_the_handler_that_resolved_it():
    story = Story()
    run = story.invoke(RUN)
    approver = story.invoke(APPROVE)
    story.step(approver, complete_promise("approved", value(b"yes")))
    assert results(story.step(approver, output()))

    assert story.step(run, get_promise("approved")) == [NotifyCompletion(run, 1, 1, value(b"yes"))]


def test_a_cancel_of_a_promise_getter_keeps_its_409_when_the_promise_resolves():
    story = Story()
    run = story.invoke(RUN)
    story.step(run, get_promise("approved"))
    story.when(cancel(run))
    approver = story.invoke(APPROVE)

    actions = story.step(approver, complete_promise("approved", value(b"yes")))

    assert actions == [NotifyCompletion(approver, 1, 1, value(b""))]
    assert entry_result(story, run, 1) == failure(409, "cancelled")


def test_promises_and_their_waiters_are_restored_from_the_changelog():
    story = Story()
    run = story.invoke(RUN)
    story.step(run, get_promise("approved"))
    story.step(run, complete_promise("other", value(b"1")))

    changes = story.tables.drain()

    assert restored(changes).snapshot() == story.tables.snapshot()
    assert restored(compacted(changes)).snapshot() == story.tables.snapshot()
