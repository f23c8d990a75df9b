"""Runs one keystate process for the benchmark, unchanged, plus optional instrumentation.

    python bench/_proc.py processor  <keystate processor args...>
    python bench/_proc.py ingress    <keystate ingress args...>
    python bench/_proc.py deployment <script.py> <port>

The process itself is the ordinary one (`keystate.cli.main(argv)` / the deployment script run as
``__main__``). The bench adds, from the environment:

- ``BENCH_STATS_FILE`` (processor only): every 0.5 s the worker's counters are written there as JSON:
  transactions (batches), records, and time spent applying vs. committing. It reads two ints and a few
  floats the worker loop already keeps or that a thin wrapper around ``Worker._batch`` adds; the cost
  is two ``perf_counter`` calls per transaction.
- ``BENCH_PROFILE_DIR``: cProfile the main thread (event loop) and, for the processor, the partition-loop
  thread separately; ``<role>-main.prof`` / ``<role>-loop.prof`` and ``.txt`` summaries are written on a
  clean exit (SIGTERM). Profiling slows everything down: use its numbers only to see where time goes.
"""

from __future__ import annotations

import atexit
import cProfile
import io
import json
import os
import pstats
import runpy
import sys
import threading
import time
from pathlib import Path

ROLE = sys.argv[1]
ARGS = sys.argv[2:]
PROFILE_DIR = os.environ.get("BENCH_PROFILE_DIR")
STATS_FILE = os.environ.get("BENCH_STATS_FILE")


def _dump(profile: cProfile.Profile, name: str) -> None:
    assert PROFILE_DIR is not None
    out = Path(PROFILE_DIR)
    out.mkdir(parents=True, exist_ok=True)
    profile.dump_stats(str(out / f"{name}.prof"))
    text = io.StringIO()
    stats = pstats.Stats(profile, stream=text)
    stats.sort_stats("tottime").print_stats(35)
    stats.sort_stats("cumulative").print_stats(35)
    (out / f"{name}.txt").write_text(text.getvalue())


def _instrument_processor() -> None:
    from keystate.processors import worker as worker_mod

    Worker = worker_mod.Worker
    workers: list[object] = []
    timing = {"apply_s": 0.0, "commit_s": 0.0, "max_batch": 0}

    orig_init = Worker.__init__

    def __init__(self, *a, **kw):  # type: ignore[no-untyped-def]
        orig_init(self, *a, **kw)
        workers.append(self)

    Worker.__init__ = __init__  # type: ignore[method-assign]

    orig_apply = Worker._apply_batch
    orig_batch = Worker._batch
    local = threading.local()

    def _apply_batch(self, messages, producer):  # type: ignore[no-untyped-def]
        t0 = time.perf_counter()
        try:
            return orig_apply(self, messages, producer)
        finally:
            local.applied_at = time.perf_counter()
            timing["apply_s"] += local.applied_at - t0

    def _batch(self, consumer, producer):  # type: ignore[no-untyped-def]
        before, records = self.batches, self.records
        local.applied_at = None
        orig_batch(self, consumer, producer)
        if self.batches != before and local.applied_at is not None:
            timing["commit_s"] += time.perf_counter() - local.applied_at  # send_offsets + commit_transaction
            timing["max_batch"] = max(timing["max_batch"], self.records - records)

    Worker._apply_batch = _apply_batch  # type: ignore[method-assign]
    Worker._batch = _batch  # type: ignore[method-assign]

    if PROFILE_DIR:
        orig_thread_main = Worker._thread_main

        def _thread_main(self):  # type: ignore[no-untyped-def]
            profile = cProfile.Profile()
            profile.enable()
            try:
                orig_thread_main(self)
            finally:
                profile.disable()
                _dump(profile, f"{ROLE}-loop")

        Worker._thread_main = _thread_main  # type: ignore[method-assign]

    if STATS_FILE:
        path = Path(STATS_FILE)

        def report() -> None:
            while True:
                time.sleep(0.5)
                snap = {
                    "batches": sum(w.batches for w in workers),  # type: ignore[attr-defined]
                    "records": sum(w.records for w in workers),  # type: ignore[attr-defined]
                    **timing,
                    "at": time.time(),
                }
                tmp = path.with_suffix(".tmp")
                tmp.write_text(json.dumps(snap))
                os.replace(tmp, path)

        threading.Thread(target=report, name="bench-stats", daemon=True).start()


def _txn_producer_extra(extra: dict[str, object]) -> None:
    """Extra librdkafka settings for the processor's transactional producer only (experiments)."""
    from keystate.server.kafka import KafkaSettings

    orig = KafkaSettings.producer_config

    def producer_config(self, **overrides):  # type: ignore[no-untyped-def]
        if "transactional.id" in overrides:
            overrides = {**overrides, **extra}
        return orig(self, **overrides)

    KafkaSettings.producer_config = producer_config  # type: ignore[method-assign]


def main() -> None:
    if os.environ.get("BENCH_TXN_PRODUCER_CONFIG") and ROLE == "processor":
        _txn_producer_extra(json.loads(os.environ["BENCH_TXN_PRODUCER_CONFIG"]))
    profile = None
    if PROFILE_DIR:
        profile = cProfile.Profile()
        atexit.register(lambda: (profile.disable(), _dump(profile, f"{ROLE}-main")))
    if ROLE == "processor":
        _instrument_processor()
    if profile is not None:
        profile.enable()
    if ROLE in ("processor", "ingress"):
        from keystate.cli import main as cli_main

        raise SystemExit(cli_main([ROLE, *ARGS]))
    if ROLE == "deployment":
        script = ARGS[0]
        sys.argv = [script, *ARGS[1:]]
        runpy.run_path(script, run_name="__main__")
        return
    raise SystemExit(f"unknown role {ROLE!r}; use processor, ingress or deployment")


if __name__ == "__main__":
    main()
