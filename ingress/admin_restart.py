"""Admin route `PATCH /invocations/{id}/restart-as-new?from=N&deployment=ID|latest|keep`.

The new invocation gets an id with the old id's partition key, so the old invocation's partition
(which holds the journal to copy) creates it and owns it: no forwarding between partitions.
"""

from __future__ import annotations

import uuid

from aiohttp import web

from keystate.schemas.ids import InvalidIdError, InvocationId

from .admin_deployments import RUNTIME_KEY, resume_deployment
from .commands import await_within, produce_command
from .errors import BadRequest, Conflict, IngressError, NotFound

__all__ = ["RESTART_AS_NEW_COMMAND", "add_restart_routes"]

RESTART_AS_NEW_COMMAND = "keystate.RestartAsNewCommand"
_REFUSALS: dict[int, type[IngressError]] = {400: BadRequest, 404: NotFound, 409: Conflict}


def add_restart_routes(app: web.Application) -> None:
    """Register before the generic `PATCH /invocations/{id}/{action}` route, which would match first."""
    app.router.add_patch("/invocations/{id}/restart-as-new", _restart_as_new)


def _from_index(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise BadRequest(
            f"from={text!r} must be a journal index (a whole number >= 0): entries before it are copied, "
            "from=1 (the default) copies only the input"
        )
    return value


async def _restart_as_new(request: web.Request) -> web.Response:
    """200 `{"new_invocation_id"}`; 400 when an entry before `from` is not completed; 409 when the old one still runs."""
    runtime = request.app[RUNTIME_KEY]
    text = request.match_info["id"]
    try:
        old = InvocationId.parse(text)
    except InvalidIdError as exc:
        raise BadRequest(f"{exc}; list invocations with GET /invocations") from None
    old_id = str(old)
    from_index = _from_index(request.query.get("from", "1"))
    model = runtime.invocations
    known = await model.get(old_id) if model.ready and model.error is None else None
    deployment = resume_deployment(runtime, old_id, request.query.get("deployment"), known)
    new_id = str(InvocationId.new(old.partition_key))
    request_id = f"restart-{uuid.uuid4()}"
    pending = runtime.results.expect_reply(request_id, follow=False)
    try:
        await produce_command(
            runtime,
            RESTART_AS_NEW_COMMAND,
            {
                "invocation_id": old_id,
                "new_invocation_id": new_id,
                "from_index": from_index,
                "deployment_id": deployment,
                "request_id": request_id,
                "reply_topic": runtime.reply_topic,
            },
            key=old_id,
            partition_key=old.partition_key,
            invocation_id=old_id,
            what=f"the restart of {old_id}",
        )
        reply = await await_within(
            runtime,
            pending.reply,
            f"no partition processor answered the restart of {old_id} within {runtime.settings.call_timeout:g} s; "
            "are the processors running?",
            invocation_id=old_id,
        )
    finally:
        runtime.results.forget_reply(pending)
    result = reply.get("result")
    if reply["status"] == "RUNNING":
        return web.json_response({"new_invocation_id": reply["invocation_id"]})
    code = result[1]["code"] if result is not None else 500
    message = result[1]["message"] if result is not None else f"the restart of {old_id} was refused"
    raise _REFUSALS.get(code, IngressError)(message, invocation_id=old_id)
