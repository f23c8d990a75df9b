"""The read model's DuckDB store alone: keyset paging, filters, tombstones, offsets with rows, cursors, table keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest

from keystate.ingress.readmodel_tables import changelog_table
from keystate.ingress.readmodel_store import InvocationSummary, ReadModelStore, decode_cursor, encode_cursor
from keystate.ingress.readmodel_tables import row_of
from keystate.processors.changelog import table_key
from keystate.schemas._codec import codec

from readmodel_support import NOW, status

Rows = dict[tuple[Any, ...], tuple[Any, ...] | None]


def _iid(n: int) -> str:
    return f"inv_{n:032d}"


def _status(n: int, state: str = "INVOKED", *, partition: int = 0, **fields: Any) -> tuple[tuple[Any, ...], tuple[Any, ...] | None]:
    """A status row as the follower makes it: encoded and decoded like a changelog record."""
    value = codec().decode_as("keystate.InvocationStatus", codec().encode("keystate.InvocationStatus", status(_iid(n), state, **fields)))
    return row_of("status", (_iid(n),), partition, value)


def _statuses(*changes: tuple[tuple[Any, ...], tuple[Any, ...] | None]) -> dict[str, Rows]:
    return {"status": dict(changes)}


def _gone(n: int) -> tuple[tuple[Any, ...], None]:
    return (_iid(n),), None


def test_pages_follow_each_other_without_gaps_or_repeats_even_when_rows_share_a_millisecond(tmp_path: Path) -> None:
    store = ReadModelStore(tmp_path / "rm.duckdb")
    store.apply(_statuses(*(_status(n, modified_at_ms=NOW + n // 10) for n in range(95))), {0: 95})
    expected = sorted((_iid(n) for n in range(95)), key=lambda iid: (-(NOW + int(iid[4:]) // 10), iid))

    seen, after, pages = [], None, 0
    while True:
        page = store.page(limit=7, after=after)
        assert page.total == 95 and len(page.invocations) <= 7
        seen += [s.invocation_id for s in page.invocations]
        pages += 1
        if page.next_cursor is None:
            break
        after = decode_cursor(encode_cursor(page.next_cursor))
    assert seen == expected and pages == 14


def test_filters_match_state_or_completion_service_and_deployment(tmp_path: Path) -> None:
    store = ReadModelStore(tmp_path / "rm.duckdb")
    cart = {"service": "Cart", "handler": "add", "key": "c", "service_type": "VIRTUAL_OBJECT", "handler_kind": "EXCLUSIVE"}
    store.apply(
        _statuses(
            _status(1, deployment_id="dp_a"),
            _status(2, "SUSPENDED", deployment_id="dp_a", target=cart),
            _status(3, "COMPLETED", completion_status="FAILED", deployment_id="dp_a"),
            _status(4, "BACKING_OFF", deployment_id="dp_b", last_failure={"code": 500, "message": "boom"}, retry_count=2),
        ),
        {0: 4},
    )
    ids = lambda page: sorted(s.invocation_id[-1] for s in page.invocations)  # noqa: E731
    assert ids(store.page(limit=10, statuses=["failed", " invoked "])) == ["1", "3"]
    assert ids(store.page(limit=10, service="Cart")) == ["2"]
    assert ids(store.page(limit=10, deployment_id="dp_a", statuses=["SUSPENDED", "COMPLETED"])) == ["2", "3"]
    assert store.pinned_to("dp_a") == 2 and store.pinned_to("dp_b") == 1 and store.pinned_to("dp_c") == 0
    got = store.get(_iid(2))
    assert got is not None and got.target == cart and got.status == "SUSPENDED"
    assert store.get(_iid(4)) == InvocationSummary.of(status(
        _iid(4), "BACKING_OFF", deployment_id="dp_b", last_failure={"code": 500, "message": "boom"}, retry_count=2
    ))


def test_a_tombstone_removes_the_row_and_offsets_are_saved_with_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "rm.duckdb"
    store = ReadModelStore(path)
    store.apply(_statuses(_status(1), _status(2, partition=1)), {0: 10, 1: 3})
    # The follower keeps the last change of each key in a batch; deleting and writing in one batch both work.
    store.apply(_statuses(_gone(1), _status(3, "PAUSED")), {0: 14})
    store.close()

    reopened = ReadModelStore(path)
    assert reopened.offsets() == {0: 14, 1: 3}
    assert reopened.get(_iid(1)) is None
    assert reopened.get(_iid(3)).status == "PAUSED"  # type: ignore[union-attr]
    reopened.apply(_statuses(_gone(3), _status(1, "SUSPENDED")), {0: 16})
    assert reopened.get(_iid(3)) is None and reopened.get(_iid(1)).status == "SUSPENDED"  # type: ignore[union-attr]
    reopened.reset_partitions([1])
    assert reopened.offsets() == {0: 16} and reopened.count() == 1


def test_a_store_of_another_topic_or_version_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "rm.duckdb"
    store = ReadModelStore(path)
    assert not store.check_generation("a.changelog", "id-1")
    store.apply(_statuses(_status(1)), {0: 1})
    assert not store.check_generation("a.changelog", "id-1") and store.count() == 1
    assert store.check_generation("a.changelog", "id-2") and store.count() == 0 and store.offsets() == {}
    store.apply(_statuses(_status(1)), {0: 1})
    assert store.check_generation("b.changelog", None) and store.count() == 0
    store.apply(_statuses(_status(1)), {0: 1})
    store.close()

    with duckdb.connect(str(path)) as db:
        db.execute("UPDATE keystate.meta SET value = '0' WHERE name = 'version'")
    again = ReadModelStore(path)
    assert again.count() == 0 and again.offsets() == {}


def test_a_file_that_is_not_duckdb_is_replaced_and_the_old_sqlite_model_removed(tmp_path: Path) -> None:
    (tmp_path / "readmodel.sqlite").write_bytes(b"SQLite format 3\x00" + b"\x00" * 100)
    (tmp_path / "readmodel.sqlite-wal").write_bytes(b"wal")
    path = tmp_path / "readmodel.duckdb"
    path.write_bytes(b"not a database at all")
    store = ReadModelStore(path)
    store.apply(_statuses(_status(1)), {0: 1})
    assert store.count() == 1
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("readmodel.sqlite")) == []


@pytest.mark.parametrize("text", ["nonsense", encode_cursor((1, "x"))[:-2] + "!!", "WzEsMl0"])
def test_a_cursor_not_made_by_the_api_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a cursor this API returned"):
        decode_cursor(text)


def test_the_table_of_a_changelog_key_is_read_from_its_first_element() -> None:
    assert changelog_table(table_key("status", ("inv_1",))) == "status"
    assert changelog_table(table_key("journal", ("inv_1", 0))) == "journal"
    assert changelog_table(table_key("state", ("Counter", "status", "x"))) == "state"
    assert changelog_table(table_key("promises", ("Flow", "k", "p"))) == "promises"
    # Not mirrored: timers and object locks.
    assert changelog_table(table_key("timers", ("inv_1", "sleep", 2))) is None
    assert changelog_table(table_key("objects", ("Counter", "a"))) is None
    assert changelog_table(b'["status"') is None and changelog_table(b'["statusx",1]') is None
    assert changelog_table(b"") is None and changelog_table(None) is None


def test_a_batch_that_fails_leaves_neither_its_rows_nor_its_offsets(tmp_path: Path) -> None:
    store = ReadModelStore(tmp_path / "rm.duckdb")
    store.apply(_statuses(_status(1)), {0: 1})
    key, row = _status(3)
    assert row is not None
    unbindable = (key, (*row[:11], "not a number", *row[12:]))  # attempt: INTEGER; fails after row 2 and the delete
    with pytest.raises(duckdb.Error):
        store.apply(_statuses(_status(2), _gone(1), unbindable), {0: 4})
    assert store.offsets() == {0: 1}
    assert store.get(_iid(2)) is None and store.get(_iid(1)) is not None
