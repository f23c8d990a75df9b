"""The deployment of the rebalance test: `python _rebalance_services.py PORT` with $KEYSTATE_TEST_EFFECTS.

`Effects/steps` runs STEPS `ctx.run` steps, pausing between them outside the steps. Every side effect
appends one line to the effects file: `attempt <invocation id> <unix time>` when an attempt enters the
handler, `run <invocation id> <step> <unix time>` when a step's action runs (not when a replay skips it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from datetime import timedelta

import keystate
from keystate import Context, Service

STEPS = 4
PAUSE_S = 0.3

effects = Service("Effects")


def _record(line: str) -> None:
    # One write(2) on an O_APPEND file: lines of concurrent steps never interleave.
    fd = os.open(os.environ["KEYSTATE_TEST_EFFECTS"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{line} {time.time():.3f}\n".encode())
    finally:
        os.close(fd)


@effects.handler()
async def steps(ctx: Context, tag: str) -> str:
    """STEPS effects, each exactly once per invocation; returns the invocation id."""
    invocation = ctx.request().id
    _record(f"attempt {invocation}")
    for step in range(STEPS):
        await ctx.run(f"step-{step}", lambda step=step: _record(f"run {invocation} {step}") or step)
        await asyncio.sleep(PAUSE_S)
    return invocation


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # WebSocket only and no early suspension: an attempt stays open through all its steps, so each
    # new attempt is a restart by a processor, not a resumption after a suspension.
    keystate.serve([effects], port=int(sys.argv[1]), suspend_after=timedelta(seconds=120), transports=["websocket"],
                   heartbeat_interval=timedelta(milliseconds=500))
