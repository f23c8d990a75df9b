"""Catch-up rate and memory of the ingress's read model (DuckDB) for N invocations, vs. an in-memory dict.

    python bench/readmodel_memory.py [--bootstrap HOST:PORT] [--counts 20000,200000] [--journal 3]

Without --bootstrap a local broker is started (needs a JDK, see `keystate dev`). For each N it writes, per
invocation, a status row, `--journal` journal rows (Input, Run..., Output) and, for every other one, a
state row to a fresh `<prefix>changelog` (4 partitions) as a partition processor writes them, then, in a
fresh process each, (a) starts `InvocationReadModel` on an empty DuckDB file and waits until it caught
up (changelog records read per second), then restarts it on the same file (once with tracemalloc, once
without it, for times and RSS); (b) keeps the status summaries in a dict, as the read model did first.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
import uuid
from pathlib import Path

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from keystate.ingress.readmodel import INVOCATION_STATUS, InvocationReadModel
from keystate.ingress.readmodel_tables import changelog_table
from keystate.ingress.readmodel_store import InvocationSummary
from keystate.processors.changelog import row_record
from keystate.schemas._codec import codec
from keystate.schemas.ids import InvocationId
from keystate.schemas.topics import Topics
from keystate.server.kafka import KafkaSettings

PARTITIONS = 4
NOW = 1_700_000_000_000


def _rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _status(iid: str, i: int) -> dict:
    done = i % 2 == 0
    return {
        "invocation_id": iid,
        "target": {"service": f"Svc{i % 10}", "handler": "run", "key": None, "service_type": "SERVICE", "handler_kind": "EXCLUSIVE"},
        "status": "COMPLETED" if done else "SUSPENDED",
        "attempt": 1, "journal_length": 3, "waiting_on": [], "deployment_id": f"dp_{i % 3}", "headers": {},
        "idempotency_key": None, "caller": None, "reply_topic": None, "created_at_ms": NOW + i,
        "modified_at_ms": NOW + i, "execute_at_ms": None, "result": None,
        "completion_status": "SUCCEEDED" if done else None, "last_failure": None, "retry_count": 0,
        "retention_ms": 86_400_000, "source": "ingress",
    }


def _rows(iid: str, i: int, journal: int) -> list[tuple[str, tuple, dict]]:
    """The changelog rows of one invocation: its status, its journal, and a state row for every other one."""
    rows: list[tuple[str, tuple, dict]] = [("status", (iid,), _status(iid, i))]
    for index in range(journal):
        if index == 0:
            entry = ("keystate.InputEntry", {"argument": b'{"order": %d}' % i, "headers": {}})
        elif index == journal - 1:
            entry = ("keystate.OutputEntry", {"result": ("keystate.Value", {"value": b'"done"'})})
        else:
            entry = ("keystate.RunEntry", {"name": f"step-{index}", "result": ("keystate.Value", {"value": b"42"})})
        rows.append(("journal", (iid, index), {"entry": entry}))
    if i % 2:
        rows.append(("state", (f"Svc{i % 10}", f"key-{i}", "count"), {"value": str(i).encode()}))
    return rows


def _load(bootstrap: str, topics: Topics, n: int, journal: int) -> int:
    name = topics.changelog_topic
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, PARTITIONS, 1, config={"cleanup.policy": "compact"})])[name].result(30)
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 50, "compression.type": "lz4"})
    written = 0
    for i in range(n):
        iid = str(InvocationId.new())
        partition = InvocationId.parse(iid).partition(PARTITIONS)
        for table, row_key, row in _rows(iid, i, journal):
            key, value, headers = row_record(table, row_key, row)
            while True:
                try:
                    producer.produce(name, value, key=key, headers=headers, partition=partition)
                    break
                except BufferError:
                    producer.poll(0.1)
            written += 1
        producer.poll(0)
    assert producer.flush(60) == 0
    return written


async def _duckdb(bootstrap: str, topics: Topics, path: Path) -> dict:
    out: dict = {}
    for run in ("empty_file", "restart"):
        gc.collect()
        rss0, (heap0, _) = _rss_kib(), tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        t0 = time.monotonic()
        model = InvocationReadModel(KafkaSettings(bootstrap, topics), path)
        await model.start()
        trace = []  # (records read, RSS growth in MiB) while catching up: flat or not
        while not model.ready and model.error is None:
            await asyncio.sleep(0.05)
            if not trace or time.monotonic() - trace[-1][2] > 2:
                trace.append((model.records_seen, (_rss_kib() - rss0) // 1024, time.monotonic()))
        caught_up = time.monotonic() - t0
        t1 = time.monotonic()
        page = await model.page(limit=100, statuses=["SUSPENDED"], service="Svc3")
        query_ms = (time.monotonic() - t1) * 1000
        gc.collect()
        heap, peak = tracemalloc.get_traced_memory()
        out[run] = {
            "catch_up_s": round(caught_up, 2), "records_read": model.records_seen, "rows": await model.count(),
            "records_per_s": round(model.records_seen / caught_up) if caught_up else None,
            "heap_growth_kib": (heap - heap0) // 1024, "heap_peak_kib": (peak - heap0) // 1024,
            "rss_growth_kib": _rss_kib() - rss0, "rss_mib_by_records": [t[:2] for t in trace], "filtered_page_ms": round(query_ms, 1), "page_total": page.total,
        }
        await model.stop()
    out["file_mib"] = round(sum(f.stat().st_size for f in path.parent.iterdir()) / 2**20, 1)
    return out


def _dict(bootstrap: str, topics: Topics) -> dict:
    """What the read model held before: every summary in a dict."""
    gc.collect()
    rss0, (heap0, _) = _rss_kib(), tracemalloc.get_traced_memory()
    consumer = Consumer(KafkaSettings(bootstrap, topics).consumer_config(**{"group.id": "bench"}))
    name = topics.changelog_topic
    ends = {p: consumer.get_watermark_offsets(TopicPartition(name, p))[1] for p in range(PARTITIONS)}
    consumer.assign([TopicPartition(name, p, 0) for p in range(PARTITIONS)])
    summaries: dict[str, InvocationSummary] = {}
    done: set[int] = set()
    decode = codec().decode_as
    while len(done) < PARTITIONS:
        for msg in consumer.consume(1000, 0.5):
            if msg.error():
                continue
            if changelog_table(msg.key()) == "status" and msg.value() is not None:
                summary = InvocationSummary.of(decode(INVOCATION_STATUS, msg.value()))
                summaries[summary.invocation_id] = summary
            if msg.offset() + 1 >= ends[msg.partition()]:
                done.add(msg.partition())
    consumer.close()
    gc.collect()
    heap, _ = tracemalloc.get_traced_memory()
    return {"rows": len(summaries), "heap_growth_kib": (heap - heap0) // 1024, "rss_growth_kib": _rss_kib() - rss0}


def _child(mode: str, bootstrap: str, prefix: str, path: str) -> None:
    if mode != "duckdb-untraced":  # tracemalloc slows Python down: time the catch-up without it
        tracemalloc.start()
    topics = Topics(prefix)
    result = asyncio.run(_duckdb(bootstrap, topics, Path(path))) if mode.startswith("duckdb") else _dict(bootstrap, topics)
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap")
    parser.add_argument("--counts", default="20000,200000")
    parser.add_argument("--journal", type=int, default=3, help="journal rows per invocation")
    parser.add_argument("--modes", default="duckdb,duckdb-untraced,dict")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return
    broker = None
    with tempfile.TemporaryDirectory() as tmp:
        bootstrap = args.bootstrap
        if bootstrap is None:
            from keystate.cli.kafka import LocalKafka

            broker = LocalKafka(Path(tmp) / "kafka", port=0)
            bootstrap = broker.start()
        try:
            for n in (int(c) for c in args.counts.split(",")):
                topics = Topics(f"bench.readmodel.{uuid.uuid4().hex[:8]}.")
                t0 = time.monotonic()
                written = _load(bootstrap, topics, n, args.journal)
                print(f"N={n}: wrote {written} changelog records in {time.monotonic() - t0:.1f} s", flush=True)
                for mode in args.modes.split(","):
                    path = Path(tmp) / topics.prefix / mode / "readmodel.duckdb"
                    out = subprocess.run(
                        [sys.executable, __file__, "--child", mode, bootstrap, topics.prefix, str(path)],
                        capture_output=True, text=True, check=True,
                    ).stdout
                    print(f"N={n} {mode}: {out.strip()}", flush=True)
        finally:
            if broker is not None:
                broker.stop()


if __name__ == "__main__":
    main()
