"""Services for the state-edit and restart-as-new tests: `python tests/e2e/_state_ops_services.py PORT`."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import uuid
from datetime import timedelta
from pathlib import Path

import keystate
from keystate import Context, ObjectContext, ObjectSharedContext, Service, VirtualObject

register = VirtualObject("Register")
steps = Service("TwoSteps")


@register.handler()
async def append(ctx: ObjectContext, item: str) -> list[str]:
    """Appends `item` to the log; returns the log it saw. "hold" keeps the key until the test's release file exists."""
    seen = await ctx.get("log", type_hint=list[str]) or []
    if item == "hold":
        release = Path(os.environ["KEYSTATE_TEST_RELEASE"])
        for _ in range(6000):  # not journaled: the attempt stays open (heartbeats), holding the key
            if release.exists():
                break
            await asyncio.sleep(0.02)
    ctx.set("log", [*seen, item])
    return seen


@register.handler(kind="shared")
async def read(ctx: ObjectSharedContext) -> list[str] | None:
    return await ctx.get("log", type_hint=list[str])


@steps.handler()
async def draw(ctx: Context) -> list[str]:
    """Two journaled random draws: a restart that copies the first keeps it, the second is drawn anew."""
    first = await ctx.run("first", lambda: str(uuid.uuid4()))
    second = await ctx.run("second", lambda: str(uuid.uuid4()))
    return [first, second]


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keystate.serve([register, steps], port=int(sys.argv[1]), heartbeat_interval=timedelta(milliseconds=500))
