"""The HTTP ingress (:8080): `POST /{svc}/{handler}`, `/{svc}/{key}/{handler}`, `.../send`; `/restate/...` elsewhere."""

from __future__ import annotations

import functools
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from keystate.schemas.ids import HandlerKind, InvocationId, InvocationTarget, ServiceType, idempotency_partition_key
from keystate.schemas.limits import MAX_DELAY_MS, headers_size, payload_too_large
from keystate.server.meta import handler_is_private

from .auth import INGRESS, auth_middlewares
from .commands import (
    IDEMPOTENCY_EXPIRES_HEADER,
    JSON,
    await_within,
    http_date,
    private_message,
    produce_command,
    reply_outcome,
    result_response,
    target_record,
)
from .errors import (
    INVOCATION_ID_HEADER,
    MAX_BODY_KEY,
    BadRequest,
    Conflict,
    IngressError,
    KeyMismatch,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    UnsupportedContentType,
    error_middleware,
)
from .http_limits import HTTP_LIMITS_KEY, limits_middleware
from .metrics import add_metrics_route, http_metrics_middleware
from .restate_paths import RUNTIME_KEY, restate_paths
from .runtime import IngressRuntime
from .tracing import invocation_headers, tracing_middlewares

__all__ = ["RUNTIME_KEY", "ingress_app", "parse_delay"]

INVOKE_COMMAND = "keystate.InvokeCommand"
IDEMPOTENCY_KEY_HEADER = "idempotency-key"
# Not forwarded to handlers: they describe one HTTP hop, not the request.
_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",
    }
)


def ingress_app(runtime: IngressRuntime) -> web.Application:
    """The ingress application; `runtime` must be started before it serves requests."""
    authenticate = auth_middlewares(runtime.settings.ingress_token, INGRESS)
    app = web.Application(
        client_max_size=runtime.settings.max_body_bytes,
        middlewares=[
            http_metrics_middleware("ingress"),
            *tracing_middlewares(),
            error_middleware,
            limits_middleware,
            *authenticate,
        ],
    )
    app[RUNTIME_KEY] = runtime
    app[HTTP_LIMITS_KEY] = runtime.settings.http_limits
    app[MAX_BODY_KEY] = runtime.settings.max_body_bytes
    add_metrics_route(app)  # before the catch-all: GET /metrics is never an invocation
    app.router.add_route("*", "/restate/{path:.*}", restate_paths)
    app.router.add_route("*", "/{path:.*}", _invoke)
    return app


@dataclass(frozen=True, slots=True)
class _Route:
    target: InvocationTarget
    handler: dict[str, Any]
    send: bool
    service: dict[str, Any]


def _route(runtime: IngressRuntime, raw_parts: tuple[str, ...]) -> _Route:
    """Resolve a path against the registered services; Restate's rules for where the key goes."""
    parts = [unquote(p) for p in raw_parts if p != "/"]
    if not parts or not parts[0]:
        raise NotFound("invoke a handler with POST /{service}/{handler} or POST /{service}/{key}/{handler}")
    service_name = parts[0]
    entry = runtime.meta.state.service(service_name)
    if entry is None:
        known = sorted(runtime.meta.state.services)
        listing = f"registered services: {', '.join(known)}" if known else "no services are registered yet"
        raise NotFound(
            f"service {service_name!r} is not registered ({listing}); register the deployment that serves "
            "it with POST /deployments on the admin API (:9070)"
        )
    service = entry.metadata
    handlers = {h["name"]: h for h in service["handlers"]}
    service_type = ServiceType(service["service_type"])
    keyed = service_type is not ServiceType.SERVICE
    rest = parts[1:]
    send = len(rest) >= 2 and rest[-1] == "send" and not (len(rest) == 2 and keyed and rest[1] in handlers)
    if send:
        rest = rest[:-1]
    usage = (
        f"POST /{service_name}/{{key}}/{{handler}}" if keyed else f"POST /{service_name}/{{handler}}"
    )
    if keyed and len(rest) == 1 and rest[0] in handlers:
        kind = "virtual object" if service_type is ServiceType.VIRTUAL_OBJECT else "workflow"
        raise KeyMismatch(f"{service_name} is a {kind}: a key is required, call {usage}")
    if not keyed and len(rest) == 2 and rest[1] in handlers:
        raise KeyMismatch(
            f"{service_name} is a service and takes no key, but {rest[0]!r} was given as one; call {usage}"
        )
    if len(rest) in (1, 2) and rest[-1] not in handlers:
        raise NotFound(
            f"service {service_name} has no handler {rest[-1]!r}; its handlers are: {', '.join(sorted(handlers))}"
        )
    if len(rest) != (2 if keyed else 1):
        raise NotFound(f"no such path for {service_name}; call {usage} (append /send to not wait for the result)")
    key = rest[0] if keyed else None
    handler_name = rest[-1]
    handler = handlers[handler_name]
    if handler_is_private(service, handler):
        raise BadRequest(private_message(service_name, handler_name))
    target = InvocationTarget(
        service=service_name,
        handler=handler_name,
        key=key,
        service_type=service_type,
        handler_kind=HandlerKind(handler["kind"]),
    )
    return _Route(target, handler, send, service)


def _check_content_type(request: web.Request, handler: dict[str, Any], body: bytes, target: InvocationTarget) -> None:
    if not body or "content-type" not in request.headers:
        return
    media = request.headers["content-type"].split(";", 1)[0].strip().lower()
    declared = (handler.get("input_content_type") or "").split(";", 1)[0].strip().lower()
    if media == JSON or _matches(media, declared):
        return
    accepted = JSON if not declared or declared == JSON else f"{JSON} or {declared}"
    raise UnsupportedContentType(f"{target} accepts {accepted}, but the request has content-type {media!r}; set content-type to {accepted}")


def _matches(media: str, declared: str) -> bool:
    if not declared:
        return False
    if declared == "*/*" or declared == media:
        return True
    if declared.endswith("/*"):
        return media.startswith(declared[:-1])
    return False


def _forwarded_headers(request: web.Request, denied: frozenset[str], allowed: Collection[str]) -> dict[str, str]:
    """The headers handed to the handler: no hop-by-hop headers, no secrets (`denied`) unless `allowed`."""
    dropped = set(_HOP_BY_HOP)
    # Secrets never reach a Kafka record: dropped here, before the InvokeCommand is built.
    dropped.update(name for name in denied if name not in allowed)
    for token in request.headers.getall("connection", []):
        dropped.update(t.strip().lower() for t in token.split(","))
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        lower = name.lower()
        if lower in dropped:
            continue
        headers[lower] = f"{headers[lower]}, {value}" if lower in headers else value
    return headers


async def _read_payload(
    request: web.Request, limit: int, denied: frozenset[str], allowed: Collection[str]
) -> tuple[bytes, dict[str, str]]:
    """The body and the headers handed to the handler; 413 if together they are over the payload limit.

    Headers count because they travel with the body in every record of the invocation.
    """
    headers = _forwarded_headers(request, denied, allowed)
    what = f"the request to {request.path} (body and headers)"
    extra = headers_size(headers)
    if request.content_length is not None:
        message = payload_too_large(what, request.content_length + extra, limit)
        if message is not None:
            raise PayloadTooLarge(message)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        # A chunked body: aiohttp stops reading at the limit, so the whole size is unknown.
        raise PayloadTooLarge(payload_too_large(f"{what} (at least)", limit + 1, limit) or "") from exc
    message = payload_too_large(what, len(body) + extra, limit)
    if message is not None:
        raise PayloadTooLarge(message)
    return body, headers


_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*(ms|s|m|h|d)", re.IGNORECASE | re.ASCII)
_ISO_DURATION = re.compile(
    r"P(?:([0-9]+)D)?(?:T(?:([0-9]+)H)?(?:([0-9]+)M)?(?:([0-9]+(?:\.[0-9]+)?)S)?)?", re.IGNORECASE | re.ASCII
)
_MAX_DELAY_CHARS = 64
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_delay(text: str) -> int:
    """Milliseconds of a delay like `10s`, `1m30s`, `500ms`, `2h`, or ISO 8601 `PT10S`, at most `MAX_DELAY_MS`."""
    value = text.strip()
    if len(value) > _MAX_DELAY_CHARS:
        raise BadRequest(f"delay {text[:100]!r}... is too long to be a duration; use one like 10s, 1m30s, 500ms, 2h or PT10S")
    iso = _ISO_DURATION.fullmatch(value)
    if iso and value.upper() not in ("P", "PT") and any(iso.groups()):
        days, hours, minutes, seconds = iso.groups()
        whole = int(days or 0) * 86_400_000 + int(hours or 0) * 3_600_000 + int(minutes or 0) * 60_000
        # Whole units as ints: a float of a huge int would raise OverflowError.
        return _within_range(text, min(whole, MAX_DELAY_MS + 1) + float(seconds or 0) * 1000)
    total = 0.0
    position = 0
    for match in _DURATION_PART.finditer(value):
        if value[position : match.start()].strip():
            break
        total += float(match.group(1)) * _UNIT_MS[match.group(2).lower()]
        position = match.end()
    else:
        if position and not value[position:].strip():
            return _within_range(text, total)
    raise BadRequest(f"cannot read delay {text[:100]!r}; use a duration like 10s, 1m30s, 500ms, 2h or PT10S")


def _within_range(text: str, total_ms: float) -> int:
    # Compared as a float first: int() of an infinite float (a 400-digit delay) would raise.
    if not total_ms <= MAX_DELAY_MS:
        raise BadRequest(
            f"delay {text[:100]!r} is too long: the longest delay is {MAX_DELAY_MS // 86_400_000} days "
            f"({MAX_DELAY_MS} ms); use a shorter delay"
        )
    return int(total_ms)


async def _invoke(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    route = _route(runtime, request.rel_url.raw_parts)
    if request.method != "POST":
        raise MethodNotAllowed(f"{request.method} is not allowed on {route.target}; invoke it with POST")
    allowed = route.service.get("forward_headers", ())
    body, headers = await _read_payload(request, runtime.settings.max_payload_bytes, runtime.settings.redact_headers, allowed)
    target = route.target
    _check_content_type(request, route.handler, body, target)

    now_ms = int(time.time() * 1000)
    execute_at_ms = None
    if "delay" in request.query:
        if not route.send:
            raise BadRequest(f"delay is only allowed when sending: POST {request.path}/send?delay=...")
        execute_at_ms = now_ms + parse_delay(request.query["delay"])
    idempotency_key = request.headers.get(IDEMPOTENCY_KEY_HEADER) or None
    workflow_run = target.handler_kind is HandlerKind.WORKFLOW

    if idempotency_key is not None:
        # The dedup row and the invocation must share a partition (see the contract).
        invocation_id = InvocationId.new(idempotency_partition_key(target, idempotency_key))
    else:
        invocation_id = InvocationId.for_target(target)
    id_text = str(invocation_id)
    target_text = str(target)
    # Requests that may find an existing invocation ask for a reply saying which one.
    request_id = str(uuid.uuid4()) if idempotency_key is not None or workflow_run else None
    target_fields = target_record(target)
    headers = invocation_headers(target_text, id_text, headers)
    command = {
        "invocation_id": id_text,
        "target": target_fields,
        "argument": body,
        "headers": headers,
        "idempotency_key": idempotency_key,
        "caller": None,
        # Calls and requests that want a reply are answered on this ingress's own topic (a plain send: nobody waits).
        "reply_topic": runtime.reply_topic if request_id is not None or not route.send else None,
        "execute_at_ms": execute_at_ms,
        "created_at_ms": now_ms,
        "source": "ingress",
        "request_id": request_id,
    }
    key = target_text.rsplit("/", 1)[0] if target.key is not None else id_text
    produce = functools.partial(
        produce_command,
        runtime,
        INVOKE_COMMAND,
        command,
        key=key,
        partition_key=invocation_id.partition_key,
        invocation_id=id_text,
        target=target_fields,
        what="the invocation",
        retry_hint="retry with the same idempotency-key header",
    )
    if request_id is not None:
        return await _invoke_with_reply(runtime, route, produce, request_id, id_text)

    # Register for the result before the command exists, so it cannot be missed.
    result = None if route.send else runtime.results.expect(id_text)
    try:
        await produce()
        if route.send:
            return web.json_response(
                {"invocationId": id_text, "status": "Accepted"}, status=202, headers={INVOCATION_ID_HEADER: id_text}
            )
        assert result is not None
        outcome = await await_within(runtime, result, _call_timeout_message(runtime, target_text, id_text), invocation_id=id_text)
    finally:
        if result is not None:
            runtime.results.forget(id_text, result)
    return result_response(outcome, route.handler.get("output_content_type"), id_text)


async def _invoke_with_reply(
    runtime: IngressRuntime, route: _Route, produce: Callable[[], Awaitable[None]], request_id: str, id_text: str
) -> web.Response:
    """An idempotent request or a workflow run: the processor's reply says which invocation it is."""
    target = route.target
    pending = runtime.results.expect_reply(request_id, follow=not route.send)
    try:
        await produce()
        reply = await await_within(
            runtime,
            pending.reply,
            f"the invocation was appended to {runtime.settings.topics.log}, but no partition processor confirmed "
            f"it within {runtime.settings.call_timeout:g} s; are the processors running? Retry with the same "
            "idempotency-key header to find out what became of it",
            invocation_id=id_text,
        )
        existing_id = reply.get("invocation_id") or id_text
        previously = bool(reply.get("previously_accepted"))
        headers = {INVOCATION_ID_HEADER: existing_id}
        if reply.get("expires_at_ms") is not None:
            headers[IDEMPOTENCY_EXPIRES_HEADER] = http_date(reply["expires_at_ms"])
        if route.send:
            status = "PreviouslyAccepted" if previously else "Accepted"
            return web.json_response({"invocationId": existing_id, "status": status}, status=202, headers=headers)
        if previously and target.handler_kind is HandlerKind.WORKFLOW:
            workflow = f"{target.service}/{target.key}"
            raise Conflict(
                f"workflow {workflow} was already started; attach with GET /restate/workflow/{workflow}/attach",
                invocation_id=existing_id,
                headers={k: v for k, v in headers.items() if k != INVOCATION_ID_HEADER},
            )
        if reply["status"] == "RUNNING":
            assert pending.result is not None
            outcome = await await_within(
                runtime, pending.result, _call_timeout_message(runtime, str(target), existing_id), invocation_id=existing_id
            )
        elif reply["status"] == "UNKNOWN":
            raise IngressError(
                f"the partition processor answered UNKNOWN for the new invocation {existing_id}; this is a bug "
                "in the processor, please report it",
                invocation_id=existing_id,
            )
        else:
            outcome = reply_outcome(reply)
    finally:
        runtime.results.forget_reply(pending)
    extra = {k: v for k, v in headers.items() if k != INVOCATION_ID_HEADER}
    return result_response(outcome, route.handler.get("output_content_type"), existing_id, extra)


def _call_timeout_message(runtime: IngressRuntime, target_text: str, id_text: str) -> str:
    return (
        f"{target_text} did not finish within {runtime.settings.call_timeout:g} s; it keeps running, "
        f"its result will be published on {runtime.settings.topics.results} under id {id_text}. "
        f"Attach to it with GET /restate/invocation/{id_text}/attach, use /send for long-running handlers "
        "or raise the call timeout"
    )
