"""Attempts started before their batch committed (keystate.processors.early): they run at once, and
write nothing to the log until their gate opens; a failed gate stops them before they wrote."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from keystate.processors.early import Gate
from keystate.processors.invoker import Invoker
from keystate.processors.state_machine import Invoke
from keystate.schemas._codec import codec
from keystate.schemas.ids import InvocationId
from keystate.schemas.topics import Topics
from keystate.server.commands import LogRecord
from keystate.server.kafka import AsyncProducer, KafkaSettings
from keystate.server.topics import TopicSettings, ensure_topics
from tests.e2e.harness import SERVICES_SCRIPT, Stack, free_port
from tests.e2e.results import read_all

pytestmark = pytest.mark.integration

PARTITIONS = 2


@pytest.fixture(scope="module")
def deployment(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Topics, Path]]:
    """The test deployment (a real process) and fresh topics; (its URL, the topics, its ledger file)."""
    workdir = tmp_path_factory.mktemp("early")
    topics = Topics(f"test.early.{os.urandom(4).hex()}.")
    ensure_topics(kafka_bootstrap, topics, TopicSettings(partitions=PARTITIONS))
    stack = Stack(kafka_bootstrap, topics.prefix, workdir)
    port = free_port()
    env = {"KEYSTATE_TEST_LEDGER": str(workdir / "ledger"), "KEYSTATE_TEST_RELEASE": str(workdir / "release")}
    (workdir / "release").touch()  # charge_once's second step returns at once
    try:
        stack.deployment(SERVICES_SCRIPT, port, env=env)
        yield f"http://127.0.0.1:{port}", topics, workdir / "ledger"
    finally:
        stack.stop()


@pytest.fixture
async def invoker(kafka_bootstrap: str, deployment: tuple[str, Topics, Path]) -> AsyncIterator[Invoker]:
    url, topics, _ = deployment
    producer = AsyncProducer(KafkaSettings(kafka_bootstrap, topics))
    invoker = Invoker(producer, topics.log, PARTITIONS, lambda _d, _s: (url, ["websocket"]))
    await invoker.start()
    try:
        yield invoker
    finally:
        await invoker.close()
        await asyncio.to_thread(producer.close)


def _charge(order: str, attempt: int = 1) -> Invoke:
    iid = str(InvocationId.new())
    target = {"service": "Steps", "handler": "charge_once", "key": None, "service_type": "SERVICE", "handler_kind": "EXCLUSIVE"}
    input_entry = {"entry": ("keystate.InputEntry", {"argument": json.dumps(order).encode(), "headers": {}})}
    return Invoke(iid, attempt, target, [input_entry], None, None, 0, 1, int(time.time() * 1000))


async def _charged(ledger: Path, order: str, timeout: float = 20.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = ledger.read_text().splitlines() if ledger.exists() else []
        if any(line.startswith(f"{order}:") for line in lines):
            return [line for line in lines if line.startswith(f"{order}:")]
        await asyncio.sleep(0.02)
    raise AssertionError(f"the handler never charged {order}")


def _appends(bootstrap: str, topics: Topics, iid: str, at_least: int, timeout: float) -> list[dict[str, object]]:
    records = read_all(
        bootstrap,
        topics.log,
        until=lambda rs: sum(r.get("invocation_id") == iid for r in rs) >= at_least,
        timeout=timeout,
    )
    return [r for r in records if r.get("invocation_id") == iid]


def _fold_all(gate: Gate) -> list[LogRecord]:
    """The partition thread's side: wait until every attempt is blocked, then take all they offered."""
    taken = gate.snapshot(20.0)
    gate.close(len(taken))
    return taken


async def test_an_early_attempt_runs_but_writes_only_after_its_gate_opens(
    kafka_bootstrap: str, deployment: tuple[str, Topics, Path], invoker: Invoker
) -> None:
    _, topics, ledger = deployment
    action = _charge("gated-open")
    gate = Gate(1)

    invoker.invoke(action, gate)
    await _charged(ledger, "gated-open")  # the handler ran its first step: the attempt is under way
    await asyncio.sleep(0.3)  # time for anything it would write to reach the log
    before = await asyncio.to_thread(_appends, kafka_bootstrap, topics, action.invocation_id, 1, 1.0)
    assert await asyncio.to_thread(gate.snapshot, 0) != []  # the attempt offered its entries...
    gate.close(0)  # ...but the batch takes none of them
    invoker.open_gate(gate)
    after = await asyncio.to_thread(_appends, kafka_bootstrap, topics, action.invocation_id, 3, 30.0)

    assert before == []
    kinds = [r["entry"]["entry"][0] for r in after if "entry" in r]
    assert kinds == ["keystate.RunEntry", "keystate.RunEntry", "keystate.OutputEntry"]
    assert [r["entry_index"] for r in after] == [1, 2, 3]


async def test_a_failed_gate_stops_its_attempt_before_it_wrote_and_the_same_attempt_can_start_again(
    kafka_bootstrap: str, deployment: tuple[str, Topics, Path], invoker: Invoker
) -> None:
    _, topics, ledger = deployment
    action = _charge("gated-fail")
    gate = Gate(1)

    invoker.invoke(action, gate)
    await _charged(ledger, "gated-fail")
    gate.fail()
    invoker.abandon(gate)
    assert not invoker.is_live(action.invocation_id)
    # The batch is re-run and commits: the same attempt number starts again, ungated this time.
    invoker.invoke(action)
    appended = await asyncio.to_thread(_appends, kafka_bootstrap, topics, action.invocation_id, 3, 30.0)
    await asyncio.sleep(0.3)
    appended = await asyncio.to_thread(_appends, kafka_bootstrap, topics, action.invocation_id, 3, 1.0)

    charges = await _charged(ledger, "gated-fail")
    assert len(charges) == 2  # the stopped attempt's side effect ran, and the new attempt's (as after a crash)
    runs = [r for r in appended if r["entry"]["entry"][0] == "keystate.RunEntry"]
    assert len(appended) == 3 and len(runs) == 2  # but only the new attempt's entries are on the log
    _, value = runs[0]["entry"]["entry"][1]["result"]
    charged_ref = json.loads(value["value"])
    assert charged_ref == charges[1]


async def test_entries_collected_by_the_batch_are_not_produced_by_the_attempt_and_later_ones_are(
    kafka_bootstrap: str, deployment: tuple[str, Topics, Path], invoker: Invoker
) -> None:
    _, topics, ledger = deployment
    action = _charge("gated-fold")
    gate = Gate(1)

    invoker.invoke(action, gate)
    # The partition thread's side: wait until the attempt can go no further (it waits for the ack of
    # its first step), then take what it journaled; the batch would write that in its transaction.
    folded = await asyncio.to_thread(_fold_all, gate)
    invoker.open_gate(gate)  # the batch committed (nothing of `folded` is produced by the invoker)
    appended = await asyncio.to_thread(_appends, kafka_bootstrap, topics, action.invocation_id, 2, 30.0)
    await asyncio.sleep(0.3)
    appended = await asyncio.to_thread(_appends, kafka_bootstrap, topics, action.invocation_id, 2, 1.0)

    assert [r.invocation_id for r in folded] == [action.invocation_id]
    assert len(await _charged(ledger, "gated-fold")) == 1
    assert [r["entry_index"] for r in appended] == [2, 3]  # entry 1 was the batch's to write
    assert [r["entry"]["entry"][0] for r in appended] == ["keystate.RunEntry", "keystate.OutputEntry"]


async def test_a_gate_opened_without_collecting_lets_later_entries_through(
    kafka_bootstrap: str, deployment: tuple[str, Topics, Path], invoker: Invoker
) -> None:
    """A batch that did not fold (re-run after Kafka refused a folded entry) never takes a snapshot."""
    _, topics, ledger = deployment
    action = _charge("gated-nocollect")
    gate = Gate(1)

    invoker.invoke(action, gate)
    await _charged(ledger, "gated-nocollect")
    invoker.open_gate(gate)  # committed; nothing was folded: whatever it offered is produced now
    appended = await asyncio.to_thread(_appends, kafka_bootstrap, topics, action.invocation_id, 3, 30.0)

    assert [r["entry_index"] for r in appended] == [1, 2, 3]


async def test_a_state_read_does_not_end_the_batch_s_wait_the_attempt_goes_on_to_its_output(
    kafka_bootstrap: str, deployment: tuple[str, Topics, Path], invoker: Invoker
) -> None:
    """The object's state travels with the attempt: a handler never waits for its GetState entry, so a
    batch folding it must wait on, up to the output (one transaction for a state-reading handler)."""
    iid = str(InvocationId.new())
    target = {"service": "Mailbox", "handler": "peek_slowly", "key": "box", "service_type": "VIRTUAL_OBJECT", "handler_kind": "SHARED"}
    input_entry = {"entry": ("keystate.InputEntry", {"argument": b"300", "headers": {}})}
    state = [{"key": "value", "value": json.dumps("hello").encode()}]
    action = Invoke(iid, 1, target, [input_entry], state, None, 0, 1, int(time.time() * 1000))
    gate = Gate(1)

    invoker.invoke(action, gate)
    folded = await asyncio.to_thread(_fold_all, gate)
    invoker.open_gate(gate)

    decoded = [codec().decode(r.value) for r in folded]
    entries = [record["entry"]["entry"][0] for _, record in decoded]
    assert entries == ["keystate.GetStateEntry", "keystate.OutputEntry"]


async def test_a_gate_closed_at_a_snapshot_leaves_later_entries_to_the_attempts(
    kafka_bootstrap: str, deployment: tuple[str, Topics, Path], invoker: Invoker
) -> None:
    """A batch that re-ran with entries starts more attempts under its gate and takes what it used:
    the entries offered after that snapshot are produced by their attempts once the gate opens."""
    _, topics, ledger = deployment
    first, second = _charge("snap-first"), _charge("snap-second")
    gate = Gate(1)

    invoker.invoke(first, gate)
    taken = await asyncio.to_thread(gate.snapshot, 20.0)  # the first waits for its step's ack
    gate.add(1)  # a re-run with `taken` started the second
    invoker.invoke(second, gate)
    later = await asyncio.to_thread(gate.snapshot, 20.0)
    gate.close(len(taken))  # ...but the batch commits the run that took only `taken`
    invoker.open_gate(gate)
    second_appends = await asyncio.to_thread(_appends, kafka_bootstrap, topics, second.invocation_id, 3, 30.0)
    first_appends = await asyncio.to_thread(_appends, kafka_bootstrap, topics, first.invocation_id, 2, 30.0)

    assert [r.invocation_id for r in taken] == [first.invocation_id]
    assert [r.invocation_id for r in later] == [first.invocation_id, second.invocation_id]
    assert len(await _charged(ledger, "snap-second")) == 1
    assert [r["entry_index"] for r in second_appends] == [1, 2, 3]  # none of it was the batch's
    assert [r["entry_index"] for r in first_appends] == [2, 3]  # entry 1 was
