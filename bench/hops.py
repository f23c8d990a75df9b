"""Where one greet call's latency goes at c=1, from the CreateTime of the records it leaves on Kafka.

    .venv/bin/python bench/hops.py [--bootstrap HOST:PORT] [-n 300] [--warmup 100] [--json]

Starts its own stack the way `bench_invoke.py` does (a broker unless $KAFKA_BOOTSTRAP_SERVERS is set,
one processor, one ingress, the examples deployment), sends `POST /Greeter/greet` one call at a time
on one keep-alive connection, noting each call's send and answer times and its `x-restate-id`, then
reads the records those calls left and lines them up per invocation (CreateTime is set when
`produce()` is called, in ms, on this machine's clock):

  c0  the client sends the request
  k1  the ingress produces the InvokeCommand to <prefix>log
  s2  the processor produces the COMPLETED status row (inside the batch's transaction: with folding,
      after the attempt ran and its output was folded into the batch, before the commit)
  c1  the client has the answer

and prints the p50/p90 of c0->k1, k1->s2 and s2->c1 with what each gap holds. Numbers only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
from confluent_kafka import Consumer, TopicPartition

from keystate.processors import changelog
from keystate.schemas.topics import Topics

sys.path.insert(0, str(Path(__file__).parent))
from bench_invoke import Launcher, free_port, http, wait_http  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GAPS = {
    "c0->k1": ("c0", "k1", "HTTP in, the ingress builds and produces the InvokeCommand"),
    "k1->s2": ("k1", "s2", "produce ack, processor fetch, apply, attempt (socket, handler, output), fold, re-run"),
    "s2->c1": ("s2", "c1", "the transaction's offsets and commit, the ingress reads the reply, HTTP out"),
    "c0->c1": ("c0", "c1", "the whole call"),
}


def _pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered)) - 1))]


def _ends(consumer: Consumer, topic: str) -> dict[int, int]:
    meta = consumer.list_topics(topic, timeout=10).topics[topic]
    return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in meta.partitions}


async def _calls(ingress: str, n: int, tag: str) -> list[tuple[str, float, float]]:
    out = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for i in range(n):
            c0 = time.time()
            async with session.post(f"{ingress}/Greeter/greet", json=f"{tag}-{i}") as resp:
                await resp.read()
                c1 = time.time()
                if resp.status != 200:
                    raise SystemExit(f"greet answered {resp.status}")
                out.append((resp.headers["x-restate-id"], c0 * 1000, c1 * 1000))
    return out


def _records(bootstrap: str, starts: dict[str, dict[int, int]]) -> list[tuple[str, int, bytes | None, bytes | None, dict[str, bytes]]]:
    """(topic, CreateTime, key, value, headers) of every record after `starts`, committed or not."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "keystate-bench-hops", "enable.auto.commit": False})
    consumer.assign([TopicPartition(t, p, o) for t, parts in starts.items() for p, o in parts.items()])
    out = []
    quiet_since = time.monotonic()
    while time.monotonic() - quiet_since < 3.0:  # transactional topics end in a marker: read until quiet
        msg = consumer.poll(0.5)
        if msg is None or msg.error():
            continue
        quiet_since = time.monotonic()
        out.append((str(msg.topic()), msg.timestamp()[1], msg.key(), msg.value(), dict(msg.headers() or [])))
    consumer.close()
    return out


def measure(bootstrap: str, ingress: str, prefix: str, n: int, warmup: int) -> dict[str, Any]:
    topics = Topics(prefix)
    asyncio.run(_calls(ingress, warmup, "warm"))
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": "keystate-bench-hops-probe"})
    starts = {t: _ends(probe, t) for t in (topics.log, topics.changelog_topic)}
    probe.close()
    done = asyncio.run(_calls(ingress, n, "hop"))
    per: dict[str, dict[str, float]] = {iid: {"c0": c0, "c1": c1} for iid, c0, c1 in done}
    for topic, created, key, value, headers in _records(bootstrap, starts):
        if topic == topics.log and headers.get("type") == b"keystate.InvokeCommand":
            iid = headers.get("invocation_id", b"").decode()
            if iid in per:
                per[iid].setdefault("k1", created)
        elif topic == topics.changelog_topic and key is not None and value is not None:
            table, _ = changelog.split_key(key)
            if table == "status":
                row = changelog.decode_value("status", value)
                if row["invocation_id"] in per and row["status"] == "COMPLETED":
                    per[row["invocation_id"]].setdefault("s2", created)
    complete = [v for v in per.values() if {"k1", "s2"} <= v.keys()]
    report: dict[str, Any] = {"calls": len(done), "lined_up": len(complete), "gaps_ms": {}}
    for label, (a, b, what) in GAPS.items():
        values = [v[b] - v[a] for v in complete]
        report["gaps_ms"][label] = {"p50": round(_pct(values, 50), 2), "p90": round(_pct(values, 90), 2),
                                    "mean": round(statistics.fmean(values), 2), "holds": what}
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", type=int, default=300)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from keystate.server.topics import TopicSettings, ensure_topics

    logdir = Path(tempfile.mkdtemp(prefix="keystate-hops-"))
    launcher = Launcher(logdir)
    try:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or launcher.start_kafka()
        prefix = f"hops-{os.urandom(4).hex()}."
        ensure_topics(bootstrap, Topics(prefix), TopicSettings(partitions=args.partitions))
        launcher.start("processor", "processor", ["--bootstrap", bootstrap, "--prefix", prefix, "--instance-id", f"{prefix}p0"], {})
        port, admin = free_port(), free_port()
        ing = launcher.start("ingress", "ingress", ["--bootstrap", bootstrap, "--prefix", prefix, "--port", str(port),
                                                    "--admin-port", str(admin)], {})
        wait_http(f"http://127.0.0.1:{admin}/health", timeout=60, proc=ing)
        dep_port = free_port()
        dep = launcher.start("deployment", "deployment", [str(ROOT / "examples" / "serve.py"), str(dep_port)], {})
        wait_http(f"http://127.0.0.1:{dep_port}/discover", timeout=60, proc=dep)
        resp = http("POST", f"http://127.0.0.1:{admin}/deployments", {"uri": f"http://127.0.0.1:{dep_port}"})
        if resp.status not in (200, 201):
            raise SystemExit(f"registering the deployment failed: {resp.status}")
        report = measure(bootstrap, f"http://127.0.0.1:{port}", prefix, args.n, args.warmup)
    finally:
        launcher.stop()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['lined_up']} of {report['calls']} calls lined up (logs in {logdir})")
        for label, g in report["gaps_ms"].items():
            print(f"  {label}  p50 {g['p50']:6.2f}  p90 {g['p90']:6.2f}  mean {g['mean']:6.2f} ms   {g['holds']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
