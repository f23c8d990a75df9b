"""No lost wake-ups: when the invoker cannot write to the log, the invocation still completes.

A processor runs in this process so its producer can be told to fail chosen records: the real
AsyncProducer, on the real broker, with a wrapper that refuses the records a test picks (their
delivery fails, or produce raises, as librdkafka does). Ingress and deployment are real processes.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from keystate.schemas._codec import codec
from keystate.schemas.topics import Topics
from keystate.server.errors import KafkaUnavailable
from keystate.server.kafka import AsyncProducer
from tests.e2e.harness import Stack

from tests.processors_invoker.inprocess import call, processor_in_this_process

pytestmark = pytest.mark.integration

Choose = Callable[[str, dict[str, Any]], bool]


class FailChosenRecords:
    """Wraps the real `AsyncProducer.produce`: records `choose` picks never reach Kafka.

    `how="delivery"` fails the delivery (the future), `how="raise"` makes produce raise.
    """

    def __init__(self, log_topic: str) -> None:
        self._log_topic = log_topic
        self._real = AsyncProducer.produce
        self._choose: Choose = lambda name, record: False
        self._how = "delivery"
        self.refused: list[str] = []

    def fail(self, choose: Choose, how: str = "delivery") -> None:
        self._choose, self._how = choose, how
        self.refused.clear()

    def produce(self, producer: AsyncProducer, topic: str, value: bytes, **kwargs: Any) -> asyncio.Future[Any]:
        if topic == self._log_topic:
            name, record = codec().decode(value)
            if self._choose(name, record):
                self.refused.append(name)
                error = KafkaUnavailable(f"produce to {topic} failed: injected failure of {name}")
                if self._how == "raise":
                    raise error
                future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
                future.set_exception(error)
                return future
        return self._real(producer, topic, value, **kwargs)


def first(n: int, predicate: Choose) -> Choose:
    """The first `n` records `predicate` picks, then none."""
    seen = [0]

    def choose(name: str, record: dict[str, Any]) -> bool:
        if predicate(name, record) and seen[0] < n:
            seen[0] += 1
            return True
        return False

    return choose


def entry_of(kind: str) -> Choose:
    return lambda name, record: name == "keystate.JournalAppendCommand" and record["entry"]["entry"][0] == kind


@pytest.fixture
async def faults(services: tuple[Stack, Path], monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[FailChosenRecords]:
    """A processor in this process, its producer wrapped to fail the records a test picks."""
    stack, _ = services
    topics = Topics(stack.prefix)
    injector = FailChosenRecords(topics.log)
    # A function, not the bound method, so that it binds to each producer as the real one does.
    monkeypatch.setattr(AsyncProducer, "produce", lambda producer, *args, **kwargs: injector.produce(producer, *args, **kwargs))
    # No folding: these tests fail the invoker's own appends, which a batch that folds them never makes.
    async with processor_in_this_process(stack, fold_window_ms=0):
        yield injector


async def test_an_output_whose_append_fails_is_retried_and_the_caller_gets_its_answer(
    services: tuple[Stack, Path], faults: FailChosenRecords
) -> None:
    stack, _ = services
    faults.fail(first(1, entry_of("keystate.OutputEntry")))
    response = await call(stack, "Greeter/greet", "lost")
    assert (response.status, response.json()) == (200, "Hello lost!"), response.body
    assert faults.refused == ["keystate.JournalAppendCommand"]


async def test_a_state_write_that_cannot_be_produced_fails_the_attempt_retryably(
    services: tuple[Stack, Path], faults: FailChosenRecords
) -> None:
    stack, _ = services
    faults.fail(first(1, entry_of("keystate.SetStateEntry")), how="raise")
    response = await call(stack, "Counter/wakeups/add", 5)
    assert (response.status, response.json()) == (200, 0), response.body
    assert (await call(stack, "Counter/wakeups/get", None)).json() == 5
    assert faults.refused == ["keystate.JournalAppendCommand"]


async def test_a_suspension_that_cannot_be_written_at_first_is_retried_until_it_is(
    services: tuple[Stack, Path], faults: FailChosenRecords
) -> None:
    stack, _ = services
    # The handler sleeps 1.5 s and suspends after 1 s; its timer fires while the invoker still
    # retries the suspension, so that completion finds no attempt to wake: only the retried
    # SuspendCommand lets the processor see the sleep is over and start the next attempt.
    faults.fail(first(3, lambda name, _: name == "keystate.SuspendCommand"))
    response = await call(stack, "Sleeper/nap", 1500)
    assert (response.status, response.json()) == (200, 1500), response.body
    assert faults.refused == ["keystate.SuspendCommand"] * 3


async def test_a_failure_that_cannot_be_recorded_at_first_is_retried_until_it_is(
    services: tuple[Stack, Path], faults: FailChosenRecords
) -> None:
    stack, workdir = services
    marker = workdir / "fails-once"
    faults.fail(first(2, lambda name, _: name == "keystate.AttemptFailedCommand"))
    response = await call(stack, "Flaky/fails_then_waits", str(marker))
    assert (response.status, response.json()) == (200, 1), response.body
    assert faults.refused == ["keystate.AttemptFailedCommand"] * 2
