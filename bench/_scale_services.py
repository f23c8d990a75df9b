"""The deployment of bench/state_scale.py: `python bench/_scale_services.py PORT` (binds 127.0.0.1).

`ScaleObject` is the virtual object whose state the bench bulk-loads (state key `blob`, a JSON
string); `size` answers how many bytes of it the processor handed over, so a call proves that the
restored state is there, not only that the partition serves. `ScaleService/done` names the loaded
completed invocations (served so the registry knows the service; never called by the bench).
"""

from __future__ import annotations

import logging
import sys

import keystate
from keystate import Context, ObjectContext, ObjectSharedContext, Service, VirtualObject

scale_object = VirtualObject("ScaleObject")
scale_service = Service("ScaleService")


@scale_object.handler()
async def put(ctx: ObjectContext, blob: str) -> None:
    ctx.set("blob", blob)


@scale_object.handler(kind="shared")
async def size(ctx: ObjectSharedContext) -> int:
    """Length of the stored JSON string `blob` (0 when the object has no state)."""
    blob = await ctx.get("blob", type_hint=str)
    return 0 if blob is None else len(blob)


@scale_service.handler()
async def done(ctx: Context, arg: str) -> str:
    return "done"


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keystate.serve([scale_object, scale_service], port=int(sys.argv[1]), host="127.0.0.1")
