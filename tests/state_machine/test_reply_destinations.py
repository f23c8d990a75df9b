"""Where results and replies go: the requester's correlation on its result, ingress reply topics (issue 11)."""

from __future__ import annotations

from keystate.processors.state_machine import Config, Publish

from .builders import Story, invoke, output, replies, service_target

GREETER = service_target("Greeter", "greet")
INGRESS = "keystate.replies.ing-1"
OTHER_INGRESS = "keystate.replies.ing-2"


def published(actions: list) -> list[tuple[str | None, str]]:
    return [(a.topic, a.name) for a in actions if isinstance(a, Publish)]


def test_a_kafka_request_s_key_and_headers_come_back_on_its_result_on_every_topic():
    story = Story()
    correlation = {"key": b"order-7", "headers": {"correlation-id": "c-42"}}
    iid = story.invoke(GREETER, source="kafka:keystate.requests/0/3", reply_topic="my.replies", correlation=correlation)

    done = story.step(iid, output(b"hi"))

    results = [a for a in done if isinstance(a, Publish) and a.name == "keystate.InvocationResult"]
    assert [a.topic for a in results] == [None, "my.replies"]
    assert all(a.record["correlation"] == correlation for a in results)


def test_an_invocation_without_correlation_has_a_null_one_on_its_result():
    story = Story()
    iid = story.invoke(GREETER)

    [result] = [a for a in story.step(iid, output()) if isinstance(a, Publish)]

    assert result.record["correlation"] is None


def test_the_reply_to_an_ingress_request_goes_to_its_reply_topic_not_keystate_results():
    story = Story()
    actions = story.when(invoke(GREETER, idempotency_key="k", request_id="r-1", reply_topic=INGRESS))

    assert [r.topic for r in replies(actions)] == [INGRESS]


def test_a_duplicate_idempotent_call_from_another_ingress_gets_the_first_one_s_result_on_its_reply_topic():
    story = Story()
    first = story.invoke(GREETER, idempotency_key="k", request_id="r-1", reply_topic=INGRESS)

    actions = story.when(invoke(GREETER, idempotency_key="k", request_id="r-2", reply_topic=OTHER_INGRESS))
    [reply] = replies(actions)
    assert reply.topic == OTHER_INGRESS
    assert reply.record["previously_accepted"] and reply.record["invocation_id"] == first

    done = story.step(first, output(b"hi"))

    assert published(done) == [
        (None, "keystate.InvocationResult"),
        (INGRESS, "keystate.InvocationResult"),
        (OTHER_INGRESS, "keystate.InvocationResult"),
    ]


def test_with_publish_ingress_results_off_an_http_call_s_result_goes_only_to_the_waiting_ingress():
    story = Story(Config(publish_ingress_results=False))
    call = story.invoke(GREETER, reply_topic=INGRESS)
    send = story.invoke(GREETER)  # an HTTP send: nobody waits, the public stream has it
    from_kafka = story.invoke(GREETER, source="kafka:keystate.requests/0/1", reply_topic="my.replies")

    assert published(story.step(call, output())) == [(INGRESS, "keystate.InvocationResult")]
    assert published(story.step(send, output())) == [(None, "keystate.InvocationResult")]
    assert published(story.step(from_kafka, output())) == [
        (None, "keystate.InvocationResult"),
        ("my.replies", "keystate.InvocationResult"),
    ]
