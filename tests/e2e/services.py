"""Services the end-to-end tests deploy, next to the examples: `python tests/e2e/services.py PORT`."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
import uuid
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))

import keystate  # noqa: E402
from cart import cart  # noqa: E402
from greeter import counter, greet, greeter  # noqa: E402
from greeter import add as counter_add  # noqa: E402
from keystate import Context, Service  # noqa: E402
from signup import user_signup  # noqa: E402
from subscription import subscription_service  # noqa: E402

from keystate import (  # noqa: E402
    InvocationRetryPolicy,
    ObjectContext,
    ObjectSharedContext,
    RetryableError,
    TerminalError,
    VirtualObject,
    Workflow,
    WorkflowContext,
)

caller = Service("Caller")
steps = Service("Steps")


@caller.handler()
async def greet_and_count(ctx: Context, name: str) -> dict[str, object]:
    """Calls a service and an object, and sends one more increment."""
    greeting = await ctx.service_call(greet, name)
    before = await ctx.object_call(counter_add, name, 1)
    handle = ctx.object_send(counter_add, name, 10)
    return {"greeting": greeting, "before": before, "sent": await handle.invocation_id()}


@steps.handler()
async def long_step(ctx: Context, seconds: float) -> float:
    """One ctx.run longer than the processor's inactivity timeout in the heartbeat test."""
    return await ctx.run("long", lambda: time.sleep(seconds) or seconds)


@steps.handler()
async def charge_once(ctx: Context, order: str) -> str:
    """Charges in a step, then waits in a second step until the test releases it."""
    ledger = Path(os.environ["KEYSTATE_TEST_LEDGER"])
    release = Path(os.environ["KEYSTATE_TEST_RELEASE"])

    def charge() -> str:
        ref = f"{order}:{uuid.uuid4()}"
        with ledger.open("a") as f:
            f.write(ref + "\n")
        return ref

    def wait_for_release() -> bool:
        deadline = time.monotonic() + 120
        while not release.exists():
            if time.monotonic() > deadline:
                raise TimeoutError("the test never released the step")
            time.sleep(0.02)
        return True

    ref = await ctx.run("charge", charge)
    await ctx.run("wait", wait_for_release)
    return ref


sleeper = Service("Sleeper")
mailbox = VirtualObject("Mailbox")
approvals = Service("Approvals")
trip = VirtualObject("Trip")
flaky = Service(
    "Flaky",
    invocation_retry_policy=InvocationRetryPolicy(initial_interval=timedelta(milliseconds=20), max_attempts=3),
)


@sleeper.handler()
async def nap(ctx: Context, ms: int) -> int:
    await ctx.sleep(timedelta(milliseconds=ms))
    return ms


@sleeper.handler()
async def naps(ctx: Context, ms: int) -> float:
    """Three sleeps of `ms` at once; returns the seconds they took together."""
    start = await ctx.time()
    await keystate.gather(*(ctx.sleep(timedelta(milliseconds=ms)) for _ in range(3)))
    return await ctx.time() - start


@mailbox.handler()
async def put(ctx: ObjectContext, value: str) -> None:
    ctx.set("value", value)


@mailbox.handler(kind="shared")
async def peek(ctx: ObjectSharedContext) -> str | None:
    return await ctx.get("value", type_hint=str)


@mailbox.handler(kind="shared")
async def peek_slowly(ctx: ObjectSharedContext, ms: int) -> str | None:
    """Reads the state, then works `ms` outside the journal before it answers."""
    value = await ctx.get("value", type_hint=str)
    await asyncio.sleep(ms / 1000)
    return value


@approvals.handler()
async def approve(ctx: Context, who: str) -> str:
    """Posts an awakeable id to Mailbox/<who>, then waits for it or for a 20 s timeout."""
    awakeable_id, answer = ctx.awakeable(type_hint=str)
    ctx.object_send(put, who, awakeable_id)
    match await keystate.select(answer=answer, timeout=ctx.sleep(timedelta(seconds=20))):
        case ["answer", value]:
            return f"approved: {value}"
        case _:
            return "timed out"


@trip.handler()
async def book(ctx: ObjectContext, mode: str) -> str:
    """Blocks on a call, a sleep or an awakeable; on cancel, compensates once and re-raises."""
    ctx.set("status", "booking")
    try:
        if mode == "call":
            await ctx.service_call(nap, 600_000)
        elif mode == "sleep":
            await ctx.sleep(timedelta(minutes=10))
        elif mode == "awakeable":
            awakeable_id, answer = ctx.awakeable(type_hint=str)
            ctx.object_send(put, ctx.key(), awakeable_id)
            await answer
        ctx.set("status", "booked")
        return "booked"
    except TerminalError:
        ctx.set("status", "compensated")
        ctx.set("compensations", (await ctx.get("compensations", type_hint=int) or 0) + 1)
        raise


@trip.handler(kind="shared")
async def trip_status(ctx: ObjectSharedContext) -> dict[str, object]:
    return {
        "status": await ctx.get("status", type_hint=str),
        "compensations": await ctx.get("compensations", type_hint=int) or 0,
    }


@flaky.handler()
async def always_fails(ctx: Context) -> str:
    raise ValueError("boom")


@flaky.handler()
async def fails_then_waits(ctx: Context, marker: str) -> int:
    """Fails its first attempt asking for a 1 s pause; succeeds after."""
    path = Path(marker)
    if not path.exists():
        path.write_text("1")
        raise RetryableError("not yet", retry_after=timedelta(seconds=1))
    return int(path.read_text())


short_flow = Workflow("ShortFlow", workflow_retention=timedelta(seconds=2))
patient = Service(
    "Patient",
    invocation_retry_policy=InvocationRetryPolicy(
        initial_interval=timedelta(milliseconds=20), max_attempts=2, on_max_attempts="pause"
    ),
)


@approvals.handler()
async def answer(ctx: Context, request: dict[str, str]) -> None:
    """Resolves an awakeable from a handler."""
    ctx.resolve_awakeable(request["id"], request["value"])


@short_flow.main()
async def short_run(ctx: WorkflowContext, value: str) -> str:
    ctx.set("value", value)
    return f"{ctx.key()}:{value}"


@patient.handler()
async def needs_marker(ctx: Context, marker: str) -> str:
    """Fails until `marker` exists; its policy pauses it after two attempts."""
    if not Path(marker).exists():
        raise ValueError(f"{marker} is missing")
    return "done"


combos = Service("Combos")


@combos.handler()
async def in_completion_order(ctx: Context) -> list[int]:
    """Three calls of different lengths, taken as they complete."""
    calls = [ctx.service_call(nap, ms) for ms in (1200, 100, 600)]
    return [await f async for f in keystate.as_completed(*calls)]


@combos.handler()
async def idempotent_twice(ctx: Context, key: str) -> list[int]:
    """The same idempotency key twice: one increment, the same answer twice."""
    first = await ctx.object_call(counter_add, key, 1, idempotency_key="once")
    second = await ctx.object_call(counter_add, key, 1, idempotency_key="once")
    return [first, second]


@combos.handler()
async def reject_it(ctx: Context, awakeable_id: str) -> None:
    ctx.reject_awakeable(awakeable_id, "rejected by a handler")


SERVICES = [combos, short_flow, patient, greeter, counter, cart, subscription_service, caller, steps, user_signup, sleeper, mailbox, approvals, trip, flaky]

# ---- payloads up to and over the payload limit (tests/e2e/test_payloads.py)
from keystate.schemas.limits import max_payload_bytes  # noqa: E402

payloads = Service("Payloads")
blobs = VirtualObject("Blobs")


@payloads.handler()
async def echo_text(ctx: Context, text: str) -> str:
    return text


@payloads.handler()
async def call_echo(ctx: Context, size: int) -> dict[str, object]:
    """A call with `size` characters in and the same out."""
    text = "c" * size
    back = await ctx.service_call(echo_text, text)
    return {"received": len(back), "same": back == text}


@payloads.handler()
async def big_step(ctx: Context, size: int) -> int:
    data = await ctx.run("big", lambda: "s" * size)
    return len(data)


@blobs.handler()
async def put_blob(ctx: ObjectContext, text: str) -> int:
    ctx.set("blob", text)
    return len(text)


@blobs.handler(kind="shared")
async def get_blob(ctx: ObjectSharedContext) -> str | None:
    return await ctx.get("blob")


@blobs.handler()
async def oversized(ctx: ObjectContext, what: str) -> str:
    """Makes one value of `what` kind just over this deployment's payload limit."""
    too_big = "o" * max_payload_bytes()
    if what == "state":
        ctx.set("blob", too_big)
    elif what == "run":
        await ctx.run("too big", lambda: too_big)
    elif what == "call":
        await ctx.service_call(echo_text, too_big)
    elif what == "output":
        return too_big
    return "not refused"


SERVICES += [payloads, blobs]

# ---- invoker: back-pressure (issue 7) ----

holder = Service("Holder")


@holder.handler()
async def hold(ctx: Context, seconds: float) -> float:
    """Keeps its attempt open for `seconds` without journaling anything (so it never suspends)."""
    await asyncio.sleep(seconds)
    return seconds


SERVICES.append(holder)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    transports = os.environ.get("KEYSTATE_TEST_TRANSPORTS", "websocket,request-response").split(",")
    keystate.serve(
        SERVICES,
        port=int(sys.argv[1]),
        suspend_after=timedelta(seconds=1),
        transports=transports,
        heartbeat_interval=timedelta(milliseconds=500),
    )
