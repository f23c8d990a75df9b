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


# ---- indexes: invoked() and due_timers() ---------------------------------------------------------


def test_invoked_follows_puts_deletes_and_the_overlay(store: PartitionStore):
    store.tables.status.put(("inv_a",), status("inv_a", "INVOKED"))
    store.tables.status.put(("inv_b",), status("inv_b", "INVOKED"))
    store.tables.status.put(("inv_c",), status("inv_c", "SUSPENDED"))
    assert store.invoked() == ["inv_a", "inv_b"]  # the overlay counts before commit
    commit_batch(store)

    store.tables.status.put(("inv_a",), status("inv_a", "COMPLETED"))
    store.tables.status.delete(("inv_b",))
    store.tables.status.put(("inv_c",), status("inv_c", "INVOKED"))
    assert store.invoked() == ["inv_c"]
    store.discard()
    assert store.invoked() == ["inv_a", "inv_b"]

    store.tables.status.put(("inv_a",), status("inv_a", "COMPLETED"))
    store.tables.status.delete(("inv_b",))
    commit_batch(store)
    assert store.invoked() == []


def test_invoked_after_apply_takes_the_last_record_of_a_repeated_key(store: PartitionStore):
    records = [
        changelog.row_record("status", ("inv_a",), status("inv_a", "INVOKED")),
        changelog.row_record("status", ("inv_b",), status("inv_b", "INVOKED")),
        changelog.row_record("status", ("inv_a",), status("inv_a", "SUSPENDED")),
        changelog.row_record("status", ("inv_b",), None),
        changelog.row_record("status", ("inv_c",), status("inv_c", "SUSPENDED")),
        changelog.row_record("status", ("inv_c",), status("inv_c", "INVOKED")),
        changelog.row_record("status", ("inv_d",), None),
    ]

    assert store.apply(records, CP) == 7

    assert store.invoked() == ["inv_c"]
    assert store.checkpoint() == CP
    assert set(store.tables.snapshot()["status"]) == {("inv_a",), ("inv_c",)}


def test_records_without_index_headers_are_indexed_from_their_values(store: PartitionStore):
    key, value, _ = changelog.row_record("status", ("inv_a",), status("inv_a", "INVOKED"))
    tkey, tvalue, _ = changelog.row_record("timers", ("inv_a", "SLEEP", 1), timer("inv_a", 1, 300))

    store.apply([(key, value, None), (tkey, tvalue, [])], None)

    assert store.invoked() == ["inv_a"]
    assert store.due_timers(300) == [(("inv_a", "SLEEP", 1), timer("inv_a", 1, 300))]
    assert store.checkpoint() is None


def test_due_timers_in_fire_time_order_up_to_the_bound(store: PartitionStore):
    store.tables.timers.put(("inv_b", "SLEEP", 1), timer("inv_b", 1, 700))
    store.tables.timers.put(("inv_a", "SLEEP", 2), timer("inv_a", 2, 200))
    store.tables.timers.put(("inv_c", "SLEEP", 3), timer("inv_c", 3, 500))
    assert store.due_timers(10_000) == []  # committed rows only
    commit_batch(store)

    assert [k for k, _ in store.due_timers(699)] == [("inv_a", "SLEEP", 2), ("inv_c", "SLEEP", 3)]
    assert [k for k, _ in store.due_timers(700)] == [("inv_a", "SLEEP", 2), ("inv_c", "SLEEP", 3), ("inv_b", "SLEEP", 1)]
    assert store.due_timers(199) == []


def test_a_deleted_or_moved_timer_is_never_returned_by_its_old_index_entry(store: PartitionStore):
    store.tables.timers.put(("inv_a", "SLEEP", 1), timer("inv_a", 1, 100))
    store.tables.timers.put(("inv_b", "SLEEP", 1), timer("inv_b", 1, 200))
    commit_batch(store)
    store.tables.timers.delete(("inv_a", "SLEEP", 1))
    store.tables.timers.put(("inv_b", "SLEEP", 1), timer("inv_b", 1, 900))  # re-registered later
    commit_batch(store)

    assert timer_index_size(store) == 3  # one live entry, two stale ones: not cleaned on write ...
    assert store.due_timers(500) == []
    assert timer_index_size(store) == 1  # ... but once read past
    assert store.due_timers(900) == [(("inv_b", "SLEEP", 1), timer("inv_b", 1, 900))]
    store.tables.timers.put(("inv_b", "SLEEP", 1), timer("inv_b", 1, 50))  # and earlier again
    commit_batch(store)
    assert store.due_timers(10_000) == [(("inv_b", "SLEEP", 1), timer("inv_b", 1, 50))]


def timer_index_size(store: PartitionStore) -> int:
    db: Any = store.tables.state._rows.db  # type: ignore[attr-defined]
    return sum(1 for key in db.keys(from_key=b"\x02") if key.startswith(b"\x02"))


def test_timer_tombstones_and_repeats_in_one_apply(store: PartitionStore):
    key = ("inv_a", "SLEEP", 1)
    records = [
        changelog.row_record("timers", key, timer("inv_a", 1, 100)),
        changelog.row_record("timers", key, timer("inv_a", 1, 300)),
        changelog.row_record("timers", ("inv_b", "SLEEP", 1), timer("inv_b", 1, 200)),
        changelog.row_record("timers", ("inv_b", "SLEEP", 1), None),
        changelog.row_record("timers", ("inv_c", "SLEEP", 1), None),
        changelog.row_record("timers", ("inv_c", "SLEEP", 1), timer("inv_c", 1, 250)),
    ]
    store.apply(records, CP)

    assert store.due_timers(10_000) == [(("inv_c", "SLEEP", 1), timer("inv_c", 1, 250)), (key, timer("inv_a", 1, 300))]
    store = reopen(store)
    try:
        assert [k for k, _ in store.due_timers(10_000)] == [("inv_c", "SLEEP", 1), key]
    finally:
        store.close()


def test_apply_drops_cached_rows_it_overwrites(store: PartitionStore):
    store.tables.state.put(("S", "k", "x"), state_row(b"old"))
    commit_batch(store)
    assert store.tables.state.get(("S", "k", "x")) == state_row(b"old")  # now cached

    store.apply([changelog.row_record("state", ("S", "k", "x"), state_row(b"new"))], None)

    assert store.tables.state.get(("S", "k", "x")) == state_row(b"new")


def test_a_reopened_store_keeps_the_configured_memory_bounds(tmp_path: Path):
    """rocksdict reloads a store's saved options on reopen unless told otherwise; the settings must win."""
    settings = StoreSettings(block_cache_bytes=3 << 20, write_buffer_bytes=1 << 20)
    store = PartitionStore.open(tmp_path / "p", 0, settings)
    store.close()
    store = PartitionStore.open(tmp_path / "p", 0, settings)
    try:
        db: Any = store.tables.state._rows.db  # type: ignore[attr-defined]
        assert db.property_int_value("rocksdb.block-cache-capacity") == 3 << 20
        latest = max(store.path.glob("OPTIONS-*"), key=lambda p: int(p.name.split("-")[1]))
        assert f"  write_buffer_size={1 << 20}\n" in latest.read_text()
    finally:
        store.close()


def test_limit_and_the_next_fire_time_skip_stale_index_entries(store: PartitionStore):
    assert store.next_fire_at() is None
    for i, fire_at in enumerate([300, 100, 200]):
        store.tables.timers.put((f"inv_{i}", "SLEEP", 1), timer(f"inv_{i}", 1, fire_at))
    commit_batch(store)
    store.tables.timers.put(("inv_1", "SLEEP", 1), timer("inv_1", 1, 900))  # 100 -> 900: the old entry is stale
    commit_batch(store)

    assert store.next_fire_at() == 200
    assert [k[0] for k, _ in store.due_timers(10_000, limit=2)] == ["inv_2", "inv_0"]
    assert [k[0] for k, _ in store.due_timers(10_000)] == ["inv_2", "inv_0", "inv_1"]
    assert [k[0] for k, _ in store.due_timers(10_000, after_ms=200)] == ["inv_0", "inv_1"]
    assert [k[0] for k, _ in store.due_timers(899, after_ms=199)] == ["inv_2", "inv_0"]


def test_an_unreadable_checkpoint_wipes_the_store(store: PartitionStore):
    store.tables.state.put(("S", "k", "x"), state_row(b"1"))
    commit_batch(store)
    store.tables.state._rows.db.put(b"\x00meta/checkpoint", b"{not json")  # type: ignore[attr-defined]

    store = reopen(store)
    try:
        assert store.checkpoint() is None
        assert store.tables.state.get(("S", "k", "x")) is None
    finally:
        store.close()


@pytest.mark.parametrize("bad", [{"cache_rows": -1}, {"block_cache_bytes": 0}, {"write_buffer_bytes": 1024}, {"restore_write_buffer_bytes": 1024}])
def test_settings_out_of_range_are_refused_with_the_setting_named(bad: dict[str, int]):
    with pytest.raises(ValueError, match=next(iter(bad))):
        StoreSettings(**bad)


KILLED_WRITER = """
import sys
from pathlib import Path
from keystate.processors import changelog
from keystate.processors.store import Checkpoint, PartitionStore, StoreSettings

store = PartitionStore.open(Path(sys.argv[1]), 0, StoreSettings())
offset = 0
while True:
    batch = [changelog.row_record("state", ("S", "k", f"{i:08d}"), {"value": b"x" * 500}) for i in range(offset, offset + 300)]
    offset += len(batch)
    store.commit(batch, Checkpoint("gen", offset, 0))
    if offset == 3_000:
        print("written", flush=True)
"""


def test_a_kill_9_mid_write_leaves_exactly_the_rows_of_the_checkpoint(tmp_path: Path):
    """Rows and checkpoint share one WriteBatch: after kill -9 the store holds the rows below the
    checkpoint's offset and none above it, so a restore from that offset neither skips nor repeats."""
    path = tmp_path / "p0"
    child = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(path)], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"written\n"
    finally:
        child.kill()  # SIGKILL while it keeps writing
        child.wait(timeout=30)

    store = PartitionStore.open(path, 0, StoreSettings())
    try:
        checkpoint = store.checkpoint()
        assert checkpoint is not None and checkpoint.offset >= 3_000
        keys = [k[2] for k, _ in store.tables.state.scan(("S", "k"))]
        assert keys == [f"{i:08d}" for i in range(checkpoint.offset)]
    finally:
        store.close()


KILLED_RESTORE = """
import sys, time
from pathlib import Path
from keystate.processors import changelog
from keystate.processors.store import Checkpoint, PartitionStore, StoreSettings

# A 64 KiB restore memtable: flushes every ~120 rows, so a kill lands between flushes.
store = PartitionStore.open(Path(sys.argv[1]), 0, StoreSettings(restore_write_buffer_bytes=64 << 10))
stop_at = int(sys.argv[2])
offset = 0
with store.restoring():
    while offset < stop_at:
        batch = [changelog.row_record("state", ("S", "k", f"{i:08d}"), {"value": b"x" * 500}) for i in range(offset, offset + 300)]
        offset += len(batch)
        store.apply(batch, Checkpoint("gen", offset, 0))
        if offset == 3_000:
            print("written", flush=True)
# The restore ended: the processor commits with the write-ahead log again.
store.commit([changelog.row_record("state", ("S", "k", "after"), {"value": b"y"})], Checkpoint("gen", offset + 1, 0))
print("committed", flush=True)
time.sleep(60)
"""


def _killed_restore(path: Path, stop_at: int, wait_for: bytes) -> None:
    child = subprocess.Popen([sys.executable, "-c", KILLED_RESTORE, str(path), str(stop_at)], stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        while (line := child.stdout.readline()) != wait_for:
            assert line, f"the writer ended before printing {wait_for!r}"
    finally:
        child.kill()
        child.wait(timeout=30)


def test_a_kill_9_mid_restore_without_the_write_ahead_log_leaves_a_consistent_store(tmp_path: Path):
    """Restores write without the log: a kill loses the unflushed batches, never part of one, and the
    checkpoint that survives is the one flushed with its rows."""
    path = tmp_path / "p0"
    _killed_restore(path, 10**9, b"written\n")

    store = PartitionStore.open(path, 0, StoreSettings())
    try:
        checkpoint = store.checkpoint()
        assert checkpoint is not None and checkpoint.offset > 0  # flushes happened before the kill
        keys = [k[2] for k, _ in store.tables.state.scan(("S", "k"))]
        assert keys == [f"{i:08d}" for i in range(checkpoint.offset)]
    finally:
        store.close()


def test_a_finished_restore_is_on_disk_before_commits_with_the_log_resume(tmp_path: Path):
    path = tmp_path / "p0"
    _killed_restore(path, 3_000, b"committed\n")

    store = PartitionStore.open(path, 0, StoreSettings())
    try:
        assert store.checkpoint() == Checkpoint("gen", 3_001, 0)
        keys = [k[2] for k, _ in store.tables.state.scan(("S", "k"))]
        assert keys == [f"{i:08d}" for i in range(3_000)] + ["after"]
    finally:
        store.close()


def test_a_scan_by_a_number_does_not_match_a_longer_number(store: PartitionStore):
    for key in [("inv_1", 1), ("inv_1", 10), ("inv_1", 11)]:
        store.tables.journal.put(key, _JOURNAL_ROW)
    commit_batch(store)

    assert [k for k, _ in store.tables.journal.scan(("inv_1", 1))] == [("inv_1", 1)]
    assert [k for k, _ in store.tables.journal.scan(("inv_1",))] == [("inv_1", 1), ("inv_1", 10), ("inv_1", 11)]


def _real_journal_row() -> dict[str, Any]:
    tables = Tables()
    target = b.service_target()
    apply(tables, b.invoke(target, b.new_id(target, 1)), 1_000, Config())
    ((_, row), *_) = tables.journal.items()
    return dict(row)


_JOURNAL_ROW = _real_journal_row()
