"""The ingress's `/restate/...` paths: attach to and get the output of invocations, complete awakeables."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from keystate.schemas.limits import SETTING_HINT
from keystate.server.meta import handler_is_private
from keystate.schemas.ids import (
    HandlerKind,
    InvalidIdError,
    InvocationId,
    InvocationTarget,
    ServiceId,
    ServiceType,
    idempotency_partition_key,
)

from .commands import await_within, private_message, produce_command, reply_outcome, result_response, target_record
from .errors import BadRequest, IngressError, MethodNotAllowed, NotFound, NotReady, PayloadTooLarge
from .results import PendingReply
from .runtime import IngressRuntime

__all__ = ["RUNTIME_KEY", "invocation_status", "parse_awakeable_id", "restate_paths"]

RUNTIME_KEY = web.AppKey("runtime", IngressRuntime)
QUERY_OUTPUT_COMMAND = "keystate.QueryOutputCommand"
COMPLETE_AWAKEABLE_COMMAND = "keystate.CompleteAwakeableCommand"
_AWAKEABLE_PREFIX = "awk_"
_ENTRY_INDEX = re.compile(r"[0-9]{1,10}", re.ASCII)
_ACTIONS = ("attach", "output")
_USAGE = (
    "the /restate paths are GET /restate/invocation/{id}/attach|output, "
    "GET /restate/invocation/{service}/[{key}/]{handler}/{idempotency key}/attach|output, "
    "GET /restate/workflow/{workflow}/{id}/attach|output and POST /restate/awakeables/{id}/resolve|reject"
)


async def restate_paths(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    parts = [unquote(p) for p in request.rel_url.raw_parts[2:]]
    if len(parts) >= 2 and parts[0] == "awakeables":
        if len(parts) != 3 or parts[2] not in ("resolve", "reject"):
            raise NotFound(f"no such path {request.path}; complete an awakeable with POST /restate/awakeables/{{id}}/resolve or /reject")
        _require(request, "POST")
        return await _complete_awakeable(runtime, request, parts[1], parts[2])
    if len(parts) >= 3 and parts[-1] in _ACTIONS and parts[0] in ("invocation", "workflow"):
        _require(request, "GET")
        query = _query_for(runtime, parts[0], parts[1:-1])
        return await _query_output(runtime, query, attach=parts[-1] == "attach")
    raise NotFound(f"no such path {request.path}; {_USAGE}")


def _require(request: web.Request, method: str) -> None:
    if request.method != method:
        raise MethodNotAllowed(f"{request.method} is not allowed on {request.path}; use {method}")


@dataclass(frozen=True, slots=True)
class _Query:
    """What a QueryOutputCommand asks about, where it goes, and how to describe it in errors."""

    selector: dict[str, Any]
    partition_key: int
    key: str
    invocation_id: str | None
    target: InvocationTarget | None
    output_content_type: str | None
    description: str


def _query_for(runtime: IngressRuntime, kind: str, args: list[str]) -> _Query:
    if kind == "workflow":
        if len(args) != 2:
            raise NotFound(f"attach to a workflow with GET /restate/workflow/{{workflow}}/{{id}}/attach; {_USAGE}")
        return _workflow_query(runtime, *args)
    if len(args) == 1:
        try:
            invocation_id = InvocationId.parse(args[0])
        except InvalidIdError as exc:
            raise BadRequest(f"{exc}; attach with GET /restate/invocation/{{invocation id}}/attach") from None
        return _id_query(invocation_id)
    if len(args) in (3, 4):
        return _idempotency_query(runtime, args)
    raise NotFound(f"no such invocation path; {_USAGE}")


def _id_query(invocation_id: InvocationId) -> _Query:
    text = str(invocation_id)
    return _Query({"invocation_id": text}, invocation_id.partition_key, text, text, None, None, f"invocation {text}")


def _service(runtime: IngressRuntime, name: str) -> dict[str, Any]:
    entry = runtime.meta.state.service(name)
    if entry is None:
        raise NotFound(f"service {name!r} is not registered; list services with GET /services on the admin API (:9070)")
    return entry.metadata


def _idempotency_query(runtime: IngressRuntime, args: list[str]) -> _Query:
    service = _service(runtime, args[0])
    service_type = ServiceType(service["service_type"])
    keyed = service_type is not ServiceType.SERVICE
    name = service["name"]
    if keyed != (len(args) == 4):
        usage = f"/restate/invocation/{name}/{{key}}/{{handler}}/{{idempotency key}}" if keyed else (
            f"/restate/invocation/{name}/{{handler}}/{{idempotency key}}"
        )
        raise BadRequest(f"{name} is a {service_type.value.lower().replace('_', ' ')}: use GET {usage}/attach|output")
    key = args[1] if keyed else None
    handler_name, idempotency_key = args[-2], args[-1]
    handler = next((h for h in service["handlers"] if h["name"] == handler_name), None)
    if handler is None:
        handlers = ", ".join(sorted(h["name"] for h in service["handlers"]))
        raise NotFound(f"service {name} has no handler {handler_name!r}; its handlers are: {handlers}")
    if handler_is_private(service, handler):
        raise BadRequest(private_message(name, handler_name))
    target = InvocationTarget(name, handler_name, key, service_type, HandlerKind(handler["kind"]))
    partition_key = idempotency_partition_key(target, idempotency_key)
    selector = {"idempotency": {"target": target_record(target), "idempotency_key": idempotency_key}}
    return _Query(
        selector,
        partition_key,
        f"{target}/{idempotency_key}" if key is None else f"{name}/{key}",
        None,
        target,
        handler.get("output_content_type"),
        f"invocation of {target} with idempotency key {idempotency_key!r}",
    )


def _workflow_query(runtime: IngressRuntime, name: str, workflow_id: str) -> _Query:
    service = _service(runtime, name)
    if service["service_type"] != ServiceType.WORKFLOW.value:
        raise BadRequest(f"{name} is not a workflow; attach to its invocations by id with GET /restate/invocation/{{id}}/attach")
    run = next((h for h in service["handlers"] if h["kind"] == HandlerKind.WORKFLOW.value), None)
    if run is None:
        raise NotFound(f"workflow {name} has no run handler registered; re-register its deployment")
    if handler_is_private(service, run):
        raise BadRequest(private_message(name, run["name"]))
    target = InvocationTarget(name, run["name"], workflow_id, ServiceType.WORKFLOW, HandlerKind.WORKFLOW)
    service_id = ServiceId(name, workflow_id)
    return _Query(
        {"workflow": target_record(target)},
        service_id.partition_key,
        str(service_id),
        None,
        target,
        run.get("output_content_type"),
        f"workflow {service_id}",
    )


async def _ask(runtime: IngressRuntime, query: _Query, pending: PendingReply, *, attach: bool) -> dict[str, Any]:
    """Append the QueryOutputCommand of `query` and wait for the processor's reply."""
    record = {
        "invocation_id": None,
        "idempotency": None,
        "workflow": None,
        **query.selector,
        "request_id": pending.request_id,
        "reply_topic": runtime.reply_topic,
        "attach": attach,
    }
    await produce_command(
        runtime,
        QUERY_OUTPUT_COMMAND,
        record,
        key=query.key,
        partition_key=query.partition_key,
        invocation_id=query.invocation_id,
        target=None if query.target is None else query.target.to_record(),
        what="the query",
    )
    return await await_within(
        runtime,
        pending.reply,
        f"no partition processor answered the query for {query.description} within "
        f"{runtime.settings.call_timeout:g} s; are the processors running?",
        invocation_id=query.invocation_id,
    )


async def invocation_status(runtime: IngressRuntime, invocation_id: InvocationId) -> dict[str, Any]:
    """The processor's QueryOutputReply for `invocation_id`: status UNKNOWN, RUNNING or how it completed."""
    query = _id_query(invocation_id)
    pending = runtime.results.expect_reply(str(uuid.uuid4()), follow=False, invocation_id=query.invocation_id)
    try:
        return await _ask(runtime, query, pending, attach=False)
    finally:
        runtime.results.forget_reply(pending)


async def _query_output(runtime: IngressRuntime, query: _Query, *, attach: bool) -> web.Response:
    # By id the result waiter is registered now; otherwise as soon as the reply names the id.
    pending = runtime.results.expect_reply(str(uuid.uuid4()), follow=attach, invocation_id=query.invocation_id)
    try:
        reply = await _ask(runtime, query, pending, attach=attach)
        found = reply.get("invocation_id") or query.invocation_id
        status = reply["status"]
        if status == "UNKNOWN":
            raise NotFound(
                f"{query.description} not found: it never existed, or it completed and was purged after its retention"
            )
        if status == "RUNNING":
            if not attach:
                raise NotReady(
                    f"{query.description} has not completed yet; wait for it with GET .../attach instead of /output",
                    invocation_id=found,
                )
            if pending.result is None:
                raise IngressError(f"the reply for {query.description} says RUNNING but names no invocation; a processor bug")
            outcome = await await_within(
                runtime,
                pending.result,
                f"{query.description} did not finish within {runtime.settings.call_timeout:g} s; it keeps running, "
                "attach again to keep waiting",
                invocation_id=found,
            )
        else:
            outcome = reply_outcome(reply)
    finally:
        runtime.results.forget_reply(pending)
    assert found is not None
    return result_response(outcome, query.output_content_type, found)


def parse_awakeable_id(text: str) -> tuple[InvocationId, int]:
    """The invocation and entry index of an awakeable id `awk_<invocation id>_<index>`."""
    problem = None
    if not text.startswith(_AWAKEABLE_PREFIX):
        problem = f"it does not start with {_AWAKEABLE_PREFIX!r}"
    else:
        id_text, _, index_text = text[len(_AWAKEABLE_PREFIX) :].rpartition("_")
        try:
            invocation_id = InvocationId.parse(id_text)
        except InvalidIdError as exc:
            problem = str(exc)
        else:
            # str.isdigit() accepts '²' and other digits int() cannot read: ASCII only.
            if _ENTRY_INDEX.fullmatch(index_text) and int(index_text) < 2**31:
                return invocation_id, int(index_text)
            problem = f"{index_text[:20]!r} is not an entry index (a whole number below 2^31)"
    raise BadRequest(
        f"not an awakeable id: {text[:100]!r} ({problem}); use the id the handler got from ctx.awakeable(), "
        "of the form awk_<invocation id>_<index>"
    )


async def _complete_awakeable(runtime: IngressRuntime, request: web.Request, awakeable_id: str, action: str) -> web.Response:
    invocation_id, _ = parse_awakeable_id(awakeable_id)
    limit = runtime.settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"the request body has {request.content_length} bytes, over the payload limit of {limit}; {SETTING_HINT}"
        )
    body = await request.read()
    if action == "resolve":
        result: tuple[str, dict[str, Any]] = ("keystate.Value", {"value": body})
    else:
        message = body.decode("utf-8", "replace") or "the awakeable was rejected"
        result = ("keystate.Failure", {"code": 500, "message": message})
    text = str(invocation_id)
    await produce_command(
        runtime,
        COMPLETE_AWAKEABLE_COMMAND,
        {"awakeable_id": awakeable_id, "result": result},
        key=text,
        partition_key=invocation_id.partition_key,
        invocation_id=text,
        what=f"the {action} of awakeable {awakeable_id}",
    )
    return web.Response(status=202)
