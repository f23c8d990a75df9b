"""Cooperative rebalancing under load on a real broker: processors 1 -> 2 -> 1.

Clients keep invoking `Effects/steps` (STEPS `ctx.run` steps with pauses between them, see
_rebalance_services.py) while processor b joins processor a's group and later leaves it. Then:
every invocation completed; every step's side effect ran exactly once; each processor restored a
partition once per ownership change (a: all at start, then only the partitions it got back, from
its checkpoint; b: only the partitions it got); and invocations of partitions that never moved ran
in one attempt.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import uuid
from collections import Counter
from pathlib import Path

import pytest

from keystate.schemas.ids import InvocationId, partition_for_hash

from _rebalance_services import STEPS
from _stores import Restore, dump_stacks, log_size, processor, restores, wait_restores
from harness import Proc, Stack, free_port, http

pytestmark = pytest.mark.integration

PARTITIONS = 4  # tests/e2e/conftest.py creates the stack's topics with as many
ALL = set(range(PARTITIONS))
SERVICES = str(Path(__file__).with_name("_rebalance_services.py"))


class StepsLoad:
    """`clients` threads invoking Effects/steps one after another, each retried with its idempotency
    key until answered 200 (the answer is the invocation id)."""

    def __init__(self, base_url: str, clients: int = 6) -> None:
        self.base_url = base_url
        self.invocations: dict[str, str | None] = {}  # idempotency key -> invocation id once answered
        self.first_error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._give_up_at = float("inf")
        self._threads = [threading.Thread(target=self._client, daemon=True, name=f"steps-client-{i}") for i in range(clients)]

    def start(self) -> StepsLoad:
        for thread in self._threads:
            thread.start()
        return self

    def answered(self) -> int:
        with self._lock:
            return sum(1 for v in self.invocations.values() if v is not None)

    def wait_answered(self, more: int, timeout: float) -> bool:
        target = self.answered() + more
        deadline = time.monotonic() + timeout
        while self.answered() < target:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def stop(self, drain_timeout: float) -> None:
        self._give_up_at = time.monotonic() + drain_timeout
        self._stop.set()
        for thread in self._threads:
            thread.join(drain_timeout + 40)

    def _client(self) -> None:
        while not self._stop.is_set():
            key = uuid.uuid4().hex
            with self._lock:
                self.invocations[key] = None
            while time.monotonic() < self._give_up_at:
                try:
                    resp = http("POST", f"{self.base_url}/Effects/steps", key, headers={"idempotency-key": key}, timeout=30)
                    if resp.status == 200:
                        with self._lock:
                            self.invocations[key] = str(resp.json())
                        break
                    error = f"{resp.status} {resp.body[:200]!r}"
                except (OSError, urllib.error.URLError, ValueError) as exc:
                    error = repr(exc)
                with self._lock:
                    self.first_error = self.first_error or error
                time.sleep(0.2)


def _partition_of(invocation: str) -> int:
    return partition_for_hash(InvocationId.parse(invocation).partition_key, PARTITIONS)


def _once_each(found: list[Restore], who: str) -> set[int]:
    counts = Counter(r.partition for r in found)
    twice = {p: n for p, n in counts.items() if n > 1}
    assert not twice, f"{who} restored partitions more than once: {twice} ({found})"
    return set(counts)


def _progress(stack: Stack, load: StepsLoad, more: int, timeout: float, when: str, stopped: tuple[Proc, ...] = ()) -> None:
    exited = [p.name for p in stack.procs if not p.alive() and p not in stopped]
    assert not exited, f"exited {when}: {exited}\n{stack.logs()}"
    assert load.wait_answered(more, timeout), (
        f"fewer than {more} invocations answered within {timeout:.0f} s {when} (first error {load.first_error})\n{stack.logs()}"
    )


@pytest.mark.timeout(240)
def test_one_two_one_processors_under_load(stack: Stack, tmp_path: Path) -> None:
    effects = tmp_path / "effects.txt"
    a = processor(stack, "a", tmp_path / "state-a")
    a_start = _once_each(wait_restores(stack, a, 0, ALL), "a at start")
    assert a_start == ALL
    stack.ingress()
    port = free_port()
    stack.deployment(SERVICES, port, env={"KEYSTATE_TEST_EFFECTS": str(effects)})
    stack.register(f"http://127.0.0.1:{port}")

    load = StepsLoad(stack.url).start()
    try:
        _progress(stack, load, 20, 90, "with processor a alone")
        a_joined = log_size(a)
        b = processor(stack, "b", tmp_path / "state-b")
        # b restores what it gets: wait for its first restore line, then for progress with it.
        deadline = time.monotonic() + 90
        while not restores(b):
            assert b.alive() and time.monotonic() < deadline, f"b restored nothing\n{stack.logs()}\n{dump_stacks(b)}"
            time.sleep(0.2)
        _progress(stack, load, 20, 90, "after b joined")
        time.sleep(3)  # a second rebalance round of the cooperative protocol, if any, has settled
        b_got = _once_each(restores(b), "b")
        assert b_got, "b got no log partition"
        a_during = restores(a, a_joined)
        assert not a_during, f"a restored while b joined (it should only give partitions away): {a_during}"

        a_left = log_size(a)
        b.stop()  # gracefully: b leaves the group, a gets b's partitions back
        wait_restores(stack, a, a_left, b_got)
        _progress(stack, load, 20, 90, "after b left", stopped=(b,))
    finally:
        load.stop(drain_timeout=90)

    # Every invocation completed.
    unanswered = [k for k, v in load.invocations.items() if v is None]
    assert not unanswered, f"{len(unanswered)} invocations never answered (first error {load.first_error})\n{stack.logs()}"
    invocations = {v for v in load.invocations.values() if v is not None}
    assert len(invocations) == len(load.invocations)

    # Restores: a got back exactly b's partitions, once each, from its own checkpoint.
    returned = restores(a, a_left)
    back = _once_each(returned, "a after b left")
    assert back == b_got, f"a restored {sorted(back)} after b left, b had {sorted(b_got)}"
    assert all(r.mode == "checkpoint" for r in returned), returned

    # Effects: each step of each invocation exactly once; attempts 1 where the partition never moved.
    lines = effects.read_text().split("\n")
    runs = Counter(tuple(line.split()[1:3]) for line in lines if line.startswith("run "))
    attempts = Counter(line.split()[1] for line in lines if line.startswith("attempt "))
    assert set(inv for inv, _ in runs) == invocations, "effects of invocations no client was answered for"
    wrong = {(inv, int(step)): n for (inv, step), n in runs.items() if n != 1}
    missing = [(inv, s) for inv in invocations for s in range(STEPS) if (inv, str(s)) not in runs]
    told = "\n".join(line for line in lines if any(inv in line for inv, _ in wrong))  # with their times
    assert not wrong and not missing, f"steps run more than once: {wrong}; never run: {missing[:10]}\n{told}\n{stack.logs()}"
    unmoved = ALL - b_got
    restarted = {inv: n for inv, n in attempts.items() if n > 1 and _partition_of(inv) in unmoved}
    assert not restarted, f"invocations of partitions {sorted(unmoved)} (never moved) were restarted: {restarted}"
    # Last, as the checks above hold either way: two members share the log partitions. b taking all
    # of them leaves a idle and the unmoved-partition check above with nothing to check.
    assert b_got != ALL, f"b got every log partition {sorted(b_got)} (a kept only others): the log is not shared"
    moved = [inv for inv in invocations if _partition_of(inv) in b_got]
    assert moved and len(moved) < len(invocations), "the load did not reach both moved and unmoved partitions"
