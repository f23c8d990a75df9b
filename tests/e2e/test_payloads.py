"""Payloads up to the limit work end to end on the real broker; over it, a clear error and nothing wedged."""

from __future__ import annotations

import json
import time

import pytest
from confluent_kafka.admin import AdminClient, ConfigResource

from keystate.ingress.runtime import IngressRuntime, IngressSettings
from keystate.schemas.limits import DEFAULT_MAX_PAYLOAD_BYTES, ENV_VAR, kafka_sizes
from keystate.schemas.topics import Topics
from keystate.server.errors import TopicConfigError
from keystate.server.topics import TopicSettings, ensure_topics

from harness import Stack, http

pytestmark = pytest.mark.integration

KB = 1000
MiB = 1024 * 1024
LIMIT = DEFAULT_MAX_PAYLOAD_BYTES


def _others_still_answer(stack: Stack) -> None:
    """Another service answers within seconds: no partition is wedged by what came before."""
    started = time.monotonic()
    resp = http("POST", f"{stack.url}/Greeter/greet", "after", timeout=15)
    assert resp.status == 200, (resp.body, stack.logs())
    assert resp.json() == "Hello after!"
    assert time.monotonic() - started < 15


def test_values_up_to_the_limit_complete(running: Stack) -> None:
    blob = "b" * (2 * MiB)
    stored = http("POST", f"{running.url}/Blobs/big/put_blob", blob)
    assert stored.status == 200, (stored.body[:300], running.logs())
    assert stored.json() == 2 * MiB
    back = http("POST", f"{running.url}/Blobs/big/get_blob")
    assert back.status == 200 and back.json() == blob
    _others_still_answer(running)

    called = http("POST", f"{running.url}/Payloads/call_echo", 700 * KB)
    assert called.status == 200, (called.body[:300], running.logs())
    assert called.json() == {"received": 700 * KB, "same": True}
    _others_still_answer(running)

    step = http("POST", f"{running.url}/Payloads/big_step", 1500 * KB)
    assert step.status == 200, (step.body[:300], running.logs())
    assert step.json() == 1500 * KB
    _others_still_answer(running)


def test_values_at_the_limit_complete(running: Stack) -> None:
    # A run result of exactly the limit (the JSON quotes make it LIMIT bytes) ...
    step = http("POST", f"{running.url}/Payloads/big_step", LIMIT - 2)
    assert step.status == 200, (step.body[:300], running.logs())
    assert step.json() == LIMIT - 2
    # ... and a body that with its headers is just under it, echoed back as the output.
    text = "e" * (LIMIT - 1024)
    echoed = http("POST", f"{running.url}/Payloads/echo_text", text)
    assert echoed.status == 200, (echoed.body[:300], running.logs())
    assert echoed.json() == text
    _others_still_answer(running)


def test_a_body_over_the_limit_is_413_naming_the_limit_and_the_setting(running: Stack) -> None:
    body = json.dumps("x" * LIMIT).encode()

    resp = http("POST", f"{running.url}/Blobs/big/put_blob", body)

    assert resp.status == 413, resp.body[:300]
    error = resp.json()
    assert error["code"] == 413
    assert "/Blobs/big/put_blob (body and headers) is " in error["message"]
    assert f"over the payload limit of {LIMIT} bytes" in error["message"]
    assert ENV_VAR in error["message"] and "--max-payload-bytes" in error["message"]
    _others_still_answer(running)


@pytest.mark.parametrize(
    ("what", "named"),
    [
        ("state", "the value of state key 'blob'"),
        ("run", "the result of ctx.run 'too big'"),
        ("call", "the argument of the call to Payloads/echo_text"),
        ("output", "the output of Blobs/o/oversized"),
    ],
)
def test_a_value_over_the_limit_fails_the_invocation_with_a_clear_message(running: Stack, what: str, named: str) -> None:
    resp = http("POST", f"{running.url}/Blobs/o/oversized", what, timeout=60)

    assert resp.status == 500, (resp.body[:300], running.logs())
    message = resp.json()["message"]
    assert named in message and f"over the payload limit of {LIMIT} bytes" in message, message
    assert ENV_VAR in message
    _others_still_answer(running)


def test_topics_are_created_for_the_limit_and_existing_ones_are_raised(kafka_bootstrap: str, unique_topic_prefix: str) -> None:
    topics = Topics(unique_topic_prefix)
    small, large = 1 * MiB, 16 * MiB
    ensure_topics(kafka_bootstrap, topics, TopicSettings(partitions=1, max_payload_bytes=small))
    assert _max_message_bytes(kafka_bootstrap, topics) == {kafka_sizes(small).topic_max_message_bytes}

    assert ensure_topics(kafka_bootstrap, topics, TopicSettings(partitions=1, max_payload_bytes=large)) == []
    assert _max_message_bytes(kafka_bootstrap, topics) == {kafka_sizes(large).topic_max_message_bytes}

    # A lower limit later never shrinks what the topics take.
    ensure_topics(kafka_bootstrap, topics, TopicSettings(partitions=1, max_payload_bytes=small))
    assert _max_message_bytes(kafka_bootstrap, topics) == {kafka_sizes(large).topic_max_message_bytes}


async def test_a_process_with_a_limit_the_topics_cannot_take_refuses_to_start(
    kafka_bootstrap: str, unique_topic_prefix: str
) -> None:
    topics = Topics(unique_topic_prefix)
    ensure_topics(kafka_bootstrap, topics, TopicSettings(partitions=1, max_payload_bytes=1 * MiB))
    runtime = IngressRuntime(IngressSettings(kafka_bootstrap, topics, max_payload_bytes=8 * MiB))

    with pytest.raises(TopicConfigError) as refused:
        await runtime.start()

    message = str(refused.value)
    assert f"{topics.log} takes {kafka_sizes(1 * MiB).topic_max_message_bytes}" in message
    assert "keystate topics create" in message and ENV_VAR in message
    # With the limit the topics were made for, it starts.
    runtime = IngressRuntime(IngressSettings(kafka_bootstrap, topics, max_payload_bytes=1 * MiB))
    await runtime.start()
    await runtime.stop()


def _max_message_bytes(bootstrap: str, topics: Topics) -> set[int]:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [topics.log, topics.requests, topics.requests_dlq, topics.results, topics.meta, topics.changelog_topic]
    futures = admin.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, n) for n in names])
    return {int(f.result(30)["max.message.bytes"].value) for f in futures.values()}
