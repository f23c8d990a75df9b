"""keystate.log through the batch step: no single record stops a partition.

Issue 7 items 1 and 2 (a record Kafka refuses, a row over the record size), 7 (records of revoked
partitions), poison records in the log itself, and the sweep of stranded INVOKED invocations.
"""

from __future__ import annotations

from typing import Any

import pytest

from keystate.processors.errors import BatchFailed
from keystate.processors.quarantine import Drop, SkipPublish
from keystate.processors.records import OutKind
from keystate.processors.state_machine import Config, Invoke, RetryPolicy
from keystate.schemas.ids import InvocationId

from driver_support import PARTITIONS, driver
from state_machine.builders import append, attempt_failed, invoke, new_id, query, run_entry, service_target


def _invoke(d: Any, argument: bytes = b"hi", **kwargs: Any) -> tuple[str, Any]:
    name, record = invoke(service_target(), argument=argument, **kwargs)
    return record["invocation_id"], d.command(name, record)


def _partition(iid: str) -> int:
    return InvocationId.parse(iid).partition(PARTITIONS)


def test_record_of_a_partition_no_longer_owned_is_dropped_not_an_invariant_violation() -> None:
    d = driver()
    iid, record = _invoke(d)
    d.revoke(_partition(iid))
    out = d.pipe([record])

    assert out.dropped_unowned == 1
    assert out.produced == [] and out.effects == []
    assert (d.topics_names.log, record.partition) not in d.offsets  # the new owner reads it again


def test_reply_that_kafka_refuses_is_skipped_and_the_rest_of_the_batch_commits() -> None:
    d = driver()
    d.fail_records(topic="deleted-replies")
    name, cmd = query("q-1", invocation_id=new_id(service_target()), reply_topic="deleted-replies")
    refused = d.command(name, cmd, partition_key=0, key=b"q-1")
    iid, ok = _invoke(d)
    out = d.pipe([refused, ok])

    assert isinstance(out.quarantine[refused.origin], SkipPublish)
    assert not d.records("deleted-replies")
    assert any(isinstance(a, Invoke) and a.invocation_id == iid for _, a in out.effects)
    assert d.tables(_partition(iid)).status.get((iid,))["status"] == "INVOKED"
    assert d.offsets[(d.topics_names.log, refused.partition)] > refused.offset
    assert d.txn.aborted == 1


def test_journal_row_over_the_record_size_fails_the_invocation_with_a_clear_message() -> None:
    d = driver(max_record_bytes=32 * 1024)
    iid, record = _invoke(d)
    d.pipe_log()
    big = d.command(*append(iid, 1, 1, run_entry("step", b"x" * (40 * 1024))))
    other, _ = _invoke(d)
    effects = d.pipe_log()

    [letter] = d.dead_letters()
    assert letter["offset"] == big.offset and "KEYSTATE_MAX_PAYLOAD_BYTES" in letter["reason"]
    status = d.tables(_partition(iid)).status.get((iid,))
    assert status["status"] == "COMPLETED"
    assert "could not be written" in status["result"][1]["message"]
    assert "over the record size limit of 32768 bytes" in status["result"][1]["message"]
    assert d.tables(_partition(other)).status.get((other,))["status"] == "INVOKED"
    assert [a.invocation_id for _, a in effects if isinstance(a, Invoke)] == [other]


def test_changelog_record_kafka_refuses_fails_that_invocation_only() -> None:
    d = driver()
    iid, _ = _invoke(d)
    d.pipe_log()
    changelog = d.topics_names.changelog_topic
    d.fail_records(
        topic=changelog,
        predicate=lambda r: r.invocation_id == iid and (r.key or b"").startswith(b'["journal"'),
        error="Broker: Message size too large",
        times=1,
    )
    refused = d.command(*append(iid, 1, 1, run_entry()))
    other, _ = _invoke(d)
    d.pipe_log()

    [letter] = d.dead_letters()
    assert letter["offset"] == refused.offset and "Message size too large" in letter["reason"]
    assert d.tables(_partition(iid)).status.get((iid,))["status"] == "COMPLETED"
    assert d.tables(_partition(other)).status.get((other,))["status"] == "INVOKED"


def test_undecodable_record_in_the_log_is_dead_lettered_with_its_offset() -> None:
    d = driver()
    poison = d.log_record(1, b"\x00\x00\x00\x01\x2cnot avro")
    d.pipe_log()

    [letter] = d.dead_letters()
    assert (letter["topic"], letter["partition"], letter["offset"]) == (d.topics_names.log, 1, poison.offset)
    assert "undecodable" in letter["reason"]
    assert d.offsets[(d.topics_names.log, 1)] == poison.offset + 1


def test_command_whose_apply_raises_is_dead_lettered_and_its_partition_carries_on() -> None:
    def policy(service: str, handler: str) -> RetryPolicy | None:
        if service == "Poison":
            raise KeyError("initial_interval_ms")  # a malformed retry policy in a registration
        return None

    d = driver(config=Config(service_retry_policy=policy))
    target = {**service_target(), "service": "Poison"}
    poison_iid = new_id(target)
    d.command(*invoke(target, poison_iid))
    iid, _ = _invoke(d)
    d.pipe_log()
    d.command(*attempt_failed(poison_iid, 1))
    d.command(*attempt_failed(iid, 1))
    d.pipe_log()

    [letter] = d.dead_letters()
    assert "AttemptFailedCommand" in letter["reason"] and "initial_interval_ms" in letter["reason"]
    assert d.tables(_partition(iid)).status.get((iid,))["status"] == "BACKING_OFF"


def test_failure_that_no_record_caused_makes_the_session_rejoin() -> None:
    d = driver()
    d.fail_records(error="Broker: Not coordinator", record_fault=False, times=1)
    _, record = _invoke(d)
    with pytest.raises(BatchFailed, match="Not coordinator"):
        d.pipe([record])


def test_quarantine_escalates_to_drop_when_the_dead_letter_itself_fails() -> None:
    d = driver()
    d.fail_records(topic=d.topics_names.requests_dlq)
    d.fail_records(topic=d.topics_names.log, predicate=lambda r: r.origin is not None and r.origin[2] == 0)
    first = d.request(service="Greeter", handler="greet", argument=b"a")
    second = d.request(service="Greeter", handler="greet", argument=b"b")
    out = d.pipe([first, second])

    assert isinstance(out.quarantine[first.origin], Drop)  # Reject escalated: its dead letter failed too
    assert [r.kind for r in out.produced] == [OutKind.COMMAND]
    assert d.offsets[(d.topics_names.requests, 0)] == second.offset + 1


def test_sweep_restarts_invoked_invocations_without_a_live_attempt() -> None:
    d = driver()
    stranded, _ = _invoke(d)
    live, _ = _invoke(d)
    d.pipe_log()
    d.now_ms += 120_000
    assert d.step.sweep(d.now_ms, grace_ms=60_000, is_live=lambda i: i == live) == 1
    effects = d.pipe_log()

    [restart] = [a for _, a in effects if isinstance(a, Invoke)]
    assert restart.invocation_id == stranded and restart.attempt == 2
    assert d.step.sweep(d.now_ms, grace_ms=60_000, is_live=lambda i: False) == 1  # only `live` is stale now


def test_takeover_resumes_invoked_invocations_through_the_log() -> None:
    d = driver()
    iid, _ = _invoke(d)
    d.pipe_log()
    p = _partition(iid)
    d.revoke(p)
    d.assign(p)
    effects = d.pipe_log()
    [restart] = [a for _, a in effects if isinstance(a, Invoke)]
    assert restart.invocation_id == iid and restart.attempt == 2
