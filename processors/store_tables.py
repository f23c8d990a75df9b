"""Tables of a persistent partition store: reads see the open batch's overlay, then an LRU cache, then RocksDB."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Any, Protocol

from .changelog import decode_value, split_key, table_key
from .state_machine.tables import LAYOUT, Change, Key

__all__ = ["RowCache", "RowSource", "StoreTable", "StoreTables"]

_DELETED: Any = object()
"""Overlay marker: the open batch deleted the row."""
_ABSENT: Any = object()
"""Cache marker: the committed store has no such row (misses are frequent: new ids, idempotency checks)."""


class RowSource(Protocol):
    """The committed rows of a store, as raw changelog bytes."""

    def read(self, key: bytes) -> bytes | None: ...

    def range(self, begin: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]: ...


class RowCache:
    """Decoded committed rows, least recently used evicted first; bounds the Python heap per partition."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(0, capacity)
        self._rows: OrderedDict[tuple[str, Key], Any] = OrderedDict()

    def get(self, name: str, key: Key) -> Any:
        """The cached value, `_ABSENT` for a cached miss, or None when not cached."""
        entry = (name, key)
        value = self._rows.get(entry)
        if value is not None:
            self._rows.move_to_end(entry)
        return value

    def put(self, name: str, key: Key, value: Any) -> None:
        if self.capacity == 0:
            return
        entry = (name, key)
        self._rows[entry] = value
        self._rows.move_to_end(entry)
        while len(self._rows) > self.capacity:
            self._rows.popitem(last=False)

    def clear(self) -> None:
        self._rows.clear()

    def __len__(self) -> int:
        return len(self._rows)


def _part_order(part: Any) -> tuple[int, Any]:
    # Key parts of one position may mix None, numbers and strings (timers); order them without TypeError.
    if part is None:
        return (0, 0)
    if isinstance(part, int | float):
        return (1, part)
    return (2, str(part))


def key_order(key: Key) -> tuple[tuple[int, Any], ...]:
    """A total order of keys: numbers numerically (RocksDB's byte order would put 10 before 9)."""
    return tuple(_part_order(p) for p in key)


class StoreTable:
    """One table of a partition store; implements the state machine's `Table` protocol."""

    def __init__(self, name: str, group: int, rows: RowSource, cache: RowCache, changes: list[Change]) -> None:
        self.name = name
        self._group = group
        self._rows = rows
        self._cache = cache
        self._changes = changes
        self.overlay: dict[Key, Any] = {}
        """Rows written by the open batch: value, or `_DELETED`."""
        self.below: list[dict[Key, Any]] = []
        """Overlays of batches whose transactions are committing, oldest first (pipelined commit)."""

    def _committed(self, key: Key) -> Any | None:
        cached = self._cache.get(self.name, key)
        if cached is not None:
            return None if cached is _ABSENT else cached
        data = self._rows.read(table_key(self.name, key))
        value = decode_value(self.name, data)
        self._cache.put(self.name, key, _ABSENT if value is None else value)
        return value

    def get(self, key: Key) -> Any | None:
        value = self.overlay.get(key)
        if value is None and self.below:
            for layer in reversed(self.below):
                value = layer.get(key)
                if value is not None:
                    break
        if value is not None:
            return None if value is _DELETED else value
        return self._committed(key)

    def put(self, key: Key, value: Any) -> None:
        self.overlay[key] = value
        self._changes.append((self.name, key, value))

    def delete(self, key: Key) -> None:
        if self.get(key) is None:
            return
        self.overlay[key] = _DELETED
        self._changes.append((self.name, key, None))

    def scan(self, prefix: Key) -> Iterator[tuple[Key, Any]]:
        """Rows whose key starts with `prefix` (at least the group parts), in key order; the overlay wins."""
        if len(prefix) < self._group:
            raise ValueError(f"table {self.name}: a scan needs at least {self._group} key parts")
        return iter(self._merged(prefix))

    def _merged(self, prefix: Key) -> list[tuple[Key, Any]]:
        found: dict[Key, Any] = {}
        # Keys under the prefix start with `["t",p1,...,pn,` (`scan_prefix`); the row whose key IS the
        # prefix is `["t",p1,...,pn]`. After a part comes `,` or `]`, so one range [`...,`, `...]`] holds
        # both; a numeric pn also lets `pn0`.. through (`1` -> `10`), which the check drops.
        whole = table_key(self.name, prefix)
        under = whole[:-1] + b","
        for data_key, data in self._rows.range(under, whole + b"\x00"):
            if data_key != whole and not data_key.startswith(under):
                continue
            key = split_key(data_key)[1]
            cached = self._cache.get(self.name, key)
            found[key] = cached if cached is not None and cached is not _ABSENT else decode_value(self.name, data)
        n = len(prefix)
        for layer in (*self.below, self.overlay):
            for key, value in layer.items():
                if key[:n] == prefix:
                    if value is _DELETED:
                        found.pop(key, None)
                    else:
                        found[key] = value
        return sorted(found.items(), key=lambda kv: key_order(kv[0]))

    def pending(self) -> list[tuple[Key, Any | None]]:
        """The rows the open and committing batches wrote, the newest winning: (key, value or None for a delete)."""
        merged: dict[Key, Any] = {}
        for layer in (*self.below, self.overlay):
            merged.update(layer)
        return [(key, None if value is _DELETED else value) for key, value in merged.items()]

    def items(self) -> Iterator[tuple[Key, Any]]:
        """Every row of the table (committed and overlay); for tests and debugging."""
        return iter(self._merged(()))

    def __len__(self) -> int:
        return len(self._merged(()))


class StoreTables:
    """All tables of one partition store and the changes made since the last `drain()` (like `Tables`)."""

    def __init__(self, rows: RowSource, cache: RowCache) -> None:
        self.changes: list[Change] = []
        self._cache = cache
        self._tables = {name: StoreTable(name, group, rows, cache, self.changes) for name, group in LAYOUT.items()}
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
        return tuple(LAYOUT)

    def table(self, name: str) -> StoreTable:
        return self._tables[name]

    def drain(self) -> list[Change]:
        """The changes since the last drain, in order; clears the list."""
        out = list(self.changes)
        self.changes.clear()
        return out

    def snapshot(self) -> dict[str, dict[Key, Any]]:
        """Every row of every table, committed and overlay, decoded (for tests and debugging)."""
        return {name: dict(t.items()) for name, t in self._tables.items()}

    def hold(self) -> None:
        """The open batch's transaction is committing: its overlay goes below a fresh one for the next batch."""
        for t in self._tables.values():
            t.below.append(t.overlay)
            t.overlay = {}

    def settle(self) -> None:
        """The oldest batch committed: its overlay values become cached committed rows and leave the overlays."""
        for name, t in self._tables.items():
            layer = t.below.pop(0) if t.below else t.overlay
            for key, value in layer.items():
                self._cache.put(name, key, _ABSENT if value is _DELETED else value)
            layer.clear()

    def discard(self) -> None:
        """The open batch is void: drop its overlay and the uncaptured changes (committing batches stay)."""
        for t in self._tables.values():
            t.overlay.clear()
        self.changes.clear()

    def discard_all(self) -> None:
        """A committing batch aborted: every later batch read its rows, so every overlay goes."""
        for t in self._tables.values():
            t.overlay.clear()
            t.below.clear()
        self.changes.clear()
