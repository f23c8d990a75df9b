"""Warm connections: idle WebSockets to deployments, kept open for the next attempt.

A socket goes back to the pool only after an attempt ended with a message from the deployment
(End, Suspension or Error) and only if the deployment advertised reuse in its upgrade response
(`x-keystate-reuse: 1`). While a socket is idle a watcher reads it: anything arriving (the
deployment closed it, restarted, or sent something out of protocol) or `idle_timeout_s` passing
closes it. The most recently used socket is taken first, so a quiet deployment keeps few sockets.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Hashable
from dataclasses import dataclass, field

import aiohttp

__all__ = ["REUSE_HEADER", "SocketPool", "advertises_reuse"]

log = logging.getLogger(__name__)

REUSE_HEADER = "x-keystate-reuse"
"""Asked for in the handshake request; the deployment's upgrade response echoes it when it agrees."""


def advertises_reuse(ws: aiohttp.ClientWebSocketResponse) -> bool:
    """Whether the deployment agreed to run further attempts on `ws` (its upgrade response said so)."""
    # aiohttp keeps the upgrade response only privately; without it, fall back to one attempt per socket.
    response = getattr(ws, "_response", None)
    headers = getattr(response, "headers", None)
    return headers is not None and headers.get(REUSE_HEADER) == "1"


@dataclass(eq=False, slots=True)
class _Idle:
    ws: aiohttp.ClientWebSocketResponse
    group: Hashable
    watcher: asyncio.Task[None] | None = None
    gone: bool = field(default=False)  # the watcher saw it end: never hand it out


class SocketPool:
    """Idle sockets by key (a deployment's base URI), at most `max_idle_per_group` per group (its endpoint).

    The endpoint is what aiohttp's per-host connection limit and the invoker's attempt slots count;
    idle sockets hold connections of that limit, so `trim` makes room before a fresh connect.
    """

    def __init__(self, max_idle_per_group: int, idle_timeout_s: float) -> None:
        if max_idle_per_group < 1:
            raise ValueError(f"max_idle_per_group must be at least 1, got {max_idle_per_group}")
        if idle_timeout_s <= 0:
            raise ValueError(f"idle_timeout_s must be positive, got {idle_timeout_s}")
        self._max = max_idle_per_group
        self._timeout = idle_timeout_s
        self._idle: dict[Hashable, list[_Idle]] = {}
        self._per_group: dict[Hashable, int] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def idle(self, key: Hashable) -> int:
        """Sockets idle for `key` now."""
        return len(self._idle.get(key, ()))

    async def trim(self, group: Hashable, keep: int) -> None:
        """Close the least recently used idle sockets of `group` until at most `keep` are left."""
        while self._per_group.get(group, 0) > max(keep, 0):
            oldest = next(((k, stack[0]) for k, stack in self._idle.items() if stack[0].group == group), None)
            if oldest is None:
                return
            key, idle = oldest
            self._forget(idle, key)
            if idle.watcher is not None:
                idle.watcher.cancel()
                await asyncio.gather(idle.watcher, return_exceptions=True)
            await _close_quietly(idle.ws)  # awaited: its connection must be free before the caller connects

    async def take(self, key: Hashable) -> aiohttp.ClientWebSocketResponse | None:
        """An idle socket for `key`, now owned by the caller; None if there is none."""
        stack = self._idle.get(key)
        while stack:
            idle = stack[-1]
            self._forget(idle, key)
            if idle.watcher is not None:
                idle.watcher.cancel()
                # Until the watcher's receive() has unwound, nobody else may receive on the socket.
                await asyncio.gather(idle.watcher, return_exceptions=True)
            if not idle.gone and not idle.ws.closed:
                return idle.ws
            self._close_soon(idle.ws)
            stack = self._idle.get(key)
        return None

    def put(self, key: Hashable, group: Hashable, ws: aiohttp.ClientWebSocketResponse) -> None:
        """Keep `ws` for the next attempt on `key`, or close it when `group` has enough idle ones."""
        if ws.closed or self._per_group.get(group, 0) >= self._max:
            self._close_soon(ws)
            return
        idle = _Idle(ws, group)
        idle.watcher = asyncio.create_task(self._watch(key, idle), name=f"idle socket to {key}")
        self._idle.setdefault(key, []).append(idle)
        self._per_group[group] = self._per_group.get(group, 0) + 1

    async def close(self) -> None:
        """Close every idle socket (the invoker is stopping)."""
        idles = [i for stack in self._idle.values() for i in stack]
        self._idle.clear()
        self._per_group.clear()
        for idle in idles:
            if idle.watcher is not None:
                idle.watcher.cancel()
        await asyncio.gather(*(i.watcher for i in idles if i.watcher is not None), return_exceptions=True)
        await asyncio.gather(*(_close_quietly(i.ws) for i in idles), *self._closing, return_exceptions=True)

    async def _watch(self, key: Hashable, idle: _Idle) -> None:
        try:
            msg = await idle.ws.receive(timeout=self._timeout)
            reason = f"the deployment sent {msg.type.name} while the socket was idle"
        except TimeoutError:
            reason = f"idle for {self._timeout:g} s"
        idle.gone = True  # before any await: a take() from here on skips it
        self._forget(idle, key)
        log.debug("closing a pooled connection to %s: %s", key, reason)
        await _close_quietly(idle.ws)

    def _forget(self, idle: _Idle, key: Hashable) -> None:
        """Take `idle` out of the pool (its key's stack and its group's count); no-op if it is out."""
        stack = self._idle.get(key)
        if stack is None or idle not in stack:
            return
        stack.remove(idle)
        if not stack:
            del self._idle[key]
        left = self._per_group.get(idle.group, 1) - 1
        if left > 0:
            self._per_group[idle.group] = left
        else:
            self._per_group.pop(idle.group, None)

    def _close_soon(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        task = asyncio.create_task(_close_quietly(ws))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)


async def _close_quietly(ws: aiohttp.ClientWebSocketResponse) -> None:
    if ws.closed:
        return
    try:
        await ws.close()
    except (TimeoutError, aiohttp.ClientError, ConnectionError, OSError):
        pass  # closing a broken socket: nothing left to tell the deployment
