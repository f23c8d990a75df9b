"""The batch's writes live in an overlay until its transaction commits (issue 8).

An aborted or re-run batch leaves the partition store exactly as committed; a committed one is in
the store with a checkpoint past its own changelog records, so a restore from that checkpoint reads
nothing of it again.
"""

from __future__ import annotations

from typing import Any

from keystate.processors.driver import ProcessorDriver
from keystate.processors.store import PartitionStore, StoreSettings
from keystate.schemas.ids import InvocationId

from driver_support import PARTITIONS, meta_state
from state_machine.builders import append, invoke, object_target, output, set_state


def _partition(iid: str) -> int:
    return InvocationId.parse(iid).partition(PARTITIONS)


def _start(d: ProcessorDriver, key: str) -> str:
    name, record = invoke(object_target("Counter", key))
    d.command(name, record)
    d.pipe_log()
    return str(record["invocation_id"])


def _committed_rows(d: ProcessorDriver, partition: int) -> dict[str, dict[Any, Any]]:
    """The store's rows as on disk: reopened from its directory, with no overlay."""
    d.revoke(partition)
    store = PartitionStore.open(d.state_dir / f"p{partition}", partition, StoreSettings())
    try:
        return store.tables.snapshot()
    finally:
        store.close()


def test_an_aborted_transaction_leaves_the_store_as_committed() -> None:
    with ProcessorDriver(meta_state(), partitions=PARTITIONS) as d:
        d.assign(*range(PARTITIONS))
        iid = _start(d, "alice")
        p = _partition(iid)
        before = d.tables(p).snapshot()
        # Kafka refuses every record of the batch that writes the state; the transaction aborts each time.
        d.fail_records(topic=d.topics_names.changelog_topic, predicate=lambda r: b'["state"' in (r.key or b""), times=2)
        d.command(*append(iid, 1, 1, set_state("count", b"7")))
        d.pipe_log()

        assert d.txn.aborted >= 1
        # What the state machine reads (overlay, cache, store) holds no trace of the aborted runs ...
        assert d.tables(p).state.get(("Counter", "alice", "count")) is None
        rows = _committed_rows(d, p)
        state_rows = rows["state"]
        # ... and neither does the store on disk; what committed is there.
        assert ("Counter", "alice", "count") not in state_rows
        assert rows["status"][(iid,)]["status"] in {"INVOKED", "COMPLETED"}
        assert set(rows["status"]) >= set(before["status"])


def test_a_committed_batch_is_in_the_store_with_a_checkpoint_past_its_records() -> None:
    with ProcessorDriver(meta_state(), partitions=PARTITIONS) as d:
        d.assign(*range(PARTITIONS))
        iid = _start(d, "bob")
        p = _partition(iid)
        d.command(*append(iid, 1, 1, set_state("count", b"3")))
        d.command(*append(iid, 1, 2, output(b"3")))
        d.pipe_log()

        written = [r for r in d.records(d.topics_names.changelog_topic) if r.partition == p]
        store = d.stores[p]
        checkpoint = store.checkpoint()
        assert checkpoint is not None and checkpoint.offset == len(written)
        rows = _committed_rows(d, p)
        assert rows["state"][("Counter", "bob", "count")] == {"value": b"3"}
        assert rows["status"][(iid,)]["status"] == "COMPLETED"


def test_one_changelog_record_per_row_per_batch() -> None:
    """Coalesced: three writes of one status row in one batch make one record with the last value."""
    with ProcessorDriver(meta_state(), partitions=PARTITIONS) as d:
        d.assign(*range(PARTITIONS))
        name, record = invoke(object_target("Counter", "carol"))
        iid = str(record["invocation_id"])
        d.command(name, record)
        d.command(*append(iid, 1, 1, set_state("count", b"1")))
        d.command(*append(iid, 1, 2, set_state("count", b"2")))
        d.command(*append(iid, 1, 3, output(b"2")))
        out = d.pipe_log()
        del out
        records = [r for r in d.records(d.topics_names.changelog_topic) if r.partition == _partition(iid)]
        keys = [r.key for r in records]
        assert len(keys) == len(set(keys)), "a row was written twice in one batch"
        status_key = b'["status","' + iid.encode() + b'"]'
        [status] = [r for r in records if r.key == status_key]
        assert dict(status.headers or [])["keystate.status"] == b"COMPLETED"
