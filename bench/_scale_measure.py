"""Measuring helpers of bench/state_scale.py: RSS sampling, readiness probes, restore log lines, topic size."""

from __future__ import annotations

import os
import re
import threading
import time
import urllib.error
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from harness import http  # type: ignore[import-not-found]

__all__ = ["Probe", "RssSampler", "probe_partitions", "restore_lines", "topic_disk_bytes", "topic_records", "vm_rss"]


def vm_rss(pid: int) -> int | None:
    """Resident set size of `pid` in bytes (VmRSS of /proc/<pid>/status), None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


_CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """user + system CPU seconds of `pid` so far (/proc/<pid>/stat), None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _CLK_TCK
    except (OSError, IndexError, ValueError):
        return None


@dataclass
class _Series:
    max: int = 0
    last: int = 0
    samples: int = 0
    cpu_s: float = 0.0  # CPU seconds used within the phase (summed over the pids it had)
    _pid: int = 0
    _cpu_at: float = 0.0  # the pid's CPU seconds at its previous sample


class RssSampler:
    """Samples VmRSS of named processes every `interval` s on a thread, per phase (max and final)."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval = interval
        self.phase = "setup"
        self._pids: dict[str, Callable[[], int | None]] = {}
        self._carry: dict[tuple[str, int], float] = {}  # (name, pid) -> CPU seconds at its last sample
        self.series: dict[str, dict[str, _Series]] = {}  # phase -> process name -> series
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def watch(self, name: str, pid: Callable[[], int | None]) -> None:
        """Sample `name` from now on; `pid` is asked every time (a restarted process has a new one)."""
        with self._lock:
            self._pids[name] = pid

    def unwatch(self, name: str) -> None:
        with self._lock:
            self._pids.pop(name, None)

    def enter(self, phase: str) -> None:
        self.sample()
        with self._lock:
            self.phase = phase

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sample()

    def sample(self) -> None:
        with self._lock:
            pids = dict(self._pids)
            phase = self.series.setdefault(self.phase, {})
        for name, get_pid in pids.items():
            pid = get_pid()
            rss = None if pid is None else vm_rss(pid)
            if pid is None or rss is None:
                continue
            s = phase.setdefault(name, _Series())
            s.max, s.last, s.samples = max(s.max, rss), rss, s.samples + 1
            cpu = cpu_seconds(pid)
            if cpu is not None:
                if s._pid != pid:  # first sample of this pid in the phase: CPU counts from here (or from 0 if new)
                    s._pid, s._cpu_at = pid, self._carry.get((name, pid), 0.0)
                s.cpu_s += cpu - s._cpu_at
                s._cpu_at = cpu
                self._carry[(name, pid)] = cpu

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def report(self) -> dict[str, dict[str, dict[str, float]]]:
        """phase -> process -> {max_mib, final_mib, cpu_s, samples}."""
        mib = 1024 * 1024
        return {phase: {name: {"max_mib": round(s.max / mib, 1), "final_mib": round(s.last / mib, 1),
                               "cpu_s": round(s.cpu_s, 1), "samples": s.samples}
                        for name, s in procs.items()} for phase, procs in self.series.items()}


@dataclass
class Probe:
    """Calls to one partition until one succeeds: when, what it answered, how many tries."""

    partition: int
    key: str
    ok_after_s: float | None = None
    answer: Any = None
    tries: int = 0
    last_error: str = ""
    expected: int = 0

    @property
    def state_ok(self) -> bool:
        return bool(self.answer == self.expected)


def _probe(url: str, probe: Probe, t0: float, deadline: float, call_timeout: float) -> Probe:
    while time.monotonic() < deadline:
        probe.tries += 1
        try:
            resp = http("POST", f"{url}/ScaleObject/{probe.key}/size", timeout=min(call_timeout, max(0.1, deadline - time.monotonic())))
            if resp.status == 200:
                probe.ok_after_s = round(time.monotonic() - t0, 3)
                probe.answer = resp.json()
                return probe
            probe.last_error = f"HTTP {resp.status}: {resp.body[:200]!r}"
        except (OSError, urllib.error.URLError, ValueError) as exc:
            probe.last_error = f"{type(exc).__name__}: {exc}"
        time.sleep(0.05)
    return probe


def probe_partitions(url: str, keys: dict[int, str], expected: int, t0: float, timeout: float, call_timeout: float = 30.0) -> list[Probe]:
    """One caller per partition, all at once, each retrying its key's `size` until it succeeds or `timeout`."""
    probes = [Probe(p, key, expected=expected) for p, key in sorted(keys.items())]
    deadline = t0 + timeout
    with ThreadPoolExecutor(max_workers=len(probes) or 1) as pool:
        return list(pool.map(lambda pr: _probe(url, pr, t0, deadline, call_timeout), probes))


# partition %d: restored %d changelog records (%d bytes) from offset %d in %.2f s (checkpoint|rebuilt: why);
# the older line (no bytes, offset, origin) parses too.
_RESTORED = re.compile(
    r"partition (\d+): restored (\d+) changelog records(?: \((\d+) bytes\))?(?: from offset (\d+))? in ([\d.]+) s"
    r"(?: \((checkpoint|rebuilt)(?:: ([^\n]*?))?\)(?=,|$))?",
    re.MULTILINE,
)


def restore_lines(log: Path) -> list[dict[str, Any]]:
    """The processor's per-partition restore lines in `log`, parsed (fields it lacks are None)."""
    out: list[dict[str, Any]] = []
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return out
    for m in _RESTORED.finditer(text):
        p, records, nbytes, offset, secs, origin, why = m.groups()
        out.append({"partition": int(p), "records": int(records), "bytes": None if nbytes is None else int(nbytes),
                    "from_offset": None if offset is None else int(offset), "seconds": float(secs), "origin": origin,
                    "reason": why})
    return out


@dataclass
class TopicSize:
    records: int = 0
    by_partition: dict[int, int] = field(default_factory=dict)


def topic_records(bootstrap: str, topic: str, partitions: int) -> TopicSize:
    """Records in `topic` by watermarks (high - low; includes transaction markers)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "scale-size", "enable.auto.commit": False})
    try:
        size = TopicSize()
        for p in range(partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)
            size.by_partition[p] = high - low
            size.records += high - low
        return size
    finally:
        consumer.close()


def topic_disk_bytes(data_dirs: list[Path], topic: str) -> int | None:
    """Bytes of the segments (`*.log`) of `topic`'s partition folders (`<topic>-<n>`) under the broker's log dirs; None if not found.

    confluent-kafka's Python AdminClient has no describe_log_dirs, so the bench reads the log dir of
    the broker it started itself.
    """
    pattern = re.compile(re.escape(topic) + r"-\d+$")
    total, found = 0, False
    for root in data_dirs:
        if not root.is_dir():
            continue
        for part in root.rglob("*"):
            if part.is_dir() and pattern.match(part.name):
                found = True
                # Segment data only: index files are preallocated and would overstate the size.
                total += sum(f.stat().st_size for f in part.iterdir() if f.suffix == ".log")
    return total if found else None
