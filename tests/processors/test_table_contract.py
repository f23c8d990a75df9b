"""The `Table` contract, run against both implementations: in-memory `Tables` and a partition store's tables."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from keystate.processors import changelog
from keystate.processors.state_machine import Tables
from keystate.processors.store import Checkpoint, PartitionStore, StoreSettings

Commit = Callable[[], None]


@pytest.fixture(params=["in-memory", "store", "store without cache"])
def tables(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Any, Commit]]:
    """(tables, commit): `commit` ends the batch as the shell does (the in-memory tables just drain)."""
    if request.param == "in-memory":
        memory = Tables()
        yield memory, memory.drain
        return
    store = PartitionStore.open(tmp_path / "p", 0, StoreSettings(cache_rows=0 if "without" in request.param else 100))

    def commit() -> None:
        final = {(name, key): value for name, key, value in store.tables.drain()}
        store.commit([changelog.row_record(n, k, v) for (n, k), v in final.items()], Checkpoint("t", 1, 0))

    yield store.tables, commit
    store.close()


ROW = {"value": b"v"}
OTHER = {"value": b"w"}


def test_a_row_put_is_read_back_before_and_after_commit(tables: tuple[Any, Commit]):
    t, commit = tables
    t.state.put(("S", "k", "a"), ROW)
    assert t.state.get(("S", "k", "a")) == ROW
    commit()
    assert t.state.get(("S", "k", "a")) == ROW
    assert t.state.get(("S", "k", "b")) is None


def test_every_write_is_captured_in_order_and_a_missing_delete_is_not(tables: tuple[Any, Commit]):
    t, commit = tables
    t.state.put(("S", "k", "a"), ROW)
    commit()
    t.state.delete(("S", "k", "zz"))
    t.state.put(("S", "k", "b"), ROW)
    t.state.delete(("S", "k", "a"))
    t.state.delete(("S", "k", "a"))
    t.state.put(("S", "k", "b"), OTHER)

    assert t.drain() == [
        ("state", ("S", "k", "b"), ROW),
        ("state", ("S", "k", "a"), None),
        ("state", ("S", "k", "b"), OTHER),
    ]
    assert t.changes == []


def test_a_scan_sees_exactly_the_rows_under_its_prefix(tables: tuple[Any, Commit]):
    t, commit = tables
    for iid in ("inv_1", "inv_10", "inv_2"):
        t.state.put(("S", iid, "a"), ROW)
        t.state.put(("S", iid, "b"), OTHER)
    commit()
    t.state.delete(("S", "inv_1", "b"))
    t.state.put(("S", "inv_1", "c"), OTHER)

    rows = sorted(t.state.scan(("S", "inv_1")))
    assert rows == [(("S", "inv_1", "a"), ROW), (("S", "inv_1", "c"), OTHER)]
    assert list(t.state.scan(("S", "inv_1", "a"))) == [(("S", "inv_1", "a"), ROW)]  # the whole key as prefix
    assert list(t.state.scan(("S", "nobody"))) == []


def test_a_scan_shorter_than_the_group_is_refused(tables: tuple[Any, Commit]):
    t, _ = tables
    with pytest.raises(ValueError, match="idempotency: a scan needs at least 3 key parts"):
        list(t.idempotency.scan(("S", "k")))


def test_rows_of_one_table_are_invisible_in_another(tables: tuple[Any, Commit]):
    t, commit = tables
    t.state.put(("S", "k", "a"), ROW)
    commit()
    assert t.promises.get(("S", "k", "a")) is None
    assert list(t.promises.scan(("S", "k"))) == []
    assert len(t.state) == 1 and len(t.promises) == 0
