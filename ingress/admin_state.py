"""Admin routes for object and workflow state: read it, and edit or clear it through the log.

`GET /services/{svc}/state/{key}` reads the read model; `POST /services/{svc}/state` appends a
`SetStateCommand` that the key's partition applies in order with the key's exclusive invocations
(waiting in its inbox while one runs), refusing it when the state is no longer at the given version.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import uuid
from typing import Any, Protocol, cast

from aiohttp import web

from keystate.schemas.ids import ServiceId
from keystate.schemas.state import state_version

from .admin_deployments import RUNTIME_KEY
from .commands import produce_command
from .errors import BadRequest, Conflict, NotFound
from .runtime import IngressRuntime

__all__ = ["EDIT_WAIT_S", "SET_STATE_COMMAND", "add_state_routes"]

log = logging.getLogger(__name__)

SET_STATE_COMMAND = "keystate.SetStateCommand"
EDIT_WAIT_S = 5.0
"""How long `POST /services/{svc}/state` waits for the edit to be applied before answering 202 (it is queued)."""


class _StateReader(Protocol):
    async def object_state(self, service: str, key: str) -> dict[str, bytes]: ...


def add_state_routes(app: web.Application) -> None:
    app.router.add_get("/services/{name}/state/{key}", _get_state)
    app.router.add_post("/services/{name}/state", _edit_state)


def _keyed_service(runtime: IngressRuntime, name: str) -> None:
    """Refuses anything but a registered virtual object or workflow: only they have state."""
    entry = runtime.meta.state.service(name)
    if entry is None:
        raise NotFound(f"unknown service {name!r}; list services with GET /services")
    service_type = entry.metadata["service_type"]
    if service_type not in ("VIRTUAL_OBJECT", "WORKFLOW"):
        raise BadRequest(
            f"{name} is a service (type {service_type}), which has no state; only virtual objects and workflows "
            "have state"
        )


async def _get_state(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    name, key = request.match_info["name"], request.match_info["key"]
    _keyed_service(runtime, name)
    state = await cast(_StateReader, runtime.invocations).object_state(name, key)
    return web.json_response(
        {
            "version": state_version(state),
            "state": {k: base64.b64encode(v).decode("ascii") for k, v in sorted(state.items())},
        }
    )


async def _edit_state(request: web.Request) -> web.Response:
    """200 `{"version"}` once applied, 409 when the state moved on, 202 while it waits for the key's invocations."""
    runtime = request.app[RUNTIME_KEY]
    name = request.match_info["name"]
    _keyed_service(runtime, name)
    key, expected, new_state = _edit_body(await _json(request))
    request_id = f"state-{uuid.uuid4()}"
    pending = runtime.results.expect_reply(request_id, follow=False)
    try:
        await produce_command(
            runtime,
            SET_STATE_COMMAND,
            {
                "service": name,
                "key": key,
                "new_state": new_state,
                "expected_version": expected,
                "request_id": request_id,
                "reply_topic": runtime.reply_topic,
            },
            key=f"{name}/{key}",
            partition_key=ServiceId(name, key).partition_key,
            target={"service": name, "key": key},
            what=f"the state edit of {name}/{key}",
        )
        try:
            reply = await asyncio.wait_for(asyncio.shield(pending.reply), EDIT_WAIT_S)
        except TimeoutError:
            return web.json_response(
                {
                    "status": "queued",
                    "message": f"the edit of {name}/{key} waits for the key's running invocations and is applied in "
                    "their order; read the state again to see it",
                },
                status=202,
            )
    finally:
        runtime.results.forget_reply(pending)
    result = reply.get("result")
    if reply["status"] == "SUCCEEDED" and result is not None:
        return web.json_response({"version": result[1]["value"].decode()})
    message = result[1]["message"] if result is not None else f"the edit of {name}/{key} was refused"
    log.warning("state edit of %s/%s refused: %s", name, key, message)
    raise Conflict(message)


async def _json(request: web.Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise BadRequest(f"the body is not JSON ({exc}); send {{\"object_key\": ..., \"new_state\": {{...}}}}") from None
    if not isinstance(body, dict):
        raise BadRequest('the body must be a JSON object: {"object_key": ..., "version": ..., "new_state": {...}}')
    return body


def _edit_body(body: dict[str, Any]) -> tuple[str, str | None, dict[str, bytes]]:
    """(object key, expected version or None, new state) of a state edit request, or BadRequest saying what is wrong."""
    key = body.get("object_key")
    if not isinstance(key, str) or not key:
        raise BadRequest("field 'object_key' must name the object or workflow key (a non-empty string)")
    expected = body.get("version")
    if expected is not None and not isinstance(expected, str):
        raise BadRequest("field 'version' must be the version string from GET /services/{svc}/state/{key}, or null")
    raw = body.get("new_state")
    if not isinstance(raw, dict):
        raise BadRequest("field 'new_state' must be an object of state key -> value (base64, or an array of bytes); {} clears")
    return key, expected, {str(k): _value(str(k), v) for k, v in raw.items()}


def _value(name: str, value: object) -> bytes:
    """A state value given as base64 text, or as Restate's array of byte values."""
    if isinstance(value, list):
        if all(isinstance(b, int) and not isinstance(b, bool) and 0 <= b <= 255 for b in value):
            return bytes(value)
    elif isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            pass
    raise BadRequest(f"new_state[{name!r}] must be base64 text or an array of byte values (0-255)")
