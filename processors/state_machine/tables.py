"""Tables of a partition: in-memory key/value stores whose every write is captured for the changelog."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Protocol

__all__ = ["LAYOUT", "Change", "InMemoryTable", "Key", "Table", "Tables"]

Key = tuple[Any, ...]
Change = tuple[str, Key, Any]
"""(table name, key, new value or None for a delete): one record for a changelog topic."""


class Table(Protocol):
    """What the state machine needs of a table; a persistent store can implement the same."""

    name: str

    def get(self, key: Key) -> Any | None: ...

    def put(self, key: Key, value: Any) -> None: ...

    def delete(self, key: Key) -> None: ...

    def scan(self, prefix: Key) -> Iterator[tuple[Key, Any]]: ...

    def __len__(self) -> int: ...


class InMemoryTable:
    """A dict grouped by the first `group` key parts, so a prefix scan touches only its group."""

    def __init__(self, name: str, group: int, changes: list[Change]) -> None:
        self.name = name
        self._group = group
        self._rows: dict[Key, dict[Key, Any]] = {}
        self._changes = changes

    def get(self, key: Key) -> Any | None:
        rows = self._rows.get(key[: self._group])
        return None if rows is None else rows.get(key)

    def put(self, key: Key, value: Any) -> None:
        self._rows.setdefault(key[: self._group], {})[key] = value
        self._changes.append((self.name, key, value))

    def delete(self, key: Key) -> None:
        group = key[: self._group]
        rows = self._rows.get(group)
        if rows is None or key not in rows:
            return
        del rows[key]
        if not rows:
            del self._rows[group]
        self._changes.append((self.name, key, None))

    def scan(self, prefix: Key) -> Iterator[tuple[Key, Any]]:
        """Rows whose key starts with `prefix`; `prefix` must cover at least the group parts."""
        if len(prefix) < self._group:
            raise ValueError(f"table {self.name}: a scan needs at least {self._group} key parts")
        rows = self._rows.get(prefix[: self._group], {})
        n = len(prefix)
        return iter([(k, v) for k, v in rows.items() if k[:n] == prefix])

    def restore(self, key: Key, value: Any | None) -> None:
        """Apply one changelog record without capturing it again."""
        group = key[: self._group]
        if value is None:
            rows = self._rows.get(group)
            if rows is not None:
                rows.pop(key, None)
                if not rows:
                    del self._rows[group]
        else:
            self._rows.setdefault(group, {})[key] = value

    def items(self) -> Iterator[tuple[Key, Any]]:
        for rows in self._rows.values():
            yield from rows.items()

    def __len__(self) -> int:
        return sum(len(rows) for rows in self._rows.values())


# table name -> how many leading key parts group rows for a scan
_LAYOUT = {
    "status": 1,  # (invocation_id,) -> InvocationStatus
    "journal": 1,  # (invocation_id, index) -> JournalRecord
    "state": 2,  # (service, key, state_key) -> StateValue
    "inbox": 2,  # (service, key, seq) -> InboxItem
    "objects": 2,  # (service, key) -> ObjectStatus
    "timers": 1,  # (invocation_id, kind, entry index or attempt) -> TimerValue (fire time inside)
    "promises": 2,  # (service, key, name) -> PromiseValue
    "idempotency": 3,  # (service, key or "", handler, idempotency key) -> IdempotencyValue
}
LAYOUT = _LAYOUT
"""Table name -> key parts that group a scan; persistent stores apply the same scan rule."""


class Tables:
    """All tables of one partition and the changes made since the last `drain()`."""

    def __init__(self) -> None:
        self.changes: list[Change] = []
        self._tables = {name: InMemoryTable(name, group, self.changes) for name, group in _LAYOUT.items()}
        self.status = self._tables["status"]
        self.journal = self._tables["journal"]
        self.state = self._tables["state"]
        self.inbox = self._tables["inbox"]
        self.objects = self._tables["objects"]
        self.timers = self._tables["timers"]
        self.promises = self._tables["promises"]
        self.idempotency = self._tables["idempotency"]

    @staticmethod
    def names() -> tuple[str, ...]:
        return tuple(_LAYOUT)

    def table(self, name: str) -> InMemoryTable:
        return self._tables[name]

    def drain(self) -> list[Change]:
        """The changes since the last drain, in order; clears the list."""
        out = list(self.changes)
        self.changes.clear()
        return out

    def restore(self, name: str, key: Key, value: Any | None) -> None:
        self._tables[name].restore(key, value)

    def snapshot(self) -> dict[str, dict[Key, Any]]:
        """Every row of every table (for tests and debugging)."""
        return {name: dict(t.items()) for name, t in self._tables.items()}
