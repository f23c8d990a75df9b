"""State at scale: bulk-load N completed invocations and M objects, then restore, kill -9 and restart.

    .venv/bin/python bench/state_scale.py [--invocations 1000000] [--objects 100000] [--value-bytes 1024]
        [--partitions 4] [--prefix scale-<id>.] [--out bench/out] [--timeout 900] [--json]

1. Load (BULK-LOADED, not through HTTP): the real pure state machine runs in this process on a
   `Tables()` per log partition (InvokeCommand + JournalAppendCommand, as a real run applies them) and
   the rows it writes (COMPLETED statuses, purge timers, idempotency rows, object state) are produced
   to the multiplexed changelog, partition by partition, with a batching producer (bench/_scale_load.py).
   Prints the load time, the records and the changelog's size on the broker; reads records back.
2. Restore from an empty store: ingress and deployment up, the ingress's read model caught up with
   the changelog (timed; a processor failing over finds the ingress running), then a processor with an empty
   `--state-dir`; one caller per partition calls `ScaleObject/<key>/size` on a loaded object of that
   partition. Time to the first successful call and to a call served on every partition; the
   processor's restore lines (records, bytes, seconds, checkpoint/rebuilt) and MB/s.
3. Restart with a checkpoint: kill -9 the processor, start it with the same state dir and instance id,
   the same measurements.
Throughout: VmRSS of the processor, the ingress (it serves the admin API too) and this loader, every
0.5 s, max and final per phase. A readable table, and JSON in --out/<timestamp>-scale/. Every
process it started is stopped by pid at the end, on Ctrl-C, SIGTERM or an error. Numbers only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(BENCH))

from _scale_load import Loader, object_keys_by_partition, read_back  # noqa: E402
from _scale_measure import RssSampler, probe_partitions, restore_lines, topic_disk_bytes, topic_records  # noqa: E402
from bench_invoke import Launcher, source_version  # noqa: E402
from harness import Proc, free_port, http, wait_http  # noqa: E402

from keystate.schemas.topics import Topics  # noqa: E402
from keystate.server.topics import TopicSettings, ensure_topics  # noqa: E402

SERVICES = BENCH / "_scale_services.py"
MB = 1_000_000


def processor_has_state_dir() -> bool:
    """Whether this tree's `keystate processor` takes --state-dir (the persistent store of issue 8)."""
    out = subprocess.run([sys.executable, "-m", "keystate.cli", "processor", "--help"], capture_output=True, text=True,
                         cwd=ROOT, timeout=60)
    return "--state-dir" in out.stdout


def ensure_changelog(bootstrap: str, topics: Topics, partitions: int) -> str:
    """The multiplexed changelog topic; created here (compacted) only if `ensure_topics` did not."""
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    name = topics.changelog_topic
    if name in admin.list_topics(timeout=30).topics:
        return "created by ensure_topics"
    fut = admin.create_topics([NewTopic(name, partitions, 1, config={"cleanup.policy": "compact"})])[name]
    fut.result(30)
    return "created by the bench (this tree's ensure_topics does not create it yet)"


class Scale:
    """The processes of one run and the phases."""

    def __init__(self, launcher: Launcher, bootstrap: str, prefix: str, args: argparse.Namespace) -> None:
        self.launcher = launcher
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.args = args
        self.env = {"KEYSTATE_LOG_LEVEL": args.log_level}
        self.state_dir = launcher.logdir / "state"
        self.with_state_dir = processor_has_state_dir()
        self.processor: Proc | None = None
        self.rss = RssSampler().start()
        self.rss.watch("loader (bench)", os.getpid)
        self.url = ""
        self.admin_url = ""

    def spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(name, [sys.executable, *argv], self.launcher.logdir / f"{name}.log", env)
        self.launcher.procs.append(proc)  # stopped by pid with the rest
        return proc

    def start_front(self) -> None:
        """Ingress (with the admin API) and the deployment; the deployment registered."""
        ingress_port, admin_port = free_port(), free_port()
        ingress = self.spawn("ingress", ["-m", "keystate.cli", "ingress", "--bootstrap", self.bootstrap, "--prefix",
                                         self.prefix, "--port", str(ingress_port), "--admin-port", str(admin_port)], self.env)
        self.rss.watch("ingress/admin", lambda: ingress.pid if ingress.alive() else None)
        wait_http(f"http://127.0.0.1:{admin_port}/health", timeout=120, proc=ingress)
        dep_port = free_port()
        dep = self.spawn("deployment", [str(SERVICES), str(dep_port)], {})
        wait_http(f"http://127.0.0.1:{dep_port}/discover", timeout=60, proc=dep)
        resp = http("POST", f"http://127.0.0.1:{admin_port}/deployments", {"uri": f"http://127.0.0.1:{dep_port}"})
        if resp.status not in (200, 201):
            raise RuntimeError(f"registering the deployment failed: {resp.status} {resp.body[:300]!r}")
        self.url = f"http://127.0.0.1:{ingress_port}"
        self.admin_url = f"http://127.0.0.1:{admin_port}"

    def wait_read_model(self, timeout: float) -> float:
        """Seconds until the ingress's read model has read the changelog to its end (503 until then)."""
        t0 = time.monotonic()
        wait_http(f"{self.admin_url}/invocations?limit=1", timeout=timeout)
        return round(time.monotonic() - t0, 1)

    def start_processor(self, name: str) -> Proc:
        argv = ["-m", "keystate.cli", "processor", "--bootstrap", self.bootstrap, "--prefix", self.prefix,
                "--instance-id", f"{self.prefix}p0"]
        if self.with_state_dir:
            argv += ["--state-dir", str(self.state_dir)]
        proc = self.processor = self.spawn(f"processor-{name}", argv, self.env)
        self.rss.watch("processor", lambda: proc.pid if proc.alive() else None)
        return proc

    def measure(self, phase: str, keys: dict[int, str]) -> dict[str, Any]:
        """Start the processor and time the calls to each partition; its restore lines and RSS."""
        self.rss.enter(phase)
        t0 = time.monotonic()
        proc = self.start_processor(phase.split()[0])  # log file processor-restore.log / processor-restart.log
        probes = probe_partitions(self.url, keys, self.args.value_bytes - 2, t0, self.args.timeout)
        wall = time.monotonic() - t0
        time.sleep(1.0)  # restore lines of partitions that served before logging are flushed by now
        lines = restore_lines(proc.log_path)
        served = [p.ok_after_s for p in probes if p.ok_after_s is not None]
        restored_bytes = sum(r["bytes"] or 0 for r in lines)
        restore_s = sum(r["seconds"] for r in lines)
        longest = max((r["seconds"] for r in lines), default=0.0)  # partitions restore in parallel, one thread each
        return {
            "phase": phase,
            "first_call_s": min(served) if served else None,
            "all_partitions_s": max(served) if len(served) == len(probes) else None,
            "wall_s": round(wall, 3),
            "probes": [asdict(p) | {"state_ok": p.state_ok} for p in probes],
            "restore_lines": lines,
            "restored_records": sum(r["records"] for r in lines),
            "restored_bytes": restored_bytes if any(r["bytes"] is not None for r in lines) else None,
            "restore_seconds_sum": round(restore_s, 3),
            "restore_mb_per_s": round(restored_bytes / MB / restore_s, 1) if restored_bytes and restore_s > 0 else None,
            "restore_longest_s": round(longest, 3),
            "restore_parallel_mb_per_s": round(restored_bytes / MB / longest, 1) if restored_bytes and longest > 0 else None,
            "state_dir_bytes": dir_bytes(self.state_dir),
            "origins": dict(Counter(str(r["origin"]) for r in lines)),
            "processor_alive": proc.alive(),
        }


def dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def verify(bootstrap: str, topic: str, partitions: int, value_bytes: int) -> dict[str, Any]:
    """Read records back from every changelog partition and decode them: keys, Avro, row contents."""
    tables: Counter[str] = Counter()
    problems: list[str] = []
    for p, table, key, value in read_back(bootstrap, topic, partitions):
        tables[table] += 1
        if table == "status" and value["status"] != "COMPLETED":
            problems.append(f"[{p}] status {key} is {value['status']}")
        if table == "state" and len(value["value"]) != value_bytes:
            problems.append(f"[{p}] state {key} holds {len(value['value'])} bytes, not {value_bytes}")
    return {"read_back": sum(tables.values()), "tables": dict(tables), "problems": problems[:10]}


def run(args: argparse.Namespace, launcher: Launcher, bootstrap: str, report: dict[str, Any]) -> None:
    prefix = args.prefix or f"scale-{uuid.uuid4().hex[:8]}."
    topics = Topics(prefix)
    ensure_topics(bootstrap, topics, TopicSettings(partitions=args.partitions))
    report["changelog_topic"] = {"name": topics.changelog_topic, "how": ensure_changelog(bootstrap, topics, args.partitions)}
    scale = Scale(launcher, bootstrap, prefix, args)
    report["processor_state_dir_flag"] = scale.with_state_dir
    broker = launcher.broker_pid()
    if broker is not None:
        scale.rss.watch("broker", lambda: broker)
    try:
        scale.rss.enter("load")
        print(f"prefix {prefix}; bulk-loading {args.invocations} completed invocations and {args.objects} objects "
              f"({args.value_bytes} B values) into {topics.changelog_topic}...", flush=True)
        loader = Loader(bootstrap, topics.changelog_topic, args.partitions, progress=lambda s: print(s, flush=True))
        stats = loader.load(args.invocations, args.objects, args.value_bytes, args.idempotent_share)
        size = topic_records(bootstrap, topics.changelog_topic, args.partitions)
        disk = topic_disk_bytes([launcher.kafka_dir], topics.changelog_topic) if launcher.kafka_dir else None
        report["load"] = asdict(stats) | {
            "bulk_loaded": True,
            "seconds": round(stats.seconds, 1),
            "records_on_broker": size.records,
            "changelog_disk_bytes": disk,
            "verify": verify(bootstrap, topics.changelog_topic, args.partitions, args.value_bytes),
        }
        print_load(report["load"])
        if args.load_only:
            return
        scale.rss.enter("front")
        scale.start_front()
        keys = object_keys_by_partition(args.partitions, args.objects, per_partition=2)
        if any(not k for k in keys.values()):
            raise RuntimeError(f"no loaded object on some partition ({keys}); load more --objects")
        if not scale.with_state_dir:
            print("NOTE: this tree's processor has no --state-dir: it restores from the old per-table changelogs, "
                  "so it will not see the bulk-loaded rows (calls answer 0 bytes)", flush=True)
        # The ingress reads the whole changelog into its read model once, when it starts on a fresh
        # machine; the processor's restore is measured after that, as it runs when a processor fails over
        # (the ingress keeps running then). Both share 2 cores here.
        print("waiting for the ingress's read model to read the changelog...", flush=True)
        report["read_model_catch_up_s"] = scale.wait_read_model(args.timeout)
        print(f"the ingress's read model read the changelog in {report['read_model_catch_up_s']} s", flush=True)
        shutil.rmtree(scale.state_dir, ignore_errors=True)
        scale.state_dir.mkdir(parents=True)
        print("restore from an empty store...", flush=True)
        first = scale.measure("restore (empty store)", {p: k[0] for p, k in keys.items()})
        if first["all_partitions_s"]:  # the whole changelog over the wall time to serving, restore lines or not
            first["wall_mb_per_s"] = round(stats.bytes / MB / first["all_partitions_s"], 1)
        print_phase(first)
        assert scale.processor is not None
        scale.rss.enter("kill -9")
        scale.processor.kill9()
        print("restart with the checkpoint (kill -9, same state dir and instance id)...", flush=True)
        second = scale.measure("restart (checkpoint)", {p: k[-1] for p, k in keys.items()})
        print_phase(second)
        scale.rss.enter("settled")
        time.sleep(3.0)
        report["phases"] = [first, second]
    finally:
        scale.rss.stop()
        report["rss"] = scale.rss.report()


# ---- output -------------------------------------------------------------------------------------


def print_load(load: dict[str, Any]) -> None:
    disk = load["changelog_disk_bytes"]
    print("\n== load (BULK-LOADED: state machine in-process, rows produced straight to the changelog, no HTTP)")
    print(f"invocations {load['invocations']}  objects {load['objects']}  in {load['seconds']} s  "
          f"({(load['invocations'] + load['objects']) / max(load['seconds'], 1e-9):.0f} /s)")
    print(f"changelog records {load['records']} produced, {load['records_on_broker']} on the broker; "
          f"{load['bytes'] / MB:.1f} MB uncompressed; on disk {'n/a' if disk is None else f'{disk / MB:.1f} MB'}")
    print("by table " + "  ".join(f"{t} {n}" for t, n in sorted(load["by_table"].items())))
    v = load["verify"]
    print(f"read back {v['read_back']} records, decoded: {v['tables']}; problems: {v['problems'] or 'none'}", flush=True)


def print_phase(ph: dict[str, Any]) -> None:
    print(f"\n== {ph['phase']}: first successful call {ph['first_call_s']} s, every partition {ph['all_partitions_s']} s"
          f" (processor alive: {ph['processor_alive']})")
    print("partition  key            served after s  tries  size answered (expected)  state ok")
    for p in ph["probes"]:
        print(f"{p['partition']:9d}  {p['key']:<14} {p['ok_after_s']!s:>14}  {p['tries']:5d}  {p['answer']!s:>13} ({p['expected']})"
              f"  {p['state_ok']}" + (f"  last error: {p['last_error'][:80]}" if p["ok_after_s"] is None else ""))
    if ph["restore_lines"]:
        for r in ph["restore_lines"]:
            b = "?" if r["bytes"] is None else f"{r['bytes'] / MB:.1f} MB"
            print(f"   restore partition {r['partition']}: {r['records']} records, {b}, {r['seconds']} s, "
                  f"from offset {r['from_offset']}, {r['origin'] or '?'}")
        rate, par = ph["restore_mb_per_s"], ph["restore_parallel_mb_per_s"]
        print(f"   restored {ph['restored_records']} records in {ph['restore_seconds_sum']} s (sum over partitions)"
              + (f", {rate} MB/s per restore thread; all partitions in parallel: {ph['restore_longest_s']} s, {par} MB/s"
                 if rate is not None else (", nothing to read" if ph["restored_bytes"] == 0
                                           else ", MB/s n/a (no byte counts in the log)")))
    else:
        print("   no restore lines in the processor log: timing is wall time only")
    if "wall_mb_per_s" in ph:
        print(f"   changelog as loaded ({ph['wall_mb_per_s']} MB/s) over the wall time from spawn to every partition serving")
    print(f"   state dir on disk after the phase: {ph['state_dir_bytes'] / MB:.1f} MB")


def print_rss(rss: dict[str, dict[str, dict[str, float]]]) -> None:
    print("\n== RSS (MiB, sampled every 0.5 s) and CPU seconds per phase")
    print(f"{'phase':<24} {'process':<16} {'max':>8} {'final':>8} {'cpu s':>8}")
    for phase, procs in rss.items():
        for name, s in procs.items():
            print(f"{phase:<24} {name:<16} {s['max_mib']:8.1f} {s['final_mib']:8.1f} {s['cpu_s']:8.1f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--invocations", type=int, default=1_000_000, help="completed invocations to load (default %(default)s)")
    parser.add_argument("--objects", type=int, default=100_000, help="virtual objects with state (default %(default)s)")
    parser.add_argument("--value-bytes", type=int, default=1024, help="bytes of each object's state value (default %(default)s)")
    parser.add_argument("--idempotent-share", type=float, default=0.5,
                        help="share of the invocations loaded with an idempotency key (default %(default)s)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the fresh topics (default %(default)s)")
    parser.add_argument("--prefix", help="topic prefix (default: a fresh scale-<id>.)")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds a phase may take to serve every partition")
    parser.add_argument("--load-only", action="store_true", help="load, size and read back; start no processor")
    parser.add_argument("--log-level", default="INFO", help="keystate log level of the child processes (INFO: restore lines)")
    parser.add_argument("--keep-state", action="store_true", help="keep the processor's state dir in --out (default: deleted)")
    parser.add_argument("--json", action="store_true", help="also print the results as JSON")
    parser.add_argument("--out", type=Path, default=BENCH / "out", help="folder for logs, the state dir and the JSON")
    args = parser.parse_args(argv)
    if args.objects < args.partitions or args.value_bytes < 2 or args.invocations < 0:
        parser.error("--objects must be >= --partitions (a loaded object per partition), --value-bytes >= 2")

    outdir = args.out / f"{time.strftime('%Y%m%d-%H%M%S')}-scale"
    outdir.mkdir(parents=True, exist_ok=True)
    launcher = Launcher(outdir)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    report: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M:%S %z"), "source": source_version(),
                              "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    try:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or ""
        if not bootstrap:
            print("starting a local broker...", flush=True)
            bootstrap = launcher.start_kafka()
        print(f"broker {bootstrap}; source {report['source']}; logs in {outdir}", flush=True)
        run(args, launcher, bootstrap, report)
    except KeyboardInterrupt:
        print("interrupted; stopping what the bench started", file=sys.stderr)
        return 130
    finally:
        launcher.stop()
        if not args.keep_state:
            shutil.rmtree(outdir / "state", ignore_errors=True)
        (outdir / "scale.json").write_text(json.dumps(report, indent=2, default=str))
    if "rss" in report:
        print_rss(report["rss"])
    if args.json:
        print(json.dumps(report, indent=2, default=str))
    print(f"\nresults: {outdir / 'scale.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
