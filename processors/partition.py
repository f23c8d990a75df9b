"""One partition processor: its store, its apply, what a new owner must resume.

Pure: restoring from Kafka lives in `restore.py`; the store is handed in already restored.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from .state_machine import Action, Change, Command, Config, Publish, apply
from .store import PartitionStore

__all__ = ["PartitionProcessor"]

log = logging.getLogger(__name__)

# Operators' commands the state machine may refuse; the refusal goes back to the admin as a FAILED reply.
_OPERATOR_COMMANDS = frozenset({"keystate.SetStateCommand", "keystate.RestartAsNewCommand"})


def _log_refusals(partition: int, name: str, actions: list[Action]) -> None:
    """Log a refused state edit or restart: the reply's message names the key or invocation and why."""
    for action in actions:
        if isinstance(action, Publish) and action.name == "keystate.QueryOutputReply":
            record = action.record
            if record["status"] == "FAILED" and record["result"] is not None:
                log.warning("partition %d refused %s (request %s): %s", partition, name.removeprefix("keystate."),
                            record["request_id"], record["result"][1]["message"])


class PartitionProcessor:
    """Owns the store of one partition of keystate.log while this process is assigned it."""

    def __init__(self, partition: int, cfg: Config, store: PartitionStore) -> None:
        self.partition = partition
        self.cfg = cfg
        self.store = store
        self.tables = store.tables

    def apply(self, command: Command, now_ms: int) -> list[Action]:
        actions = apply(self.tables, command, now_ms, self.cfg)  # type: ignore[arg-type]  # StoreTables has Tables' shape
        if command[0] in _OPERATOR_COMMANDS:
            _log_refusals(self.partition, command[0], actions)
        return actions

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
