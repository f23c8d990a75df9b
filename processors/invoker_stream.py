"""One attempt on a deployment: its state, the protocol over either transport, and how it ends."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import aiohttp

from keystate.schemas._codec import codec
from keystate.schemas.errors import ContractError
from keystate.schemas.limits import truncate_text

from . import metrics
from .early import Gate
from .state_machine import Invoke
from .ws_pool import REUSE_HEADER, SocketPool, advertises_reuse

if TYPE_CHECKING:
    from .invoker import InvokerSettings
    from .tracing import AttemptTrace

__all__ = ["Attempt", "AttemptError", "AttemptStream", "Oversized", "Terminal", "failure"]

log = logging.getLogger(__name__)

BATCH_CONTENT_TYPE = "application/vnd.keystate.batch+avro"
FAILED = "keystate.AttemptFailedCommand"
SUSPEND = "keystate.SuspendCommand"


class AttemptError(Exception):
    """The attempt failed in a way the deployment did not report itself; retryable."""


class Oversized(Exception):
    """The deployment sent an entry too large to journal; the invocation fails for good."""

    def __init__(self, message: str, index: int) -> None:
        super().__init__(message)
        self.index = index


class _DeadSocket(Exception):
    """A pooled socket turned out closed before the deployment answered: reconnect, fresh."""


@dataclass(frozen=True, slots=True)
class Terminal:
    """The command that ends an attempt on the log: a SuspendCommand or an AttemptFailedCommand."""

    name: str
    record: dict[str, Any]


class Attempt:
    """What the invoker knows about one running (or queued) attempt."""

    def __init__(self, action: Invoke, partition: int, gate: Gate | None = None) -> None:
        self.action = action
        self.partition = partition
        self.gate = gate  # started before its batch committed: log writes wait for it (keystate.processors.early)
        # Its socket while it runs; detached when it ends, so nothing of it reaches a pooled socket.
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.task: asyncio.Task[None] | None = None
        self.pending: list[bytes] = []  # completions that arrived before the socket opened
        self.connected = False  # the deployment answered: a timeout from here on is not a connect timeout
        self.answered = False  # a message from the deployment arrived on the current socket
        self.unanswered: list[bytes] = []  # completions sent before that: sent again if the socket was dead
        self.pool_key: Hashable | None = None  # where its socket goes back to: the deployment's base URI
        self.pool_group: Hashable | None = None  # and the endpoint whose connection limit it counts against
        self.reusable = False  # it ended with End, Suspension or Error on a socket that advertises reuse
        self.output_appended = False
        self.unsettled: set[asyncio.Future[Any]] = set()  # appends Kafka has not acknowledged yet
        self.append_failure: tuple[int, BaseException] | None = None  # the first append that failed
        self.trace: AttemptTrace | None = None  # its spans, when tracing (processors.tracing)
        # Set by the invoker when the attempt starts: its service's timeouts, else the invoker's settings.
        self.inactivity_timeout_s = 60.0
        self.abort_timeout_s = 600.0


def failure(
    action: Invoke,
    code: int,
    message: str,
    *,
    retryable: bool = True,
    retry_after_ms: int | None = None,
    entry_index: int | None = None,
) -> Terminal:
    """The AttemptFailedCommand that ends `action`'s attempt (logged, naming the invocation)."""
    log.warning(
        "invocation %s (%s/%s) attempt %d failed%s: %s",
        action.invocation_id,
        action.target["service"],
        action.target["handler"],
        action.attempt,
        "" if retryable else " for good",
        message,
    )
    metrics.attempt_failed(action.target["service"], code)
    return Terminal(
        FAILED,
        {
            "invocation_id": action.invocation_id,
            "attempt": action.attempt,
            # Cut to MAX_TEXT_BYTES: a deployment's failure text must never make its record too big to write.
            "failure": {"code": code, "message": truncate_text(message)},
            "retryable": retryable,
            "retry_after_ms": retry_after_ms,
            "entry_index": entry_index,
        },
    )


# Journals one entry message of the attempt: (attempt, {index, entry}, the socket to ack a run on).
Append = Callable[[Attempt, dict[str, Any], "aiohttp.ClientWebSocketResponse | None"], Awaitable[None]]


class AttemptStream:
    """Talks the deployment protocol for attempts, over a WebSocket (fresh or warm from the pool) or one request/response."""

    def __init__(
        self, session: aiohttp.ClientSession, settings: InvokerSettings, append: Append, pool: SocketPool | None = None
    ) -> None:
        self._session = session
        self._settings = settings
        self._append = append
        self._pool = pool  # None: one socket per attempt
        self._codec = codec()

    async def run(self, attempt: Attempt, url: str, transports: list[str]) -> Terminal | None:
        """Run the attempt to its end: its terminal command, or None when it ended with its output."""
        if "websocket" in transports:
            return await self._websocket(attempt, url)
        return await self._request_response(attempt, url)

    def completion(self, index: int, result: Any) -> bytes:
        return bytes(self._codec.encode("keystate.CompletionMessage", {"index": index, "result": result}))

    def ack(self, index: int) -> bytes:
        return bytes(self._codec.encode("keystate.AckMessage", {"index": index}))

    def _opening(self, attempt: Attempt, *, warm: bool = False) -> list[bytes]:
        """Start message and the journal so far, encoded.

        `warm`: the SDK runs attempts on reused sockets, so it reads the StartMessage that carries the
        attempt's trace headers; any other SDK gets the first layout (StartMessageV1).
        """
        action = attempt.action
        encode = self._codec.encode
        start = _start_message(action)
        if warm:
            start["attempt_headers"] = _trace_headers(attempt) or {}
        return [
            encode("keystate.StartMessage" if warm else "keystate.StartMessageV1", start),
            *(encode("keystate.EntryMessage", {"index": i, "entry": r}) for i, r in enumerate(action.journal)),
        ]

    async def _websocket(self, attempt: Attempt, url: str) -> Terminal | None:
        if self._pool is not None and attempt.pool_key is not None:
            ws = await self._pool.take(attempt.pool_key)
            if ws is not None:
                attempt.connected = True
                try:
                    return await self._converse(attempt, ws, reused=True)
                except _DeadSocket as exc:
                    action = attempt.action
                    log.info(
                        "invocation %s (%s/%s) attempt %d: the pooled connection to %s was gone before the "
                        "deployment answered (%s); connecting anew",
                        action.invocation_id, action.target["service"], action.target["handler"], action.attempt,
                        url, exc,
                    )
                    attempt.ws = None
                    attempt.connected = False  # a timeout connecting anew is a connect timeout
                    # Completions sent on the dead socket go again, before any that arrived meanwhile.
                    attempt.pending[:0] = attempt.unanswered
                    attempt.unanswered = []
                    await _close_quietly(ws)
        return await self._converse(attempt, await self._connect(attempt, url), reused=False)

    async def _connect(self, attempt: Attempt, url: str) -> aiohttp.ClientWebSocketResponse:
        headers = dict(_trace_headers(attempt) or {})
        if self._pool is not None:
            headers[REUSE_HEADER] = "1"  # the deployment may keep the socket open for the next attempt
        try:
            ws = await self._session.ws_connect(
                url, max_msg_size=self._settings.max_message_bytes, autoping=True, headers=headers
            )
        except aiohttp.WSServerHandshakeError as exc:
            raise AttemptError(
                f"deployment refused the invocation at {url}: HTTP {exc.status} {exc.message}{self._hint(exc.status)}"
            ) from exc
        attempt.connected = True
        return ws

    async def _converse(self, attempt: Attempt, ws: aiohttp.ClientWebSocketResponse, *, reused: bool) -> Terminal | None:
        """The attempt's protocol on `ws`; _DeadSocket if a reused `ws` ends before the deployment answers."""
        action = attempt.action
        warm = self._pool is not None and advertises_reuse(ws)
        attempt.ws = ws
        attempt.answered = False
        try:
            for message in self._opening(attempt, warm=warm):
                await ws.send_bytes(message)
            while attempt.pending:
                message = attempt.pending.pop(0)
                attempt.unanswered.append(message)
                await ws.send_bytes(message)
        except (aiohttp.ClientError, ConnectionError) as exc:
            if reused:
                raise _DeadSocket(f"sending failed: {exc!r}") from exc
            raise
        next_index = len(action.journal)
        while True:
            try:
                msg = await ws.receive(timeout=attempt.inactivity_timeout_s)
            except TimeoutError as exc:
                raise AttemptError(
                    f"no message from the deployment for {attempt.inactivity_timeout_s:g} s (inactivity timeout)"
                ) from exc
            if msg.type in _ENDED:
                if reused and not attempt.answered:
                    raise _DeadSocket(f"{msg.type.name}{_close_reason(ws)}")
                if msg.type == aiohttp.WSMsgType.ERROR:
                    raise AttemptError(f"stream error: {ws.exception()!r}")
                raise AttemptError(
                    f"the deployment closed the stream before the handler ended or suspended{_close_reason(ws)}"
                )
            if msg.type != aiohttp.WSMsgType.BINARY:
                raise AttemptError(f"protocol violation: expected a binary message, got {msg.type.name}")
            if not attempt.answered:
                attempt.answered = True  # from here on a failure is the attempt's, not a stale socket's
                attempt.unanswered = []
            next_index, ended, terminal = await self._handle(attempt, msg.data, next_index, ws)
            if ended:
                attempt.reusable = warm  # the deployment is done with this attempt: the socket may carry the next
                return terminal

    async def _request_response(self, attempt: Attempt, url: str) -> Terminal | None:
        """One POST per attempt: the journal goes in; new entries and how it ended come out."""
        action = attempt.action
        body = self._codec.encode("keystate.MessageBatch", {"messages": self._opening(attempt)})
        # One response per attempt and no heartbeats: a long ctx.run is bounded by the abort timeout.
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self._settings.connect_timeout_s, sock_read=attempt.abort_timeout_s
        )
        headers = {"content-type": BATCH_CONTENT_TYPE, **(_trace_headers(attempt) or {})}
        # No redirects: each hop would carry a freshly signed request to wherever the deployment points.
        async with self._session.post(url, data=body, headers=headers, timeout=timeout, allow_redirects=False) as resp:
            attempt.connected = True
            data = await resp.content.read(self._settings.max_message_bytes + 1)
            if 300 <= resp.status < 400:
                raise AttemptError(
                    f"deployment answered HTTP {resp.status} (a redirect to {resp.headers.get('location', '?')!r}) at "
                    f"{url}: keystate does not follow redirects; register the deployment at the URL it serves on"
                )
            if resp.status != 200:
                raise AttemptError(
                    f"deployment answered HTTP {resp.status} at {url}: {data[:300]!r}{self._hint(resp.status)}"
                )
        if len(data) > self._settings.max_message_bytes:
            raise AttemptError(f"response larger than {self._settings.max_message_bytes} bytes")
        try:
            messages = self._codec.decode_as("keystate.MessageBatch", data)["messages"]
        except ContractError as exc:
            raise AttemptError(f"protocol violation: the response is not a MessageBatch: {exc}") from exc
        next_index = len(action.journal)
        for message in messages:
            next_index, ended, terminal = await self._handle(attempt, message, next_index, None)
            if ended:
                return terminal
        raise AttemptError("protocol violation: the response ended without End, Suspension or Error")

    def _hint(self, status: int) -> str:
        """How to fix a 401: the deployment checks request signatures (identity_keys)."""
        if status != 401:
            return ""
        identity = self._settings.identity
        if identity is None:
            return (
                "; the deployment accepts only signed requests (identity_keys) and this processor signs none: "
                "start it with the keystate CLI (it loads or creates its identity key)"
            )
        return f"; the deployment checks request signatures: add this processor's key {identity.public_key} to its identity_keys"

    async def _handle(
        self, attempt: Attempt, data: bytes, next_index: int, ws: aiohttp.ClientWebSocketResponse | None
    ) -> tuple[int, bool, Terminal | None]:
        """Act on one message: (next entry index, whether the attempt ended, its terminal command)."""
        action = attempt.action
        try:
            name, record = self._codec.decode(data)
        except ContractError as exc:
            raise AttemptError(f"protocol violation: undecodable message from the deployment: {exc}") from exc
        if name == "keystate.EntryMessage":
            if record["index"] != next_index:
                raise AttemptError(f"protocol violation: entry index {record['index']}, expected {next_index}")
            await self._append(attempt, record, ws)
            return next_index + 1, False, None
        if name == "keystate.HeartbeatMessage":
            return next_index, False, None
        if name == "keystate.EndMessage":
            if not attempt.output_appended:
                # Nothing would ever end the invocation: fail the attempt instead of stranding it.
                raise AttemptError("protocol violation: the deployment ended the attempt without an output")
            return next_index, True, None
        if name == "keystate.SuspensionMessage":
            suspend = {"invocation_id": action.invocation_id, "attempt": action.attempt, "waiting_on": record["waiting_on"]}
            return next_index, True, Terminal(SUSPEND, suspend)
        if name == "keystate.ErrorMessage":
            failed = failure(
                action,
                record["code"],
                record["message"],
                retryable=record["retryable"],
                retry_after_ms=record.get("retry_after_ms"),
                entry_index=record.get("related_entry_index"),
            )
            return next_index, True, failed
        raise AttemptError(f"protocol violation: unexpected {name} from the deployment")


_ENDED = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.ERROR)


def _close_reason(ws: aiohttp.ClientWebSocketResponse) -> str:
    """The deployment's close code, for the failure message (its reason text is not echoed)."""
    return f" (close code {ws.close_code})" if ws.close_code is not None else ""


async def _close_quietly(ws: aiohttp.ClientWebSocketResponse) -> None:
    try:
        await ws.close()
    except (TimeoutError, aiohttp.ClientError, ConnectionError, OSError):
        pass  # closing a broken socket: nothing left to tell the deployment


def _trace_headers(attempt: Attempt) -> dict[str, str] | None:
    """The attempt span's `traceparent`, so the handler's own spans join the trace; None when not tracing."""
    return attempt.trace.headers if attempt.trace is not None else None


def _start_message(action: Invoke) -> dict[str, Any]:
    return {
        "invocation_id": action.invocation_id,
        "attempt": action.attempt,
        "target": action.target,
        "known_entries": len(action.journal),
        "state": action.state or [],
        "partial_state": action.state is None,
        "random_seed": action.random_seed,
        "retry_count": action.retry_count,
        "duration_since_first_attempt_ms": max(0, int(time.time() * 1000) - action.first_attempt_at_ms),
    }
