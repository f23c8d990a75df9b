"""The processor session on a real broker: bad requests never wedge it, fencing is survived or reported.

Issue 7 items 1 (bad reply topic), 8 (two processes with one --instance-id), 9 (a fatal
transactional-producer error means a new producer, not a dead thread) and 10 (a call that ignores
its timeout costs a session, not the process).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from keystate.processors.errors import InstanceFenced
from keystate.processors.session import Session
from keystate.processors.worker import ProcessorSettings, Worker
from keystate.schemas._codec import codec
from keystate.schemas.topics import Topics
from keystate.server.commands import command_record
from keystate.server.kafka import AsyncProducer, KafkaSettings
from keystate.server.meta import MetaView, register
from keystate.server.topics import TopicSettings, ensure_topics

pytestmark = pytest.mark.integration

PARTITIONS = 2


@pytest.fixture
async def kafka(kafka_bootstrap: str, unique_topic_prefix: str) -> AsyncIterator[KafkaSettings]:
    """Topics on a fresh prefix with the Greeter service registered (at a uri nothing listens on)."""
    topics = Topics(unique_topic_prefix)
    ensure_topics(kafka_bootstrap, topics, TopicSettings(partitions=PARTITIONS))
    settings = KafkaSettings(kafka_bootstrap, topics)
    view = MetaView(settings)
    await view.start()
    producer = AsyncProducer(settings)
    record = {
        "deployment_id": "dp_test",
        "uri": "http://127.0.0.1:9",
        "transports": ["websocket"],
        "protocol_version": 1,
        "created_at_ms": 0,
        "services": [{"name": "Greeter", "service_type": "SERVICE", "handlers": [{"name": "greet", "kind": "EXCLUSIVE"}]}],
    }
    await register(view, producer, record)
    producer.close()
    view.stop()
    yield settings


def _settings(kafka: KafkaSettings, instance_id: str = "0", **kwargs: Any) -> ProcessorSettings:
    return ProcessorSettings(kafka=kafka, instance_id=instance_id, group_id=f"{kafka.topics.prefix}processors", **kwargs)


def _request(kafka: KafkaSettings, **fields: Any) -> None:
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    request = {
        "service": "Greeter",
        "handler": "greet",
        "key": None,
        "argument": b"hi",
        "headers": {},
        "idempotency_key": None,
        "reply_topic": None,
        "delay_ms": None,
        **fields,
    }
    producer.produce(kafka.topics.requests, codec().encode("keystate.InvocationRequest", request), partition=0)
    producer.flush(10)


def _read(
    kafka: KafkaSettings, topic: str, partitions: int, want: int, timeout: float = 60.0, name: str | None = None
) -> list[tuple[str, dict[str, Any]]]:
    """Committed records of `topic` (named `name`, if given) until `want` were read (or the timeout)."""
    consumer = Consumer({"bootstrap.servers": kafka.bootstrap, "group.id": "reader", "isolation.level": "read_committed"})
    consumer.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    out: list[tuple[str, dict[str, Any]]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < want and time.monotonic() < deadline:
            msg = consumer.poll(0.2)
            if msg is not None and msg.error() is None and msg.value() is not None:
                record = codec().decode(msg.value())
                if name is None or record[0] == name:
                    out.append(record)
    finally:
        consumer.close()
    return out


async def _until(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.2)
    return False


async def test_bad_reply_topics_are_dead_lettered_and_good_requests_still_run(kafka: KafkaSettings) -> None:
    _request(kafka, reply_topic="bad topic name!")
    _request(kafka, reply_topic="no-such-topic")
    _request(kafka)
    stop = asyncio.Event()
    worker = Worker(_settings(kafka))
    task = asyncio.create_task(worker.run(stop))
    try:
        letters = await asyncio.to_thread(_read, kafka, kafka.topics.requests_dlq, 1, 2)
        commands = await asyncio.to_thread(_read, kafka, kafka.topics.log, PARTITIONS, 1, 60.0, "keystate.InvokeCommand")
    finally:
        stop.set()
        await task
    reasons = sorted(r["reason"] for _, r in letters)
    assert len(reasons) == 2
    assert "'bad topic name!' is not a legal topic name" in reasons[0]
    assert "reply topic 'no-such-topic' does not exist" in reasons[1]
    assert len(commands) == 1


@pytest.mark.parametrize("pipelined", [False, True], ids=["sequential", "pipelined"])
async def test_a_fenced_producer_is_replaced_and_processing_goes_on(kafka: KafkaSettings, pipelined: bool) -> None:
    stop = asyncio.Event()
    worker = Worker(_settings(kafka, fenced_window_s=0.0, pipeline_commits=pipelined))
    task = asyncio.create_task(worker.run(stop))
    try:
        _request(kafka)
        assert await _until(lambda: worker.records >= 1, 60)
        # Another producer takes our transactional id: ours is fenced at its next transaction.
        intruder = Producer({"bootstrap.servers": kafka.bootstrap, "transactional.id": "keystate-processor-0"})
        intruder.init_transactions(30)
        _request(kafka)
        assert await _until(lambda: worker.stats.resets >= 1, 90)
        commands = await asyncio.to_thread(_read, kafka, kafka.topics.log, PARTITIONS, 2, 90.0, "keystate.InvokeCommand")
        assert not task.done()
    finally:
        stop.set()
        await task
    assert len(commands) == 2


async def test_two_processes_with_one_instance_id_end_with_a_clear_error(kafka: KafkaSettings) -> None:
    stop = asyncio.Event()
    first = asyncio.create_task(Worker(_settings(kafka, "same")).run(stop))
    await asyncio.sleep(5)
    second = asyncio.create_task(Worker(_settings(kafka, "same")).run(stop))
    try:
        done, _ = await asyncio.wait([first, second], timeout=180, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stop.set()
        results = await asyncio.gather(first, second, return_exceptions=True)
    assert done, "neither processor noticed that the other holds its instance id"
    errors = [r for r in results if isinstance(r, InstanceFenced)]
    assert errors, results
    assert "--instance-id same" in str(errors[0]) and "its own" in str(errors[0])


@pytest.mark.parametrize("pipelined", [False, True], ids=["sequential", "pipelined"])
async def test_a_reply_kafka_refuses_is_skipped_and_the_partition_carries_on(kafka: KafkaSettings, pipelined: bool) -> None:
    # As if the reply topic was deleted after the request was accepted: the real producer refuses it.
    query = {
        "invocation_id": None,
        "idempotency": None,
        "workflow": {"service": "Greeter", "handler": "greet", "key": "k", "service_type": "WORKFLOW", "handler_kind": "WORKFLOW"},
        "request_id": "q-1",
        "reply_topic": "deleted-reply-topic",
        "attach": False,
    }
    record = command_record("keystate.QueryOutputCommand", query, PARTITIONS, partition_key=0, key=b"q-1")
    producer = Producer({"bootstrap.servers": kafka.bootstrap})
    producer.produce(kafka.topics.log, record.value, key=record.key, partition=record.partition, headers=record.headers)
    producer.flush(10)
    _request(kafka)
    stop = asyncio.Event()
    worker = Worker(_settings(kafka, pipeline_commits=pipelined))
    task = asyncio.create_task(worker.run(stop))
    try:
        commands = await asyncio.to_thread(_read, kafka, kafka.topics.log, PARTITIONS, 1, 90.0, "keystate.InvokeCommand")
        assert await _until(lambda: worker.records >= 2, 30)
    finally:
        stop.set()
        await task
    assert len(commands) == 1
    assert worker.stats.resets == 0


class _HangsInSendOffsets:
    """A real transactional producer whose first send_offsets_to_transaction does not return until
    `release` (as librdkafka#5456 makes it after a broker restart); everything else is the real one."""

    def __init__(self, real: Producer, hung: threading.Event, release: threading.Event) -> None:
        self._real = real
        self._hung = hung
        self._release = release

    def send_offsets_to_transaction(self, *args: Any) -> None:
        if not self._hung.is_set():
            self._hung.set()
            self._release.wait()
        self._real.send_offsets_to_transaction(*args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


async def test_a_transactional_call_that_never_returns_costs_a_session_not_the_process(
    kafka: KafkaSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    hung, release = threading.Event(), threading.Event()
    make_producer = Session._producer

    def producer(session: Session) -> Any:
        return _HangsInSendOffsets(make_producer(session), hung, release)

    monkeypatch.setattr(Session, "_producer", producer)
    stop = asyncio.Event()
    # Bounds short enough for a test; the stuck-call exit (bound + 5 s) is what used to end the process.
    worker = Worker(_settings(kafka, op_timeout_s=10.0, call_grace_s=1.0, watchdog_stuck_grace_s=5.0))
    exits: list[int] = []
    worker._exit = exits.append
    task = asyncio.create_task(worker.run(stop))
    try:
        _request(kafka)
        assert await _until(hung.is_set, 60)
        _request(kafka)
        commands = await asyncio.to_thread(_read, kafka, kafka.topics.log, PARTITIONS, 2, 90.0, "keystate.InvokeCommand")
        assert await _until(lambda: worker.records >= 2, 30)
        assert exits == [] and not task.done()
        assert worker.stats.resets >= 1
    finally:
        release.set()
        stop.set()
        await task
    assert len(commands) == 2
