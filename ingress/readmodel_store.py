"""`ReadModelStore`: the admin's invocation summaries in SQLite, with the changelog offsets they reflect."""

from __future__ import annotations

import base64
import binascii
import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

__all__ = ["Cursor", "InvocationSummary", "Page", "ReadModelStore", "decode_cursor", "encode_cursor"]

# Bump when the tables change: a store of another version is rebuilt from the changelog.
_VERSION = "1"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS offsets (partition INTEGER PRIMARY KEY, next_offset INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS invocations (
    id TEXT PRIMARY KEY,
    partition INTEGER NOT NULL,
    service TEXT NOT NULL,
    handler TEXT NOT NULL,
    key TEXT,
    status TEXT NOT NULL,
    completion_status TEXT,
    deployment_id TEXT,
    created_at_ms INTEGER NOT NULL,
    modified_at_ms INTEGER NOT NULL,
    summary TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS by_modified ON invocations (modified_at_ms DESC, id);
CREATE INDEX IF NOT EXISTS by_status ON invocations (status, modified_at_ms DESC, id);
CREATE INDEX IF NOT EXISTS by_completion ON invocations (completion_status, modified_at_ms DESC, id);
CREATE INDEX IF NOT EXISTS by_service ON invocations (service, modified_at_ms DESC, id);
CREATE INDEX IF NOT EXISTS by_deployment ON invocations (deployment_id, status);
"""

_COLUMNS = (
    "id, partition, service, handler, key, status, completion_status, deployment_id, "
    "created_at_ms, modified_at_ms, summary"
)


@dataclass(frozen=True, slots=True)
class InvocationSummary:
    """What operators see of one invocation; a small part of its InvocationStatus."""

    invocation_id: str
    target: dict[str, Any]
    status: str
    deployment_id: str | None
    attempt: int
    retry_count: int
    created_at_ms: int
    modified_at_ms: int
    execute_at_ms: int | None
    completion_status: str | None
    last_failure: dict[str, Any] | None
    idempotency_key: str | None

    @classmethod
    def of(cls, status: Mapping[str, Any]) -> InvocationSummary:
        return cls(
            invocation_id=status["invocation_id"],
            target=dict(status["target"]),
            status=status["status"],
            deployment_id=status.get("deployment_id"),
            attempt=status["attempt"],
            retry_count=status["retry_count"],
            created_at_ms=status["created_at_ms"],
            modified_at_ms=status["modified_at_ms"],
            execute_at_ms=status.get("execute_at_ms"),
            completion_status=status.get("completion_status"),
            last_failure=status.get("last_failure"),
            idempotency_key=status.get("idempotency_key"),
        )

    @property
    def completed(self) -> bool:
        return self.status == "COMPLETED"


Cursor = tuple[int, str]
"""Where a page ends: (modified_at_ms, invocation id) of its last row."""


def encode_cursor(cursor: Cursor) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(cursor)).encode()).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    """The cursor behind `text`; ValueError if it is not one `encode_cursor` made."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"cursor={text[:80]!r} is not a cursor this API returned") from exc
    if not (isinstance(raw, list) and len(raw) == 2 and isinstance(raw[0], int) and isinstance(raw[1], str)):
        raise ValueError(f"cursor={text[:80]!r} is not a cursor this API returned")
    return raw[0], raw[1]


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing, newest change first; `next_cursor` is None on the last page."""

    invocations: list[InvocationSummary]
    total: int
    next_cursor: Cursor | None


@dataclass(frozen=True, slots=True)
class Row:
    """One changelog record for the store: a summary, or None for a tombstone of `invocation_id`."""

    invocation_id: str
    partition: int
    summary: InvocationSummary | None


class ReadModelStore:
    """One SQLite file: a row per invocation, plus the next changelog offset per partition.

    Rows and offsets change in one SQLite transaction, so after a crash the offsets never claim
    more than the rows hold. One connection writes (the follower's thread); queries use their own
    connection (WAL lets them read while the writer writes).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._write = self._connect()
        self._write.executescript(_SCHEMA)
        if self._meta("version") not in (None, _VERSION):
            self._wipe()
        with self._transaction():
            self._write.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (_VERSION,))
        self._read = self._connect()
        self._read_lock = threading.Lock()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=10.0)
        conn.execute("PRAGMA journal_mode=WAL")
        # A lost commit after power loss is re-read from the changelog: the offsets go with the rows.
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-8192")  # KiB: a bounded page cache, enough for inserts into the indexes
        return conn

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        """One SQLite transaction on the writer connection (autocommit mode needs an explicit BEGIN)."""
        self._write.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._write.execute("ROLLBACK")
            raise
        self._write.execute("COMMIT")

    def close(self) -> None:
        self._write.close()
        with self._read_lock:
            self._read.close()

    # ---- the writer's side (one thread) ----------------------------------------------------------

    def _meta(self, name: str) -> str | None:
        row = self._write.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else str(row[0])

    def _wipe(self) -> None:
        with self._transaction():
            self._write.execute("DELETE FROM invocations")
            self._write.execute("DELETE FROM offsets")
            self._write.execute("DELETE FROM meta")

    def offsets(self) -> dict[int, int]:
        """The next offset to read per partition (partitions never read are absent)."""
        return dict(self._write.execute("SELECT partition, next_offset FROM offsets").fetchall())

    def check_generation(self, topic: str, topic_id: str | None) -> bool:
        """Wipe the store if it was built from another topic (name or id); True if it was wiped."""
        known_topic, known_id = self._meta("topic"), self._meta("topic_id")
        stale = known_topic not in (None, topic) or (known_id is not None and topic_id is not None and known_id != topic_id)
        if stale:
            self._wipe()
        with self._transaction():
            self._write.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (_VERSION,))
            self._write.execute("INSERT OR REPLACE INTO meta VALUES ('topic', ?)", (topic,))
            if topic_id is not None:
                self._write.execute("INSERT OR REPLACE INTO meta VALUES ('topic_id', ?)", (topic_id,))
        return stale

    def reset_partitions(self, partitions: Iterable[int]) -> None:
        """Forget the rows and offset of `partitions` (to re-read them from their start; rare, so no index)."""
        with self._transaction():
            for p in partitions:
                self._write.execute("DELETE FROM invocations WHERE partition = ?", (p,))
                self._write.execute("DELETE FROM offsets WHERE partition = ?", (p,))

    def apply(self, rows: Sequence[Row], offsets: Mapping[int, int]) -> None:
        """Write one batch of rows (in changelog order) and the offsets after them, atomically."""
        upserts: list[tuple[Any, ...]] = []
        with self._transaction():
            for row in rows:
                if row.summary is None:
                    self._flush(upserts)
                    self._write.execute("DELETE FROM invocations WHERE id = ?", (row.invocation_id,))
                else:
                    s = row.summary
                    upserts.append((
                        s.invocation_id, row.partition, s.target.get("service", ""), s.target.get("handler", ""),
                        s.target.get("key"), s.status, s.completion_status, s.deployment_id,
                        s.created_at_ms, s.modified_at_ms, _json(s),
                    ))
            self._flush(upserts)
            self._write.executemany("INSERT OR REPLACE INTO offsets VALUES (?, ?)", sorted(offsets.items()))

    def _flush(self, upserts: list[tuple[Any, ...]]) -> None:
        if upserts:
            self._write.executemany(f"INSERT OR REPLACE INTO invocations ({_COLUMNS}) VALUES ({','.join('?' * 11)})", upserts)
            upserts.clear()

    # ---- queries (any thread) --------------------------------------------------------------------

    def _query(self, sql: str, args: Sequence[Any]) -> list[Any]:
        with self._read_lock:
            return self._read.execute(sql, args).fetchall()

    def count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM invocations", ())[0][0])

    def get(self, invocation_id: str) -> InvocationSummary | None:
        rows = self._query("SELECT summary FROM invocations WHERE id = ?", (invocation_id,))
        return _summary(rows[0][0]) if rows else None

    def page(
        self,
        *,
        limit: int,
        statuses: Iterable[str] = (),
        service: str | None = None,
        deployment_id: str | None = None,
        after: Cursor | None = None,
    ) -> Page:
        """Up to `limit` invocations matching every filter, most recently modified first, after `after`.

        A status filter matches the state (INVOKED, COMPLETED, ...) or the completion status
        (SUCCEEDED, FAILED, ...). `total` counts every match, not only those after the cursor.
        """
        where, args = _filters(statuses, service, deployment_id)
        total = int(self._query(f"SELECT COUNT(*) FROM invocations{_where(where)}", args)[0][0])
        if after is not None:
            # Keyset paging: the rows after the cursor in (modified_at_ms DESC, id ASC) order.
            where = [*where, "(modified_at_ms < ? OR (modified_at_ms = ? AND id > ?))"]
            args = [*args, after[0], after[0], after[1]]
        rows = self._query(
            f"SELECT summary FROM invocations{_where(where)} ORDER BY modified_at_ms DESC, id ASC LIMIT ?",
            [*args, limit + 1],
        )
        found = [_summary(r[0]) for r in rows[:limit]]
        more = len(rows) > limit
        last = found[-1] if found else None
        return Page(found, total, (last.modified_at_ms, last.invocation_id) if more and last else None)

    def status_counts(self) -> list[tuple[str, str, int]]:
        """(service, status, invocations) of the whole model: the admin's keystate_invocations gauge."""
        rows = self._query("SELECT service, status, COUNT(*) FROM invocations GROUP BY service, status", ())
        return [(str(service), str(status), int(count)) for service, status, count in rows]

    def pinned_to(self, deployment_id: str) -> int:
        """How many invocations that have not completed run on `deployment_id`."""
        rows = self._query(
            "SELECT COUNT(*) FROM invocations WHERE deployment_id = ? AND status != 'COMPLETED'", (deployment_id,)
        )
        return int(rows[0][0])


def _filters(statuses: Iterable[str], service: str | None, deployment_id: str | None) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    args: list[Any] = []
    wanted = sorted({s.strip().upper() for s in statuses if s.strip()})
    if wanted:
        marks = ",".join("?" * len(wanted))
        where.append(f"(status IN ({marks}) OR completion_status IN ({marks}))")
        args += wanted + wanted
    if service is not None:
        where.append("service = ?")
        args.append(service)
    if deployment_id is not None:
        where.append("deployment_id = ?")
        args.append(deployment_id)
    return where, args


def _where(conditions: list[str]) -> str:
    return f" WHERE {' AND '.join(conditions)}" if conditions else ""


_FIELDS = tuple(f.name for f in fields(InvocationSummary))


def _json(summary: InvocationSummary) -> str:
    # Not dataclasses.asdict: its deep copy was half the cost of a catch-up.
    return json.dumps({f: getattr(summary, f) for f in _FIELDS}, separators=(",", ":"))


def _summary(text: str) -> InvocationSummary:
    return InvocationSummary(**json.loads(text))
