"""Helpers of the state-store and rebalance tests: processors with a state dir, their restore lines, the changelog."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from keystate.schemas.topics import Topics
from keystate.server.errors import ServerError
from keystate.server.topics import TopicSettings, ensure_topics

from harness import Proc, Stack

CRASH_LAUNCHER = str(Path(__file__).with_name("_crash_after_commit.py"))
"""`python _crash_after_commit.py processor ...`: a processor that SIGKILLs itself before the Nth store write."""
CRASH_AT_ENV = "KEYSTATE_TEST_CRASH_AT_COMMIT"
CRASH_MARKER = "storetests: SIGKILL before store commit"

# The contract's INFO line of keystate.processors.session, one per partition restore.
_RESTORE = re.compile(
    r"keystate\.processors\.session: .*?partition (?P<partition>\d+): restored (?P<records>\d+) changelog records "
    r"\((?P<bytes>\d+) bytes\) from offset (?P<offset>-?\d+) in (?P<seconds>[\d.]+) s "
    r"\((?P<how>checkpoint|rebuilt: .*)\), resuming (?P<invocations>\d+) invocations, (?P<timers>\d+) timers"
)


@dataclass(frozen=True)
class Restore:
    """One restore line of a processor's log."""

    partition: int
    records: int
    bytes: int
    from_offset: int
    seconds: float
    mode: str  # "checkpoint" | "rebuilt"
    reason: str
    invocations: int
    timers: int


def log_size(proc: Proc) -> int:
    """Where the process's log ends now: restore lines after this belong to what comes next."""
    try:
        return proc.log_path.stat().st_size
    except OSError:
        return 0


def restores(proc: Proc, since: int = 0, until: int | None = None) -> list[Restore]:
    """The restore lines the process logged between byte offsets `since` and `until` of its log."""
    try:
        with proc.log_path.open("rb") as f:
            f.seek(since)
            text = f.read(None if until is None else max(0, until - since)).decode(errors="replace")
    except OSError:
        return []
    found = []
    for m in _RESTORE.finditer(text):
        how = m["how"]
        mode, _, reason = how.partition(": ")
        found.append(
            Restore(int(m["partition"]), int(m["records"]), int(m["bytes"]), int(m["offset"]), float(m["seconds"]),
                    mode, reason, int(m["invocations"]), int(m["timers"]))
        )
    return found


def wait_restores(stack: Stack, proc: Proc, since: int, partitions: set[int], timeout: float = 90.0) -> list[Restore]:
    """Wait until `proc` logged a restore of each of `partitions` after `since`; its restore lines."""
    deadline = time.monotonic() + timeout
    while True:
        found = restores(proc, since)
        if partitions <= {r.partition for r in found}:
            return found
        if not proc.alive():
            raise AssertionError(f"{proc.name} exited ({proc.popen.returncode}) before restoring {sorted(partitions)}:\n{proc.tail()}")
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{proc.name} restored only {sorted(r.partition for r in found)} of {sorted(partitions)} within "
                f"{timeout:.0f} s\n{stack.logs()}\n{dump_stacks(proc)}"
            )
        time.sleep(0.2)


def dump_stacks(proc: Proc) -> str:
    """Kill a hung processor with SIGABRT so that faulthandler prints its threads' stacks; that output."""
    if not proc.alive():
        return ""
    since = log_size(proc)
    os.kill(proc.pid, signal.SIGABRT)
    try:
        proc.popen.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill9()
    with proc.log_path.open("rb") as f:
        f.seek(since)
        return f"== stacks of {proc.name} ==\n" + f.read().decode(errors="replace")[-12000:]


def processor(stack: Stack, instance: str, state_dir: Path, *extra: str, env: dict[str, str] | None = None,
              launcher: str | None = None) -> Proc:
    """A processor of `stack` with its stores under `state_dir` (by the normal entry point or `launcher`)."""
    args = ["processor", "--bootstrap", stack.bootstrap, "--prefix", stack.prefix,
            "--instance-id", f"{stack.prefix}{instance}", "--state-dir", str(state_dir), *extra]
    head = [launcher] if launcher is not None else ["-m", "keystate.cli"]
    # faulthandler: `dump_stacks` makes a hung processor print every thread's stack into its log.
    env = {"PYTHONFAULTHANDLER": "1", **(env or {})}
    proc = Proc(f"processor-{instance}", [sys.executable, *head, *args], stack.workdir / f"processor-{instance}.log", env)
    stack.procs.append(proc)
    return proc


def changelog_ends(bootstrap: str, topics: Topics) -> dict[int, int]:
    """Offsets written to each partition of the multiplexed changelog so far (high - low watermark)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "storetests-watermarks", "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topics.changelog_topic, timeout=30)
        ends = {}
        for partition in meta.topics[topics.changelog_topic].partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topics.changelog_topic, partition), timeout=30)
            ends[partition] = high - low
        return ends
    finally:
        consumer.close()


def recreate_topics(bootstrap: str, prefix: str, partitions: int, timeout: float = 60.0) -> None:
    """Delete every topic named `prefix*` and create keystate's topics again: a new topic generation."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    names = [name for name in admin.list_topics(timeout=30).topics if name.startswith(prefix)]
    for future in admin.delete_topics(names, operation_timeout=30).values():
        future.result(30)
    deadline = time.monotonic() + timeout
    while any(name.startswith(prefix) for name in admin.list_topics(timeout=30).topics):
        assert time.monotonic() < deadline, f"topics of {prefix} still listed {timeout:.0f} s after deletion"
        time.sleep(0.5)
    while True:  # the broker may refuse the same names for a moment while it finishes the deletion
        try:
            ensure_topics(bootstrap, Topics(prefix), TopicSettings(partitions=partitions))
            return
        except ServerError:  # KafkaUnavailable: "marked for deletion" until the broker is done
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)
