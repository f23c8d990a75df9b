"""Faults on the real broker under load: a paused processor, broker restarts, a killed cluster node.

In each test clients keep adding 1 to counters with idempotency keys, retrying the same key until
acknowledged; processing must resume by itself, no processor may exit, and every acknowledged add
must be applied exactly once (`check_counts`).
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka.admin import AdminClient

from keystate.cli.kafka import LocalCluster, LocalKafka
from keystate.processors.worker import ProcessorSettings
from keystate.schemas.topics import Topics
from keystate.server.topics import TopicSettings, ensure_topics

from harness import SERVICES_SCRIPT, AddLoad, Proc, Stack, check_counts, free_port, pause, resume

pytestmark = pytest.mark.integration

PARTITIONS = 4
KEYS = [f"k{i}" for i in range(16)]
CLIENTS = 8
GROUP_ID = next(f.default for f in dataclasses.fields(ProcessorSettings) if f.name == "group_id")


def _start(stack: Stack, env: dict[str, str], processors: tuple[str, ...] = ("a", "b")) -> list[Proc]:
    started = [stack.processor(name) for name in processors]
    stack.ingress()
    port = free_port()
    stack.deployment(SERVICES_SCRIPT, port, env=env)
    stack.register(f"http://127.0.0.1:{port}")
    return started


_NOISE = ("watermarks of", "Connection refused", "aiohttp.access")  # repeats that hide the cause


def _logs(stack: Stack, lines: int = 40) -> str:
    """The processors' and the ingress's last lines (the deployment's access log says little)."""
    parts = []
    for proc in stack.procs:
        if proc.name.startswith("deployment"):
            continue
        try:
            text = proc.log_path.read_text(errors="replace").splitlines()
        except OSError:
            text = ["(no log)"]
        kept = [line for line in text if not any(noise in line for noise in _NOISE)][-lines:]
        parts.append(f"== {proc.name} ==\n" + "\n".join(kept))
    return "\n\n".join(parts)


def _assert_nothing_exited(stack: Stack, stopped: tuple[Proc, ...]) -> None:
    exited = [f"{p.name} (exit {p.popen.returncode})" for p in stack.procs if not p.alive() and p not in stopped]
    assert not exited, f"exited: {exited}\n{_logs(stack)}"


def _progress(load: AddLoad, stack: Stack, more: int, timeout: float, after: str, stopped: tuple[Proc, ...] = ()) -> None:
    """`more` further adds get acknowledged within `timeout` s, and meanwhile no process exits."""
    target = load.ack_count() + more
    deadline = time.monotonic() + timeout
    while load.ack_count() < target:
        _assert_nothing_exited(stack, stopped)
        assert time.monotonic() < deadline, (
            f"only {more - (target - load.ack_count())} of {more} further adds acknowledged within {timeout:.0f} s "
            f"{after} (failed tries {load.failed_tries}, first error {load.first_error})\n{_logs(stack)}"
        )
        time.sleep(0.2)


def _hold(load: AddLoad, stack: Stack, seconds: float) -> None:
    """Keep the load running for `seconds` while checking that no process exits."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        _assert_nothing_exited(stack, ())
        time.sleep(0.5)


def _finish(load: AddLoad, stack: Stack, stopped: tuple[Proc, ...] = ()) -> None:
    """Stop the load, then: nothing exited (but what the test stopped), every add acknowledged,
    each applied exactly once."""
    load.stop(drain_timeout=90)
    _assert_nothing_exited(stack, stopped)
    assert not load.unacked, f"{len(load.unacked)} adds never acknowledged (first error {load.first_error})\n{_logs(stack)}"
    check = check_counts(stack.url, load)
    assert check.exact, f"{check}\n{_logs(stack)}"
    assert check.acked == check.attempts > 0


@pytest.mark.timeout(240)
def test_a_processor_paused_20s_under_load_rejoins_and_counts_hold(stack: Stack, deployment_env: dict[str, str]) -> None:
    paused, other = _start(stack, deployment_env)
    load = AddLoad(stack.url, KEYS, CLIENTS).start()
    try:
        _progress(load, stack, 50, 90, "after start")
        # Longer than the session timeout and the transaction timeout (10 s each): the group moves
        # its partitions to the other processor and the broker aborts its open transaction.
        pause(paused)
        time.sleep(20)
        resume(paused)
        _progress(load, stack, 50, 90, "after SIGCONT")
        time.sleep(10)  # for the resumed one to meet its fencing and rejoin (or, before the fix, exit)
        _assert_nothing_exited(stack, ())
        # The paused processor must work again on its own: stop the other one (cleanly).
        other.stop()
        _progress(load, stack, 50, 90, "with only the once-paused processor left", stopped=(other,))
    finally:
        resume(paused)
        load.stop(drain_timeout=90)
    _finish(load, stack, stopped=(other,))


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[LocalKafka]:
    """A single-node broker only this test uses (it gets restarted), on fixed free ports so that a
    restart keeps its address and data."""
    broker = LocalKafka(tmp_path / "kafka", port=free_port(), controller_port=free_port(), start_timeout=120)
    broker.start()
    try:
        yield broker
    finally:
        broker.stop()


@pytest.mark.timeout(300)
def test_two_broker_restarts_under_load_with_two_processors(
    own_broker: LocalKafka, tmp_path: Path, deployment_env: dict[str, str]
) -> None:
    bootstrap = own_broker.bootstrap
    prefix = f"test.restarts.{uuid.uuid4().hex[:8]}."
    ensure_topics(bootstrap, Topics(prefix), TopicSettings(partitions=PARTITIONS))
    stack = Stack(bootstrap, prefix, tmp_path)
    try:
        _start(stack, deployment_env)
        load = AddLoad(stack.url, KEYS, CLIENTS).start()
        try:
            _progress(load, stack, 50, 90, "after start")
            for restart, kill in enumerate((True, False), start=1):  # a crash, then a clean shutdown
                own_broker.nodes[0].stop(kill=kill)
                time.sleep(2)
                own_broker.start()  # same ports and data dir
                _progress(load, stack, 50, 120, f"after broker restart {restart} ({'SIGKILL' if kill else 'SIGTERM'})")
        finally:
            load.stop(drain_timeout=90)
        _finish(load, stack)
    finally:
        stack.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[LocalCluster]:
    local = LocalCluster(tmp_path / "cluster", port=0, start_timeout=120)
    local.start()
    try:
        yield local
    finally:
        local.stop()


@pytest.mark.cluster
@pytest.mark.timeout(300)
def test_one_node_of_three_killed_under_load(cluster: LocalCluster, tmp_path: Path, deployment_env: dict[str, str]) -> None:
    bootstrap = cluster.bootstrap
    prefix = f"test.cluster.{uuid.uuid4().hex[:8]}."
    ensure_topics(bootstrap, Topics(prefix), TopicSettings(partitions=PARTITIONS, replication_factor=3))
    stack = Stack(bootstrap, prefix, tmp_path)
    try:
        _start(stack, deployment_env)
        load = AddLoad(stack.url, KEYS, CLIENTS).start()
        try:
            _progress(load, stack, 50, 120, "after start")
            victim = _busiest_leader(bootstrap, Topics(prefix))
            cluster.stop_node(victim, kill=True)
            # Past the leader failover (~9 s), the transaction timeout and the coordinator's abort
            # sweep (10 s each), where fencing shows.
            _hold(load, stack, 30)
            _progress(load, stack, 50, 150, f"after killing node {victim}")
        finally:
            load.stop(drain_timeout=90)
        _finish(load, stack)
    finally:
        stack.stop()


def _busiest_leader(bootstrap: str, topics: Topics) -> int:
    """The node leading the most partitions the processors write in their transactions, other than
    the group coordinator when there is a choice: a transaction stuck on a dead leader outlives the
    transaction timeout while the coordinator stays up to abort it and fence the producer."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    coordinator = admin.describe_consumer_groups([GROUP_ID])[GROUP_ID].result(30).coordinator.id
    written = {topics.log, topics.results, topics.changelog_topic}
    led: dict[int, int] = {}
    for name, topic in admin.list_topics(timeout=30).topics.items():
        if name in written:
            for partition in topic.partitions.values():
                led[partition.leader] = led.get(partition.leader, 0) + 1
    return max(led, key=lambda node: (node != coordinator, led[node]))
