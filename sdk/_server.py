"""The deployment's HTTP side: discovery manifest and one WebSocket per invocation attempt."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from keystate.schemas._codec import Codec, codec
from keystate.schemas.errors import ContractError

from ._context import InvocationCore
from ._machine import Machine
from ._service import AnyService, Handler
from .errors import ProtocolError

__all__ = ["PROTOCOL_VERSION", "app", "manifest", "serve"]

log = logging.getLogger("keystate.sdk")

PROTOCOL_VERSION = 1
DEFAULT_MAX_MESSAGE_BYTES = 16 * 1024 * 1024


def manifest(services: Iterable[AnyService]) -> dict[str, Any]:
    """The discovery manifest: services, handlers, their kinds and content types."""
    return {
        "protocol": PROTOCOL_VERSION,
        "transports": ["websocket"],
        "services": [
            {
                "name": svc.name,
                "ty": svc.service_type.value,
                "handlers": [_handler_manifest(h) for h in svc.handlers.values()],
            }
            for svc in services
        ],
    }


def _handler_manifest(handler: Handler) -> dict[str, Any]:
    def content_type(serde: Any) -> str:
        return str(getattr(serde, "content_type", "application/json"))

    return {
        "name": handler.name,
        "ty": handler.kind.value,
        # A handler without an argument takes no body.
        "input": {"contentType": content_type(handler.input_serde)} if handler.takes_input else {},
        "output": {"contentType": content_type(handler.output_serde)},
    }


def app(
    services: Iterable[AnyService],
    *,
    suspend_after: timedelta = timedelta(seconds=10),
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
) -> web.Application:
    """The aiohttp application serving `GET /discover` and `GET /invoke/{service}/{handler}`."""
    registry: dict[str, AnyService] = {}
    for svc in services:
        if svc.name in registry:
            raise ValueError(f"two services are named {svc.name!r}; service names must be unique")
        registry[svc.name] = svc
    the_manifest = manifest(registry.values())
    the_codec = codec()
    suspend_seconds = suspend_after.total_seconds()

    async def discover(_: web.Request) -> web.Response:
        return web.json_response(the_manifest)

    async def invoke(request: web.Request) -> web.StreamResponse:
        service_name, handler_name = request.match_info["service"], request.match_info["handler"]
        svc = registry.get(service_name)
        handler = svc.handlers.get(handler_name) if svc is not None else None
        if handler is None:
            known = ", ".join(f"{s.name}/{h}" for s in registry.values() for h in s.handlers) or "none"
            raise web.HTTPNotFound(
                text=f"unknown handler {service_name}/{handler_name}: this deployment serves {known}; "
                "re-register the deployment if its services changed"
            )
        ws = web.WebSocketResponse(max_msg_size=max_message_bytes)
        await ws.prepare(request)
        try:
            await _Attempt(ws, handler, the_codec, suspend_seconds).run()
        except Exception:  # never let one attempt take the server down
            log.exception("attempt of %s failed inside the SDK", handler.qualified)
            if not ws.closed:
                await ws.close(code=WSCloseCode.INTERNAL_ERROR, message=b"internal SDK error")
        return ws

    application = web.Application()
    application.router.add_get("/discover", discover)
    application.router.add_get("/invoke/{service}/{handler}", invoke)
    return application


def serve(
    services: Iterable[AnyService],
    port: int = 9080,
    host: str = "127.0.0.1",
    *,
    suspend_after: timedelta = timedelta(seconds=10),
) -> None:
    """Serve the services until interrupted (blocking)."""
    web.run_app(app(services, suspend_after=suspend_after), host=host, port=port)


class _Attempt:
    """Pumps one WebSocket: processor messages into the core, machine output back out."""

    def __init__(self, ws: web.WebSocketResponse, handler: Handler, the_codec: Codec, suspend_after: float) -> None:
        self.ws = ws
        self.codec = the_codec
        self.wake = asyncio.Event()
        self.machine = Machine()
        self.core = InvocationCore(self.machine, handler, suspend_after=suspend_after, on_output=self.wake.set)
        self.handler = handler

    async def run(self) -> None:
        writer = asyncio.create_task(self._write())
        try:
            async for msg in self.ws:
                if msg.type is not WSMsgType.BINARY:
                    await self._protocol_error(f"expected binary messages, got {msg.type.name}")
                    break
                try:
                    name, record = self.codec.decode(msg.data)
                    self.core.feed(name, record)
                except (ContractError, ProtocolError) as exc:
                    await self._protocol_error(str(exc))
                    break
        finally:
            self.core.abort()
            if not writer.done():
                writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)

    async def _write(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            for name, record in self.machine.take_output():
                await self.ws.send_bytes(self.codec.encode(name, record))
            if self.machine.closed:
                await self.ws.close()
                return

    async def _protocol_error(self, reason: str) -> None:
        log.warning(
            "closing the stream of %s (invocation %s): the processor broke the protocol: %s",
            self.handler.qualified, self.core.invocation_id, reason,
        )
        await self.ws.close(code=WSCloseCode.PROTOCOL_ERROR, message=reason.encode()[:120])
