"""Persistent partition stores on a real broker: checkpointed restore, lost and foreign stores, kill -9.

Each test writes Counter state through the ingress with idempotent adds (`AddLoad`), restarts a
processor on the same state dir and instance id, reads its restore lines (one INFO line per
partition: records read, from which offset, `checkpoint` or `rebuilt: <reason>`) and checks every
acknowledged add applied exactly once (`check_counts`).
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest

from keystate.schemas.topics import Topics

from _stores import CRASH_AT_ENV, CRASH_LAUNCHER, CRASH_MARKER, Restore, changelog_ends, log_size, processor, recreate_topics, restores, wait_restores
from harness import SERVICES_SCRIPT, AddLoad, Proc, Stack, check_counts, free_port

pytestmark = pytest.mark.integration

PARTITIONS = 4  # tests/e2e/conftest.py creates the stack's topics with as many
ALL = set(range(PARTITIONS))
KEYS = [f"k{i}" for i in range(16)]
# Records a restore may read beyond the writes made after the checkpoint (per partition): rows
# written while shutting down, and slack for an implementation that re-reads its last batch.
TAIL_SLACK = 20


def _up(stack: Stack, env: dict[str, str], first: Proc) -> None:
    """Ingress and deployment next to the already started processor `first`; services registered."""
    wait_restores(stack, first, 0, ALL)
    stack.ingress()
    port = free_port()
    stack.deployment(SERVICES_SCRIPT, port, env=env)
    stack.register(f"http://127.0.0.1:{port}")


def _adds(stack: Stack, count: int, load: AddLoad | None = None) -> AddLoad:
    """`count` acknowledged adds on KEYS (by 8 clients); the load is stopped and drained after."""
    load = load or AddLoad(stack.url, KEYS, clients=8).start()
    assert load.wait_acks(count, 120), f"{load.ack_count()} adds acknowledged, first error {load.first_error}\n{stack.logs()}"
    load.stop(drain_timeout=60)
    assert not load.unacked, f"{len(load.unacked)} adds never acknowledged\n{stack.logs()}"
    return load


def _assert_exact(stack: Stack, loads: list[AddLoad]) -> None:
    """Every acknowledged add of every load applied exactly once (the loads use the same keys)."""
    merged = AddLoad(stack.url, KEYS)
    merged.adds = [add for load in loads for add in load.adds]
    check = check_counts(stack.url, merged)
    assert check.exact, f"{check}\n{stack.logs()}"
    assert check.acked == check.attempts > 0


def _by_partition(found: list[Restore]) -> dict[int, Restore]:
    by: dict[int, Restore] = {}
    for r in found:
        assert r.partition not in by, f"partition {r.partition} restored twice in one start: {found}"
        by[r.partition] = r
    return by


@pytest.mark.timeout(240)
@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_a_restart_with_a_checkpoint_restores_only_the_tail(stack: Stack, deployment_env: dict[str, str], tmp_path: Path,
                                                            stop: str) -> None:
    topics = Topics(stack.prefix)
    a_dir, x_dir = tmp_path / "state-a", tmp_path / "state-x"
    a = processor(stack, "a", a_dir)
    _up(stack, deployment_env, a)
    loads = [_adds(stack, 300)]
    time.sleep(1.0)  # the last batch's store write follows its commit
    a.stop() if stop == "sigterm" else a.kill9()
    before_x = changelog_ends(stack.bootstrap, topics)

    # A few more writes while `a` is away, by another processor with a store of its own.
    x = processor(stack, "x", x_dir)
    x_restores = _by_partition(wait_restores(stack, x, 0, ALL))
    assert {r.mode for r in x_restores.values()} == {"rebuilt"}, x_restores  # an empty state dir
    loads.append(_adds(stack, 30))
    x.stop()
    after_x = changelog_ends(stack.bootstrap, topics)

    since = log_size(a)
    a = processor(stack, "a", a_dir)
    found = _by_partition(wait_restores(stack, a, since, ALL))
    for p, r in found.items():
        assert r.mode == "checkpoint", f"partition {p} was {r.mode} ({r.reason}) after a {stop} restart with its store"
        tail = after_x[p] - before_x[p]  # offsets written after a's last checkpoint, markers included
        assert r.records <= tail + TAIL_SLACK, f"partition {p}: read {r.records} records, only {tail} written since {stop}"
    total = sum(after_x.values())
    assert sum(r.records for r in found.values()) * 5 < total, f"restored {found} of a changelog of {total} offsets"
    _assert_exact(stack, loads)
    assert len(restores(a, since)) == PARTITIONS, f"a restored again while serving: {restores(a, since)}"


@pytest.mark.timeout(240)
def test_a_lost_state_dir_is_rebuilt_from_the_changelog(stack: Stack, deployment_env: dict[str, str], tmp_path: Path) -> None:
    state = tmp_path / "state-a"
    a = processor(stack, "a", state)
    _up(stack, deployment_env, a)
    loads = [_adds(stack, 200)]
    a.stop()
    assert state.exists(), f"processor a wrote nothing under --state-dir {state}"
    shutil.rmtree(state)

    since = log_size(a)
    a = processor(stack, "a", state)
    found = _by_partition(wait_restores(stack, a, since, ALL))
    for p, r in found.items():
        assert r.mode == "rebuilt" and r.reason, f"partition {p} restored as {r.mode} ({r.reason!r}) without a store"
    ends = changelog_ends(stack.bootstrap, Topics(stack.prefix))
    assert sum(r.records for r in found.values()) > 0 and sum(ends.values()) > 0
    loads.append(_adds(stack, 20))
    _assert_exact(stack, loads)


@pytest.mark.timeout(300)
def test_a_store_of_another_topic_generation_is_rebuilt(stack: Stack, deployment_env: dict[str, str], tmp_path: Path) -> None:
    a_dir = tmp_path / "state-a"
    a = processor(stack, "a", a_dir)
    _up(stack, deployment_env, a)
    _adds(stack, 60)
    old_ends = changelog_ends(stack.bootstrap, Topics(stack.prefix))
    for proc in stack.procs:
        if not proc.name.startswith("deployment"):
            proc.stop()

    # Same names, new topics; then more writes than before (by another processor) so that the new
    # changelog reaches past a's old checkpoints and offsets alone cannot tell the generations apart.
    recreate_topics(stack.bootstrap, stack.prefix, PARTITIONS)
    x = processor(stack, "x", tmp_path / "state-x")
    wait_restores(stack, x, 0, ALL)
    stack.ingress()
    deployment = next(p for p in stack.procs if p.name.startswith("deployment"))
    stack.register(f"http://127.0.0.1:{deployment.argv[-1]}")
    new_loads = [_adds(stack, 150)]
    x.stop()
    new_ends = changelog_ends(stack.bootstrap, Topics(stack.prefix))
    assert all(new_ends[p] > old_ends[p] for p in ALL), (old_ends, new_ends)

    since = log_size(a)
    a = processor(stack, "a", a_dir)
    found = _by_partition(wait_restores(stack, a, since, ALL))
    for p, r in found.items():
        assert r.mode == "rebuilt" and r.reason, f"partition {p}: a store of the deleted topics restored as {r.mode} ({r.reason!r})"
    _assert_exact(stack, new_loads)  # the counts of the new generation only: nothing of the old one


@pytest.mark.timeout(300)
def test_kill_9_between_commit_and_store_write_loses_no_acknowledged_add(
    stack: Stack, deployment_env: dict[str, str], tmp_path: Path
) -> None:
    state = tmp_path / "state-a"
    crashing = processor(stack, "a", state, launcher=CRASH_LAUNCHER, env={CRASH_AT_ENV: "120"})
    _up(stack, deployment_env, crashing)
    load = AddLoad(stack.url, KEYS, clients=8).start()
    try:
        deadline = time.monotonic() + 120
        while crashing.alive():
            assert time.monotonic() < deadline, f"no crash after 120 s, {load.ack_count()} adds acknowledged\n{crashing.tail()}"
            time.sleep(0.2)
        assert crashing.popen.returncode == -9, f"the launcher exited with {crashing.popen.returncode}\n{crashing.tail()}"
        assert CRASH_MARKER in crashing.log_path.read_text(errors="replace")
        acked_before_restart = load.ack_count()
        assert acked_before_restart > 0

        since = log_size(crashing)
        a = processor(stack, "a", state)
        found = _by_partition(wait_restores(stack, a, since, ALL))
        assert {r.mode for r in found.values()} <= {"checkpoint", "rebuilt"}, found
        # The batch whose store write was killed is committed: the restart must read it again.
        assert sum(r.records for r in found.values()) > 0, found
        assert load.wait_acks(50, 120), f"no progress after the restart (first error {load.first_error})\n{stack.logs()}"
    finally:
        load.stop(drain_timeout=90)
    assert not load.unacked, f"{len(load.unacked)} adds never acknowledged\n{stack.logs()}"
    _assert_exact(stack, [load])
