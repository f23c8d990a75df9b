"""The invocation read model on a real broker: served from DuckDB, resumed from its saved offsets, rebuilt when stale."""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path

import duckdb
import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from keystate.ingress.readmodel import InvocationReadModel
from keystate.schemas.ids import InvocationId
from keystate.schemas.topics import Topics
from keystate.server.kafka import KafkaSettings

from readmodel_support import NOW, ensure_changelog, status, write_changelog

pytestmark = pytest.mark.integration

PARTITIONS = 4
STATES = ["INVOKED", "SUSPENDED", "COMPLETED", "BACKING_OFF"]
CART = {"service": "Cart", "handler": "add", "key": "c1", "service_type": "VIRTUAL_OBJECT", "handler_kind": "EXCLUSIVE"}


@pytest.fixture
def topics(kafka_bootstrap: str) -> Topics:
    prefix = Topics(f"test.readmodel.{uuid.uuid4().hex[:8]}.")
    ensure_changelog(kafka_bootstrap, prefix, PARTITIONS)
    return prefix


async def _started(bootstrap: str, topics: Topics, path: Path) -> InvocationReadModel:
    model = InvocationReadModel(KafkaSettings(bootstrap, topics), path)
    await model.start(timeout=120)
    return model


def _big(n: int) -> list[tuple[str, dict]]:
    rows = []
    for i in range(n):
        iid = str(InvocationId.new())
        state = STATES[i % 4]
        rows.append((iid, status(
            iid, state,
            target=CART if i % 2 else status(iid)["target"],
            deployment_id="dp_a" if i % 3 == 0 else "dp_b",
            completion_status="SUCCEEDED" if state == "COMPLETED" else None,
            # Many rows share a millisecond, so paging must order ties by id.
            modified_at_ms=NOW + i // 7,
        )))
    return rows


async def test_a_large_changelog_is_served_from_disk_and_a_restart_resumes_from_saved_offsets(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    rows = _big(20_000)
    # A status larger than the model's fetch sizes (a 6 MiB result) still comes through.
    big_id = rows[-1][0]
    rows[-1] = (big_id, {**rows[-1][1], "result": {"value": b"r" * (6 * 1024 * 1024)}})
    gone = rows[:100]
    await asyncio.to_thread(
        write_changelog, kafka_bootstrap, topics, [*rows, *((iid, None) for iid, _ in gone)], partitions=PARTITIONS, noise=0
    )
    noisy = rows[100:150]  # 50 more status rows, each followed by 2 rows of another table
    await asyncio.to_thread(write_changelog, kafka_bootstrap, topics, noisy, partitions=PARTITIONS, noise=2)
    live = {iid: s for iid, s in rows[100:]}
    path = tmp_path / "readmodel.duckdb"

    model = await _started(kafka_bootstrap, topics, path)
    try:
        assert model.records_seen == 20_000 + 100 + 50 * 3
        assert await model.count() == len(live)
        some = rows[12_345][0]
        summary = await model.get(some)
        assert summary is not None and summary.status == live[some]["status"]
        assert summary.target["service"] == live[some]["target"]["service"]
        assert await model.get(gone[0][0]) is None
        big = await model.get(big_id)
        assert big is not None and big.status == live[big_id]["status"]

        # Every Cart invocation exactly once, newest change first, ties by id, across pages.
        expected = sorted(
            (iid for iid, s in live.items() if s["target"]["service"] == "Cart"),
            key=lambda iid: (-live[iid]["modified_at_ms"], iid),
        )
        seen: list[str] = []
        after = None
        while True:
            page = await model.page(limit=997, service="Cart", after=after)
            assert page.total == len(expected)
            seen += [s.invocation_id for s in page.invocations]
            if page.next_cursor is None:
                break
            after = page.next_cursor
        assert seen == expected

        succeeded = await model.page(limit=10, statuses=["succeeded"])
        assert succeeded.total == sum(1 for s in live.values() if s["completion_status"] == "SUCCEEDED")
        assert all(s.completion_status == "SUCCEEDED" for s in succeeded.invocations)
        both = await model.page(limit=5, statuses=["INVOKED", "BACKING_OFF"], deployment_id="dp_a")
        assert both.total == sum(
            1 for s in live.values() if s["status"] in ("INVOKED", "BACKING_OFF") and s["deployment_id"] == "dp_a"
        )
        assert await model.pinned_to("dp_a") == sum(
            1 for s in live.values() if s["deployment_id"] == "dp_a" and s["status"] != "COMPLETED"
        )
    finally:
        await model.stop()

    # While it is down: 3 new invocations, one completed, one purged.
    new = [(str(InvocationId.new()), None) for _ in range(3)]
    new = [(iid, status(iid, modified_at_ms=NOW + 10_000)) for iid, _ in new]
    done_id, purged_id = rows[200][0], rows[201][0]
    later = [*new, (done_id, status(done_id, "COMPLETED", completion_status="FAILED", modified_at_ms=NOW + 10_001)), (purged_id, None)]
    await asyncio.to_thread(write_changelog, kafka_bootstrap, topics, later, partitions=PARTITIONS)

    model = await _started(kafka_bootstrap, topics, path)
    try:
        assert model.records_seen == len(later)  # nothing before the saved offsets was read again
        assert await model.count() == len(live) + 3 - 1
        done = await model.get(done_id)
        assert done is not None and done.completion_status == "FAILED"
        assert await model.get(purged_id) is None
        first = await model.page(limit=4)
        assert [s.invocation_id for s in first.invocations] == [done_id, *sorted(iid for iid, _ in new)]
    finally:
        await model.stop()


async def test_a_missing_file_or_offsets_beyond_the_end_rebuild_the_store(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path
) -> None:
    rows = [(iid, status(iid)) for iid in (str(InvocationId.new()) for _ in range(40))]
    await asyncio.to_thread(write_changelog, kafka_bootstrap, topics, rows, partitions=PARTITIONS)
    path = tmp_path / "rm" / "readmodel.duckdb"
    model = await _started(kafka_bootstrap, topics, path)
    await model.stop()

    # Offsets the topic never reached (a recreated topic on a broker that does not report topic ids).
    with duckdb.connect(str(path)) as db:
        db.execute("UPDATE keystate.offsets SET next_offset = next_offset + 1000000")
        db.execute("DELETE FROM keystate.meta WHERE name = 'topic_id'")
        db.execute("INSERT INTO keystate.invocation SELECT * REPLACE ('inv_stale' AS id) FROM keystate.invocation LIMIT 1")
    model = await _started(kafka_bootstrap, topics, path)
    try:
        assert model.records_seen == 40
        assert await model.count() == 40 and await model.get("inv_stale") is None
    finally:
        await model.stop()

    path.unlink()
    model = await _started(kafka_bootstrap, topics, path)
    try:
        assert model.records_seen == 40 and await model.count() == 40
    finally:
        await model.stop()


async def test_a_recreated_topic_rebuilds_the_store(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> None:
    first = [(iid, status(iid)) for iid in (str(InvocationId.new()) for _ in range(30))]
    await asyncio.to_thread(write_changelog, kafka_bootstrap, topics, first, partitions=PARTITIONS)
    path = tmp_path / "readmodel.duckdb"
    model = await _started(kafka_bootstrap, topics, path)
    await model.stop()

    await asyncio.to_thread(_recreate, kafka_bootstrap, topics)
    # More records than before on the new topic: only its topic id tells it apart from the old one.
    second = [(iid, status(iid)) for iid in (str(InvocationId.new()) for _ in range(60))]
    await asyncio.to_thread(write_changelog, kafka_bootstrap, topics, second, partitions=PARTITIONS)
    model = await _started(kafka_bootstrap, topics, path)
    try:
        assert await model.count() == 60
        assert await model.get(first[0][0]) is None and await model.get(second[0][0]) is not None
    finally:
        await model.stop()


async def test_a_second_model_on_the_same_directory_is_refused(kafka_bootstrap: str, topics: Topics, tmp_path: Path) -> None:
    path = tmp_path / "readmodel.duckdb"
    model = await _started(kafka_bootstrap, topics, path)
    other = InvocationReadModel(KafkaSettings(kafka_bootstrap, topics), path)
    try:
        with pytest.raises(Exception, match="another ingress uses the read model"):
            await other.start(timeout=30)
        assert other.error is not None and "--state-dir" in other.error
        assert model.ready and model.error is None
    finally:
        await other.stop()
        await model.stop()


def _recreate(bootstrap: str, topics: Topics) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    name = topics.changelog_topic
    admin.delete_topics([name], operation_timeout=30)[name].result(30)
    deadline = time.monotonic() + 60
    while True:  # the broker finishes a deletion in the background
        try:
            ensure_changelog(bootstrap, topics, PARTITIONS)
            return
        except KafkaException:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


async def test_a_caught_up_model_gathers_what_comes_within_its_interval_into_one_write(
    kafka_bootstrap: str, topics: Topics, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DuckDB's cost is per transaction: rows trickling in one at a time are written together."""
    monkeypatch.setenv("KEYSTATE_READMODEL_INTERVAL_MS", "1500")
    model = await _started(kafka_bootstrap, topics, tmp_path / "readmodel.duckdb")
    try:
        await asyncio.sleep(1.6)  # past the interval of the start's own write, if any
        before = model.writes
        rows = _big(12)
        for row in rows:  # one at a time, 30 ms apart: each would be a write of its own without the interval
            await asyncio.to_thread(write_changelog, kafka_bootstrap, topics, [row], partitions=PARTITIONS)
            await asyncio.sleep(0.03)
        deadline = time.monotonic() + 10
        while await model.count() < len(rows) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await model.count() == len(rows)
        assert model.writes - before <= 2
    finally:
        await model.stop()


def test_the_write_interval_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from keystate.ingress.readmodel_sql import write_interval

    assert write_interval() == 0.5
    monkeypatch.setenv("KEYSTATE_READMODEL_INTERVAL_MS", "0")
    assert write_interval() == 0.0
    monkeypatch.setenv("KEYSTATE_READMODEL_INTERVAL_MS", "-5")
    with pytest.raises(ValueError, match=r"\$KEYSTATE_READMODEL_INTERVAL_MS='-5' must be a number of at least 0"):
        write_interval()
