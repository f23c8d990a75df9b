"""The HTTP ingress (:8080): `POST /{svc}/{handler}`, `/{svc}/{key}/{handler}`, and `.../send`, Restate-style."""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

from aiohttp import web

from keystate.schemas._codec import codec
from keystate.schemas.ids import InvocationId, InvocationTarget, ServiceType, HandlerKind
from keystate.server.errors import KafkaUnavailable
from keystate.server.kafka import AsyncProducer

from .errors import (
    INVOCATION_ID_HEADER,
    MAX_BODY_KEY,
    BadRequest,
    InvocationFailed,
    KeyMismatch,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    ResultTimeout,
    Unavailable,
    UnsupportedContentType,
    error_middleware,
)
from .runtime import IngressRuntime

__all__ = ["RUNTIME_KEY", "ingress_app", "parse_delay"]

RUNTIME_KEY = web.AppKey("runtime", IngressRuntime)
INVOKE_COMMAND = "keystate.InvokeCommand"
JSON = "application/json"
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
    app = web.Application(client_max_size=runtime.settings.max_body_bytes, middlewares=[error_middleware])
    app[RUNTIME_KEY] = runtime
    app[MAX_BODY_KEY] = runtime.settings.max_body_bytes
    app.router.add_route("*", "/{path:.*}", _invoke)
    return app


@dataclass(frozen=True, slots=True)
class _Route:
    target: InvocationTarget
    handler: dict[str, Any]
    send: bool


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
    target = InvocationTarget(
        service=service_name,
        handler=handler_name,
        key=key,
        service_type=service_type,
        handler_kind=HandlerKind(handler["kind"]),
    )
    return _Route(target, handler, send)


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


def _forwarded_headers(request: web.Request) -> dict[str, str]:
    dropped = set(_HOP_BY_HOP)
    for token in request.headers.getall("connection", []):
        dropped.update(t.strip().lower() for t in token.split(","))
    headers: dict[str, str] = {}
    for name, value in request.headers.items():
        lower = name.lower()
        if lower in dropped:
            continue
        headers[lower] = f"{headers[lower]}, {value}" if lower in headers else value
    return headers


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)", re.IGNORECASE)
_ISO_DURATION = re.compile(r"P(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d+)?)S)?)?", re.IGNORECASE)
_UNIT_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}


def parse_delay(text: str) -> int:
    """Milliseconds of a delay like `10s`, `1m30s`, `500ms`, `2h`, or ISO 8601 `PT10S`."""
    value = text.strip()
    iso = _ISO_DURATION.fullmatch(value)
    if iso and value.upper() not in ("P", "PT") and any(iso.groups()):
        days, hours, minutes, seconds = iso.groups()
        return int(
            int(days or 0) * 86_400_000
            + int(hours or 0) * 3_600_000
            + int(minutes or 0) * 60_000
            + float(seconds or 0) * 1000
        )
    total = 0.0
    position = 0
    for match in _DURATION_PART.finditer(value):
        if value[position : match.start()].strip():
            break
        total += float(match.group(1)) * _UNIT_MS[match.group(2).lower()]
        position = match.end()
    else:
        if position and not value[position:].strip():
            return int(total)
    raise BadRequest(f"cannot read delay {text!r}; use a duration like 10s, 1m30s, 500ms, 2h or PT10S")


async def _invoke(request: web.Request) -> web.Response:
    runtime = request.app[RUNTIME_KEY]
    route = _route(runtime, request.rel_url.raw_parts)
    if request.method != "POST":
        raise MethodNotAllowed(f"{request.method} is not allowed on {route.target}; invoke it with POST")
    limit = runtime.settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(
            f"the request body has {request.content_length} bytes, over the limit of {limit}; send a smaller "
            "body or raise the ingress body limit (max_body_bytes)"
        )
    body = await request.read()
    target = route.target
    _check_content_type(request, route.handler, body, target)

    now_ms = int(time.time() * 1000)
    execute_at_ms = None
    if "delay" in request.query:
        if not route.send:
            raise BadRequest(f"delay is only allowed when sending: POST {request.path}/send?delay=...")
        execute_at_ms = now_ms + parse_delay(request.query["delay"])
    idempotency_key = request.headers.get(IDEMPOTENCY_KEY_HEADER) or None

    producer = runtime.require_producer()
    invocation_id = InvocationId.for_target(target)
    id_text = str(invocation_id)
    target_text = str(target)
    command = {
        "invocation_id": id_text,
        "target": {
            "service": target.service,
            "handler": target.handler,
            "key": target.key,
            "service_type": target.service_type.value,
            "handler_kind": target.handler_kind.value,
        },
        "argument": body,
        "headers": _forwarded_headers(request),
        "idempotency_key": idempotency_key,
        "caller": None,
        "reply_topic": None,
        "execute_at_ms": execute_at_ms,
        "created_at_ms": now_ms,
        "source": "ingress",
    }
    value = codec().encode(INVOKE_COMMAND, command)
    key = target_text.rsplit("/", 1)[0] if target.key is not None else id_text
    partition = invocation_id.partition(runtime.log_partitions)
    headers = [
        ("type", INVOKE_COMMAND.encode()),
        ("invocation_id", id_text.encode()),
        ("target", target_text.encode()),
    ]

    # Register for the result before the command exists, so it cannot be missed.
    result = None if route.send else runtime.results.expect(id_text, target=target_text, idempotency_key=idempotency_key)
    try:
        await _produce(runtime, producer, value, key.encode("utf-8"), partition, headers, id_text)
        if route.send:
            return web.json_response(
                {"invocationId": id_text, "status": "Accepted"}, status=202, headers={INVOCATION_ID_HEADER: id_text}
            )
        assert result is not None
        try:
            outcome = await asyncio.wait_for(result, runtime.settings.call_timeout)
        except asyncio.TimeoutError:
            raise ResultTimeout(
                f"{target_text} did not finish within {runtime.settings.call_timeout:g} s; it keeps running, "
                f"its result will be published on {runtime.settings.topics.results} under id {id_text}. "
                "Use /send for long-running handlers or raise the call timeout",
                invocation_id=id_text,
            ) from None
    finally:
        if result is not None:
            runtime.results.forget(id_text, target=target_text, idempotency_key=idempotency_key)
    # With an idempotency key the answer may be the first invocation's: report its id.
    return _result_response(outcome, route.handler, outcome.get("invocation_id") or id_text)


async def _produce(
    runtime: IngressRuntime,
    producer: AsyncProducer,
    value: bytes,
    key: bytes,
    partition: int,
    headers: list[tuple[str, bytes]],
    id_text: str,
) -> None:
    timeout = runtime.settings.produce_timeout
    try:
        delivery = producer.produce(runtime.settings.topics.log, value, key=key, partition=partition, headers=headers)
        await asyncio.wait_for(delivery, timeout)
    except asyncio.TimeoutError:
        raise Unavailable(
            f"Kafka did not acknowledge the invocation within {timeout:g} s, so it may or may not have been "
            "accepted; retry with the same idempotency-key header to be safe",
            invocation_id=id_text,
        ) from None
    except KafkaUnavailable as exc:
        raise Unavailable(
            f"Kafka did not accept the invocation ({exc}); retry with the same idempotency-key header to be safe",
            invocation_id=id_text,
        ) from exc


def _result_response(result: dict[str, Any], handler: dict[str, Any], id_text: str) -> web.Response:
    status = result["status"]
    if status == "SUCCEEDED":
        return web.Response(
            status=200,
            body=result.get("output") or b"",
            headers={"content-type": handler.get("output_content_type") or JSON, INVOCATION_ID_HEADER: id_text},
        )
    failure = result.get("failure")
    if failure is not None:
        raise InvocationFailed(failure.get("code", 500), failure["message"], invocation_id=id_text)
    # Cancelled and killed invocations without a failure answer like Restate: 409.
    raise InvocationFailed(409, f"the invocation was {status.lower()}", invocation_id=id_text)
