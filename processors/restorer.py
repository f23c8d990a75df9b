"""Restores on threads of their own, off the rebalance callback, one job per partition at a time.

The session starts a job when a log partition is assigned (the partition stays paused meanwhile)
and collects finished jobs between batches; a revoked partition's job is cancelled. A job for a
partition whose previous job is still winding down waits for it, so one store is never restored
by two threads. The stores stay open while their partition is owned and are closed when it goes,
so a processor holds memory only for the partitions it serves.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .restore import RestoreCancelled, RestoreReport
from .errors import StoreFailed
from .store import PartitionStore, StoreSettings

__all__ = ["Restorer", "StoreRegistry"]

log = logging.getLogger(__name__)


class StoreRegistry:
    """The open stores of this process, one directory per partition under `root`."""

    def __init__(self, root: Path, settings: StoreSettings) -> None:
        self.root = root
        self.settings = settings
        self._open: dict[int, PartitionStore] = {}
        self._lock = threading.Lock()

    def open(self, partition: int) -> PartitionStore:
        with self._lock:
            store = self._open.get(partition)
            if store is None:
                store = self._open[partition] = PartitionStore.open(self.root / f"p{partition}", partition, self.settings)
            return store

    def close(self, partition: int) -> None:
        with self._lock:
            store = self._open.pop(partition, None)
        if store is not None:
            store.close()

    def drop(self, partition: int) -> None:
        """Close a store whose restore failed, so the next attempt reopens it from disk (at its checkpoint)."""
        try:
            self.close(partition)
        except StoreFailed as exc:
            log.warning("closing the store of partition %d after its failed restore: %s", partition, exc)

    def close_all(self) -> None:
        for p in list(self._open):
            self.close(p)


@dataclass(slots=True)
class _Job:
    partition: int
    cancelled: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None
    outcome: RestoreReport | BaseException | None = None


class Restorer:
    """Runs `restore(partition, cancelled)` per assigned partition on a thread; hands back the outcomes."""

    def __init__(self, restore: Callable[[int, threading.Event], RestoreReport], parallel: int = 2) -> None:
        self._restore = restore
        self._jobs: dict[int, _Job] = {}
        self._lock = threading.Lock()
        # Restores at once: more only add memory (each has a consumer and a write batch) once the cores are busy.
        self._slots = threading.Semaphore(max(1, parallel))

    def start(self, partition: int) -> None:
        with self._lock:
            previous = self._jobs.get(partition)
            if previous is not None and not previous.cancelled.is_set():
                return  # already restoring it
            job = _Job(partition)
            job.thread = threading.Thread(
                target=self._run, args=(job, previous), name=f"keystate-restore-{partition}", daemon=True
            )
            self._jobs[partition] = job
        job.thread.start()

    def cancel(self, partition: int) -> None:
        with self._lock:
            job = self._jobs.get(partition)
        if job is not None:
            job.cancelled.set()

    def cancel_all(self, wait_s: float = 0.0) -> None:
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancelled.set()
        for job in jobs:
            if wait_s > 0 and job.thread is not None:
                job.thread.join(wait_s)

    def restoring(self) -> set[int]:
        with self._lock:
            return {p for p, j in self._jobs.items() if not j.cancelled.is_set()}

    def finished(self) -> list[tuple[int, RestoreReport | BaseException]]:
        """Outcomes of jobs that ended and were not cancelled (each handed back once)."""
        done: list[tuple[int, RestoreReport | BaseException]] = []
        with self._lock:
            for p, job in list(self._jobs.items()):
                if job.outcome is None:
                    continue
                if job.thread is not None and job.thread.is_alive():
                    continue
                del self._jobs[p]
                if not job.cancelled.is_set():
                    done.append((p, job.outcome))
        return done

    def _run(self, job: _Job, previous: _Job | None) -> None:
        if previous is not None and previous.thread is not None:
            previous.thread.join()
        with self._slots:
            try:
                if job.cancelled.is_set():
                    raise RestoreCancelled(f"partition {job.partition} was revoked before its restore started")
                job.outcome = self._restore(job.partition, job.cancelled)
            except BaseException as exc:  # handed back to the session, which logs and retries
                job.outcome = exc
