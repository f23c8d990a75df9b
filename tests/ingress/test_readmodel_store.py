"""The read model's SQLite store alone: keyset paging, filters, tombstones, offsets with rows, cursors, status keys."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from keystate.ingress.readmodel import status_key_id
from keystate.ingress.readmodel_store import InvocationSummary, ReadModelStore, Row, decode_cursor, encode_cursor
from keystate.processors.changelog import table_key

from readmodel_support import NOW, status


def _row(n: int, state: str = "INVOKED", *, partition: int = 0, **fields: object) -> Row:
    iid = f"inv_{n:032d}"
    return Row(iid, partition, InvocationSummary.of(status(iid, state, **fields)))


def test_pages_follow_each_other_without_gaps_or_repeats_even_when_rows_share_a_millisecond(tmp_path: Path) -> None:
    store = ReadModelStore(tmp_path / "rm.sqlite")
    rows = [_row(n, modified_at_ms=NOW + n // 10) for n in range(95)]
    store.apply(rows, {0: 95})
    expected = [r.invocation_id for r in sorted(rows, key=lambda r: (-r.summary.modified_at_ms, r.invocation_id))]  # type: ignore[union-attr]

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
    store = ReadModelStore(tmp_path / "rm.sqlite")
    cart = {"service": "Cart", "handler": "add", "key": "c", "service_type": "VIRTUAL_OBJECT", "handler_kind": "EXCLUSIVE"}
    store.apply(
        [
            _row(1, deployment_id="dp_a"),
            _row(2, "SUSPENDED", deployment_id="dp_a", target=cart),
            _row(3, "COMPLETED", completion_status="FAILED", deployment_id="dp_a"),
            _row(4, "BACKING_OFF", deployment_id="dp_b"),
        ],
        {0: 4},
    )
    ids = lambda page: sorted(s.invocation_id[-1] for s in page.invocations)  # noqa: E731
    assert ids(store.page(limit=10, statuses=["failed", " invoked "])) == ["1", "3"]
    assert ids(store.page(limit=10, service="Cart")) == ["2"]
    assert ids(store.page(limit=10, deployment_id="dp_a", statuses=["SUSPENDED", "COMPLETED"])) == ["2", "3"]
    assert store.pinned_to("dp_a") == 2 and store.pinned_to("dp_b") == 1 and store.pinned_to("dp_c") == 0
    got = store.get(_row(2).invocation_id)
    assert got is not None and got.target == cart and got.status == "SUSPENDED"


def test_a_tombstone_removes_the_row_and_offsets_are_saved_with_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "rm.sqlite"
    store = ReadModelStore(path)
    store.apply([_row(1), _row(2, partition=1)], {0: 10, 1: 3})
    # In order within a batch: written, removed, written again.
    store.apply([Row(_row(1).invocation_id, 0, None), _row(3), Row(_row(3).invocation_id, 0, None), _row(3, "PAUSED")], {0: 14})
    store.close()

    reopened = ReadModelStore(path)
    assert reopened.offsets() == {0: 14, 1: 3}
    assert reopened.get(_row(1).invocation_id) is None
    assert reopened.get(_row(3).invocation_id).status == "PAUSED"  # type: ignore[union-attr]
    reopened.reset_partitions([1])
    assert reopened.offsets() == {0: 14} and reopened.count() == 1


def test_a_store_of_another_topic_or_version_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "rm.sqlite"
    store = ReadModelStore(path)
    assert not store.check_generation("a.changelog", "id-1")
    store.apply([_row(1)], {0: 1})
    assert not store.check_generation("a.changelog", "id-1") and store.count() == 1
    assert store.check_generation("a.changelog", "id-2") and store.count() == 0 and store.offsets() == {}
    store.apply([_row(1)], {0: 1})
    assert store.check_generation("b.changelog", None) and store.count() == 0
    store.apply([_row(1)], {0: 1})
    store.close()

    with sqlite3.connect(path) as db:
        db.execute("UPDATE meta SET value = '0' WHERE name = 'version'")
    assert ReadModelStore(path).count() == 0


@pytest.mark.parametrize("text", ["nonsense", encode_cursor((1, "x"))[:-2] + "!!", "WzEsMl0"])
def test_a_cursor_not_made_by_the_api_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not a cursor this API returned"):
        decode_cursor(text)


def test_only_status_keys_of_the_multiplexed_changelog_name_an_invocation() -> None:
    assert status_key_id(table_key("status", ("inv_1",))) == "inv_1"
    assert status_key_id(table_key("journal", ("inv_1", 0))) is None
    assert status_key_id(table_key("state", ("Counter", "status", "x"))) is None
    assert status_key_id(b'["status",') is None and status_key_id(None) is None


def test_a_batch_that_fails_leaves_neither_its_rows_nor_its_offsets(tmp_path: Path) -> None:
    store = ReadModelStore(tmp_path / "rm.sqlite")
    store.apply([_row(1)], {0: 1})
    unbindable = _row(3, target={"service": ["not", "text"], "handler": "h"})  # fails inside the batch, after row 2
    with pytest.raises(sqlite3.Error):
        store.apply([_row(2), Row(_row(1).invocation_id, 0, None), unbindable], {0: 4})
    assert store.offsets() == {0: 1}
    assert store.get(_row(2).invocation_id) is None and store.get(_row(1).invocation_id) is not None
