"""`InvocationReadModel`: the changelog's tables for operators, kept on disk (DuckDB) by following the changelog."""

from __future__ import annotations

import asyncio
import fcntl
import functools
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import duckdb
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient

from keystate.schemas._codec import codec
from keystate.schemas.errors import ContractError
from keystate.server.errors import KafkaUnavailable
from keystate.server.kafka import KafkaSettings, kafka_error, watermarks

from .errors import BadRequest, Unavailable
from .readmodel_sql import (
    INTERVAL_ENV,
    QUERY_MAX_ROWS_ENV,
    QUERY_TIMEOUT_ENV,
    MetaTables,
    NotReadOnly,
    QueryResult,
    query_max_rows,
    query_timeout,
    select,
    write_interval,
)
from .readmodel_store import Cursor, InvocationSummary, Page, ReadModelStore
from .readmodel_tables import TABLES, changelog_table, row_of

__all__ = [
    "INTERVAL_ENV",
    "INVOCATION_STATUS",
    "MEMORY_LIMIT_ENV",
    "QUERY_MAX_ROWS_ENV",
    "QUERY_TIMEOUT_ENV",
    "InvocationReadModel",
    "InvocationSummary",
    "MetaTables",
    "Page",
    "QueryResult",
    "changelog_table",
    "query_max_rows",
    "query_timeout",
]

log = logging.getLogger(__name__)

INVOCATION_STATUS = "keystate.InvocationStatus"
MEMORY_LIMIT_ENV = "KEYSTATE_READMODEL_MEMORY"
# DuckDB's buffer pool: what catching up and queries may hold in memory before writing out or spilling.
_MEMORY_LIMIT = "128MB"
_BATCH = 1000
# One transaction at most (while catching up): DuckDB's cost is per statement more than per row.
_TXN_RECORDS = 10_000
_TXN_BYTES = 16 * 1024 * 1024
_QUERY_THREADS = 2
_FETCH_BYTES = 4 * 1024 * 1024
_T = TypeVar("_T")


class InvocationReadModel:
    """Follows every partition of `<prefix>changelog`, mirroring its tables in a DuckDB file at `path`.

    Mirrored: status, journal, state, inbox, promises and idempotency rows (see readmodel_tables);
    a tombstone on the changelog deletes the row here, so the model holds what the processors hold.
    Memory does not grow with the rows: they live on disk, and the offsets read are saved with
    them, so a restart reads only what is new. The store is rebuilt from the changelog when its
    file is missing, or the topic was recreated (other topic id, or saved offsets beyond its end).
    `start` returns at once; `ready` turns true once the changelog has been read to the end it had
    at start. The consumer and every DuckDB call run off the event loop.
    """

    def __init__(self, settings: KafkaSettings, path: Path) -> None:
        self.topic = settings.topics.changelog_topic
        self.path = path
        self.error: str | None = None
        self.ready = False
        # Changelog records handed to this model since it started (of every table, before filtering).
        self.records_seen = 0
        # DuckDB transactions written since it started.
        self.writes = 0
        self._settings = settings
        # Caught up, the model writes at most this often (seconds; see readmodel_sql.write_interval).
        self._interval = write_interval()
        self._store: ReadModelStore | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._caught_up: asyncio.Future[None] | None = None
        # Operators' queries run on threads of their own: slow ones must not hold the loop's default
        # executor, which the ingress needs for Kafka calls. More queries at once wait for a thread.
        self._queries = ThreadPoolExecutor(_QUERY_THREADS, thread_name_prefix="keystate-query")

    async def start(self, timeout: float | None = None) -> None:
        """Start reading; with `timeout`, also wait until the read model caught up (tests, tools)."""
        loop = asyncio.get_running_loop()
        self._caught_up = loop.create_future()
        self._queries = ThreadPoolExecutor(_QUERY_THREADS, thread_name_prefix="keystate-query")
        self._thread = threading.Thread(target=self._run, args=(loop,), name=f"keystate-readmodel-{self.topic}", daemon=True)
        self._thread.start()
        if timeout is not None:
            await asyncio.wait_for(asyncio.shield(self._caught_up), timeout)

    async def stop(self) -> None:
        self.ready = False
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10.0)
        if self._caught_up is not None and not self._caught_up.done():
            self._caught_up.cancel()
        self._queries.shutdown(wait=False, cancel_futures=True)

    # ---- queries (off the loop; Unavailable if the store failed) -------------------------------

    async def _ask(self, fn: Callable[[ReadModelStore], _T]) -> _T:
        store = self._store
        if store is None:
            raise Unavailable(f"the invocation read model at {self.path} is not open yet; retry in a moment")
        try:
            return await asyncio.to_thread(fn, store)
        except duckdb.Error as exc:
            raise Unavailable(
                f"the invocation read model at {self.path} failed: {exc}; check the disk, or remove the file "
                "and restart the ingress to rebuild it from the changelog"
            ) from exc

    async def get(self, invocation_id: str) -> InvocationSummary | None:
        return await self._ask(lambda s: s.get(invocation_id))

    async def page(
        self,
        *,
        limit: int,
        statuses: Iterable[str] = (),
        service: str | None = None,
        deployment_id: str | None = None,
        after: Cursor | None = None,
    ) -> Page:
        """Invocations matching every filter, most recently modified first; see `ReadModelStore.page`."""
        wanted = list(statuses)
        return await self._ask(
            lambda s: s.page(limit=limit, statuses=wanted, service=service, deployment_id=deployment_id, after=after)
        )

    async def pinned_to(self, deployment_id: str) -> int:
        """How many invocations that have not completed run on `deployment_id`."""
        return await self._ask(lambda s: s.pinned_to(deployment_id))

    async def count(self) -> int:
        return await self._ask(lambda s: s.count())

    def status_counts(self) -> list[tuple[str, str, int]]:
        """Blocking, so off the loop (a metrics scrape): (service, status, invocations); none before the store opens."""
        store = self._store
        return [] if store is None else store.status_counts()

    async def object_state(self, service: str, key: str) -> dict[str, bytes]:
        """Every state key of the virtual object or workflow `service`/`key` with its value ({} if none)."""
        return await self._ask(lambda s: s.object_state(service, key))

    async def query(
        self, sql: str, *, timeout: float, max_rows: int, meta: MetaTables | None = None
    ) -> QueryResult:
        """Run one read-only SELECT over the model's tables (and `meta`'s), off the loop.

        BadRequest when it is not one SELECT, the engine refuses it (with the engine's message), or it
        runs longer than `timeout` seconds (it is interrupted); Unavailable when the store failed.
        """
        store = self._store
        if store is None:
            raise Unavailable(f"the read model at {self.path} is not open yet; retry in a moment")
        try:
            cursor = store.reader()
        except duckdb.Error as exc:
            raise Unavailable(f"the read model at {self.path} is closed ({exc}); retry in a moment") from exc
        run = functools.partial(select, cursor, sql, max_rows=max_rows, meta=meta)
        task = asyncio.get_running_loop().run_in_executor(self._queries, run)
        try:
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            raise BadRequest(
                f"the query ran longer than the limit of {timeout:g} s and was stopped; narrow it (WHERE, LIMIT), "
                f"or raise ${QUERY_TIMEOUT_ENV}"
            ) from None
        except NotReadOnly as exc:
            raise BadRequest(str(exc)) from None
        except duckdb.InterruptException:
            raise BadRequest("the query was interrupted (the ingress is stopping?); retry it") from None
        except (duckdb.IOException, duckdb.InternalException, duckdb.FatalException, duckdb.ConnectionException) as exc:
            raise Unavailable(
                f"the read model at {self.path} failed: {exc}; remove the file and restart the ingress to rebuild "
                "it from the changelog"
            ) from exc
        except duckdb.Error as exc:
            raise BadRequest(str(exc)) from None
        finally:
            await _stop(task, cursor)

    # ---- the follower thread -------------------------------------------------------------------

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        lock: int | None = None
        store: ReadModelStore | None = None
        consumer: Consumer | None = None
        try:
            lock = _lock(self.path)
            store = ReadModelStore(self.path, memory_limit=os.environ.get(MEMORY_LIMIT_ENV, "").strip() or _MEMORY_LIMIT)
            consumer = Consumer(self._settings.consumer_config(**{
                "group.id": f"keystate-readmodel-{id(self)}",
                # Small fetches and prefetch: catching up on a large changelog costs the ingress a few
                # MiB, not librdkafka's 64 MiB+ defaults. A larger record still comes through
                # (a fetch always returns the first batch whole, KIP-74).
                "max.partition.fetch.bytes": _FETCH_BYTES // 4,
                "fetch.max.bytes": _FETCH_BYTES,
                "queued.max.messages.kbytes": _FETCH_BYTES // 1024,
                "queued.min.messages": _BATCH,
                # Without it a full small queue idles the fetcher for librdkafka's default 1 s each time.
                "fetch.queue.backoff.ms": 5,
            }))
            ends = self._assign(consumer, store)
            self._store = store
            self._follow(loop, consumer, store, ends)
        except (KafkaException, KafkaUnavailable, duckdb.Error, OSError) as exc:
            reason = str(kafka_error(f"follow {self.topic}", exc) if isinstance(exc, KafkaException) else exc)
            log.error("the invocation read model (%s) cannot follow %s: %s", self.path, self.topic, reason)
            _threadsafe(loop, self._failed, reason)
        finally:
            if consumer is not None:
                consumer.close()
            if store is not None:
                self._store = None
                store.close()
            if lock is not None:
                os.close(lock)

    def _assign(self, consumer: Consumer, store: ReadModelStore) -> dict[int, int]:
        """Assign every partition from its saved offset; the ends (high watermarks) at start."""
        partitions = _partitions(consumer, self.topic, self._stop)
        if store.check_generation(self.topic, _topic_id(self._settings, self.topic)):
            log.warning("the invocation read model %s was built from another topic than %s (recreated: its topic id changed); rebuilding it", self.path, self.topic)
        saved = store.offsets()
        ends: dict[int, int] = {}
        reread: list[int] = [p for p in saved if p not in partitions]
        assignment = []
        for p in partitions:
            low, high = watermarks(consumer, TopicPartition(self.topic, p))
            start = saved.get(p, low)
            if start > high:
                # Offsets the topic never reached: it was recreated, so the rows of this partition are stale.
                reread.append(p)
                start = low
            ends[p] = high
            assignment.append(TopicPartition(self.topic, p, max(start, low)))
        if reread:
            log.warning("%s partitions %s are behind the read model's offsets (recreated?); re-reading them", self.topic, sorted(reread))
            store.reset_partitions(reread)
        consumer.assign(assignment)
        log.info(
            "invocation read model %s follows %s from offsets %s (ends %s)",
            self.path, self.topic, {tp.partition: tp.offset for tp in assignment}, ends,
        )
        return {tp.partition: ends[tp.partition] for tp in assignment if tp.offset < ends[tp.partition]}

    def _follow(self, loop: asyncio.AbstractEventLoop, consumer: Consumer, store: ReadModelStore, pending: dict[int, int]) -> None:
        if not pending:
            _threadsafe(loop, self._caught_up_now)
        decode = codec().decode_as
        interval = self._interval
        applied_at = 0.0
        while not self._stop.is_set():
            if pending:
                # read_committed may never show the high watermark (aborted tail): use the position.
                for tp in consumer.position([TopicPartition(self.topic, p) for p in pending]):
                    if tp.offset >= pending[tp.partition]:
                        del pending[tp.partition]
                if not pending:
                    _threadsafe(loop, self._caught_up_now)
            changes: dict[str, dict[tuple[Any, ...], tuple[Any, ...] | None]] = {}
            offsets: dict[int, int] = {}
            # Catching up, every batch is big: no need to gather longer.
            until = time.monotonic() if pending else applied_at + interval
            self._read_batch(consumer, decode, changes, offsets, until)
            if offsets:
                applied_at = time.monotonic()
                store.apply(changes, offsets)
                self.writes += 1

    def _read_batch(
        self,
        consumer: Consumer,
        decode: Callable[[str, bytes], Any],
        changes: dict[str, dict[tuple[Any, ...], tuple[Any, ...] | None]],
        offsets: dict[int, int],
        until: float,
    ) -> None:
        """Read what is there, and what comes until the monotonic time `until` (up to a transaction's
        worth), into `changes`, the last change of each key.

        One transaction takes up to _TXN_RECORDS records: DuckDB's cost is per statement and commit
        more than per row (1,000 records a transaction read ~6x slower than 10,000).
        """
        records = size = 0
        while records < _TXN_RECORDS and size < _TXN_BYTES:
            left = until - time.monotonic()
            messages = consumer.consume(_BATCH, max(left, 0.1 if records == 0 else 0.0))
            for msg in messages:
                err = msg.error()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        log.warning("reading %s: %s", self.topic, err)
                    continue
                self.records_seen += 1
                records += 1
                partition, offset = int(msg.partition() or 0), int(msg.offset() or 0)
                offsets[partition] = offset + 1
                key = msg.key()
                table = changelog_table(key)
                if table is None:
                    continue  # timers and object locks: nothing operators query
                value = msg.value()
                size += len(value or b"")
                try:
                    parts = json.loads(key.decode())  # type: ignore[union-attr]
                    decoded = None if value is None else decode(TABLES[table].record, value)
                    row_key, row = row_of(table, tuple(parts[1:]), partition, decoded)
                except (ContractError, KeyError, TypeError, ValueError) as exc:
                    log.warning("ignoring the %s row %r on %s[%d] at offset %d: %s",
                                table, key[:200], self.topic, partition, offset, exc)  # type: ignore[index]
                    continue
                # The last change of a key in a batch is the one that counts.
                changes.setdefault(table, {})[row_key] = row
            if len(messages) < _BATCH and time.monotonic() >= until:
                return  # nothing more queued: write what came

    def _caught_up_now(self) -> None:
        self.ready = True
        if self._caught_up is not None and not self._caught_up.done():
            self._caught_up.set_result(None)

    def _failed(self, reason: str) -> None:
        self.error = reason
        if self._caught_up is not None and not self._caught_up.done():
            self._caught_up.set_exception(KafkaUnavailable(reason))


def _lock(path: Path) -> int:
    """An exclusive lock on the read model's directory, held while this model runs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.parent / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise OSError(
            f"another ingress uses the read model in {path.parent}; give each ingress on this host its own "
            "state directory (--state-dir or $KEYSTATE_STATE_DIR)"
        ) from None
    return fd


def _partitions(consumer: Consumer, topic: str, stop: threading.Event, timeout: float = 30.0) -> list[int]:
    """The partitions of `topic` once every one has a leader (a just-created topic takes a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        meta = consumer.list_topics(topic, timeout=10.0).topics.get(topic)
        if meta is not None and meta.error is None and meta.partitions and all(
            p.leader >= 0 and p.error is None for p in meta.partitions.values()
        ):
            return sorted(meta.partitions)
        if time.monotonic() > deadline:
            detail = "does not exist" if meta is None or not meta.partitions else f"is not ready ({meta.error})"
            raise KafkaUnavailable(f"topic {topic} {detail}; create keystate's topics with `keystate topics create`")
        if stop.wait(0.2):
            raise KafkaUnavailable(f"stopped while waiting for topic {topic}")


def _topic_id(settings: KafkaSettings, topic: str) -> str | None:
    """The topic's id (it changes when the topic is recreated), or None if the broker does not say."""
    try:
        admin = AdminClient(settings.admin_config())
        description = admin.describe_topics(TopicCollection([topic]))[topic].result(timeout=10.0)
        return str(description.topic_id)
    except Exception as exc:  # an old broker or a missing ACL: fall back to the offset check alone
        log.info("no topic id for %s (%s); a recreated topic is noticed by its offsets only", topic, exc)
        return None


async def _stop(task: asyncio.Future[Any], cursor: duckdb.DuckDBPyConnection) -> None:
    """Interrupt a query still running (timed out, or its request went away), then close its connection."""
    while not task.done():
        # Until it ends: an interrupt that came before the query started is not remembered.
        try:
            cursor.interrupt()
        except duckdb.Error:
            break
        await asyncio.wait([task], timeout=0.05)
    if task.done() and not task.cancelled():
        task.exception()  # retrieved: a query stopped on purpose is not an unhandled error
    try:
        cursor.close()
    except duckdb.Error:
        pass


def _threadsafe(loop: asyncio.AbstractEventLoop, fn: Callable[..., Any], *args: Any) -> None:
    try:
        loop.call_soon_threadsafe(fn, *args)
    except RuntimeError:
        pass  # the loop closed: nobody is left to tell
