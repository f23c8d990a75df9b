"""Benchmark of the persistent partition store (processors/store.py), no Kafka.

    python bench/store_bench.py [--records 200000] [--value-bytes 1000] [--rows 1000000] [--partitions 8]

Prints:
- apply rate: `PartitionStore.apply` of changelog records (state rows with 1 KB Avro values, plus a
  status and a timers row with index headers every 50 records), in restore-sized chunks of 5,000 with
  a checkpoint each: MB/s of key + value bytes and records/s. This is the restore-from-empty path.
- point get rate: random committed rows read through `tables.state.get` (RocksDB + Avro decode +
  the LRU cache of 2,000 rows, so mostly misses) and through RocksDB alone.
- state machine batches: invocations of a virtual object (invoke, get and set state, output; 24 h
  retention) in batches of 100 commands, each batch drained, coalesced and encoded into changelog
  records, then committed: commands/s on in-memory `Tables` and on a `PartitionStore`.
- RSS: a fresh process opens `--partitions` stores holding `--rows` rows in total and reads 10,000
  rows from each; its RSS before and after (the stores' memory is bounded by StoreSettings, not rows).
"""

from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from keystate.processors.changelog import encode_value, row_record, table_key
from keystate.processors.state_machine import Config, Tables, apply
from keystate.processors.store import Checkpoint, PartitionStore, Record, StoreSettings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.state_machine import builders as b  # noqa: E402  (the command builders of the state machine tests)

CHUNK = 5_000


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def state_key(i: int) -> tuple[str, str, str]:
    return ("Counter", f"user-{i:09d}", "profile")


def records(start: int, count: int, value_bytes: int, rnd: random.Random) -> list[Record]:
    """`count` changelog records: state rows with `value_bytes` of payload, some status and timer rows."""
    out: list[Record] = []
    for i in range(start, start + count):
        value = encode_value("state", {"value": rnd.randbytes(value_bytes)})
        out.append((table_key("state", state_key(i)), value, None))
        if i % 50 == 0:
            iid = f"inv_{i:020d}"
            out.append(row_record("timers", (iid, "SLEEP", 1), {
                "invocation_id": iid, "timer_kind": "SLEEP", "entry_index": 1, "attempt": None, "fire_at_ms": i,
            }))  # fmt: skip
    return out


def fill(store: PartitionStore, rows: int, value_bytes: int, rnd: random.Random) -> tuple[int, int, float]:
    """Apply `rows` state rows in chunks; (records, bytes, seconds spent in apply)."""
    n = nbytes = 0
    spent = 0.0
    for start in range(0, rows, CHUNK):
        chunk = records(start, min(CHUNK, rows - start), value_bytes, rnd)
        nbytes += sum(len(k) + len(v or b"") for k, v, _ in chunk)
        t = time.perf_counter()
        n += store.apply(chunk, Checkpoint("bench", n + len(chunk), 0))
        spent += time.perf_counter() - t
    return n, nbytes, spent


def bench_apply_and_get(root: Path, count: int, value_bytes: int) -> None:
    rnd = random.Random(1)
    store = PartitionStore.open(root / "apply", 0, StoreSettings())
    try:
        n, nbytes, spent = fill(store, count, value_bytes, rnd)
        print(f"apply: {n:,} records, {nbytes / 1e6:.0f} MB in {spent:.2f} s: "
              f"{nbytes / 1e6 / spent:.0f} MB/s, {n / spent:,.0f} records/s")  # fmt: skip
        t = time.perf_counter()
        store.tables.state._rows.db.flush()  # the memtables to disk: what a sustained restore also pays
        spent += time.perf_counter() - t
        print(f"apply including the flush of the memtables: {nbytes / 1e6 / spent:.0f} MB/s")
        keys = [state_key(rnd.randrange(count)) for _ in range(20_000)]
        t = time.perf_counter()
        for key in keys:
            assert store.tables.state.get(key) is not None
        spent = time.perf_counter() - t
        print(f"get (tables.state.get, decoded, cache {StoreSettings().cache_rows:,} rows): {len(keys) / spent:,.0f} gets/s")
        raw = [table_key("state", k) for k in keys]
        read = store.tables.state._rows.read
        t = time.perf_counter()
        for key_bytes in raw:
            assert read(key_bytes) is not None
        spent = time.perf_counter() - t
        print(f"get (RocksDB only, raw bytes): {len(raw) / spent:,.0f} gets/s")
        t = time.perf_counter()
        due = store.due_timers(count)
        print(f"due_timers over {len(due):,} timers: {time.perf_counter() - t:.3f} s")
        t = time.perf_counter()
        store.close()
        store = PartitionStore.open(root / "apply", 0, StoreSettings())
        print(f"close and reopen: {time.perf_counter() - t:.3f} s")
        t = time.perf_counter()
        store.wipe()
        print(f"wipe of {n:,} records: {time.perf_counter() - t:.3f} s")
    finally:
        store.close()


def invocation_commands(n: int) -> list[Any]:
    """The commands of `n` invocations of Counter/<key>.add that read and write state, then end."""
    commands: list[Any] = []
    for i in range(n):
        target = b.object_target("Counter", f"user-{i % 5_000}", "add")
        iid = b.new_id(target, i + 1)
        commands += [
            b.invoke(target, iid, b"1"),
            b.append(iid, 1, 1, b.get_state("count", b"41")),
            b.append(iid, 1, 2, b.set_state("count", b"42")),
            b.append(iid, 1, 3, b.output(b"42")),
        ]
    return commands


def bench_state_machine(root: Path, invocations: int) -> None:
    commands = invocation_commands(invocations)
    cfg = Config(completion_retention_ms=86_400_000)
    store = PartitionStore.open(root / "machine", 0, StoreSettings())
    try:
        for label, tables, done in [("in-memory Tables", Tables(), None), ("PartitionStore", store.tables, store)]:
            t = time.perf_counter()
            offset = 0
            for start in range(0, len(commands), 100):
                for command in commands[start : start + 100]:
                    apply(tables, command, 1_000 + start, cfg)  # type: ignore[arg-type]
                final = {(name, key): value for name, key, value in tables.drain()}
                batch = [row_record(name, key, value) for (name, key), value in final.items()]
                offset += len(batch)
                if done is not None:
                    done.commit(batch, Checkpoint("bench", offset, 0))
            spent = time.perf_counter() - t
            completed = sum(1 for _, s in tables.status.items() if s["status"] == "COMPLETED")
            print(f"state machine on {label}: {len(commands) / spent:,.0f} commands/s "
                  f"({completed:,} invocations completed, {offset:,} changelog records)")  # fmt: skip
    finally:
        store.close()


def bench_rss(root: Path, rows: int, partitions: int, value_bytes: int) -> None:
    rnd = random.Random(2)
    per = rows // partitions
    t = time.perf_counter()
    for p in range(partitions):
        store = PartitionStore.open(root / f"rss-{p}", p, StoreSettings())
        try:
            fill(store, per, value_bytes, rnd)
        finally:
            store.close()
    print(f"filled {partitions} partitions with {per * partitions:,} rows in {time.perf_counter() - t:.1f} s")
    probe = subprocess.run(
        [sys.executable, __file__, "--probe", str(root), str(partitions), str(per)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    print(probe.stdout, end="")


def probe(root: Path, partitions: int, per: int) -> None:
    """In a fresh process: RSS before and after opening the stores and reading from each."""
    before = rss_mib()
    t = time.perf_counter()
    stores = [PartitionStore.open(root / f"rss-{p}", p, StoreSettings()) for p in range(partitions)]
    opened = time.perf_counter() - t
    after_open = rss_mib()
    rnd = random.Random(3)
    for store in stores:
        for _ in range(10_000):
            assert store.tables.state.get(state_key(rnd.randrange(per))) is not None
    after_reads = rss_mib()
    print(f"RSS (fresh process): {before:.0f} MiB before, {after_open:.0f} MiB after opening {partitions} stores "
          f"({opened:.2f} s), {after_reads:.0f} MiB after 10,000 random gets on each")  # fmt: skip
    dbs = [store.tables.state._rows.db for store in stores]
    readers = sum(db.property_int_value("rocksdb.estimate-table-readers-mem") or 0 for db in dbs)
    cache = dbs[0].property_int_value("rocksdb.block-cache-usage") or 0
    print(f"  of which RocksDB: block cache {cache / 2**20:.0f} MiB (shared), index and filters {readers / 2**20:.0f} MiB")
    for store in stores:
        store.close()


def main() -> None:
    if sys.argv[1:2] == ["--probe"]:
        probe(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--value-bytes", type=int, default=1_000)
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows over all partitions for the RSS probe (0: skip)")
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--invocations", type=int, default=20_000, help="for the state machine batches (0: skip)")
    parser.add_argument("--dir", type=Path, default=None, help="where the stores go (default: a temporary directory)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        print(f"cpus: {os.cpu_count()}, stores under {tmp}")
        bench_apply_and_get(Path(tmp), args.records, args.value_bytes)
        if args.invocations:
            bench_state_machine(Path(tmp), args.invocations)
        if args.rows:
            bench_rss(Path(tmp), args.rows, args.partitions, args.value_bytes)


if __name__ == "__main__":
    main()
