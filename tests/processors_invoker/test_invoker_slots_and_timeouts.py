"""The invoker against an endpoint that never accepts: attempts queue for their slot, report a
connect timeout as one, and the back-pressure API sees them, from another thread too."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from keystate.processors.invoker import Invoker, InvokerSettings
from keystate.processors.state_machine import Invoke
from keystate.schemas.ids import InvocationId
from keystate.schemas.topics import Topics
from keystate.server.kafka import AsyncProducer, KafkaSettings
from keystate.server.topics import TopicSettings, ensure_topics
from tests.e2e.results import read_all

pytestmark = pytest.mark.integration

PARTITIONS = 4


@pytest.fixture
def unanswered_port() -> Iterator[int]:
    """A loopback port whose accept queue is full: new connections hang until the client gives up."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = int(listener.getsockname()[1])
    fillers = []
    for _ in range(4):  # never accepted: they fill the queue so later SYNs are dropped
        filler = socket.socket()
        filler.setblocking(False)
        filler.connect_ex(("127.0.0.1", port))
        fillers.append(filler)
    try:
        yield port
    finally:
        for s in [*fillers, listener]:
            s.close()


def _invoke(iid: str) -> Invoke:
    target = {"service": "Greeter", "handler": "greet", "key": None, "handler_kind": None}
    now = int(time.time() * 1000)
    return Invoke(iid, 1, target, [], None, None, 0, 1, now)


async def test_queued_attempts_time_out_connecting_one_by_one_and_say_so(
    kafka_bootstrap: str, unique_topic_prefix: str, unanswered_port: int
) -> None:
    topics = Topics(unique_topic_prefix)
    ensure_topics(kafka_bootstrap, topics, TopicSettings(partitions=PARTITIONS))
    producer = AsyncProducer(KafkaSettings(kafka_bootstrap, topics))
    url = f"http://127.0.0.1:{unanswered_port}"
    # One slot; the abort timeout is longer than the connect timeout but far shorter than the
    # time the last attempt queues: it must count from the slot, not from the invoke.
    settings = InvokerSettings(
        connect_timeout_s=0.5, abort_timeout_s=1.0, max_concurrent_attempts_per_deployment=1, max_queued_attempts=1
    )
    invoker = Invoker(producer, topics.log, PARTITIONS, lambda _d, _s: (url, ["websocket"]), settings)
    await invoker.start()
    ids = [str(InvocationId.new()) for _ in range(4)]
    try:
        for iid in ids:
            invoker.invoke(_invoke(iid))
        await asyncio.sleep(0.1)
        # Asked from another thread, as the processor's partition loop does.
        live = await asyncio.to_thread(lambda: [invoker.is_live(i) for i in ids])
        backlog = await asyncio.to_thread(invoker.backlogged_partitions)
        assert live == [True] * 4
        queued_partitions = {InvocationId.parse(i).partition(PARTITIONS) for i in ids[1:]}
        assert backlog == queued_partitions  # 3 wait, over the watermark of 1
        while invoker.live():
            await asyncio.sleep(0.1)
        assert not any(invoker.is_live(i) for i in ids)
        assert invoker.backlogged_partitions() == frozenset()
    finally:
        await invoker.close()
        await asyncio.to_thread(producer.close)
    failures = {
        r["invocation_id"]: r
        for r in read_all(kafka_bootstrap, topics.log, until=lambda rs: len(rs) >= len(ids), timeout=30)
    }
    assert set(failures) == set(ids)
    for record in failures.values():
        assert record["retryable"] is True
        assert record["failure"]["message"] == (
            f"could not connect to {url}/invoke/Greeter/greet within 0.5 s (connect timeout)"
        )
