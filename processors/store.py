"""A persistent store per log partition: the changelog's rows in RocksDB, checkpointed against changelog offsets."""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rocksdict

from .changelog import HEADER_FIRE_AT, HEADER_STATUS, decode_value, scan_prefix, split_key
from .errors import StoreFailed, StoreLocked
from .state_machine.tables import Key
from .store_tables import RowCache, StoreTables

__all__ = ["LAYOUT_VERSION", "Checkpoint", "PartitionStore", "Record", "StoreSettings", "StoreTables"]

log = logging.getLogger(__name__)

LAYOUT_VERSION = b"1"
"""Bump when the key spaces below change: an older store is then wiped and rebuilt from the changelog."""

Record = tuple[bytes, bytes | None, Sequence[tuple[str, bytes]] | None]
"""A changelog record: (key, value or None for a tombstone, headers)."""

# Key spaces of one store. Rows start with `[`, so the private spaces below cannot collide with them.
#   `["table",part,...]`           a row: its changelog key; value: the changelog record's Avro bytes
#   `\x00meta/layout`              the layout version (another version: the store is wiped on open)
#   `\x00meta/checkpoint`          JSON `Checkpoint`, written in the same WriteBatch as the rows it covers
#   `\x01` + status row key        the invocation is INVOKED (from the `HEADER_STATUS` header)
#   `\x02` + u64 BE fire_at + key  a timers row by fire time (from `HEADER_FIRE_AT`); an entry whose row is
#                                  gone or fires at another time is stale: skipped and deleted when read
# Pure storage: no Kafka here. The shell restores with `apply` and commits batches with `commit`. A store
# is used by one thread at a time (its overlay and cache are plain Python objects).
_LAYOUT_KEY = b"\x00meta/layout"
_CHECKPOINT_KEY = b"\x00meta/checkpoint"
_INVOKED = b"\x01"
_TIMERS = b"\x02"
_STATUS_ROW = scan_prefix("status", ())
_TIMERS_ROW = scan_prefix("timers", ())
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
    restore_write_buffer_bytes: int = 8 << 20
    """RocksDB memtable of a partition while it restores many records (fewer flushes per MB)."""

    def __post_init__(self) -> None:
        if self.cache_rows < 0:
            raise ValueError(f"cache_rows is {self.cache_rows}: give 0 (no cache) or more rows")
        for name in ("block_cache_bytes", "write_buffer_bytes", "restore_write_buffer_bytes"):
            if getattr(self, name) < 64 << 10:
                raise ValueError(f"{name} is {getattr(self, name)}: give at least 64 KiB ({64 << 10})")


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


def _options(settings: StoreSettings, bulk: bool = False) -> Any:
    opts = rocksdict.Options(raw_mode=True)
    opts.create_if_missing(True)
    if bulk:
        # Restore only writes: a vector memtable appends (and sorts once, at flush) where the skip list
        # searches per insert; reads from it would sort on every get, so the store reopens without it.
        opts.set_memtable_factory(rocksdict.MemtableFactory.vector())
        opts.set_allow_concurrent_memtable_write(False)
    opts.set_write_buffer_size(settings.restore_write_buffer_bytes if bulk else settings.write_buffer_bytes)
    opts.set_max_write_buffer_number(2)
    opts.set_keep_log_file_num(2)
    table = rocksdict.BlockBasedOptions()
    table.set_block_cache(_block_cache(settings.block_cache_bytes))
    # Index and filter blocks stay beside the cache (about 1% of the data): inside it, data blocks evicted
    # them and every miss re-read a whole index block (measured: 10k instead of 40-90k gets/s with
    # 200 MB of rows and 32 MB of cache). A bloom filter answers misses (new ids, idempotency checks).
    table.set_cache_index_and_filter_blocks(False)
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

    def range(self, begin: bytes, end: bytes) -> Iterator[tuple[bytes, bytes]]:
        return _range(self.db, begin, end)


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


def _open_db(path: Path, partition: int, settings: StoreSettings, bulk: bool) -> Any:
    try:
        path.mkdir(parents=True, exist_ok=True)
        opts = _options(settings, bulk)
        # Naming the default column family's options stops rocksdict from reloading the ones saved
        # by the last open (which would drop the shared block cache and the write buffer size).
        return rocksdict.Rdict(str(path), opts, column_families={"default": opts})
    except Exception as exc:
        if "lock" in str(exc).lower():
            raise StoreLocked(
                f"the store of partition {partition} at {path} is locked by another process: another "
                "processor runs with the same --instance-id and --state-dir; stop it or give this one "
                f"its own --instance-id ({exc})"
            ) from exc
        raise StoreFailed(f"cannot open the store of partition {partition} at {path}: {exc}") from exc


class PartitionStore:
    """RocksDB tables of one log partition; reads see the open batch's overlay."""

    def __init__(self, db: Any, path: Path, partition: int, settings: StoreSettings) -> None:
        self._db = db
        self.path = path
        self.partition = partition
        self.settings = settings
        self._cache = RowCache(settings.cache_rows)
        self._rows = _Rows(db)
        self.tables = StoreTables(self._rows, self._cache)
        self._checkpoint: Checkpoint | None = None
        self._closed = False
        self._write_opt: Any = None  # rocksdict's default (with the write-ahead log) unless restoring

    @classmethod
    def open(cls, path: Path, partition: int, settings: StoreSettings) -> PartitionStore:
        """Open (or create) the store at directory `path`; a store of another layout version is wiped.

        Raises StoreLocked when another process (or another open in this one) holds it.
        """
        store = cls(_open_db(path, partition, settings, bulk=False), path, partition, settings)
        try:
            store._load()
        except BaseException:
            store.close()
            raise
        return store

    def _load(self) -> None:
        """Read the layout version and the checkpoint; wipe a store this code cannot read."""
        try:
            layout = self._db.get(_LAYOUT_KEY)
            fresh = layout is None and next(_range(self._db, b"", _EVERYTHING_END), None) is None
            if fresh:
                self._db.put(_LAYOUT_KEY, LAYOUT_VERSION)
                return
            data = self._db.get(_CHECKPOINT_KEY) if layout == LAYOUT_VERSION else None
        except Exception as exc:
            raise StoreFailed(f"cannot read the store of partition {self.partition} at {self.path}: {exc}") from exc
        if layout != LAYOUT_VERSION:
            reason = f"its layout is {layout!r}, not {LAYOUT_VERSION!r}"
        else:
            try:
                self._checkpoint = None if data is None else Checkpoint.decode(data)
                return
            except (ValueError, KeyError, TypeError) as exc:
                reason = f"its checkpoint {data!r} is unreadable ({exc})"
        log.warning("wiping the store of partition %d at %s: %s; it is rebuilt from the changelog", self.partition, self.path, reason)
        self.wipe()

    def checkpoint(self) -> Checkpoint | None:
        """The changelog position the committed rows reflect; None for an empty (fresh or wiped) store."""
        return self._checkpoint

    def apply(self, records: Iterable[Record], checkpoint: Checkpoint | None) -> int:
        """Write raw changelog records (in changelog order) and `checkpoint` in one atomic batch; the count.

        For restore: values are not decoded; the cache is dropped, since any row may have changed.
        """
        count = self._write(records, checkpoint)
        if count:
            self._cache.clear()
        return count

    @contextlib.contextmanager
    def restoring(self) -> Iterator[None]:
        """Bulk mode for `apply` during a long restore; on exit everything is on disk and the store reopened.

        The store is reopened with a vector memtable of `restore_write_buffer_bytes`, and batches are
        written without the write-ahead log. A crash loses the unflushed writes, but each batch
        carries its checkpoint, so the store reopens at an older checkpoint that matches its rows and
        the restore resumes there. The flush on exit puts everything on disk before commits with the
        log resume (replaying a log over writes that never reached it would mix two points in time).
        Measured on 128 MB of ~200-byte rows, two partitions at once: 43 MB/s with the log and a skip
        list, 61-68 MB/s this way (bench/README.md). Nothing may read the store meanwhile.
        """
        bulk = rocksdict.WriteOptions()
        setattr(bulk, "disable_wal", True)  # noqa: B010  # a property at runtime; rocksdict's stub says method
        self._reopen(bulk=True)
        self._write_opt = bulk
        try:
            yield
        finally:
            self._write_opt = None
            try:
                self._db.flush()
            except Exception as exc:
                raise StoreFailed(f"cannot flush the restored store of partition {self.partition} at {self.path}: {exc}") from exc
            self._reopen(bulk=False)

    def _reopen(self, bulk: bool) -> None:
        try:
            self._db.close()
        except Exception as exc:
            raise StoreFailed(f"cannot close the store of partition {self.partition} at {self.path}: {exc}") from exc
        self._db = self._rows.db = _open_db(self.path, self.partition, self.settings, bulk)

    def commit(self, records: Iterable[Record], checkpoint: Checkpoint | None) -> None:
        """The batch's transaction committed: write its changelog records, then the overlay becomes cached rows."""
        self._write(records, checkpoint)
        self.tables.settle()

    def discard(self) -> None:
        """The batch's transaction aborted (or is re-run): forget the overlay and the captured changes."""
        self.tables.discard()

    def hold(self) -> None:
        """The batch's transaction is committing; the next batch writes over its overlay (see StoreTables.hold)."""
        self.tables.hold()

    def discard_all(self) -> None:
        """A committing transaction aborted: forget every overlay."""
        self.tables.discard_all()

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
            if self._write_opt is None:
                self._db.write(batch)
            else:
                self._db.write(batch, self._write_opt)
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
        self.tables.discard_all()

    def invoked(self) -> list[str]:
        """Ids of the invocations whose status is INVOKED (committed rows and the open batch's overlay)."""
        ids = {split_key(key[1:])[1][0] for key, _ in _range(self._db, _INVOKED, _after(_INVOKED))}
        for (iid,), value in self.tables.status.pending():
            if value is not None and value["status"] == "INVOKED":  # also a (str, Enum) member
                ids.add(iid)
            else:
                ids.discard(iid)
        return sorted(ids)

    def due_timers(self, until_ms: int, limit: int | None = None, after_ms: int | None = None) -> list[tuple[Key, Any]]:
        """Committed timer rows with after_ms < fire_at_ms <= until_ms, in fire-time order, decoded (at most `limit`)."""
        return [(split_key(row_key)[1], value) for _, row_key, value in self._timers(after_ms, until_ms, limit)]

    def next_fire_at(self) -> int | None:
        """The earliest fire time of a committed timer row; None without timers."""
        first = self._timers(None, None, 1)
        return first[0][0] if first else None

    def _timers(self, after_ms: int | None, until_ms: int | None, limit: int | None) -> list[tuple[int, bytes, Any]]:
        """(fire_at_ms, row key, decoded row) from the timer index; stale entries met on the way are deleted."""
        begin = _TIMERS if after_ms is None else _TIMERS + _fire_at(after_ms + 1)
        end = _after(_TIMERS) if until_ms is None else _TIMERS + _fire_at(until_ms + 1)
        found: list[tuple[int, bytes, Any]] = []
        stale = rocksdict.WriteBatch(raw_mode=True)
        for index_key, _ in _range(self._db, begin, end):
            if limit is not None and len(found) >= limit:
                break
            fire_at = int.from_bytes(index_key[1:9], "big")
            row_key = index_key[9:]
            value: Any = decode_value("timers", self._db.get(row_key))
            if value is None or int(value["fire_at_ms"]) != fire_at:
                stale.delete(index_key)  # the row is gone or was re-registered at another time
                continue
            found.append((fire_at, row_key, value))
        if not stale.is_empty():
            self._commit_batch(stale, "clean the timer index of")
        return found

    def close(self) -> None:
        """Flush and release the store (and its lock); idempotent; the store object is unusable afterwards."""
        if self._closed:
            return
        self._closed = True
        self.tables.discard_all()
        self._cache.clear()
        try:
            self._db.close()
        except Exception as exc:
            raise StoreFailed(f"cannot close the store of partition {self.partition} at {self.path}: {exc}") from exc

