"""Soak under crashes: idempotent adds while processors are kill -9ed and restarted; prints numbers.

    .venv/bin/python bench/soak.py [--duration 300] [--processors 2] [--clients 16] [--keys 64]
        [--kill-every 8] [--partitions 4] [--request-timeout 10] [--json]

Starts its own single-node broker on free ports (or uses $KAFKA_BOOTSTRAP_SERVERS), topics on a fresh
prefix, --processors processor processes (distinct --instance-id), one ingress and the examples
deployment (examples/serve.py), all on 127.0.0.1. Then --clients client threads each do
`POST /Counter/<key>/add` of 1 over --keys keys, every add with its own `idempotency-key`, retrying an
add with the SAME key on any error or timeout until it is acknowledged. Every --kill-every seconds
one processor (round robin) is killed with SIGKILL and restarted at once with the same instance id.

At the end (load stopped, in-flight adds given --drain seconds) it reads every counter and prints:

    attempted / acknowledged / never acknowledged adds, failed tries (errors and timeouts, retried)
    lost      acknowledged adds missing from the final counts (sum over keys of acked - count, if > 0)
    doubled   counts above the adds ever attempted (sum over keys of count - attempted, if > 0)
    repeated  acknowledged adds that saw the same old value as another add on their key
    recovery per kill: seconds from the kill to the next acknowledged add, and until every add that
              was in flight at the kill was acknowledged
    throughput (acknowledged adds per second) and add latency percentiles
    processor exits nobody asked for (restarted like a supervisor would)

Numbers only, no pass/fail (the bar is 0 lost, 0 doubled). Every process it started is stopped by pid
at the end, on Ctrl-C, SIGTERM or an error, within bounded time.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))
sys.path.insert(0, str(BENCH))

from bench_invoke import Launcher, percentile, source_version  # noqa: E402
from harness import AddLoad, CountCheck, Proc, check_counts, free_port, http, wait_http  # noqa: E402

from keystate.schemas.topics import Topics  # noqa: E402
from keystate.server.topics import TopicSettings, ensure_topics  # noqa: E402

SERVE = ROOT / "examples" / "serve.py"


@dataclass
class Kill:
    """One kill -9 and what the clients saw after it."""

    victim: str
    at: float  # monotonic
    restarted_in_s: float  # time to spawn the replacement (not to be ready)
    next_ack_s: float | None = None  # kill -> next acknowledged add (any key)
    inflight: int = 0  # adds started before the kill and not yet acknowledged then
    inflight_acked_s: float | None = None  # kill -> the last of those acknowledged (None: one never was)


class Soak:
    """The processes of one soak run, and the kill schedule."""

    def __init__(self, launcher: Launcher, bootstrap: str, prefix: str, args: argparse.Namespace) -> None:
        self.launcher = launcher
        self.bootstrap = bootstrap
        self.prefix = prefix
        self.args = args
        self.env = {"KEYSTATE_LOG_LEVEL": args.log_level}
        self.processors: dict[str, Proc] = {}
        self.kills: list[Kill] = []
        self.unexpected_exits: list[str] = []
        self.t0 = time.monotonic()  # reset when the load starts

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> Proc:
        # The plain processes, not bench/_proc.py: its instrumentation patches processor internals.
        proc = Proc(name, [sys.executable, *argv], self.launcher.logdir / f"{name}.log", env)
        self.launcher.procs.append(proc)  # stopped by pid with the rest
        return proc

    def start_processor(self, name: str) -> Proc:
        argv = ["-m", "keystate.cli", "processor", "--bootstrap", self.bootstrap, "--prefix", self.prefix,
                "--instance-id", f"{self.prefix}{name}"]
        proc = self._spawn(f"processor-{name}", argv, self.env)
        self.processors[name] = proc
        return proc

    def start(self) -> str:
        """Processors, ingress, deployment; the deployment registered. Returns the ingress URL."""
        for i in range(self.args.processors):
            self.start_processor(f"p{i}")
        ingress_port, admin_port = free_port(), free_port()
        ingress = self._spawn(
            "ingress",
            ["-m", "keystate.cli", "ingress", "--bootstrap", self.bootstrap, "--prefix", self.prefix,
             "--port", str(ingress_port), "--admin-port", str(admin_port)],
            self.env,
        )
        wait_http(f"http://127.0.0.1:{admin_port}/health", timeout=60, proc=ingress)
        dep_port = free_port()
        dep = self._spawn("deployment", [str(SERVE), str(dep_port)], {})
        wait_http(f"http://127.0.0.1:{dep_port}/discover", timeout=60, proc=dep)
        resp = http("POST", f"http://127.0.0.1:{admin_port}/deployments", {"uri": f"http://127.0.0.1:{dep_port}"})
        if resp.status not in (200, 201):
            raise RuntimeError(f"registering the deployment failed: {resp.status} {resp.body[:300]!r}")
        return f"http://127.0.0.1:{ingress_port}"

    def kill_one(self, load: AddLoad) -> None:
        names = sorted(self.processors)
        victim = names[len(self.kills) % len(names)]
        inflight = len(load.unacked)
        at = time.monotonic()
        self.processors[victim].kill9()
        self.start_processor(victim)  # same instance id: fences the dead one's open transaction
        self.kills.append(Kill(victim, at, round(time.monotonic() - at, 3), inflight=inflight))

    def restart_exited(self) -> None:
        """A processor that exited by itself is a finding; restart it as a supervisor would."""
        for name, proc in list(self.processors.items()):
            if not proc.alive():
                at = time.monotonic() - self.t0
                self.unexpected_exits.append(f"{name} exit {proc.popen.returncode} at +{at:.0f} s: {last_error(proc)}")
                self.start_processor(name)


def last_error(proc: Proc) -> str:
    lines = proc.tail(200).splitlines()
    worst = [line for line in lines if " CRITICAL " in line or " ERROR " in line]
    return (worst[-1] if worst else (lines[-1] if lines else ""))[:300]


def recovery(kills: list[Kill], load: AddLoad) -> None:
    """Fill in each kill's recovery times from the adds' timestamps."""
    adds = list(load.adds)
    ack_times = sorted(a.acked_at for a in adds if a.acked_at is not None)
    for kill in kills:
        kill.next_ack_s = next((round(t - kill.at, 3) for t in ack_times if t > kill.at), None)
        pending = [a for a in adds if a.started <= kill.at and (a.acked_at is None or a.acked_at > kill.at)]
        if pending and all(a.acked_at is not None for a in pending):
            kill.inflight_acked_s = round(max(a.acked_at or 0.0 for a in pending) - kill.at, 3)
        elif not pending:
            kill.inflight_acked_s = 0.0


def run(args: argparse.Namespace, launcher: Launcher, bootstrap: str) -> dict[str, Any]:
    prefix = f"soak-{uuid.uuid4().hex[:8]}."
    ensure_topics(bootstrap, Topics(prefix), TopicSettings(partitions=args.partitions))
    soak = Soak(launcher, bootstrap, prefix, args)
    url = soak.start()
    keys = [f"soak-{i}" for i in range(args.keys)]
    print(f"stack up (prefix {prefix}); waiting for the first acknowledged add...", flush=True)
    load = AddLoad(url, keys, args.clients, request_timeout=args.request_timeout).start()
    if not load.wait_acks(1, 120):
        raise RuntimeError(f"no add acknowledged within 120 s (first error {load.first_error})")
    soak.t0 = start = time.monotonic()
    end = start + args.duration
    next_kill = start + args.kill_every
    last_print = start
    while time.monotonic() < end:
        time.sleep(0.1)
        soak.restart_exited()
        now = time.monotonic()
        if now >= next_kill:
            soak.kill_one(load)
            next_kill = now + args.kill_every
        if now - last_print >= 30:
            last_print = now
            print(f"  +{now - start:5.0f} s  acked {load.ack_count():6d}  kills {len(soak.kills):3d}  "
                  f"failed tries {load.failed_tries:5d}  unexpected exits {len(soak.unexpected_exits)}", flush=True)
    load_s = time.monotonic() - start
    load.stop(drain_timeout=args.drain)
    soak.restart_exited()
    recovery(soak.kills, load)
    check = check_counts(url, load)
    return summary(args, load, load_s, check, soak)


def summary(args: argparse.Namespace, load: AddLoad, load_s: float, check: CountCheck, soak: Soak) -> dict[str, Any]:
    latencies = sorted((a.acked_at - a.started) * 1000 for a in load.adds if a.acked_at is not None)
    next_acks = sorted(k.next_ack_s for k in soak.kills if k.next_ack_s is not None)
    drained = sorted(k.inflight_acked_s for k in soak.kills if k.inflight_acked_s is not None)
    return {
        "duration_s": round(load_s, 1),
        "processors": args.processors,
        "clients": args.clients,
        "keys": args.keys,
        "kill_every_s": args.kill_every,
        "kills": len(soak.kills),
        "attempted": check.attempts,
        "acknowledged": check.acked,
        "never_acknowledged": check.attempts - check.acked,
        "failed_tries": load.failed_tries,
        "lost": check.lost,
        "doubled": check.doubled,
        "repeated_answers": check.repeated_answers,
        "unreadable_keys": check.unreadable,
        "throughput_acks_per_s": round(check.acked / load_s, 1) if load_s else 0.0,
        "latency_ms": {q: round(percentile(latencies, p), 1) for q, p in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
        "recovery_next_ack_s": {q: (round(percentile(next_acks, p), 3) if next_acks else None) for q, p in (("p50", 50), ("p90", 90), ("max", 100))},
        "recovery_inflight_acked_s": {q: (round(percentile(drained, p), 3) if drained else None) for q, p in (("p50", 50), ("p90", 90), ("max", 100))},
        "inflight_never_acked_kills": sum(1 for k in soak.kills if k.inflight_acked_s is None),
        "unexpected_exits": soak.unexpected_exits,
        "per_kill": [asdict(k) | {"at": round(k.at - soak.t0, 1)} for k in soak.kills],
        "first_error": load.first_error,
    }


def print_summary(s: dict[str, Any]) -> None:
    print(f"\n== soak: {s['duration_s']} s, {s['processors']} processors, {s['clients']} clients, {s['keys']} keys, "
          f"kill -9 every {s['kill_every_s']} s ({s['kills']} kills)")
    print(f"attempted adds       {s['attempted']}")
    print(f"acknowledged adds    {s['acknowledged']}")
    print(f"never acknowledged   {s['never_acknowledged']}")
    print(f"failed tries         {s['failed_tries']} (retried with the same idempotency key; first: {s['first_error']})")
    print(f"lost                 {s['lost']}")
    print(f"doubled              {s['doubled']}")
    print(f"repeated answers     {s['repeated_answers']}")
    if s["unreadable_keys"]:
        print(f"unreadable counters  {len(s['unreadable_keys'])}: {s['unreadable_keys'][:5]}")
    print(f"throughput           {s['throughput_acks_per_s']} acknowledged adds/s")
    print("add latency ms       " + "  ".join(f"{k} {v}" for k, v in s["latency_ms"].items()))
    print("recovery, kill -> next ack s          " + "  ".join(f"{k} {v}" for k, v in s["recovery_next_ack_s"].items()))
    print("recovery, kill -> in-flight acked s   " + "  ".join(f"{k} {v}" for k, v in s["recovery_inflight_acked_s"].items())
          + f"  (kills whose in-flight adds never all got acked: {s['inflight_never_acked_kills']})")
    print("per kill (at s, victim, next ack s, in flight, all in-flight acked s):")
    for k in s["per_kill"]:
        print(f"   {k['at']:7.1f}  {k['victim']:<4} {k['next_ack_s']!s:>7}  {k['inflight']:3d}  {k['inflight_acked_s']!s:>7}")
    print(f"unexpected processor exits: {len(s['unexpected_exits'])}")
    for line in s["unexpected_exits"]:
        print(f"   {line}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=300.0, help="seconds of load with kills (default %(default)s)")
    parser.add_argument("--processors", type=int, default=2, help="processor processes (default %(default)s)")
    parser.add_argument("--clients", type=int, default=16, help="client threads (default %(default)s)")
    parser.add_argument("--keys", type=int, default=64, help="counter keys (default %(default)s)")
    parser.add_argument("--kill-every", type=float, default=8.0, help="seconds between kill -9s (default %(default)s)")
    parser.add_argument("--partitions", type=int, default=4, help="partitions of the fresh topics (default %(default)s)")
    parser.add_argument("--request-timeout", type=float, default=10.0, help="client timeout per try, seconds (default %(default)s)")
    parser.add_argument("--drain", type=float, default=120.0, help="seconds for in-flight adds after the load (default %(default)s)")
    parser.add_argument("--log-level", default="INFO", help="keystate log level of the child processes")
    parser.add_argument("--json", action="store_true", help="also print the summary as JSON")
    parser.add_argument("--out", type=Path, default=BENCH / "out", help="folder for logs and the JSON summary")
    args = parser.parse_args(argv)
    if args.processors < 1 or args.kill_every <= 0 or args.keys < 1 or args.clients < 1:
        parser.error("--processors, --clients and --keys must be >= 1 and --kill-every > 0")

    outdir = args.out / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    outdir.mkdir(parents=True, exist_ok=True)
    launcher = Launcher(outdir)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    result: dict[str, Any] = {"source": source_version()}
    try:
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS") or ""
        if not bootstrap:
            print("starting a local broker...", flush=True)
            bootstrap = launcher.start_kafka()
        print(f"broker {bootstrap}; source {result['source']}; logs in {outdir}", flush=True)
        result.update(run(args, launcher, bootstrap))
    except KeyboardInterrupt:
        print("interrupted; stopping what the soak started", file=sys.stderr)
        return 130
    finally:
        launcher.stop()
        (outdir / "soak.json").write_text(json.dumps(result, indent=2))
    print_summary(result)
    if args.json:
        print(json.dumps(result, indent=2))
    print(f"\nsummary: {outdir / 'soak.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
