"""State edits through the log: applied in order with the key's exclusive invocations, refused on a version mismatch."""

from __future__ import annotations

from typing import Any

from keystate.schemas.state import state_version

from .builders import Story, get_state, object_target, output, replies, set_state

Command = tuple[str, dict[str, Any]]
ADD = object_target("Counter", "alice", "add")
GET = object_target("Counter", "alice", "get", shared=True)
REPLIES = "admin.replies"


def edit(new_state: dict[str, bytes], *, expected: str | None = None, request_id: str = "e1") -> Command:
    return (
        "keystate.SetStateCommand",
        {
            "service": "Counter",
            "key": "alice",
            "new_state": new_state,
            "expected_version": expected,
            "request_id": request_id,
            "reply_topic": REPLIES,
        },
    )


def test_an_edit_of_a_free_key_is_applied_at_once_and_answered_with_the_new_version():
    story = Story()
    first = story.invoke(ADD)
    story.step(first, set_state("n", b"1"))
    story.step(first, set_state("gone", b"x"))
    story.step(first, output())

    actions = story.when(edit({"n": b"5", "m": b"7"}))

    assert story.state("Counter", "alice") == {"n": b"5", "m": b"7"}
    [reply] = replies(actions)
    assert reply.topic == REPLIES
    assert reply.record["request_id"] == "e1"
    assert reply.record["status"] == "SUCCEEDED"
    assert reply.record["result"] == ("keystate.Value", {"value": state_version({"m": b"7", "n": b"5"}).encode()})


def test_an_empty_state_clears_every_key():
    story = Story()
    story.when(edit({"a": b"1", "b": b"2"}, request_id="e0"))

    story.when(edit({}))

    assert story.state("Counter", "alice") == {}


def test_a_version_mismatch_refuses_the_edit_with_a_409_naming_both_versions():
    story = Story()
    story.when(edit({"n": b"1"}, request_id="e0"))
    stale = state_version({})

    actions = story.when(edit({"n": b"2"}, expected=stale))

    assert story.state("Counter", "alice") == {"n": b"1"}
    [reply] = replies(actions)
    assert reply.record["status"] == "FAILED"
    name, body = reply.record["result"]
    assert (name, body["code"]) == ("keystate.Failure", 409)
    assert "Counter/alice" in body["message"]
    assert state_version({"n": b"1"}) in body["message"] and stale in body["message"]


def test_the_matching_version_applies_the_edit():
    story = Story()
    story.when(edit({"n": b"1"}, request_id="e0"))

    actions = story.when(edit({"n": b"2"}, expected=state_version({"n": b"1"})))

    assert story.state("Counter", "alice") == {"n": b"2"}
    assert replies(actions)[0].record["status"] == "SUCCEEDED"


def test_an_edit_waits_behind_the_running_exclusive_invocation_and_the_ones_queued_before_it():
    story = Story()
    running = story.invoke(ADD)
    before = story.invoke(ADD)
    story.when(edit({"n": b"100"}))
    after = story.invoke(ADD)
    assert story.inbox("Counter", "alice") == [before, "state-edit:e1", after]

    story.step(running, set_state("n", b"1"))
    done = story.step(running, output())

    assert replies(done) == []  # not yet: `before` runs first, with the state `running` left
    assert story.lock("Counter", "alice") == before
    assert story.last_invoke(before).state == [{"key": "n", "value": b"1"}]

    story.step(before, set_state("n", b"2"))
    done = story.step(before, output())

    assert [r.record["status"] for r in replies(done)] == ["SUCCEEDED"]
    assert story.lock("Counter", "alice") == after
    assert story.last_invoke(after).state == [{"key": "n", "value": b"100"}]
    assert story.inbox("Counter", "alice") == []


def test_a_shared_handler_does_not_hold_back_an_edit():
    story = Story()
    reader = story.invoke(GET)
    story.step(reader, get_state("n"))

    story.when(edit({"n": b"3"}))

    assert story.state("Counter", "alice") == {"n": b"3"}


def test_edits_queued_last_free_the_key_once_applied():
    story = Story()
    running = story.invoke(ADD)
    story.when(edit({"n": b"1"}, request_id="e1"))
    story.when(edit({"n": b"2"}, request_id="e2"))

    done = story.step(running, output())

    assert [r.record["request_id"] for r in replies(done)] == ["e1", "e2"]
    assert story.state("Counter", "alice") == {"n": b"2"}
    assert story.tables.objects.get(("Counter", "alice")) is None


def test_a_redelivered_edit_changes_nothing():
    story = Story()
    running = story.invoke(ADD)
    story.when(edit({"n": b"1"}))
    story.tables.drain()

    story.when(edit({"n": b"1"}))

    assert story.tables.drain() == []
    story.step(running, output())
    story.tables.drain()
    story.when(edit({"n": b"1"}, expected=state_version({})))  # its first delivery was applied: not a mismatch
    assert story.tables.drain() == []
    assert replies(story.actions)[-1].record["status"] == "SUCCEEDED"
