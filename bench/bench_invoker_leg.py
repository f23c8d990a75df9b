"""The invoker -> deployment leg alone, warm connections on and off: attempts/s, p50, CPU per attempt.

    KAFKA_BOOTSTRAP_SERVERS=host:port .venv/bin/python bench/bench_invoker_leg.py [--attempts 400]

One Invoker in this process (appending to a real broker, as a processor's does) runs `Greeter/greet`
attempts on the examples deployment (examples/serve.py, its own process), one at a time and 16 at a
time, alternating a pool of warm WebSockets (idle_connection_timeout_s=30) with one WebSocket per
attempt (0). Prints attempts/s, the p50 of one attempt, and the CPU time per attempt of this process
(the invoker) and of the deployment. Numbers only, no pass/fail; about 20 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from harness import free_port, wait_http  # noqa: E402

from keystate.processors.invoker import Invoker, InvokerSettings  # noqa: E402
from keystate.processors.state_machine import Invoke  # noqa: E402
from keystate.schemas.ids import InvocationId  # noqa: E402
from keystate.schemas.topics import Topics  # noqa: E402
from keystate.server.kafka import AsyncProducer, KafkaSettings  # noqa: E402
from keystate.server.topics import TopicSettings, ensure_topics  # noqa: E402

PARTITIONS = 4
TARGET = {"service": "Greeter", "handler": "greet", "key": None, "service_type": "SERVICE", "handler_kind": "EXCLUSIVE"}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def greet() -> Invoke:
    journal = [{"entry": ("keystate.InputEntry", {"argument": b'"bench"', "headers": {}})}]
    return Invoke(str(InvocationId.new()), 1, TARGET, journal, None, None, 0, 1, int(time.time() * 1000))


async def attempts(invoker: Invoker, count: int, concurrency: int) -> list[float]:
    """Run `count` attempts, `concurrency` at a time; each one's seconds, sorted."""
    gate = asyncio.Semaphore(concurrency)
    took: list[float] = []

    async def one() -> None:
        async with gate:
            action = greet()
            began = time.perf_counter()
            invoker.invoke(action)
            task = invoker._live[action.invocation_id].task  # noqa: SLF001 (a bench may look inside)
            assert task is not None
            await task
            took.append(time.perf_counter() - began)

    await asyncio.gather(*(one() for _ in range(count)))
    return sorted(took)


async def measure(bootstrap: str, topics: Topics, url: str, deployment_pid: int, count: int) -> None:
    producer = AsyncProducer(KafkaSettings(bootstrap, topics))
    try:
        for idle in (0.0, 30.0, 0.0, 30.0):
            settings = InvokerSettings(idle_connection_timeout_s=idle)
            invoker = Invoker(producer, topics.log, PARTITIONS, lambda _d, _s: (url, ["websocket"]), settings)
            await invoker.start()
            try:
                await attempts(invoker, 50, 1)  # warm-up
                for concurrency in (1, 16):
                    n = count * (1 if concurrency == 1 else 4)
                    mine, theirs, began = time.process_time(), cpu_seconds(deployment_pid), time.perf_counter()
                    took = await attempts(invoker, n, concurrency)
                    elapsed = time.perf_counter() - began
                    print(
                        f"warm {'on ' if idle else 'off'} c={concurrency:<2d} {n / elapsed:7.1f} attempts/s  "
                        f"p50 {took[len(took) // 2] * 1000:5.2f} ms  cpu/attempt: invoker "
                        f"{(time.process_time() - mine) / n * 1000:.3f} ms, deployment "
                        f"{(cpu_seconds(deployment_pid) - theirs) / n * 1000:.3f} ms",
                        flush=True,
                    )
            finally:
                await invoker.close()
    finally:
        producer.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--attempts", type=int, default=400, help="attempts per measurement (default %(default)s)")
    args = parser.parse_args()
    bootstrap = os.environ["KAFKA_BOOTSTRAP_SERVERS"]
    topics = Topics(f"bench-leg-{os.urandom(3).hex()}.")
    ensure_topics(bootstrap, topics, TopicSettings(partitions=PARTITIONS))
    port = free_port()
    deployment = subprocess.Popen(
        [sys.executable, str(ROOT / "examples" / "serve.py"), str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        wait_http(f"http://127.0.0.1:{port}/discover", 30)
        asyncio.run(measure(bootstrap, topics, f"http://127.0.0.1:{port}", deployment.pid, args.attempts))
    finally:
        deployment.terminate()
        deployment.wait(10)


if __name__ == "__main__":
    main()
