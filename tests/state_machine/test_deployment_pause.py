"""Operator stories: a removed deployment's pinned invocations are PAUSED, then resumed onto another one."""

from __future__ import annotations

from typing import Any

from keystate.processors.state_machine import Config, Invoke
from keystate.processors.state_machine.actions import StopInvocation

from .builders import (
    Story,
    attempt_failed,
    awakeable,
    completion,
    invoke,
    object_target,
    of_type,
    output,
    service_target,
    suspend,
)

GREETER = service_target("Greeter", "greet")
ADD = object_target("Counter", "alice", "add")
V1 = Config(deployment_for=lambda service: "dp_v1", completion_retention_ms=60_000)
REASON = "deployment dp_v1 was removed with force"


def pause(invocation_id: str, deployment_id: str | None = "dp_v1", reason: str = REASON) -> tuple[str, dict[str, Any]]:
    return ("keystate.PauseCommand", {"invocation_id": invocation_id, "reason": reason, "deployment_id": deployment_id})


def resume_on(invocation_id: str, deployment_id: str | None) -> tuple[str, dict[str, Any]]:
    return ("keystate.ResumeCommand", {"invocation_id": invocation_id, "deployment_id": deployment_id})


def test_a_running_invocation_pinned_to_the_removed_deployment_is_paused_with_the_reason():
    story = Story(V1)
    iid = story.invoke(GREETER)

    actions = story.when(pause(iid))

    assert actions == [StopInvocation(iid)]
    status = story.status(iid)
    assert status["status"] == "PAUSED"
    assert status["last_failure"] == {"code": 503, "message": REASON}
    assert status["deployment_id"] == "dp_v1"


def test_the_stopped_attempt_is_fenced_off():
    story = Story(V1)
    iid = story.invoke(GREETER)
    story.when(pause(iid))

    assert story.step(iid, output()) == []
    assert story.when(attempt_failed(iid, 1, "late")) == []
    assert story.status(iid)["status"] == "PAUSED"
    assert story.status(iid)["last_failure"]["message"] == REASON


def test_a_pending_retry_does_not_restart_a_paused_invocation():
    story = Story(V1)
    iid = story.invoke(GREETER)
    story.when(attempt_failed(iid, 1, "boom"))
    story.when(pause(iid))

    assert of_type(story.fire(story.last_timer("RETRY")), Invoke) == []
    assert story.status(iid)["status"] == "PAUSED"


def test_a_completion_while_paused_is_kept_and_does_not_restart_it():
    story = Story(V1)
    iid = story.invoke(GREETER)
    story.step(iid, awakeable("awk-1"))
    story.when(suspend(iid, 1, 1))
    story.when(pause(iid))

    assert of_type(story.when(completion(iid, 1, ("keystate.Value", {"value": b"ok"}))), Invoke) == []
    assert story.status(iid)["status"] == "PAUSED"
    assert story.journal(iid)[1]["entry"][1]["result"] == ("keystate.Value", {"value": b"ok"})


def test_an_invocation_on_another_deployment_or_not_started_is_not_paused():
    story = Story(V1)
    iid = story.invoke(GREETER)
    busy = story.invoke(ADD)
    queued = story.invoke(ADD)
    before = story.tables.snapshot()

    assert story.when(pause(iid, "dp_other")) == []
    assert story.when(pause(queued)) == []  # INBOXED: not started, not pinned
    assert story.when(pause(iid + "x")) == []
    assert story.tables.snapshot() == before
    assert story.status(busy)["status"] == "INVOKED"


def test_a_redelivered_pause_changes_nothing():
    story = Story(V1)
    iid = story.invoke(GREETER)
    story.when(pause(iid))
    before = story.tables.snapshot()

    assert story.when(pause(iid)) == []
    assert story.tables.snapshot() == before


def test_resume_onto_another_deployment_pins_it_there_and_completes():
    story = Story(V1)
    iid = story.invoke(GREETER)
    story.when(pause(iid))

    [inv] = of_type(story.when(resume_on(iid, "dp_v2")), Invoke)

    assert inv.deployment_id == "dp_v2" and inv.attempt == 2
    assert story.status(iid)["deployment_id"] == "dp_v2"
    assert story.status(iid)["status"] == "INVOKED"
    story.step(iid, output(b"done"))
    assert story.status(iid)["status"] == "COMPLETED"


def test_resume_without_a_deployment_keeps_the_pinned_one():
    story = Story(V1)
    iid = story.invoke(GREETER)
    story.when(pause(iid))

    [inv] = of_type(story.when(resume_on(iid, None)), Invoke)
    assert inv.deployment_id == "dp_v1"


def test_the_old_resume_layout_still_resumes():
    story = Story(V1)
    iid = story.invoke(GREETER)
    story.when(pause(iid))

    [inv] = of_type(story.when(("keystate.ResumeCommandV1", {"invocation_id": iid})), Invoke)
    assert inv.deployment_id == "dp_v1"


# ---------------------------------------------------------------- the processor finds the deployment removed


def removable() -> tuple[Story, set[str]]:
    """A story whose deployment dp_v1 is removed when the test adds it to the returned set."""
    removed: set[str] = set()
    cfg = Config(
        deployment_for=lambda service: "dp_v1",
        deployment_removed=lambda deployment_id: deployment_id in removed,
        completion_retention_ms=60_000,
    )
    return Story(cfg), removed


def test_a_retry_after_its_deployment_was_removed_pauses_instead_of_running_elsewhere():
    story, removed = removable()
    iid = story.invoke(GREETER)
    story.when(attempt_failed(iid, 1, "boom"))
    removed.add("dp_v1")

    actions = story.fire(story.last_timer("RETRY"))

    assert of_type(actions, Invoke) == []
    status = story.status(iid)
    assert status["status"] == "PAUSED" and status["deployment_id"] == "dp_v1"
    assert "deployment dp_v1, which this invocation is pinned to, was removed" in status["last_failure"]["message"]
    assert f"PATCH /invocations/{iid}/resume?deployment=" in status["last_failure"]["message"]


def test_a_completion_after_its_deployment_was_removed_pauses_the_suspended_invocation():
    story, removed = removable()
    iid = story.invoke(GREETER)
    story.step(iid, awakeable("awk-1"))
    story.when(suspend(iid, 1, 1))
    removed.add("dp_v1")

    actions = story.when(completion(iid, 1, ("keystate.Value", {"value": b"ok"})))

    assert of_type(actions, Invoke) == []
    assert story.status(iid)["status"] == "PAUSED"
    # Resuming "where it was" pauses it again; naming a live deployment runs it there with the completion.
    assert of_type(story.when(resume_on(iid, None)), Invoke) == []
    assert story.status(iid)["status"] == "PAUSED"
    [inv] = of_type(story.when(resume_on(iid, "dp_v2")), Invoke)
    assert inv.deployment_id == "dp_v2"
    assert inv.journal[1]["entry"][1]["result"] == ("keystate.Value", {"value": b"ok"})


def test_new_invocations_are_not_affected_by_a_removed_deployment():
    story, removed = removable()
    removed.add("dp_old")

    [inv] = of_type(story.when(invoke(GREETER)), Invoke)
    assert inv.deployment_id == "dp_v1"
