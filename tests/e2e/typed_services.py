"""The deployment of the input and callee-type end-to-end tests: `python typed_services.py PORT`."""

from __future__ import annotations

import logging
import sys
from datetime import timedelta

import keystate
from keystate import Context, ObjectContext, TerminalError, WorkflowContext, WorkflowSharedContext

tally = keystate.VirtualObject("Tally")
flow = keystate.Workflow("Flow")
generic = keystate.Service("Generic")


@tally.handler()
async def add(ctx: ObjectContext, delta: int) -> int:
    total = (await ctx.get("total", type_hint=int) or 0) + delta
    ctx.set("total", total)
    return total


@flow.main()
async def run(ctx: WorkflowContext, value: str) -> str:
    signal = await ctx.promise("go", type_hint=str).value()
    return f"{value}:{signal}"


@flow.handler()
async def release(ctx: WorkflowSharedContext, signal: str) -> str:
    await ctx.promise("go", type_hint=str).resolve(signal)
    return "released"


async def _outcome(ctx: Context, service: str, handler: str, arg: bytes, key: str | None) -> str:
    try:
        return (await ctx.generic_call(service, handler, arg, key=key)).decode()
    except TerminalError as exc:
        return f"{exc.status_code}: {exc.message}"


@generic.handler()
async def run_and_release(ctx: Context, workflow_id: str) -> list[str]:
    """By name only: start a workflow, signal it through its shared handler, try to run it again."""
    ctx.generic_send("Flow", "run", b'"first"', key=workflow_id)
    released = await _outcome(ctx, "Flow", "release", b'"go"', workflow_id)
    again = await _outcome(ctx, "Flow", "run", b'"second"', workflow_id)
    unknown = await _outcome(ctx, "Flow", "relase", b'"go"', workflow_id)
    return [released, again, unknown]


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keystate.serve([tally, flow, generic], port=int(sys.argv[1]), suspend_after=timedelta(seconds=1))
