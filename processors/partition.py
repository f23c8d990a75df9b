"""One partition processor: its store, its apply, what a new owner must resume.

Pure: restoring from Kafka lives in `restore.py`; the store is handed in already restored.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .state_machine import Action, Change, Command, Config, apply
from .store import PartitionStore

__all__ = ["PartitionProcessor"]


class PartitionProcessor:
    """Owns the store of one partition of keystate.log while this process is assigned it."""

    def __init__(self, partition: int, cfg: Config, store: PartitionStore) -> None:
        self.partition = partition
        self.cfg = cfg
        self.store = store
        self.tables = store.tables

    def apply(self, command: Command, now_ms: int) -> list[Action]:
        return apply(self.tables, command, now_ms, self.cfg)  # type: ignore[arg-type]  # StoreTables has Tables' shape

    def drain(self) -> list[Change]:
        return self.tables.drain()

    def unfinished(self) -> Iterator[tuple[str, dict[str, Any]]]:
        """Invocations with a live attempt (INVOKED), from the store's index: not a scan of every status."""
        for iid in self.store.invoked():
            status = self.tables.status.get((iid,))
            if status is not None and status["status"] == "INVOKED":
                yield iid, status

    def stale_invoked(self, now_ms: int, grace_ms: int) -> list[tuple[str, dict[str, Any]]]:
        """INVOKED invocations whose status has not changed for `grace_ms` (candidates for the sweep)."""
        return [(iid, s) for iid, s in self.unfinished() if now_ms - s["modified_at_ms"] >= grace_ms]
