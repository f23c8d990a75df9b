"""Services the end-to-end tests deploy, next to the examples: `python tests/e2e/services.py PORT`."""

from __future__ import annotations

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
from subscription import subscription_service  # noqa: E402

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


SERVICES = [greeter, counter, cart, subscription_service, caller, steps]

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keystate.serve(SERVICES, port=int(sys.argv[1]), suspend_after=timedelta(seconds=5))
