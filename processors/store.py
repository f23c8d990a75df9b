"""A persistent store per log partition: the changelog's rows in RocksDB, checkpointed against changelog offsets.

Key spaces of one store (rows start with `[`, so the private ones below cannot collide with them):
  `["table",part,...]`          a row: the changelog key; value: the changelog record's Avro bytes
  `\\x00meta/layout`             the layout version of this store (another version: the store is wiped)
  `\\x00meta/checkpoint`         JSON `Checkpoint`: the changelog generation and the next offset not in the store
  `\\x01` + status row key       index: the invocation is INVOKED (from the `HEADER_STATUS` header)
  `\\x02` + u64 BE fire_at + key  index: a timers row by fire time (from `HEADER_FIRE_AT`); stale ones are
                                 skipped and deleted when read (the row is gone or fires at another time)
Pure storage: no Kafka here. The processor shell restores with `apply`, commits batches with `commit`.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rocksdict

from .changelog import HEADER_FIRE_AT, HEADER_STATUS, decode_value, split_key
from .errors import StoreFailed, StoreLocked
from .state_machine.tables import Key
from .store_tables import RowCache, StoreTables

__all__ = ["LAYOUT_VERSION", "Checkpoint", "PartitionStore", "Record", "StoreSettings", "StoreTables"]

log = logging.getLogger(__name__)

LAYOUT_VERSION = b"1"
"""Bump when the key spaces above change: an older store is then wiped and rebuilt from the changelog."""

Record = tuple[bytes, bytes | None, Sequence[tuple[str, bytes]] | None]
"""A changelog record: (key, value or None for a tombstone, headers)."""

_LAYOUT_KEY = b"\x00meta/layout"
_CHECKPOINT_KEY = b"\x00meta/checkpoint"
_INVOKED = b"\x01"
_TIMERS = b"\x02"
_STATUS_ROW = b'["status",'
_TIMERS_ROW = b'["timers",'
_ROWS, _ROWS_END = b"[", b"\\"  # `\\` is the byte after `[`: the end of the rows' key space
_EVERYTHING_END = b"\xff"  # no key of any space starts with 0xff
_INVOKED_STATE = b"INVOKED"


@dataclass(frozen=True, slots=True)
class StoreSettings:
    """Memory bounds of the partition stores of one processor process."""

    cache_rows: int = 2_000
    """Decoded rows kept per partition (LRU): bounds the Python heap."""
    block_cache_bytes: int = 32 << 20
    """RocksDB block cache shared by all partitions of a process."""
    write_buffer_bytes: int = 4 << 20
    """RocksDB memtable per partition."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far a store follows its changelog partition; written atomically with the rows it covers."""

    topic_id: str
    """Identity (generation) of the changelog topic the store follows."""
    offset: int
    """The next changelog offset NOT in the store."""
    written_at_ms: int
    """Wall clock of the write (a store older than the tombstone retention must be rebuilt)."""

    def encode(self) -> bytes:
        return json.dumps({"topic_id": self.topic_id, "offset": self.offset, "written_at_ms": self.written_at_ms}).encode()

    @classmethod
    def decode(cls, data: bytes) -> Checkpoint:
        raw = json.loads(data)
        return cls(str(raw["topic_id"]), int(raw["offset"]), int(raw["written_at_ms"]))


@functools.cache
def _block_cache(capacity: int) -> Any:
    # One block cache per size for the whole process, so N partitions do not multiply its memory.
    return rocksdict.Cache(capacity)


def _options(settings: StoreSettings) -> Any:
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.set_write_buffer_size(settings.write_buffer_bytes)
    opts.set_max_write_buffer_number(2)
    opts.set_keep_log_file_num(2)
    table = rocksdict.BlockBasedOptions()
    table.set_block_cache(_block_cache(settings.block_cache_bytes))
    # Index and filter blocks live in the bounded cache, not beside it; a bloom filter answers misses
    # (new invocation ids, idempotency checks) without reading a data block.
    table.set_cache_index_and_filter_blocks(True)
    table.set_pin_l0_filter_and_index_blocks_in_cache(True)
    table.set_bloom_filter(10, False)
    opts.set_block_based_table_factory(table)
    return opts


def _header(headers: Sequence[tuple[str, bytes]] | None, name: str) -> bytes | None:
    if headers:
        for key, value in headers:
            if key == name:
                return value
    return None


def _field(table: str, data: bytes, name: str) -> Any:
    """One field of a row's value, decoded (only for records written without the index headers)."""
    value: Any = decode_value(table, data)
    return value[name]


def _fire_at(fire_at_ms: int) -> bytes:
    return max(0, fire_at_ms).to_bytes(8, "big")


class _Rows:
    """Committed rows read straight from RocksDB (the `RowSource` of the tables)."""

    def __init__(self, db: Any) -> None:
        self.db = db

    def read(self, key: bytes) -> bytes | None:
        return self.db.get(key)

    def iterate(self, prefix: bytes) -> Iterator[tuple[bytes, bytes]]:
        return _range(self.db, prefix, _after(prefix))


def _after(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with `prefix` (prefixes here never end in 0xff)."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _range(db: Any, begin: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Keys in [begin, end). A generator: its frame keeps `opts` and `end` alive while it iterates.

    rocksdict does not keep the upper bound alive for the iterator: returned from a plain function,
    the bound was freed and reused, and a journal scan ran on into the state rows. The explicit
    check makes the range exact whatever the bound does.
    """
    opts = rocksdict.ReadOptions()
    opts.set_iterate_upper_bound(end)
    for key, value in db.items(from_key=begin, read_opt=opts):
        if key >= end:
            return
        yield key, value


class PartitionStore:
    """RocksDB tables of one log partition; reads see the open batch's overlay."""

    def __init__(self, db: Any, path: Path, partition: int, settings: StoreSettings) -> None:
        self._db = db
        self.path = path
        self.partition = partition
        self.settings = settings
        self._cache = RowCache(settings.cache_rows)
        self.tables = StoreTables(_Rows(db), self._cache)
        self._checkpoint: Checkpoint | None = None
        self._closed = False

    @classmethod
    def open(cls, path: Path, partition: int, settings: StoreSettings) -> PartitionStore:
        """Open (or create) the store at directory `path`; a store of another layout version is wiped."""
        path.mkdir(parents=True, exist_ok=True)
        try:
            db = rocksdict.Rdict(str(path), _options(settings))
        except Exception as exc:
            if "lock" in str(exc).lower():
                raise StoreLocked(
                    f"the store of partition {partition} at {path} is locked by another process: another "
                    "processor runs with the same --instance-id and --state-dir; stop it or give this one "
                    f"its own --instance-id ({exc})"
                ) from exc
            raise StoreFailed(f"cannot open the store of partition {partition} at {path}: {exc}") from exc
        store = cls(db, path, partition, settings)
        layout = db.get(_LAYOUT_KEY)
        if layout != LAYOUT_VERSION:
            if layout is not None or db.get(_CHECKPOINT_KEY) is not None:
                log.warning(
                    "store of partition %d at %s has layout %r, not %r: wiping it (it is rebuilt from the changelog)",
                    partition, path, layout, LAYOUT_VERSION,
                )  # fmt: skip
            store.wipe()
        else:
            data = db.get(_CHECKPOINT_KEY)
            store._checkpoint = None if data is None else Checkpoint.decode(data)
        return store

    def checkpoint(self) -> Checkpoint | None:
        """The changelog position the committed rows reflect; None for an empty (fresh or wiped) store."""
        return self._checkpoint

    def apply(self, records: Iterable[Record], checkpoint: Checkpoint | None) -> int:
        """Write raw changelog records (in changelog order) and `checkpoint` in one atomic batch; the count.

        For restore: values are not decoded; the cache is dropped, since any row may have changed.
        """
        self._cache.clear()
        return self._write(records, checkpoint)

    def commit(self, records: Iterable[Record], checkpoint: Checkpoint | None) -> None:
        """The batch's transaction committed: write its changelog records, then the overlay becomes cached rows."""
        self._write(records, checkpoint)
        self.tables.settle()

    def discard(self) -> None:
        """The batch's transaction aborted (or is re-run): forget the overlay and the captured changes."""
        self.tables.discard()

    def _write(self, records: Iterable[Record], checkpoint: Checkpoint | None) -> int:
        batch = rocksdict.WriteBatch(raw_mode=True)
        put, delete = batch.put, batch.delete
        count = 0
        for key, value, headers in records:
            count += 1
            if value is None:
                delete(key)
            else:
                put(key, value)
            if key.startswith(_STATUS_ROW):
                state = None if value is None else _header(headers, HEADER_STATUS)
                if state is None and value is not None:
                    state = str(_field("status", value, "status")).encode()  # a writer without headers
                if state == _INVOKED_STATE:
                    put(_INVOKED + key, b"")
                else:
                    delete(_INVOKED + key)
            elif value is not None and key.startswith(_TIMERS_ROW):
                fire = _header(headers, HEADER_FIRE_AT)
                fire_at = int(fire) if fire is not None else int(_field("timers", value, "fire_at_ms"))
                put(_TIMERS + _fire_at(fire_at) + key, b"")
        if checkpoint is not None:
            put(_CHECKPOINT_KEY, checkpoint.encode())
        self._commit_batch(batch, "write")
        if checkpoint is not None:
            self._checkpoint = checkpoint
        return count

    def _commit_batch(self, batch: Any, what: str) -> None:
        try:
            self._db.write(batch)
        except Exception as exc:
            raise StoreFailed(f"cannot {what} the store of partition {self.partition} at {self.path}: {exc}") from exc

    def wipe(self) -> None:
        """Delete every row, index entry and the checkpoint (the shell then rebuilds from the changelog)."""
        try:
            self._db.delete_range(b"", _EVERYTHING_END)
            self._db.put(_LAYOUT_KEY, LAYOUT_VERSION)
            # Reclaims the disk of the deleted range now rather than when compaction gets round to it.
            self._db.compact_range(None, None)
        except Exception as exc:
            raise StoreFailed(f"cannot wipe the store of partition {self.partition} at {self.path}: {exc}") from exc
        self._checkpoint = None
        self._cache.clear()
        self.tables.discard()

    def invoked(self) -> list[str]:
        """Ids of the invocations whose status is INVOKED (committed rows and the open batch's overlay)."""
        ids = {split_key(key[1:])[1][0] for key, _ in _range(self._db, _INVOKED, _after(_INVOKED))}
        for (iid,), value in self.tables.status.pending():
            if value is not None and str(value["status"]) == "INVOKED":
                ids.add(iid)
            else:
                ids.discard(iid)
        return sorted(ids)

    def due_timers(self, until_ms: int) -> list[tuple[Key, Any]]:
        """Committed timer rows with fire_at_ms <= until_ms, in fire-time order, decoded."""
        due: list[tuple[Key, Any]] = []
        stale = rocksdict.WriteBatch(raw_mode=True)
        for index_key, _ in _range(self._db, _TIMERS, _TIMERS + _fire_at(until_ms + 1)):
            fire_at = int.from_bytes(index_key[1:9], "big")
            row_key = index_key[9:]
            value = decode_value("timers", self._db.get(row_key))
            if value is None or int(value["fire_at_ms"]) != fire_at:
                stale.delete(index_key)  # the row is gone or was re-registered at another time
                continue
            due.append((split_key(row_key)[1], value))
        if not stale.is_empty():
            self._commit_batch(stale, "clean the timer index of")
        return due

    def close(self) -> None:
        """Flush and release the store (and its lock); idempotent; the store object is unusable afterwards."""
        if self._closed:
            return
        self._closed = True
        self.tables.discard()
        self._cache.clear()
        try:
            self._db.close()
        except Exception as exc:
            raise StoreFailed(f"cannot close the store of partition {self.partition} at {self.path}: {exc}") from exc

