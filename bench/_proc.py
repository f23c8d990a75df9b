"""Runs one keystate process for the benchmark, unchanged, plus optional instrumentation.

    python bench/_proc.py processor  <keystate processor args...>
    python bench/_proc.py ingress    <keystate ingress args...>
    python bench/_proc.py deployment <script.py> <port>

The process itself is the ordinary one (`keystate.cli.main(argv)` / the deployment script run as
``__main__``). The bench adds, from the environment:

- ``BENCH_STATS_FILE`` (processor only): every 0.5 s the worker's counters are written there as JSON:
  transactions (batches), records, time spent applying and producing (`apply_s`) vs. in
  send_offsets + commit (`commit_s`), resets. It reads the counters the session already keeps
  (``Worker.stats``).
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

    orig_init = Worker.__init__

    def __init__(self, *a, **kw):  # type: ignore[no-untyped-def]
        orig_init(self, *a, **kw)
        workers.append(self)

    Worker.__init__ = __init__  # type: ignore[method-assign]

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
                stats = [w.stats for w in workers]  # type: ignore[attr-defined]
                snap = {
                    "batches": sum(s.batches for s in stats),
                    "records": sum(s.records for s in stats),
                    "apply_s": sum(s.apply_s for s in stats),
                    "commit_s": sum(s.commit_s for s in stats),
                    "max_batch": max((s.max_batch for s in stats), default=0),
                    "resets": sum(s.resets for s in stats),
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
