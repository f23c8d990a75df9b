"""Restart-as-new: a new invocation with the old one's target, input, headers and a completed journal prefix."""

from __future__ import annotations

from typing import Any

from keystate.processors.state_machine import Config, RetryPolicy
from keystate.schemas.ids import InvocationId, PartitionKey

from .builders import (
    Story,
    attempt_failed,
    call,
    input_entry,
    kill,
    object_target,
    output,
    replies,
    run_entry,
    service_target,
    sleep,
    workflow_target,
)

Command = tuple[str, dict[str, Any]]
GREETER = service_target("Greeter", "greet")
KEEP = Config(completion_retention_ms=60_000, journal_retention_ms=60_000)


def sibling(iid: str, n: int = 7) -> str:
    """A fresh id on the same partition as `iid`, as the admin makes it."""
    return str(InvocationId.new(PartitionKey(InvocationId.parse(iid).partition_key), random=n.to_bytes(15, "big")))


def restart(old: str, new: str, from_index: int, deployment_id: str | None = None) -> Command:
    return (
        "keystate.RestartAsNewCommand",
        {
            "invocation_id": old,
            "new_invocation_id": new,
            "from_index": from_index,
            "deployment_id": deployment_id,
            "request_id": "r1",
            "reply_topic": "admin.replies",
        },
    )


def finished(story: Story, target: dict[str, Any] = GREETER) -> str:
    iid = story.invoke(target, argument=b"bob", headers={"h": "v"})
    story.step(iid, run_entry("a", b"1"))
    story.step(iid, run_entry("b", b"2"))
    story.step(iid, output(b"done"))
    return iid


def test_the_new_invocation_starts_with_the_input_and_the_entries_before_from():
    story = Story(KEEP)
    old = finished(story)
    new = sibling(old)

    actions = story.when(restart(old, new, 2))

    [reply] = replies(actions)
    assert (reply.record["status"], reply.record["invocation_id"]) == ("RUNNING", new)
    invoke = story.last_invoke(new)
    assert invoke.journal == [input_entry(b"bob", {"h": "v"}), run_entry("a", b"1")]
    status = story.status(new)
    assert (status["status"], status["journal_length"], status["headers"], status["source"]) == (
        "INVOKED", 2, {"h": "v"}, "admin",
    )
    assert story.status(old)["status"] == "COMPLETED"  # the old one is left as it was


def test_from_1_copies_only_the_input_and_runs_on_the_deployment_asked_for():
    story = Story(KEEP)
    old = finished(story)

    story.when(restart(old, sibling(old), 1, deployment_id="dp_2"))

    invoke = story.last_invoke(sibling(old))
    assert invoke.journal == [input_entry(b"bob", {"h": "v"})]
    assert invoke.deployment_id == "dp_2"


def test_an_uncompleted_entry_cannot_be_copied():
    story = Story(KEEP)
    iid = story.invoke(GREETER)
    story.step(iid, call(object_target()))
    story.step(iid, sleep(999_999))
    story.when(kill(iid))  # killed while waiting: the call never got its result

    actions = story.when(restart(iid, sibling(iid), 3))

    [reply] = replies(actions)
    assert reply.record["status"] == "FAILED"
    assert reply.record["result"][1]["code"] == 400
    assert "journal entry 1 (CallEntry)" in reply.record["result"][1]["message"]
    assert "restart from 1 or earlier" in reply.record["result"][1]["message"]
    assert story.status(sibling(iid)) is None


def test_a_running_invocation_is_refused_with_409():
    story = Story(KEEP)
    iid = story.invoke(GREETER)

    [reply] = replies(story.when(restart(iid, sibling(iid), 1)))

    assert (reply.record["status"], reply.record["result"][1]["code"]) == ("FAILED", 409)


def test_without_a_kept_journal_it_says_to_raise_the_journal_retention():
    story = Story(Config(completion_retention_ms=60_000, journal_retention_ms=0))
    old = finished(story)

    [reply] = replies(story.when(restart(old, sibling(old), 1)))

    assert reply.record["result"][1]["code"] == 409
    assert "--journal-retention" in reply.record["result"][1]["message"]


def test_a_new_id_on_another_partition_is_refused():
    story = Story(KEEP)
    old = finished(story)
    other = str(InvocationId.new(PartitionKey((InvocationId.parse(old).partition_key + 1) % 2**31)))

    [reply] = replies(story.when(restart(old, other, 1)))

    assert reply.record["result"][1]["code"] == 400


def test_an_object_invocation_waits_for_its_key_like_any_other():
    target = object_target("Counter", "alice", "add")
    story = Story(KEEP)
    old = finished(story, target)
    holder = story.invoke(target)

    story.when(restart(old, sibling(old), 2))

    assert story.status(sibling(old))["status"] == "INBOXED"
    assert story.lock("Counter", "alice") == holder


def test_a_workflow_run_cannot_be_restarted():
    story = Story(KEEP)
    old = finished(story, workflow_target())

    [reply] = replies(story.when(restart(old, sibling(old), 1)))

    assert reply.record["result"][1]["code"] == 400


def test_a_redelivered_restart_creates_nothing_more():
    story = Story(KEEP)
    old = finished(story)
    story.when(restart(old, sibling(old), 2))
    story.tables.drain()

    again = story.when(restart(old, sibling(old), 2))

    assert story.tables.drain() == []
    assert [r.record["status"] for r in replies(again)] == ["RUNNING"]


def test_a_paused_invocation_can_be_restarted_from_its_completed_prefix():
    story = Story(Config(journal_retention_ms=60_000, retry_policy=RetryPolicy(max_attempts=1, on_max_attempts="PAUSE")))
    iid = story.invoke(GREETER)
    story.step(iid, run_entry("a", b"1"))
    story.when(attempt_failed(iid, 1))
    assert story.status(iid)["status"] == "PAUSED"

    story.when(restart(iid, sibling(iid), 2))

    assert story.last_invoke(sibling(iid)).journal[1:] == [run_entry("a", b"1")]
