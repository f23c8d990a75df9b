"""One partition processor: its tables, its lifecycle (RESTORING -> RUNNING -> CLOSED), its apply.

Pure: restoring from Kafka lives in `restore.py`; here a changelog record is just bytes in.
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from . import changelog
from .state_machine import Action, Change, Command, Config, Tables, apply

__all__ = ["PartitionProcessor", "TaskState"]


class TaskState(Enum):
    RESTORING = "RESTORING"
    RUNNING = "RUNNING"
    CLOSED = "CLOSED"


class PartitionProcessor:
    """Owns the tables of one partition of keystate.log while this process is assigned it."""

    def __init__(self, partition: int, cfg: Config) -> None:
        self.partition = partition
        self.cfg = cfg
        self.tables = Tables()
        self.state = TaskState.RESTORING

    def restore_record(self, table: str, key: bytes, value: bytes | None) -> None:
        """Apply one changelog record of `table` (as read from its topic) without capturing it again."""
        self.tables.restore(table, changelog.decode_key(key), changelog.decode_value(table, value))

    def restored(self) -> None:
        self.state = TaskState.RUNNING

    def apply(self, command: Command, now_ms: int) -> list[Action]:
        return apply(self.tables, command, now_ms, self.cfg)

    def drain(self) -> list[Change]:
        return self.tables.drain()

    def unfinished(self) -> list[tuple[str, dict[str, Any]]]:
        """Invocations that had a live attempt when the previous owner stopped."""
        return [(key[0], status) for key, status in self.tables.status.items() if status["status"] == "INVOKED"]

    def stale_invoked(self, now_ms: int, grace_ms: int) -> list[tuple[str, dict[str, Any]]]:
        """INVOKED invocations whose status has not changed for `grace_ms` (candidates for the sweep)."""
        return [(iid, s) for iid, s in self.unfinished() if now_ms - s["modified_at_ms"] >= grace_ms]

    def timers(self) -> list[tuple[tuple[Any, ...], dict[str, Any]]]:
        return list(self.tables.timers.items())

    def close(self) -> None:
        self.state = TaskState.CLOSED
