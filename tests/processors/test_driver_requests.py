"""keystate.requests through the batch step: bad requests are dead-lettered, never stop the router.

Issue 7 items 1 (bad reply topic), 5 (idempotency key decides the partition) and 11 (poison requests).
"""

from __future__ import annotations

from typing import Any

from keystate.processors.records import OutKind
from keystate.processors.router import MAX_DELAY_MS
from keystate.schemas.ids import InvocationTarget, idempotency_partition_key
from keystate.schemas.ids import partition_for_hash
from keystate.processors.state_machine import Invoke

from driver_support import PARTITIONS, driver


def _greet(**fields: Any) -> dict[str, Any]:
    return {"service": "Greeter", "handler": "greet", "argument": b"hi", **fields}


def test_reply_topic_with_an_illegal_name_is_dead_lettered_and_the_rest_of_the_batch_runs() -> None:
    d = driver()
    bad = d.request(**_greet(reply_topic="bad topic name!"))
    good = d.request(**_greet())
    out = d.pipe([bad, good])

    [letter] = d.dead_letters()
    assert letter["offset"] == bad.offset and letter["topic"] == d.topics_names.requests
    assert "not a legal topic name" in letter["reason"] and "reply topic" in letter["reason"]
    commands = [r for r in out.produced if r.kind is OutKind.COMMAND]
    assert len(commands) == 1  # only the good request became an InvokeCommand
    assert d.offsets[(d.topics_names.requests, 0)] == good.offset + 1


def test_reply_topic_that_does_not_exist_is_dead_lettered_with_how_to_fix_it() -> None:
    d = driver(existing_topics={"replies"})
    missing = d.request(**_greet(reply_topic="no-such-topic"))
    existing = d.request(**_greet(reply_topic="replies"))
    d.pipe([missing, existing])

    [letter] = d.dead_letters()
    assert letter["offset"] == missing.offset
    assert "'no-such-topic' does not exist" in letter["reason"] and "create the reply topic" in letter["reason"]
    [(name, command)] = d.log_commands()
    assert name == "keystate.InvokeCommand" and command["reply_topic"] == "replies"


def test_reply_topic_name_longer_than_kafka_allows_is_dead_lettered() -> None:
    d = driver(existing_topics={"x" * 250})
    d.pipe([d.request(**_greet(reply_topic="x" * 250))])
    [letter] = d.dead_letters()
    assert "at most 249 characters" in letter["reason"]


def test_five_requests_with_one_idempotency_key_land_on_one_partition_and_run_once() -> None:
    d = driver()
    d.pipe([d.request(partition=i % 2, **_greet(idempotency_key="order-7")) for i in range(5)])

    expected = partition_for_hash(idempotency_partition_key(InvocationTarget("Greeter", "greet"), "order-7"), PARTITIONS)
    invokes = [c for c in d.log_commands() if c[0] == "keystate.InvokeCommand"]
    assert len(invokes) == 5
    assert {r.partition for r in d.records(d.topics_names.log)} == {expected}
    effects = d.pipe_log()
    started = [a for _, a in effects if isinstance(a, Invoke)]
    assert len(started) == 1


def test_delay_that_would_overflow_execute_at_is_dead_lettered_not_a_crash() -> None:
    d = driver()
    poison = d.request(**_greet(delay_ms=2**63 - 10))
    after = d.request(**_greet())
    d.pipe([poison, after])

    [letter] = d.dead_letters()
    assert letter["offset"] == poison.offset and f"at most {MAX_DELAY_MS}" in letter["reason"]
    assert len(d.log_commands()) == 1


def test_request_whose_invoke_command_exceeds_the_record_size_is_dead_lettered_without_its_value() -> None:
    d = driver(max_record_bytes=64 * 1024)
    big = d.request(**_greet(argument=b"x" * (64 * 1024)))
    d.pipe([big, d.request(**_greet())])

    [letter] = d.dead_letters()
    assert "over the record size limit of 65536 bytes" in letter["reason"]
    assert letter["value"] is None and "not kept" in letter["reason"]
    assert len(d.log_commands()) == 1


def test_any_exception_while_routing_dead_letters_the_request() -> None:
    d = driver()

    def broken_lookup(topic: str) -> bool:
        raise RuntimeError("metadata cache broke")

    d.step.lookups = type(d.step.lookups)(meta=d.step.lookups.meta, topic_exists=broken_lookup)
    d.pipe([d.request(**_greet(reply_topic="replies")), d.request(**_greet())])

    [letter] = d.dead_letters()
    assert "could not be routed" in letter["reason"] and "metadata cache broke" in letter["reason"]
    assert len(d.log_commands()) == 1


def test_garbage_on_the_requests_topic_is_dead_lettered() -> None:
    d = driver()
    d.pipe([d.request(value=b"\x00garbage")])
    [letter] = d.dead_letters()
    assert "not an InvocationRequest" in letter["reason"]
