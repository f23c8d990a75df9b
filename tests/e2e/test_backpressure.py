"""Back-pressure: a burst far over the invoker's per-deployment limit waits its turn; nothing fails."""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

from keystate.processors.invoker import InvokerSettings
from keystate.schemas.topics import Topics

from harness import Stack, http
from results import read_all

pytestmark = pytest.mark.integration

INVOCATIONS = 2000
HOLD_S = 2.0


def test_two_thousand_concurrent_invocations_held_open_complete_without_a_failed_attempt(running: Stack) -> None:
    limit = InvokerSettings().max_concurrent_attempts_per_deployment
    assert INVOCATIONS > 3 * limit, "the burst must be well over the limit to test queueing"
    started = time.monotonic()
    with ThreadPoolExecutor(32) as pool:
        responses = list(pool.map(lambda _: http("POST", f"{running.url}/Holder/hold/send", HOLD_S), range(INVOCATIONS)))
    assert [r.status for r in responses] == [202] * INVOCATIONS, [r.body for r in responses if r.status != 202][:3]
    sent = time.monotonic() - started
    wanted = {r.json()["invocationId"] for r in responses}
    results = read_all(
        running.bootstrap,
        Topics(running.prefix).results,
        until=lambda rs: wanted <= {r["invocation_id"] for r in rs},
        timeout=600,
    )
    elapsed = time.monotonic() - started
    print(
        f"\n{INVOCATIONS} invocations held open {HOLD_S:g} s each, at most {limit} at a time: "
        f"sent in {sent:.1f} s, all completed {elapsed:.1f} s after the first send "
        f"(the limit alone allows {INVOCATIONS / limit * HOLD_S:.0f} s)"
    )
    mine = [r for r in results if r["invocation_id"] in wanted]
    assert Counter(r["status"] for r in mine) == {"SUCCEEDED": INVOCATIONS}, running.logs()
    assert len({r["invocation_id"] for r in mine}) == INVOCATIONS
    processor_log = running.procs[0].log_path.read_text(errors="replace")
    failed = [line for line in processor_log.splitlines() if " failed" in line and "attempt" in line]
    assert failed == [], f"{len(failed)} failed attempts, e.g. {failed[:3]}"
