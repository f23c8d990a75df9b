"""QueryOutputCommand stories: what is known of an invocation, by id, idempotency key or workflow."""

from __future__ import annotations

from keystate.processors.state_machine import Config, Publish

from .builders import (
    Story,
    cancel,
    failure,
    idempotent_id,
    invoke,
    kill,
    object_target,
    output,
    output_failure,
    purge,
    query,
    replies,
    service_target,
    sleep,
    suspend,
    value,
    workflow_target,
)

GREETER = service_target("Greeter", "greet")
ADD = object_target("Counter", "alice", "add")
RUN = workflow_target("Signup", "wf-1", "run")
RETAIN = Config(completion_retention_ms=60_000)
TOPIC = "keystate.results"


def answer(story: Story, command) -> dict:
    """Apply a query; it must publish exactly one reply on its reply topic and write nothing."""
    before = story.tables.snapshot()
    story.tables.drain()
    actions = story.when(command)
    [reply] = actions
    assert isinstance(reply, Publish) and reply.name == "keystate.QueryOutputReply"
    assert reply.topic == command[1]["reply_topic"]
    assert story.tables.drain() == [] and story.tables.snapshot() == before
    return {"key": reply.key, **reply.record}


def unknown(request_id: str = "q-1") -> dict:
    return {
        "key": request_id.encode(),
        "request_id": request_id,
        "invocation_id": None,
        "status": "UNKNOWN",
        "result": None,
        "previously_accepted": False,
        "expires_at_ms": None,
    }


def running(iid: str, request_id: str = "q-1") -> dict:
    return {
        "key": iid.encode(),
        "request_id": request_id,
        "invocation_id": iid,
        "status": "RUNNING",
        "result": None,
        "previously_accepted": False,
        "expires_at_ms": None,
    }


# ---------------------------------------------------------------- by invocation id


def test_an_unknown_id_is_unknown_keyed_by_the_request_id():
    story = Story()

    assert answer(story, query("q-1", invocation_id=idempotent_id(GREETER, "x"))) == unknown("q-1")


def test_a_running_invocation_is_running():
    story = Story()
    iid = story.invoke(GREETER)

    assert answer(story, query(invocation_id=iid)) == running(iid)


def test_suspended_inboxed_and_scheduled_invocations_are_running():
    story = Story()
    suspended = story.invoke(ADD)
    story.step(suspended, sleep(99_000))
    story.when(suspend(suspended, 1, 1))
    inboxed = story.invoke(ADD)
    scheduled = story.invoke(GREETER, execute_at_ms=50_000)

    for iid in (suspended, inboxed, scheduled):
        assert answer(story, query(invocation_id=iid))["status"] == "RUNNING"


def test_a_succeeded_invocation_has_its_result_and_the_end_of_its_retention():
    story = Story(RETAIN)
    iid = story.invoke(GREETER)
    story.step(iid, output(b"42"))
    done_at = story.now

    got = answer(story, query(invocation_id=iid))

    assert got == {
        **running(iid),
        "status": "SUCCEEDED",
        "result": value(b"42"),
        "expires_at_ms": done_at + 60_000,
    }
    assert got["expires_at_ms"] == story.last_timer("PURGE").fire_at_ms


def test_a_failed_invocation_has_its_failure():
    story = Story(RETAIN)
    iid = story.invoke(GREETER)
    story.step(iid, output_failure(400, "bad"))

    got = answer(story, query(invocation_id=iid))

    assert (got["status"], got["result"]) == ("FAILED", failure(400, "bad"))


def test_cancelled_and_killed_invocations_say_so():
    story = Story(RETAIN)
    cancelled = story.invoke(GREETER, execute_at_ms=50_000)
    killed = story.invoke(GREETER)
    story.when(cancel(cancelled))
    story.when(kill(killed))

    assert answer(story, query(invocation_id=cancelled))["status"] == "CANCELLED"
    assert answer(story, query(invocation_id=killed))["status"] == "KILLED"


def test_a_purged_invocation_is_unknown():
    story = Story(RETAIN)
    iid = story.invoke(GREETER)
    story.step(iid, output())
    story.when(purge(iid))

    assert answer(story, query("q-9", invocation_id=iid)) == unknown("q-9")


def test_the_reply_goes_to_the_reply_topic_of_the_query():
    story = Story()
    iid = story.invoke(GREETER)

    actions = story.when(query(invocation_id=iid, reply_topic="my.replies"))

    assert [r.topic for r in replies(actions)] == ["my.replies"]


def test_attach_to_a_running_invocation_answers_running_now_and_sends_the_result_to_the_attacher_later():
    story = Story()
    iid = story.invoke(GREETER)

    actions = story.when(query(invocation_id=iid, attach=True, reply_topic="keystate.replies.ing-2"))

    [reply] = replies(actions)
    assert reply.topic == "keystate.replies.ing-2" and reply.record["status"] == "RUNNING"
    assert story.status(iid)["reply_topics"] == ["keystate.replies.ing-2"]
    # A second attach from the same ingress adds nothing: one result per reply topic.
    story.when(query("q-2", invocation_id=iid, attach=True, reply_topic="keystate.replies.ing-2"))
    assert story.status(iid)["reply_topics"] == ["keystate.replies.ing-2"]

    done = story.step(iid, output(b"hi"))

    published = [(a.topic, a.name) for a in done if isinstance(a, Publish)]
    assert published == [(None, "keystate.InvocationResult"), ("keystate.replies.ing-2", "keystate.InvocationResult")]
    assert story.status(iid)["reply_topics"] == []


def test_attach_to_a_completed_invocation_attaches_nothing():
    story = Story(RETAIN)
    iid = story.invoke(GREETER)
    story.step(iid, output(b"hi"))

    assert answer(story, query(invocation_id=iid, attach=True, reply_topic="keystate.replies.ing-2"))["status"] == "SUCCEEDED"


# ---------------------------------------------------------------- by idempotency key


def test_an_unknown_idempotency_key_is_unknown():
    story = Story()
    story.invoke(GREETER, idempotency_key="other")

    assert answer(story, query(idempotency=(GREETER, "k"))) == unknown()


def test_an_idempotency_key_finds_its_running_invocation():
    story = Story()
    iid = story.invoke(GREETER, idempotency_key="k")

    assert answer(story, query(idempotency=(GREETER, "k"))) == running(iid)


def test_an_idempotency_key_of_an_object_finds_its_invocation_by_object_key():
    story = Story(RETAIN)
    iid = story.invoke(ADD, idempotency_key="k")
    story.step(iid, output(b"7"))

    got = answer(story, query(idempotency=(ADD, "k")))

    assert (got["invocation_id"], got["status"], got["result"]) == (iid, "SUCCEEDED", value(b"7"))
    assert answer(story, query(idempotency=(object_target("Counter", "bob", "add"), "k"))) == unknown()


def test_an_idempotency_key_of_a_finished_invocation_has_its_result_and_expiry():
    story = Story(RETAIN)
    iid = story.invoke(GREETER, idempotency_key="k")
    story.step(iid, output(b"42"))
    done_at = story.now

    got = answer(story, query(idempotency=(GREETER, "k")))

    assert got == {**running(iid), "status": "SUCCEEDED", "result": value(b"42"), "expires_at_ms": done_at + 60_000}


def test_an_idempotency_key_is_unknown_after_the_purge():
    story = Story(RETAIN)
    iid = story.invoke(GREETER, idempotency_key="k")
    story.step(iid, output())
    story.fire(story.last_timer("PURGE"))

    assert answer(story, query(idempotency=(GREETER, "k"))) == unknown()


# ---------------------------------------------------------------- by workflow


def test_a_workflow_that_never_ran_is_unknown():
    story = Story()

    assert answer(story, query(workflow=RUN)) == unknown()


def test_a_running_workflow_is_running():
    story = Story()
    iid = story.invoke(RUN)

    assert answer(story, query(workflow=RUN)) == running(iid)


def test_a_finished_workflow_has_its_result_until_the_purge():
    story = Story(RETAIN)
    iid = story.invoke(RUN)
    story.step(iid, output(b"welcome"))
    done_at = story.now

    got = answer(story, query(workflow=RUN))
    assert (got["invocation_id"], got["status"], got["result"]) == (iid, "SUCCEEDED", value(b"welcome"))
    assert got["expires_at_ms"] == done_at + 60_000

    story.fire(story.last_timer("PURGE"))
    assert answer(story, query(workflow=RUN)) == unknown()


def test_a_workflow_query_ignores_the_handler_it_names():
    story = Story()
    iid = story.invoke(RUN)

    got = answer(story, query(workflow=workflow_target("Signup", "wf-1", "status", shared=True)))

    assert got["invocation_id"] == iid
    assert answer(story, query(workflow=workflow_target("Signup", "wf-2", "run"))) == unknown()


def test_a_query_for_a_duplicate_request_id_only_names_the_first():
    story = Story()
    first = story.invoke(GREETER, idempotency_key="k")
    story.when(invoke(GREETER, idempotency_key="k"))

    assert answer(story, query(idempotency=(GREETER, "k")))["invocation_id"] == first
