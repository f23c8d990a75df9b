"""The deployment's HTTP side: discovery manifest, and invocation attempts over a WebSocket or one POST."""

from __future__ import annotations

import asyncio

import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from aiohttp import WSCloseCode, web

from keystate.schemas._codec import Codec, codec
from keystate.schemas.errors import ContractError

from ._context import InvocationCore
from ._identity import IdentityVerifier, identity_middleware
from ._machine import COMPLETION, ENTRY, START, Machine, Message, target_from_avro
from ._service import AnyService, Handler, InvocationRetryPolicy
from ._stream import REUSE_HEADER, Connection
from ._tracing import attempt_context
from .errors import ProtocolError

__all__ = ["BATCH_CONTENT_TYPE", "PROTOCOL_VERSION", "TRANSPORTS", "app", "manifest", "serve"]

log = logging.getLogger("keystate.sdk")

PROTOCOL_VERSION = 1
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024
WEBSOCKET = "websocket"
REQUEST_RESPONSE = "request-response"
TRANSPORTS = (WEBSOCKET, REQUEST_RESPONSE)
BATCH_CONTENT_TYPE = "application/vnd.keystate.batch+avro"
BATCH = "keystate.MessageBatch"


def _transports(transports: Iterable[str]) -> list[str]:
    """The transports to offer, validated, in canonical order."""
    if isinstance(transports, str):
        raise TypeError(f"transports must be a list of names, e.g. [{transports!r}], not a string")
    wanted = list(transports)
    unknown = [t for t in wanted if t not in TRANSPORTS]
    if unknown:
        raise ValueError(f"unknown transport {unknown[0]!r}; known transports are {', '.join(TRANSPORTS)}")
    if not wanted:
        raise ValueError(f"offer at least one transport: {', '.join(TRANSPORTS)}")
    return [t for t in TRANSPORTS if t in wanted]


def manifest(services: Iterable[AnyService], *, transports: Iterable[str] = TRANSPORTS) -> dict[str, Any]:
    """The discovery manifest: transports, services, handlers, kinds, content types and settings."""
    return {
        "protocol": PROTOCOL_VERSION,
        "transports": _transports(transports),
        "services": [_service_manifest(svc) for svc in services],
    }


def _ms(value: timedelta) -> int:
    return value // timedelta(milliseconds=1)


def _retry_policy_manifest(policy: InvocationRetryPolicy) -> dict[str, Any]:
    return {
        "initialInterval": _ms(policy.initial_interval),
        "factor": float(policy.factor),
        "maxInterval": _ms(policy.max_interval),
        "maxAttempts": policy.max_attempts,
        "onMaxAttempts": policy.on_max_attempts.upper(),
    }


def _service_manifest(svc: AnyService) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": svc.name,
        "ty": svc.service_type.value,
        "handlers": [_handler_manifest(h) for h in svc.handlers.values()],
    }
    # Settings left at None are left out: the server's defaults apply.
    if svc.invocation_retry_policy is not None:
        out["retryPolicy"] = _retry_policy_manifest(svc.invocation_retry_policy)
    if svc.inactivity_timeout is not None:
        out["inactivityTimeout"] = _ms(svc.inactivity_timeout)
    if svc.abort_timeout is not None:
        out["abortTimeout"] = _ms(svc.abort_timeout)
    if svc.journal_retention is not None:
        out["journalRetention"] = _ms(svc.journal_retention)
    if svc.ingress_private:
        out["ingressPrivate"] = True
    if svc.forward_headers:
        # keystate's own field: which redacted headers (the secret deny-list) this service still gets.
        out["forwardHeaders"] = list(svc.forward_headers)
    return out


def _handler_manifest(handler: Handler) -> dict[str, Any]:
    def content_type(serde: Any) -> str:
        return str(getattr(serde, "content_type", "application/json"))

    accept = handler.accept or content_type(handler.input_serde)
    out: dict[str, Any] = {
        "name": handler.name,
        "ty": handler.kind.value,
        # A handler without an argument takes no body.
        "input": {"contentType": accept} if handler.takes_input else {},
        "output": {"contentType": handler.content_type or content_type(handler.output_serde)},
    }
    if handler.retry_policy is not None:
        out["retryPolicy"] = _retry_policy_manifest(handler.retry_policy)
    if handler.ingress_private is not None:
        out["ingressPrivate"] = handler.ingress_private
    return out


def app(
    services: Iterable[AnyService],
    *,
    suspend_after: timedelta = timedelta(seconds=10),
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    transports: Iterable[str] = TRANSPORTS,
    heartbeat_interval: timedelta = timedelta(seconds=10),
    identity_keys: Iterable[str] | None = None,
    idle_timeout: timedelta | None = timedelta(seconds=60),
) -> web.Application:
    """The aiohttp application serving `GET /discover` and the invocation attempts.

    `GET /invoke/{service}/{handler}` upgraded to a WebSocket streams attempts (transport
    "websocket"); `POST /invoke/{service}/{handler}` with a MessageBatch body runs one attempt
    and answers with its new entries and how it ended (transport "request-response").
    `transports` chooses which of the two the deployment offers (and advertises).
    `max_message_bytes` bounds one WebSocket message and one POST body. On a WebSocket the SDK
    sends a HeartbeatMessage every `heartbeat_interval` while nothing else goes out, so a long
    `ctx.run` does not trip the processor's inactivity timeout (keep it well below that timeout).
    `identity_keys` (`publickeyv1_...` strings, as Restate's SDKs take them): every request, discovery
    included, must be signed by keystate with one of these keys, or it is answered 401. List several
    to rotate keys or to accept processors with different keys. Needs `pip install 'keystate[identity]'`.
    A processor may keep a WebSocket open and run attempt after attempt on it (keystate._stream);
    the SDK closes such a socket after `idle_timeout` without an attempt (keep it above the
    processor's pool idle timeout); None: one attempt per socket.
    """
    # Checked first: a bad key is a configuration error at start, not a 401 at the first request.
    verifier = IdentityVerifier(identity_keys) if identity_keys is not None else None
    registry: dict[str, AnyService] = {}
    for svc in services:
        if svc.name in registry:
            raise ValueError(f"two services are named {svc.name!r}; service names must be unique")
        registry[svc.name] = svc
    offered = _transports(transports)
    the_manifest = manifest(registry.values(), transports=offered)
    the_codec = codec()
    suspend_seconds = suspend_after.total_seconds()
    if idle_timeout is not None and idle_timeout <= timedelta(0):
        raise ValueError(f"idle_timeout must be positive (or None for one attempt per socket), got {idle_timeout}")
    idle_seconds = idle_timeout.total_seconds() if idle_timeout is not None else None

    async def discover(_: web.Request) -> web.Response:
        return web.json_response(the_manifest)

    def lookup(request: web.Request, transport: str) -> Handler:
        if transport not in offered:
            other = " and ".join(offered)
            how = "POST a MessageBatch" if transport == WEBSOCKET else "open a WebSocket"
            raise web.HTTPNotFound(
                text=f"this deployment does not offer the {transport} transport, only {other}: "
                f"{how} to /invoke/{{service}}/{{handler}} instead, as its /discover manifest says"
            )
        service_name, handler_name = request.match_info["service"], request.match_info["handler"]
        svc = registry.get(service_name)
        handler = svc.handlers.get(handler_name) if svc is not None else None
        if handler is None:
            known = ", ".join(f"{s.name}/{h}" for s in registry.values() for h in s.handlers) or "none"
            raise web.HTTPNotFound(
                text=f"unknown handler {service_name}/{handler_name}: this deployment serves {known}; "
                "re-register the deployment if its services changed"
            )
        return handler

    async def invoke(request: web.Request) -> web.StreamResponse:
        handler = lookup(request, WEBSOCKET)
        ws = web.WebSocketResponse(max_msg_size=max_message_bytes)
        reuse = idle_seconds is not None and request.headers.get(REUSE_HEADER) == "1"
        if reuse:
            ws.headers[REUSE_HEADER] = "1"  # the processor may send the next attempt on this socket
        await ws.prepare(request)
        connection = Connection(
            ws,
            registry,
            the_codec,
            suspend_after=suspend_seconds,
            heartbeat=heartbeat_interval.total_seconds(),
            handshake_headers=request.headers,
            idle_timeout=idle_seconds if reuse else None,
            stopping=stopping,
        )
        try:
            await connection.run()
        except Exception:  # never let one attempt take the server down
            log.exception("a stream opened for %s failed inside the SDK", handler.qualified)
            if not ws.closed:
                await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"internal SDK error")
        return ws

    async def invoke_batch(request: web.Request) -> web.Response:
        handler = lookup(request, REQUEST_RESPONSE)
        if request.content_type not in (BATCH_CONTENT_TYPE, "application/octet-stream"):
            raise web.HTTPUnsupportedMediaType(
                text=f"expected a body of content type {BATCH_CONTENT_TYPE} (one keystate.MessageBatch), "
                f"got {request.content_type}"
            )
        body = await request.read()
        try:
            messages = _decode_batch(the_codec, body, handler)
        except _BadBatch as exc:
            raise web.HTTPBadRequest(text=str(exc)) from None
        try:
            with attempt_context(request.headers):
                out = await _run_batch(messages, handler)
        except _BadBatch as exc:
            log.warning("rejected a batch for %s: %s", handler.qualified, exc)
            raise web.HTTPBadRequest(text=str(exc)) from None
        payload = the_codec.encode(BATCH, {"messages": [the_codec.encode(n, r) for n, r in out]})
        return web.Response(body=payload, content_type=BATCH_CONTENT_TYPE)

    # Set on shutdown: idle warm sockets close at once instead of holding the server's graceful
    # shutdown for its whole timeout (60 s); a socket running an attempt closes after it.
    stopping = asyncio.Event()

    async def on_shutdown(_: web.Application) -> None:
        stopping.set()

    middlewares = [identity_middleware(verifier)] if verifier is not None else []
    application = web.Application(client_max_size=max_message_bytes, middlewares=middlewares)
    application.on_shutdown.append(on_shutdown)
    application.router.add_get("/discover", discover)
    application.router.add_get("/invoke/{service}/{handler}", invoke)
    application.router.add_post("/invoke/{service}/{handler}", invoke_batch)
    return application


class _BadBatch(Exception):
    """A request/response body the SDK cannot run; the text is the 400 answer."""


def _decode_batch(the_codec: Codec, body: bytes, handler: Handler) -> list[Message]:
    """The protocol messages of a POST body, checked against the request/response rules."""
    try:
        name, batch = the_codec.decode(body)
    except ContractError as exc:
        raise _BadBatch(f"the body is not a codec-encoded {BATCH}: {exc}") from exc
    if name != BATCH:
        raise _BadBatch(f"the body is a {name}, expected a {BATCH}")
    messages: list[Message] = []
    for position, item in enumerate(batch["messages"]):
        try:
            messages.append(the_codec.decode(item))
        except ContractError as exc:
            raise _BadBatch(f"message {position} of the batch cannot be decoded: {exc}") from exc
    if not messages or messages[0][0] != START:
        first = messages[0][0] if messages else "nothing"
        raise _BadBatch(f"a batch starts with a {START}, then the known journal; it starts with {first}")
    for position, (name, _) in enumerate(messages[1:], start=1):
        if name not in (ENTRY, COMPLETION):
            raise _BadBatch(
                f"message {position} of the batch is a {name}; after the {START} a batch holds only "
                f"EntryMessages (the known journal) and CompletionMessages (acks have no place here)"
            )
    try:
        target = target_from_avro(messages[0][1]["target"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _BadBatch(f"the {START} has a malformed target: {exc}") from exc
    if (target.service, target.handler) != (handler.service, handler.name):
        raise _BadBatch(
            f"the {START} is for {target.service}/{target.handler} but was posted to "
            f"/invoke/{handler.service}/{handler.name}"
        )
    return messages


async def _run_batch(messages: list[Message], handler: Handler) -> list[Message]:
    """Run one attempt from a whole batch; its new entries and End, Suspension or Error."""
    machine = Machine()
    core = InvocationCore(machine, handler, suspend_after=0, request_response=True)
    try:
        try:
            # All of it before the handler runs: completions are known when it first awaits.
            for name, record in messages:
                core.feed(name, record)
        except ProtocolError as exc:
            raise _BadBatch(str(exc)) from exc
        if not machine.ready:
            raise _BadBatch(
                f"the batch holds {machine.received_entries} of the {machine.known_entries} journal entries "
                "its StartMessage announces (known_entries)"
            )
        await core.finished.wait()
        return machine.take_output()
    finally:
        core.abort()


def serve(
    services: Iterable[AnyService],
    port: int = 9080,
    host: str = "127.0.0.1",
    *,
    suspend_after: timedelta = timedelta(seconds=10),
    transports: Iterable[str] = TRANSPORTS,
    heartbeat_interval: timedelta = timedelta(seconds=10),
    identity_keys: Iterable[str] | None = None,
    idle_timeout: timedelta | None = timedelta(seconds=60),
) -> None:
    """Serve the services until interrupted (blocking); `identity_keys` and `idle_timeout` as for `app`."""
    application = app(
        services,
        suspend_after=suspend_after,
        transports=transports,
        heartbeat_interval=heartbeat_interval,
        identity_keys=identity_keys,
        idle_timeout=idle_timeout,
    )
    web.run_app(application, host=host, port=port)
