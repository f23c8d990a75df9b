"""Greeter and Counter: the smallest service and virtual object."""

from __future__ import annotations

from keystate import Context, ObjectContext, ObjectSharedContext, Service, VirtualObject

greeter = Service("Greeter")
counter = VirtualObject("Counter")


@greeter.handler()
async def greet(ctx: Context, name: str) -> str:
    return f"Hello {name}!"


@counter.handler()
async def add(ctx: ObjectContext, delta: int) -> int:
    """Adds `delta`; returns the value before."""
    old = await ctx.get("count", type_hint=int) or 0
    ctx.set("count", old + delta)
    return old


@counter.handler(kind="shared")
async def get(ctx: ObjectSharedContext) -> int:
    return await ctx.get("count", type_hint=int) or 0
