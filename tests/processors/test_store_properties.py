"""Properties of the partition store: it reads like the in-memory `Tables`, and restored equals live."""

from __future__ import annotations

import copy
import os
import random
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from keystate.processors import changelog
from keystate.processors.state_machine import Change, Tables, apply
from keystate.processors.state_machine.tables import LAYOUT, Key
from keystate.processors.store import Checkpoint, PartitionStore, Record, StoreSettings
from keystate.processors.store_tables import key_order
from tests.state_machine.test_properties import CONFIGS, Driver, Scenario, random_op, scenarios

STORE_SETTINGS = settings(
    max_examples=int(os.environ.get("KEYSTATE_PROPERTY_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
ARITY = {"status": 1, "journal": 2, "state": 3, "inbox": 3, "objects": 2, "timers": 3, "promises": 3, "idempotency": 4}


def _harvest() -> dict[str, list[Any]]:
    """Rows the real state machine writes, per table, so every value encodes through the real schemas."""
    rnd = random.Random(3)
    rows: dict[str, list[Any]] = {name: [] for name in LAYOUT}
    for _ in range(30):
        driver = Driver(CONFIGS[rnd.randrange(len(CONFIGS))])
        for _ in range(40):
            driver.step(random_op(rnd))
        for name, table in driver.tables.snapshot().items():
            rows[name].extend(list(table.values())[:6])
    rows["promises"] = [
        {"result": None, "waiters": []},
        {"result": None, "waiters": [{"invocation_id": "inv_x", "entry_index": 2}]},
    ]
    return rows


VALUES = _harvest()
assert all(VALUES.values()), {name: len(v) for name, v in VALUES.items()}
FIRST_PARTS = ["a", "a1", "b"]  # "a" is a prefix of "a1": a scan of "a" must not see "a1"
OTHER_PARTS = ["a", "x", 1, 2, 10, None]  # mixed types at one position; 10 sorts after 2 and starts like 1


@st.composite
def keys(draw: st.DrawFn, table: str) -> Key:
    first = draw(st.sampled_from(FIRST_PARTS))
    rest = draw(st.lists(st.sampled_from(OTHER_PARTS), min_size=ARITY[table] - 1, max_size=ARITY[table] - 1))
    return (first, *rest)


@st.composite
def table_ops(draw: st.DrawFn, pools: dict[str, list[Key]]) -> tuple[Any, ...]:
    kind = draw(st.sampled_from(["put"] * 3 + ["delete"] * 2 + ["get"] * 2 + ["scan"] * 2 + ["commit", "discard", "reopen"]))
    if kind in ("commit", "discard", "reopen"):
        return (kind,)
    table = draw(st.sampled_from(sorted(pools)))
    key = draw(st.sampled_from(pools[table]))
    if kind == "put":
        return (kind, table, key, draw(st.integers(0, len(VALUES[table]) - 1)))
    if kind == "scan":
        return (kind, table, key[: draw(st.integers(LAYOUT[table], len(key)))])
    return (kind, table, key)


@st.composite
def programs(draw: st.DrawFn) -> list[tuple[Any, ...]]:
    """Ops over a few keys of one or two tables, so rows are read back often enough to catch a wrong read."""
    tables = draw(st.lists(st.sampled_from(list(LAYOUT)), min_size=1, max_size=2, unique=True))
    pools = {t: draw(st.lists(keys(t), min_size=1, max_size=4, unique=True)) for t in tables}
    return draw(st.lists(table_ops(pools), min_size=20, max_size=80))


@contextmanager
def opened(settings: StoreSettings | None = None) -> Iterator[tuple[Path, PartitionStore]]:
    with tempfile.TemporaryDirectory() as tmp:
        store = PartitionStore.open(Path(tmp) / "p7", 7, settings or StoreSettings())
        try:
            yield Path(tmp), store
        finally:
            store.close()


class Pair:
    """A store and the in-memory reference, committed and discarded together."""

    def __init__(self, store: PartitionStore) -> None:
        self.store = store
        self.ref = Tables()
        self.saved = Tables()
        self.records: list[Record] = []  # every committed changelog record, in order
        self.offset = 0

    def commit(self, *, exact: bool = True) -> None:
        ref_changes, store_changes = self.ref.drain(), self.store.tables.drain()
        if exact:
            assert store_changes == ref_changes
        else:  # scans in another order delete rows in another order: the same final rows
            assert final(store_changes) == final(ref_changes)
        records = [changelog.row_record(name, key, value) for (name, key), value in final(ref_changes).items()]
        self.offset += len(records)
        self.store.commit(records, Checkpoint("gen", self.offset, 0))
        self.records += records
        self.saved = copy.deepcopy(self.ref)

    def discard(self) -> None:
        self.store.discard()
        self.ref = copy.deepcopy(self.saved)

    def reopen(self) -> None:
        self.commit()
        self.store.close()
        self.store = PartitionStore.open(self.store.path, self.store.partition, self.store.settings)
        assert self.store.checkpoint() == Checkpoint("gen", self.offset, 0)

    def check_same(self) -> None:
        assert self.store.tables.snapshot() == self.ref.snapshot()
        statuses = self.ref.snapshot()["status"]
        assert self.store.invoked() == sorted(k[0] for k, v in statuses.items() if v["status"] == "INVOKED")

    def check_restored_equals_live(self, tmp: Path) -> None:
        """A store filled by `apply` of the changelog (whole, then compacted; half of it in bulk mode) equals the live one."""
        live = self.store.tables.snapshot()
        for n, records in enumerate([self.records, compacted(self.records)]):
            restored = PartitionStore.open(tmp / f"restored{n}", 7, StoreSettings())
            try:
                half = len(records) // 2
                assert restored.apply(records[:half], Checkpoint("gen", half, 0)) == half
                with restored.restoring():  # a long restore's bulk mode: same rows and indexes
                    restored.apply(records[half:], Checkpoint("gen", len(records), 0))
                assert restored.tables.snapshot() == live
                assert restored.invoked() == self.store.invoked()
                assert restored.due_timers(1 << 62) == self.store.due_timers(1 << 62)
                restored.apply(records[half:], None)  # a tail read twice changes nothing
                assert restored.tables.snapshot() == live
                assert restored.checkpoint() == Checkpoint("gen", len(records), 0)
            finally:
                restored.close()


def final(changes: list[Change]) -> dict[tuple[str, Key], Any]:
    """The last value per row: one changelog record per row per batch."""
    out: dict[tuple[str, Key], Any] = {}
    for name, key, value in changes:
        out[(name, key)] = value
    return out


def compacted(records: list[Record]) -> list[Record]:
    last = {key: i for i, (key, _, _) in enumerate(records)}
    return [records[i] for i in sorted(last.values())]


def due_in_order(store: PartitionStore, ref: Tables) -> None:
    committed_timers = {k: v for k, v in ref.snapshot()["timers"].items()}
    due = store.due_timers(1 << 62)
    assert dict(due) == committed_timers
    fire_times = [v["fire_at_ms"] for _, v in due]
    assert fire_times == sorted(fire_times)


@STORE_SETTINGS
@given(programs(), st.sampled_from([0, 3, 2_000]))
def test_table_ops_read_like_the_in_memory_tables(ops: list[tuple[Any, ...]], cache_rows: int):
    with opened(StoreSettings(cache_rows=cache_rows)) as (tmp, store):
        pair = Pair(store)
        for op in ops:
            kind = op[0]
            if kind == "put":
                _, name, key, n = op
                value = VALUES[name][n]
                pair.ref.table(name).put(key, value)
                pair.store.tables.table(name).put(key, value)
            elif kind == "delete":
                pair.ref.table(op[1]).delete(op[2])
                pair.store.tables.table(op[1]).delete(op[2])
            elif kind == "get":
                assert pair.store.tables.table(op[1]).get(op[2]) == pair.ref.table(op[1]).get(op[2])
            elif kind == "scan":
                expected = sorted(pair.ref.table(op[1]).scan(op[2]), key=lambda kv: key_order(kv[0]))
                assert list(pair.store.tables.table(op[1]).scan(op[2])) == expected
            else:
                getattr(pair, kind)()
            assert pair.store.tables.changes == pair.ref.changes
        pair.check_same()
        pair.commit()
        due_in_order(pair.store, pair.ref)
        pair.check_restored_equals_live(tmp)
        pair.reopen()
        pair.check_same()


@STORE_SETTINGS
@given(scenarios, st.lists(st.sampled_from(["", "", "", "commit", "discard", "reopen"]), min_size=40, max_size=40))
def test_the_state_machine_on_a_store_acts_like_on_in_memory_tables(sc: Scenario, points: list[str]):
    """Random commit, discard and reopen points; same actions, same tables; restored equals live."""
    with opened(StoreSettings(cache_rows=5)) as (tmp, store):
        pair = Pair(store)
        for (command, now), point in zip(sc.commands, points, strict=False):
            expected = apply(pair.ref, command, now, sc.cfg)
            assert apply(pair.store.tables, command, now, sc.cfg) == expected  # type: ignore[arg-type]
            if point == "commit":
                pair.commit(exact=False)
            elif point == "discard":
                pair.discard()
            elif point == "reopen":
                pair.commit(exact=False)
                pair.reopen()
        pair.commit(exact=False)
        pair.check_same()
        pair.check_restored_equals_live(tmp)
