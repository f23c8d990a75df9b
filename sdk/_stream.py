"""One WebSocket from a processor: attempts one after another, each with fresh state (warm connections).

A processor that asks for reuse (request header `x-keystate-reuse: 1`) gets the same header back in
the upgrade response; after an attempt ends cleanly (the SDK sent End, Suspension or Error) the
socket stays open and the next StartMessage starts a new attempt, for any handler of the
deployment. A processor that does not ask gets one attempt per socket, closed by the SDK after it.
A protocol error or a crash closes the socket; a socket idle longer than the idle timeout is closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from keystate.schemas._codec import Codec
from keystate.schemas.errors import ContractError

from ._context import InvocationCore
from ._machine import ACK, COMPLETION, START, Machine, target_from_avro
from ._service import AnyService, Handler
from ._tracing import attached, trace_context
from .errors import ProtocolError

__all__ = ["REUSE_HEADER", "Connection"]

log = logging.getLogger("keystate.sdk")

REUSE_HEADER = "x-keystate-reuse"
"""Request: the processor can run several attempts on the socket; response: the SDK agrees."""


class _Attempt:
    """One attempt on the socket: processor messages into its core, the machine's output back out."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        handler: Handler,
        the_codec: Codec,
        suspend_after: float,
        heartbeat: float,
        trace: Any,
    ) -> None:
        self.ws = ws
        self.heartbeat = heartbeat
        self.codec = the_codec
        self.wake = asyncio.Event()
        self.machine = Machine()
        self.core = InvocationCore(self.machine, handler, suspend_after=suspend_after, on_output=self.wake.set)
        self.handler = handler
        self.trace = trace  # the attempt's span context: the handler's spans are its children
        # Sends the output; done once the attempt's last message (End, Suspension, Error) went out.
        self.writer = asyncio.create_task(self._write())

    def feed(self, name: str, record: dict[str, Any]) -> None:
        """One processor message (ProtocolError if it breaks the protocol)."""
        with attached(self.trace):  # the handler task starts inside a feed and keeps this context
            self.core.feed(name, record)

    @property
    def ended(self) -> bool:
        """The writer is done: the attempt's last message was sent, or sending failed."""
        return self.writer.done()

    @property
    def ended_cleanly(self) -> bool:
        return self.writer.done() and not self.writer.cancelled() and self.writer.exception() is None

    async def abort(self) -> None:
        """The socket is gone or broken: stop the handler, its run steps and the writer."""
        self.core.abort()
        if not self.writer.done():
            self.writer.cancel()
        await asyncio.gather(self.writer, return_exceptions=True)

    async def _write(self) -> None:
        beat = self.codec.encode("keystate.HeartbeatMessage", {})
        while True:
            try:
                await asyncio.wait_for(self.wake.wait(), self.heartbeat)
            except TimeoutError:
                await self.ws.send_bytes(beat)  # quiet, not dead: e.g. a long ctx.run
                continue
            self.wake.clear()
            for name, record in self.machine.take_output():
                await self.ws.send_bytes(self.codec.encode(name, record))
            if self.machine.closed:
                return


class Connection:
    """Reads one WebSocket and runs the attempts that arrive on it, one at a time."""

    def __init__(
        self,
        ws: web.WebSocketResponse,
        registry: Mapping[str, AnyService],
        the_codec: Codec,
        *,
        suspend_after: float,
        heartbeat: float,
        handshake_headers: Mapping[str, str],
        idle_timeout: float | None,
        stopping: asyncio.Event | None = None,
    ) -> None:
        self.ws = ws
        # Set when the server shuts down: an idle socket closes at once, a busy one after its attempt
        # (else aiohttp's graceful shutdown waits out its whole timeout for sockets nobody will use).
        self.stopping = stopping
        self.registry = registry
        self.codec = the_codec
        self.suspend_after = suspend_after
        self.heartbeat = heartbeat
        self.handshake_headers = handshake_headers
        self.idle_timeout = idle_timeout  # None: one attempt, then the SDK closes the socket
        self.attempts = 0

    async def run(self) -> None:
        attempt: _Attempt | None = None
        receiving: asyncio.Task[Any] | None = None
        try:
            while True:
                if receiving is None:
                    receiving = asyncio.ensure_future(self.ws.receive())
                if attempt is not None and not attempt.ended:
                    # Wake up when the attempt ends too: from then on the socket is idle.
                    await asyncio.wait((receiving, attempt.writer), return_when=asyncio.FIRST_COMPLETED)
                    if not receiving.done():
                        continue
                elif attempt is not None and (self.idle_timeout is None or not attempt.ended_cleanly):
                    await self.ws.close()  # one attempt per socket, or the writer broke: done here
                    return
                else:
                    stopped = asyncio.ensure_future(self.stopping.wait()) if self.stopping is not None else None
                    try:
                        waits = (receiving,) if stopped is None else (receiving, stopped)
                        done, _ = await asyncio.wait(waits, timeout=self.idle_timeout, return_when=asyncio.FIRST_COMPLETED)
                    finally:
                        if stopped is not None:
                            stopped.cancel()
                    if receiving not in done:
                        why = "shutting down" if self.stopping is not None and self.stopping.is_set() else "idle"
                        log.debug("closing an idle WebSocket: %s", why)
                        await self.ws.close(code=WSCloseCode.GOING_AWAY, message=why.encode())
                        return
                msg, receiving = receiving.result(), None
                if msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                    return
                if msg.type is not WSMsgType.BINARY:
                    await self._protocol_error(attempt, f"expected binary messages, got {msg.type.name}")
                    return
                try:
                    name, record = self.codec.decode(msg.data)
                    if attempt is not None and not attempt.machine.closed:
                        attempt.feed(name, record)
                        continue
                    if attempt is not None and name in (ACK, COMPLETION):
                        continue  # it raced the end of the attempt: nothing is waiting for it
                    if attempt is not None:
                        # The processor starts the next attempt once it has the last one's end, but the
                        # writer that sent it may not have returned yet.
                        await asyncio.gather(attempt.writer, return_exceptions=True)
                        if not attempt.ended_cleanly:
                            await self.ws.close()
                            return
                    attempt = self._next(name, record)
                except (ContractError, ProtocolError) as exc:
                    await self._protocol_error(attempt, str(exc))
                    return
        finally:
            if receiving is not None and not receiving.done():
                receiving.cancel()
                await asyncio.gather(receiving, return_exceptions=True)
            if attempt is not None:
                await attempt.abort()

    def _next(self, name: str, record: dict[str, Any]) -> _Attempt:
        """The attempt a StartMessage begins on the idle socket (ProtocolError for anything else)."""
        if name != START:
            raise ProtocolError(f"expected a StartMessage to begin an attempt, got {name}")
        try:
            target = target_from_avro(record["target"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ProtocolError(f"the {START} has a malformed target: {exc}") from exc
        svc = self.registry.get(target.service)
        handler = svc.handlers.get(target.handler) if svc is not None else None
        if handler is None:
            known = ", ".join(f"{s.name}/{h}" for s in self.registry.values() for h in s.handlers) or "none"
            raise ProtocolError(
                f"unknown handler {target.service}/{target.handler}: this deployment serves {known}; "
                "re-register the deployment if its services changed"
            )
        # The attempt's own trace context; the handshake's belongs to the first attempt only.
        headers = record.get("attempt_headers") or (self.handshake_headers if self.attempts == 0 else None)
        self.attempts += 1
        attempt = _Attempt(self.ws, handler, self.codec, self.suspend_after, self.heartbeat, trace_context(headers))
        attempt.feed(name, record)
        return attempt

    async def _protocol_error(self, attempt: _Attempt | None, reason: str) -> None:
        log.warning(
            "closing the stream of %s (invocation %s): the processor broke the protocol: %s",
            attempt.handler.qualified if attempt is not None else "a deployment",
            attempt.core.invocation_id if attempt is not None else "?",
            reason,
        )
        await self.ws.close(code=WSCloseCode.PROTOCOL_ERROR, message=reason.encode()[:120])
