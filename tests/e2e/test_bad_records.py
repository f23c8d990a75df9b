"""Bad records never stop a processor process: poison requests are dead-lettered, a duplicate instance id exits.

Issue 7 items 1, 2, 8 and 11, with real processes on a real broker.
"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import Producer

from keystate.schemas._codec import codec
from keystate.schemas.topics import Topics

from harness import SERVICES_SCRIPT, Stack, free_port, http
from results import read_all

pytestmark = pytest.mark.integration

# The record size limit of a processor with this payload limit: 64 KiB + 256 KiB envelope headroom.
SMALL_PAYLOAD_LIMIT = 64 * 1024


@pytest.fixture
def small_limit(stack: Stack, deployment_env: dict[str, str]) -> Stack:
    """processor (with a small payload limit) + ingress + the test services, registered."""
    stack.processor("a", "--max-payload-bytes", str(SMALL_PAYLOAD_LIMIT))
    stack.ingress()
    port = free_port()
    stack.deployment(SERVICES_SCRIPT, port, env=deployment_env)
    stack.register(f"http://127.0.0.1:{port}")
    return stack


def test_poison_requests_are_dead_lettered_and_the_processor_keeps_answering(small_limit: Stack) -> None:
    running = small_limit
    topics = Topics(running.prefix)
    c = codec()

    def request(**fields: object) -> bytes:
        return c.encode("keystate.InvocationRequest", {"service": "Counter", "handler": "add", "key": "poison", "argument": b"1", **fields})

    producer = Producer({"bootstrap.servers": running.bootstrap})
    producer.produce(topics.requests, request(reply_topic="bad topic name!"))
    producer.produce(topics.requests, request(reply_topic="no-such-topic"))
    producer.produce(topics.requests, request(delay_ms=2**63 - 10))
    producer.produce(topics.requests, request(argument=b"1" * 400_000))  # the broker takes it; the processor's limit not
    producer.produce(topics.requests, request(argument=b"5"))
    assert producer.flush(10) == 0

    letters = read_all(running.bootstrap, topics.requests_dlq, until=lambda rs: len(rs) >= 4)
    reasons = sorted(letter["reason"] for letter in letters)
    assert len(reasons) == 4, reasons
    assert any("'bad topic name!' is not a legal topic name" in r for r in reasons)
    assert any("reply topic 'no-such-topic' does not exist" in r for r in reasons)
    assert any("delay_ms" in r and "too large" in r for r in reasons)
    assert any("over the record size limit" in r and "--max-payload-bytes" in r for r in reasons)
    deadline = time.monotonic() + 60
    while http("POST", f"{running.url}/Counter/poison/get").json() != 5:
        assert time.monotonic() < deadline, running.logs()
        time.sleep(0.1)
    assert http("POST", f"{running.url}/Counter/other/add", 2).status == 200
    assert all(p.alive() for p in running.procs if p.name.startswith("processor")), running.logs()


def test_a_second_processor_with_the_same_instance_id_exits_with_how_to_fix_it(running: Stack) -> None:
    twin = running.processor("a")  # the `running` fixture's processor is "a" too
    deadline = time.monotonic() + 180
    first = next(p for p in running.procs if p.name == "processor-a" and p is not twin)
    while first.alive() and twin.alive():
        assert time.monotonic() < deadline, running.logs()
        time.sleep(0.5)
    exited = twin if not twin.alive() else first
    assert exited.popen.returncode == 1
    assert "another process runs with --instance-id" in exited.log_path.read_text(errors="replace")
    deadline = time.monotonic() + 60
    while http("POST", f"{running.url}/Counter/after-fence/add", 1).status != 200:
        assert time.monotonic() < deadline, running.logs()
        time.sleep(0.5)
