"""End-to-end invocation benchmark: HTTP ingress -> Kafka -> processor -> deployment -> result.

    .venv/bin/python bench/bench_invoke.py [--partitions 4] [--requests 300] [--concurrent-requests 2000]
        [--concurrency 16] [--batch-linger-ms 0 2] [--time-cap 60] [--json] [--profile]

Starts its own single-node broker (or uses $KAFKA_BOOTSTRAP_SERVERS; then $BENCH_BROKER_PID, if set,
adds that broker's CPU to the cpu% lines), and for every --batch-linger-ms
value a fresh stack on a new topic prefix: one processor, one ingress, the examples deployment
(examples/serve.py), all on free 127.0.0.1 ports; registers the deployment, warms up, then measures

    greet           POST /Greeter/greet                    c=1 and c=N
    add  1 key      POST /Counter/<key>/add                c=1
    add  N keys     POST /Counter/<key_i>/add, key per worker   c=N
    add  hot key    POST /Counter/hot/add, all workers     c=N  (exclusive handlers serialize per key)

and prints request count, errors, duration, throughput and latency p50/p90/p99/max, plus the
processor's transactions (batches) and records per transaction over each scenario. Numbers only, no
pass/fail. Every process it started is stopped by pid on exit, Ctrl-C or error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from harness import Proc, free_port, http, wait_http  # noqa: E402

from keystate.schemas.topics import Topics  # noqa: E402
from keystate.server.topics import TopicSettings, ensure_topics  # noqa: E402

SERVE = ROOT / "examples" / "serve.py"
WRAPPER = BENCH / "_proc.py"


# ---- results -----------------------------------------------------------------------------------


@dataclass
class Result:
    scenario: str
    concurrency: int
    requests: int
    errors: int
    duration_s: float
    throughput_rps: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    capped: bool = False
    processor: dict[str, Any] = field(default_factory=dict)
    cpu_pct: dict[str, float] = field(default_factory=dict)
    error_sample: str | None = None


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), int(-(-q * len(sorted_values) // 100))))
    return sorted_values[rank - 1]


# ---- load --------------------------------------------------------------------------------------


async def load(
    session: aiohttp.ClientSession,
    urls: list[str],
    body: bytes,
    total: int,
    time_cap: float,
) -> tuple[list[float], int, float, bool, str | None]:
    """len(urls) workers, worker i posting to urls[i], `total` requests in all or until time_cap."""
    latencies: list[float] = []
    errors = 0
    error_sample: str | None = None
    issued = 0
    capped = False
    start = time.perf_counter()
    deadline = start + time_cap
    headers = {"content-type": "application/json"}

    async def worker(url: str) -> None:
        nonlocal issued, errors, error_sample, capped
        while issued < total:
            if time.perf_counter() > deadline:
                capped = True
                return
            issued += 1
            t0 = time.perf_counter()
            try:
                async with session.post(url, data=body, headers=headers) as resp:
                    payload = await resp.read()
                    ok = resp.status == 200
            except (TimeoutError, aiohttp.ClientError) as exc:
                ok, payload = False, repr(exc).encode()
            elapsed = time.perf_counter() - t0
            if ok:
                latencies.append(elapsed * 1000)
            else:
                errors += 1
                error_sample = error_sample or payload[:300].decode(errors="replace")

    await asyncio.gather(*(worker(u) for u in urls))
    return latencies, errors, time.perf_counter() - start, capped, error_sample


def read_stats(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pids: dict[str, int]) -> dict[str, float]:
    """user+system CPU seconds so far of each pid (Linux /proc; empty elsewhere)."""
    out: dict[str, float] = {}
    for name, pid in pids.items():
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            out[name] = (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            pass
    return out


def stats_delta(before: dict[str, Any] | None, after: dict[str, Any] | None) -> dict[str, Any]:
    if not before or not after:
        return {}
    batches = after["batches"] - before["batches"]
    records = after["records"] - before["records"]
    apply_s = after["apply_s"] - before["apply_s"]
    commit_s = after["commit_s"] - before["commit_s"]
    return {
        "transactions": batches,
        "records": records,
        "records_per_txn": round(records / batches, 2) if batches else None,
        "apply_ms_per_txn": round(apply_s * 1000 / batches, 3) if batches else None,
        "commit_ms_per_txn": round(commit_s * 1000 / batches, 3) if batches else None,
    }


async def wait_stats_settle(path: Path, seconds: float = 1.2) -> dict[str, Any] | None:
    """The stats file is rewritten every 0.5 s: wait for a snapshot taken after the load ended."""
    await asyncio.sleep(seconds)
    return read_stats(path)


async def run_scenarios(
    base: str, args: argparse.Namespace, stats_path: Path, run_id: str, pids: dict[str, int]
) -> list[Result]:
    n = args.concurrency
    connector = aiohttp.TCPConnector(limit=max(n, 1) * 2, force_close=False)
    timeout = aiohttp.ClientTimeout(total=args.request_timeout)
    results: list[Result] = []
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Ready: the first call waits for partitions to be assigned and the registration to be seen.
        deadline = time.monotonic() + 90
        while True:
            try:
                async with session.post(f"{base}/Greeter/greet", json="warm") as resp:
                    await resp.read()
                    if resp.status == 200:
                        break
                    last = f"{resp.status}"
            except (TimeoutError, aiohttp.ClientError) as exc:
                last = repr(exc)
            if time.monotonic() > deadline:
                raise RuntimeError(f"Greeter/greet never answered 200 (last: {last})")
            await asyncio.sleep(0.3)

        # Warm-up: connections, code paths, the deployment's WebSocket/HTTP clients, JITless caches.
        warm = args.warmup
        await load(session, [f"{base}/Greeter/greet"] * n, b'"warm"', warm, 30)
        await load(session, [f"{base}/Counter/warm-{run_id}-{i}/add" for i in range(n)], b"1", warm, 30)

        scenarios = [
            ("greet", 1, [f"{base}/Greeter/greet"], b'"bench"', args.requests),
            ("greet", n, [f"{base}/Greeter/greet"] * n, b'"bench"', args.concurrent_requests),
            ("add 1 key", 1, [f"{base}/Counter/one-{run_id}/add"], b"1", args.requests),
            ("add distinct keys", n, [f"{base}/Counter/k{i}-{run_id}/add" for i in range(n)], b"1", args.concurrent_requests),
            ("add hot key", n, [f"{base}/Counter/hot-{run_id}/add"] * n, b"1", args.concurrent_requests),
        ]
        for name, conc, urls, body, total in scenarios:
            before = await wait_stats_settle(stats_path, 0.6)
            cpu_before = cpu_seconds(pids)
            lat, errors, duration, capped, sample = await load(session, urls, body, total, args.time_cap)
            cpu_after = cpu_seconds(pids)
            after = await wait_stats_settle(stats_path)
            lat.sort()
            count = len(lat)
            results.append(
                Result(
                    scenario=name,
                    concurrency=conc,
                    requests=count,
                    errors=errors,
                    duration_s=round(duration, 3),
                    throughput_rps=round(count / duration, 1) if duration else 0.0,
                    p50_ms=round(percentile(lat, 50), 2),
                    p90_ms=round(percentile(lat, 90), 2),
                    p99_ms=round(percentile(lat, 99), 2),
                    max_ms=round(lat[-1], 2) if lat else float("nan"),
                    capped=capped,
                    processor=stats_delta(before, after),
                    error_sample=sample,
                    cpu_pct={
                        k: round(100 * (cpu_after[k] - cpu_before[k]) / duration, 1)
                        for k in cpu_after
                        if k in cpu_before and duration
                    },
                )
            )
            if not args.json:
                print_row(results[-1])
        # Sanity: the hot key saw every successful add exactly once.
        async with session.post(f"{base}/Counter/hot-{run_id}/get") as resp:
            hot = await resp.json() if resp.status == 200 else None
        hot_result = results[-1]
        if hot is not None and hot != hot_result.requests and not args.json:
            print(f"   note: hot key counter is {hot}, {hot_result.requests} adds answered 200")
    return results


# ---- output ------------------------------------------------------------------------------------

HEADER = (
    f"{'scenario':<18} {'c':>3} {'reqs':>6} {'err':>4} {'secs':>7} {'req/s':>8} "
    f"{'p50ms':>7} {'p90ms':>7} {'p99ms':>7} {'maxms':>8}   processor: txns rec/txn apply/commit ms per txn"
)


def print_row(r: Result) -> None:
    p = r.processor
    proc = (
        f"{p['transactions']:>6} {p['records_per_txn'] or 0:>6.2f} {p['apply_ms_per_txn'] or 0:>6.2f}/{p['commit_ms_per_txn'] or 0:.2f}"
        if p
        else "(no stats)"
    )
    cap = " (time cap)" if r.capped else ""
    print(
        f"{r.scenario:<18} {r.concurrency:>3} {r.requests:>6} {r.errors:>4} {r.duration_s:>7.2f} {r.throughput_rps:>8.1f} "
        f"{r.p50_ms:>7.2f} {r.p90_ms:>7.2f} {r.p99_ms:>7.2f} {r.max_ms:>8.2f}   {proc}{cap}",
        flush=True,
    )
    if r.cpu_pct:
        print("   cpu% " + "  ".join(f"{k} {v:.0f}" for k, v in r.cpu_pct.items()), flush=True)
    if r.error_sample:
        print(f"   first error: {r.error_sample}", flush=True)


# ---- processes ---------------------------------------------------------------------------------


class Launcher:
    """Every process the bench starts, stopped by pid (newest first) in stop()."""

    def __init__(self, logdir: Path) -> None:
        self.logdir = logdir
        self.procs: list[Proc] = []
        self.kafka: Any = None
        self.kafka_dir: Path | None = None

    def start_kafka(self) -> str:
        from keystate.cli.kafka import LocalKafka

        self.kafka_dir = Path(tempfile.mkdtemp(prefix="keystate-bench-kafka-"))
        self.kafka = LocalKafka(self.kafka_dir, port=0)
        return self.kafka.start()

    def start(self, name: str, role: str, argv: list[str], env: dict[str, str]) -> Proc:
        proc = Proc(name, [sys.executable, str(WRAPPER), role, *argv], self.logdir / f"{name}.log", env)
        self.procs.append(proc)
        return proc

    def broker_pid(self) -> int | None:
        if self.kafka is None:
            return None
        nodes = self.kafka._known_nodes()
        return nodes[0].pid() if nodes else None

    def stop_stack(self) -> None:
        while self.procs:
            self.procs.pop().stop()

    def stop(self) -> None:
        self.stop_stack()
        if self.kafka is not None:
            self.kafka.stop()
            self.kafka = None
        if self.kafka_dir is not None:
            shutil.rmtree(self.kafka_dir, ignore_errors=True)
            self.kafka_dir = None


def run_stack(launcher: Launcher, bootstrap: str, args: argparse.Namespace, linger: float, outdir: Path) -> dict[str, Any]:
    run_id = uuid.uuid4().hex[:8]
    prefix = f"bench-{run_id}."
    ensure_topics(bootstrap, Topics(prefix), TopicSettings(partitions=args.partitions))
    stats_path = outdir / f"processor-stats-linger{linger:g}.json"
    stats_path.unlink(missing_ok=True)
    env = {"KEYSTATE_LOG_LEVEL": args.log_level}
    profile_env = {"BENCH_PROFILE_DIR": str(outdir / f"profile-linger{linger:g}")} if args.profile else {}
    debug_env = {"BENCH_TXN_PRODUCER_CONFIG": args.txn_producer_config} if args.txn_producer_config else {}
    launcher.start(
        f"processor-linger{linger:g}",
        "processor",
        ["--bootstrap", bootstrap, "--prefix", prefix, "--instance-id", f"{prefix}p0", "--batch-linger-ms", str(linger)],
        {**env, **profile_env, **debug_env, "BENCH_STATS_FILE": str(stats_path)},
    )
    ingress_port, admin_port = free_port(), free_port()
    ingress = launcher.start(
        f"ingress-linger{linger:g}",
        "ingress",
        ["--bootstrap", bootstrap, "--prefix", prefix, "--port", str(ingress_port), "--admin-port", str(admin_port)],
        {**env, **profile_env},
    )
    wait_http(f"http://127.0.0.1:{admin_port}/health", timeout=60, proc=ingress)
    dep_port = free_port()
    dep = launcher.start(f"deployment-linger{linger:g}", "deployment", [str(SERVE), str(dep_port)], {**env, **profile_env})
    wait_http(f"http://127.0.0.1:{dep_port}/discover", timeout=60, proc=dep)
    resp = http("POST", f"http://127.0.0.1:{admin_port}/deployments", {"uri": f"http://127.0.0.1:{dep_port}"})
    if resp.status not in (200, 201):
        raise RuntimeError(f"registering the deployment failed: {resp.status} {resp.body[:300]!r}")
    if not args.json:
        print(f"\n== batch linger {linger:g} ms, {args.partitions} partitions, prefix {prefix}", flush=True)
        print(HEADER, flush=True)
    pids = {p.name.split("-linger")[0]: p.pid for p in launcher.procs}
    broker_pid = launcher.broker_pid() or (int(os.environ["BENCH_BROKER_PID"]) if os.environ.get("BENCH_BROKER_PID") else None)
    if broker_pid is not None:
        pids["broker"] = broker_pid
    pids["bench client"] = os.getpid()
    results = asyncio.run(run_scenarios(f"http://127.0.0.1:{ingress_port}", args, stats_path, run_id, pids))
    for proc in launcher.procs:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited during the run:\n{proc.tail()}")
    launcher.stop_stack()  # SIGTERM: profiles (if any) are written on this clean exit
    return {"batch_linger_ms": linger, "prefix": prefix, "results": [asdict(r) for r in results]}


def source_version() -> dict[str, str]:
    """HEAD and a hash of the uncommitted diff: the numbers belong to exactly this tree."""
    import hashlib
    import subprocess

    def git(*a: str) -> str:
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    diff = git("diff", "HEAD") + git("status", "--porcelain")
    return {"head": git("rev-parse", "--short", "HEAD").strip(), "dirty_diff_sha1": hashlib.sha1(diff.encode()).hexdigest()[:12] if diff.strip() else ""}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the fresh topics (default %(default)s)")
    parser.add_argument("--requests", type=int, default=300, help="requests per c=1 scenario (default %(default)s)")
    parser.add_argument("--concurrent-requests", type=int, default=2000, help="requests per c=N scenario (default %(default)s)")
    parser.add_argument("--concurrency", type=int, default=16, help="N for the concurrent scenarios (default %(default)s)")
    parser.add_argument("--batch-linger-ms", type=float, nargs="+", default=[0.0], help="processor batch linger(s); one fresh stack per value")
    parser.add_argument("--warmup", type=int, default=200, help="warm-up requests per handler (default %(default)s)")
    parser.add_argument("--time-cap", type=float, default=30.0, help="seconds per scenario at most (default %(default)s)")
    parser.add_argument("--request-timeout", type=float, default=30.0, help="client timeout per request, seconds")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of tables")
    parser.add_argument("--profile", action="store_true", help="cProfile processor/ingress/deployment into bench/out/<run>/ (slow!)")
    parser.add_argument(
        "--txn-producer-config",
        help='experiment: JSON of extra librdkafka settings for the processor\'s transactional producer, '
        'e.g. \'{"debug": "eos"}\' or \'{"retry.backoff.ms": 2}\'',
    )
    parser.add_argument("--log-level", default="WARNING", help="keystate log level of the child processes")
    parser.add_argument("--out", type=Path, default=BENCH / "out", help="folder for logs, stats, profiles, JSON")
    args = parser.parse_args(argv)

    outdir = args.out / time.strftime("%Y%m%d-%H%M%S")
    outdir.mkdir(parents=True, exist_ok=True)
    launcher = Launcher(outdir)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    report: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "source": source_version(),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "runs": [],
    }
    try:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        if bootstrap:
            report["broker"] = f"external {bootstrap}"
        else:
            if not args.json:
                print("starting a local broker...", flush=True)
            bootstrap = launcher.start_kafka()
            report["broker"] = f"local single node {bootstrap}"
        if not args.json:
            print(f"broker {bootstrap}; source {report['source']}; logs in {outdir}", flush=True)
        for linger in args.batch_linger_ms:
            report["runs"].append(run_stack(launcher, bootstrap, args, linger, outdir))
    except KeyboardInterrupt:
        print("interrupted; stopping what the bench started", file=sys.stderr)
        return 130
    except Exception:
        for proc in launcher.procs:
            print(f"== {proc.name} (pid {proc.pid}) ==\n{proc.tail()}", file=sys.stderr)
        raise
    finally:
        launcher.stop()
        (outdir / "results.json").write_text(json.dumps(report, indent=2))
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"\nresults: {outdir / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
