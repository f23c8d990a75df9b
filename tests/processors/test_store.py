"""The persistent partition store: overlay, commit, checkpoint, wipe, lock and its indexes (pure, no broker)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from keystate.processors import changelog
from keystate.processors.errors import ProcessorError, StoreLocked
from keystate.processors.state_machine import Change, Config, Tables, apply
from keystate.processors.store import Checkpoint, PartitionStore, StoreSettings
from tests.state_machine import builders as b

CP = Checkpoint("topic-gen-1", 42, 1_000)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PartitionStore]:
    s = PartitionStore.open(tmp_path / "p0", 0, StoreSettings())
    yield s
    s.close()


def status(iid: str, state: str) -> dict[str, Any]:
    """A status row as far as the store cares; encoded through the real Avro schema."""
    return {**_STATUS_TEMPLATE, "invocation_id": iid, "status": state}


def timer(iid: str, index: int, fire_at: int) -> dict[str, Any]:
    return {"invocation_id": iid, "timer_kind": "SLEEP", "entry_index": index, "attempt": None, "fire_at_ms": fire_at}


def state_row(value: bytes) -> dict[str, Any]:
    return _STATE_TEMPLATE | {"value": value}


def commit_batch(store: PartitionStore, checkpoint: Checkpoint | None = CP) -> list[Change]:
    """What the shell does after commit_transaction: the batch's records, one per row, final values."""
    changes = store.tables.drain()
    final: dict[tuple[str, Any], Any] = {}
    for name, key, value in changes:
        final[(name, key)] = value
    store.commit([changelog.row_record(name, key, value) for (name, key), value in final.items()], checkpoint)
    return changes


def reopen(store: PartitionStore, settings: StoreSettings | None = None) -> PartitionStore:
    store.close()
    return PartitionStore.open(store.path, store.partition, settings or StoreSettings())


# ---- overlay, commit, discard ------------------------------------------------------------------


def test_a_put_is_visible_before_commit_and_gone_after_discard(store: PartitionStore):
    store.tables.state.put(("Counter", "a", "n"), state_row(b"1"))
    assert store.tables.state.get(("Counter", "a", "n")) == state_row(b"1")
    assert list(store.tables.state.scan(("Counter", "a"))) == [(("Counter", "a", "n"), state_row(b"1"))]

    store.discard()

    assert store.tables.state.get(("Counter", "a", "n")) is None
    assert store.tables.changes == []
    assert store.tables.snapshot()["state"] == {}


def test_committed_rows_and_the_checkpoint_survive_a_reopen(store: PartitionStore):
    assert store.checkpoint() is None
    store.tables.state.put(("Counter", "a", "n"), state_row(b"1"))
    store.tables.status.put(("inv_1",), status("inv_1", "INVOKED"))
    commit_batch(store)

    store = reopen(store)
    try:
        assert store.checkpoint() == CP
        assert store.tables.state.get(("Counter", "a", "n")) == state_row(b"1")
        assert store.tables.status.get(("inv_1",)) == status("inv_1", "INVOKED")
        assert store.invoked() == ["inv_1"]
    finally:
        store.close()


def test_a_discarded_delete_leaves_the_committed_row(store: PartitionStore):
    store.tables.state.put(("Counter", "a", "n"), state_row(b"1"))
    commit_batch(store)
    store.tables.state.delete(("Counter", "a", "n"))
    assert store.tables.state.get(("Counter", "a", "n")) is None
    assert store.tables.changes == [("state", ("Counter", "a", "n"), None)]

    store.discard()

    assert store.tables.state.get(("Counter", "a", "n")) == state_row(b"1")


def test_deleting_a_missing_row_captures_no_change(store: PartitionStore):
    store.tables.state.delete(("Counter", "a", "n"))
    store.tables.state.put(("Counter", "a", "m"), state_row(b"1"))
    commit_batch(store)
    store.tables.state.delete(("Counter", "a", "m"))
    store.tables.state.delete(("Counter", "a", "m"))

    assert store.tables.drain() == [("state", ("Counter", "a", "m"), None)]


def test_a_scan_merges_the_overlay_and_keeps_key_order(store: PartitionStore):
    for i in (9, 10, 1, 2):
        store.tables.state.put(("S", "k", f"x{i}"), state_row(b"c"))
    commit_batch(store)
    store.tables.state.put(("S", "k", "x3"), state_row(b"o"))
    store.tables.state.delete(("S", "k", "x9"))
    store.tables.state.put(("S", "k", "x10"), state_row(b"o"))
    store.tables.state.put(("S", "k2", "x1"), state_row(b"other key"))

    rows = list(store.tables.state.scan(("S", "k")))

    assert rows == [
        (("S", "k", "x1"), state_row(b"c")),
        (("S", "k", "x10"), state_row(b"o")),
        (("S", "k", "x2"), state_row(b"c")),
        (("S", "k", "x3"), state_row(b"o")),
    ]


def test_a_scan_of_a_prefix_does_not_match_a_longer_id(store: PartitionStore):
    store.tables.status.put(("inv_1",), status("inv_1", "INVOKED"))
    store.tables.status.put(("inv_10",), status("inv_10", "INVOKED"))
    commit_batch(store)

    assert [k for k, _ in store.tables.status.scan(("inv_1",))] == [("inv_1",)]


def test_a_scan_needs_the_group_key_parts(store: PartitionStore):
    with pytest.raises(ValueError, match="at least 2 key parts"):
        list(store.tables.state.scan(("S",)))


def test_a_tiny_cache_still_reads_every_committed_row(tmp_path: Path):
    store = PartitionStore.open(tmp_path / "p", 3, StoreSettings(cache_rows=2))
    try:
        for i in range(20):
            store.tables.state.put(("S", "k", f"x{i}"), state_row(bytes([i])))
        commit_batch(store)
        assert [store.tables.state.get(("S", "k", f"x{i}")) for i in range(20)] == [state_row(bytes([i])) for i in range(20)]
    finally:
        store.close()


# ---- wipe, layout, lock --------------------------------------------------------------------------


def test_wipe_deletes_rows_indexes_and_the_checkpoint(store: PartitionStore):
    store.tables.status.put(("inv_1",), status("inv_1", "INVOKED"))
    store.tables.timers.put(("inv_1", "SLEEP", 1), timer("inv_1", 1, 500))
    commit_batch(store)

    store.wipe()

    assert store.checkpoint() is None
    assert store.tables.snapshot() == {name: {} for name in changelog.TABLE_RECORDS}
    assert store.invoked() == []
    assert store.due_timers(10_000) == []
    store = reopen(store)
    try:
        assert store.checkpoint() is None and store.tables.status.get(("inv_1",)) is None
    finally:
        store.close()


def test_a_store_of_another_layout_version_is_wiped_on_open(store: PartitionStore, monkeypatch: pytest.MonkeyPatch):
    store.tables.state.put(("S", "k", "x"), state_row(b"1"))
    commit_batch(store)
    store.close()
    monkeypatch.setattr("keystate.processors.store.LAYOUT_VERSION", b"999")

    again = PartitionStore.open(store.path, 0, StoreSettings())
    try:
        assert again.checkpoint() is None
        assert again.tables.state.get(("S", "k", "x")) is None
    finally:
        again.close()


def test_a_second_open_of_an_open_store_raises_store_locked(store: PartitionStore):
    with pytest.raises(StoreLocked, match="--instance-id") as info:
        PartitionStore.open(store.path, 0, StoreSettings())
    assert str(store.path) in str(info.value)
    assert isinstance(info.value, ProcessorError)


def test_a_store_held_by_another_process_raises_store_locked(store: PartitionStore):
    script = (
        "import sys; from pathlib import Path\n"
        "from keystate.processors.store import PartitionStore, StoreSettings\n"
        "from keystate.processors.errors import StoreLocked\n"
        "try:\n    PartitionStore.open(Path(sys.argv[1]), 0, StoreSettings())\n"
        "except StoreLocked:\n    sys.exit(7)\n"
    )
    done = subprocess.run([sys.executable, "-c", script, str(store.path)], capture_output=True, timeout=60)
    assert done.returncode == 7, done.stderr.decode()


def test_a_closed_store_can_be_opened_again(store: PartitionStore):
    store = reopen(store)
    store.close()
    store = reopen(store)
    assert store.checkpoint() is None


def _real_status() -> dict[str, Any]:
    """A status row written by the real state machine, so it encodes through the real schema."""
    tables = Tables()
    target = b.service_target()
    apply(tables, b.invoke(target, b.new_id(target, 1)), 1_000, Config())
    ((_, row),) = tables.status.items()
    return dict(row)


_STATUS_TEMPLATE = _real_status()
_STATE_TEMPLATE: dict[str, Any] = {"value": b""}
