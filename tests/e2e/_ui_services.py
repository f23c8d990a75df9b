"""The deployment of the web UI's browser test: `python tests/e2e/_ui_services.py PORT`.

Desk/<key>/work leaves a journal of several kinds of entries and some state; Checkout/pay fails in
its second step; Desk/<key>/wait sleeps long enough to be cancelled from the UI.
"""

from __future__ import annotations

import logging
import sys
from datetime import timedelta

import keystate
from keystate import Context, ObjectContext, ObjectSharedContext, Service, TerminalError, VirtualObject

desk = VirtualObject("Desk")
checkout = Service("Checkout")


@desk.handler()
async def work(ctx: ObjectContext, note: str) -> str:
    ctx.set("note", note)
    fetched = await ctx.run("fetch", lambda: 42)
    doubled = await ctx.run("double", lambda: fetched * 2)
    return f"{note}: {doubled}"


@desk.handler()
async def wait(ctx: ObjectContext, minutes: int) -> str:
    await ctx.sleep(timedelta(minutes=minutes))
    return "woke up"


@desk.handler(kind="shared")
async def note(ctx: ObjectSharedContext) -> str | None:
    return await ctx.get("note", type_hint=str)


@checkout.handler()
async def pay(ctx: Context, amount: int) -> str:
    reservation = await ctx.run("reserve", lambda: f"r-{amount}")

    def charge() -> str:
        raise TerminalError(f"card declined for {reservation}", 402)

    return await ctx.run("charge", charge)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keystate.serve([desk, checkout], port=int(sys.argv[1]), suspend_after=timedelta(seconds=1))
