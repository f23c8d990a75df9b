"""The invoker: runs attempts on deployments over one WebSocket each and journals what comes back.

Every entry from the deployment is appended to keystate.log tagged with (invocation id, attempt);
a `ctx.run` result is acknowledged to the SDK only after Kafka acknowledged that append.
Whatever goes wrong with a deployment — refused connection, timeout, garbage, a message out of
protocol — becomes an AttemptFailedCommand (retried with backoff), never a crashed partition.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

from keystate.schemas._codec import codec
from keystate.schemas.errors import ContractError
from keystate.schemas.ids import InvocationId
from keystate.server.kafka import AsyncProducer, KafkaUnavailable

from .state_machine import Invoke

__all__ = ["Invoker", "InvokerSettings", "log_key"]

log = logging.getLogger(__name__)

_RUN_ENTRY = "keystate.RunEntry"
BATCH_CONTENT_TYPE = "application/vnd.keystate.batch+avro"


@dataclass(frozen=True, slots=True)
class InvokerSettings:
    """Limits of one attempt; both are per attempt, and hitting them fails it retryably."""

    # No message from the deployment for this long (SDKs send heartbeats every 10 s while an
    # attempt is quiet): the deployment is presumed dead or cut off.
    inactivity_timeout_s: float = 60.0
    # An attempt running longer than this is stopped (a suspended invocation does not count).
    abort_timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    max_message_bytes: int = 32 * 1024 * 1024


class AttemptError(Exception):
    """The attempt failed in a way the deployment did not report itself; retryable."""


def log_key(target: dict[str, Any], invocation_id: str) -> bytes:
    """The Kafka record key of an invocation's commands: `Service/key` when keyed, else its id."""
    key = target.get("key")
    return f"{target['service']}/{key}".encode() if key is not None else invocation_id.encode()


class _Attempt:
    def __init__(self, action: Invoke) -> None:
        self.action = action
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.task: asyncio.Task[None] | None = None
        self.pending: list[bytes] = []  # completions that arrived before the socket opened


class Invoker:
    """Runs `Invoke` actions; `notify` pushes completions to live attempts; `stop` ends them."""

    def __init__(
        self,
        producer: AsyncProducer,
        log_topic: str,
        partitions: int,
        resolve_uri: Callable[[str | None, str], tuple[str, list[str]] | None],
        settings: InvokerSettings | None = None,
    ) -> None:
        self._producer = producer
        self._topic = log_topic
        self._partitions = partitions
        self._resolve_uri = resolve_uri
        self._settings = settings or InvokerSettings()
        self._codec = codec()
        self._live: dict[str, _Attempt] = {}
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=self._settings.connect_timeout_s))

    async def close(self) -> None:
        for iid in list(self._live):
            self.stop(iid)
        if self._session is not None:
            await self._session.close()

    def live(self) -> int:
        return len(self._live)

    def invoke(self, action: Invoke) -> None:
        old = self._live.get(action.invocation_id)
        if old is not None and old.action.attempt >= action.attempt:
            return
        if old is not None:
            self.stop(action.invocation_id)
        attempt = _Attempt(action)
        self._live[action.invocation_id] = attempt
        attempt.task = asyncio.create_task(self._run(attempt), name=f"attempt {action.invocation_id}#{action.attempt}")

    def notify(self, invocation_id: str, attempt_no: int, index: int, result: Any) -> None:
        attempt = self._live.get(invocation_id)
        if attempt is None or attempt.action.attempt != attempt_no:
            return  # it suspended or ended: the next attempt gets the result from the journal
        message = self._codec.encode("keystate.CompletionMessage", {"index": index, "result": result})
        if attempt.ws is None:
            attempt.pending.append(message)
        else:
            asyncio.create_task(self._send(attempt, message))

    def stop(self, invocation_id: str) -> None:
        attempt = self._live.pop(invocation_id, None)
        if attempt is not None and attempt.task is not None and attempt.task is not asyncio.current_task():
            attempt.task.cancel()

    def stop_where(self, predicate: Callable[[str], bool]) -> None:
        for iid in [i for i in self._live if predicate(i)]:
            self.stop(iid)

    async def _send(self, attempt: _Attempt, message: bytes) -> None:
        try:
            if attempt.ws is not None and not attempt.ws.closed:
                await attempt.ws.send_bytes(message)
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            pass  # the receive loop sees the broken socket and fails the attempt

    async def _run(self, attempt: _Attempt) -> None:
        action = attempt.action
        try:
            await asyncio.wait_for(self._stream(attempt), self._settings.abort_timeout_s)
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            await self._failed(action, 500, f"attempt exceeded the abort timeout of {self._settings.abort_timeout_s:g} s", True)
        except AttemptError as exc:
            await self._failed(action, 500, str(exc), True)
        except (aiohttp.ClientError, ConnectionError, OSError) as exc:
            await self._failed(action, 503, f"cannot reach the deployment: {exc}", True)
        except KafkaUnavailable as exc:
            # The append itself failed: the next attempt starts from what is durable.
            log.error("invocation %s attempt %d: %s", action.invocation_id, action.attempt, exc)
        except Exception as exc:  # an invoker bug must not kill the process; record it on the invocation
            log.exception("invocation %s attempt %d crashed the invoker", action.invocation_id, action.attempt)
            await self._failed(action, 500, f"invoker error: {exc!r}", True, traceback.format_exc())
        finally:
            if self._live.get(action.invocation_id) is attempt:
                del self._live[action.invocation_id]
            if attempt.ws is not None and not attempt.ws.closed:
                await attempt.ws.close()

    async def _stream(self, attempt: _Attempt) -> None:
        action = attempt.action
        resolved = self._resolve_uri(action.deployment_id, action.target["service"])
        if resolved is None:
            raise AttemptError(
                f"no deployment serves {action.target['service']}; register one with "
                "`keystate deployments register <uri>`"
            )
        uri, transports = resolved
        url = f"{uri.rstrip('/')}/invoke/{action.target['service']}/{action.target['handler']}"
        if "websocket" in transports:
            await self._websocket(attempt, url)
        else:
            await self._request_response(attempt, url)

    def _opening(self, action: Invoke) -> list[bytes]:
        """Start message and the journal so far, encoded."""
        encode = self._codec.encode
        return [
            encode("keystate.StartMessage", self._start_message(action)),
            *(encode("keystate.EntryMessage", {"index": i, "entry": r}) for i, r in enumerate(action.journal)),
        ]

    async def _websocket(self, attempt: _Attempt, url: str) -> None:
        action = attempt.action
        assert self._session is not None
        try:
            ws = await self._session.ws_connect(url, max_msg_size=self._settings.max_message_bytes, autoping=True)
        except aiohttp.WSServerHandshakeError as exc:
            raise AttemptError(f"deployment refused the invocation at {url}: HTTP {exc.status} {exc.message}") from exc
        attempt.ws = ws
        for message in self._opening(action):
            await ws.send_bytes(message)
        for message in attempt.pending:
            await ws.send_bytes(message)
        attempt.pending.clear()
        next_index = len(action.journal)
        while True:
            try:
                msg = await ws.receive(timeout=self._settings.inactivity_timeout_s)
            except TimeoutError as exc:
                raise AttemptError(
                    f"no message from the deployment for {self._settings.inactivity_timeout_s:g} s (inactivity timeout)"
                ) from exc
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING):
                raise AttemptError("the deployment closed the stream before the handler ended or suspended")
            if msg.type == aiohttp.WSMsgType.ERROR:
                raise AttemptError(f"stream error: {ws.exception()!r}")
            if msg.type != aiohttp.WSMsgType.BINARY:
                raise AttemptError(f"protocol violation: expected a binary message, got {msg.type.name}")
            next_index, ended = await self._handle(action, msg.data, next_index, ws)
            if ended:
                return

    async def _request_response(self, attempt: _Attempt, url: str) -> None:
        """One POST per attempt: the journal goes in; new entries and how it ended come out."""
        action = attempt.action
        assert self._session is not None
        body = self._codec.encode("keystate.MessageBatch", {"messages": self._opening(action)})
        # One response per attempt and no heartbeats: a long ctx.run is bounded by the abort timeout.
        timeout = aiohttp.ClientTimeout(total=None, sock_read=self._settings.abort_timeout_s)
        async with self._session.post(url, data=body, headers={"content-type": BATCH_CONTENT_TYPE}, timeout=timeout) as resp:
            data = await resp.content.read(self._settings.max_message_bytes + 1)
            if resp.status != 200:
                raise AttemptError(f"deployment answered HTTP {resp.status} at {url}: {data[:300]!r}")
        if len(data) > self._settings.max_message_bytes:
            raise AttemptError(f"response larger than {self._settings.max_message_bytes} bytes")
        try:
            messages = self._codec.decode_as("keystate.MessageBatch", data)["messages"]
        except ContractError as exc:
            raise AttemptError(f"protocol violation: the response is not a MessageBatch: {exc}") from exc
        next_index = len(action.journal)
        for message in messages:
            next_index, ended = await self._handle(action, message, next_index, None)
            if ended:
                return
        raise AttemptError("protocol violation: the response ended without End, Suspension or Error")

    async def _handle(
        self, action: Invoke, data: bytes, next_index: int, ws: aiohttp.ClientWebSocketResponse | None
    ) -> tuple[int, bool]:
        """Act on one message from the deployment; returns the next entry index and whether the attempt ended."""
        try:
            name, record = self._codec.decode(data)
        except ContractError as exc:
            raise AttemptError(f"protocol violation: undecodable message from the deployment: {exc}") from exc
        if name == "keystate.EntryMessage":
            if record["index"] != next_index:
                raise AttemptError(f"protocol violation: entry index {record['index']}, expected {next_index}")
            await self._append(action, record, ws)
            return next_index + 1, False
        if name == "keystate.HeartbeatMessage":
            return next_index, False
        if name == "keystate.EndMessage":
            return next_index, True
        if name == "keystate.SuspensionMessage":
            await self._command(
                action,
                "keystate.SuspendCommand",
                {"invocation_id": action.invocation_id, "attempt": action.attempt, "waiting_on": record["waiting_on"]},
            )
            return next_index, True
        if name == "keystate.ErrorMessage":
            await self._failed(
                action,
                record["code"],
                record["message"],
                record["retryable"],
                record.get("stacktrace"),
                record.get("retry_after_ms"),
                record.get("related_entry_index"),
            )
            return next_index, True
        raise AttemptError(f"protocol violation: unexpected {name} from the deployment")

    def _start_message(self, action: Invoke) -> dict[str, Any]:
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

    async def _append(
        self, action: Invoke, message: dict[str, Any], ws: aiohttp.ClientWebSocketResponse | None
    ) -> None:
        entry = message["entry"]
        delivered = self._produce(
            action,
            "keystate.JournalAppendCommand",
            {"invocation_id": action.invocation_id, "attempt": action.attempt, "entry_index": message["index"], "entry": entry},
        )
        if entry["entry"][0] == _RUN_ENTRY and ws is not None:
            await delivered
            await ws.send_bytes(self._codec.encode("keystate.AckMessage", {"index": message["index"]}))
        else:
            delivered.add_done_callback(_log_failed_delivery)

    async def _command(self, action: Invoke, name: str, record: dict[str, Any]) -> None:
        await self._produce(action, name, record)

    async def _failed(
        self,
        action: Invoke,
        code: int,
        message: str,
        retryable: bool,
        stacktrace: str | None = None,
        retry_after_ms: int | None = None,
        entry_index: int | None = None,
    ) -> None:
        log.warning(
            "invocation %s (%s/%s) attempt %d failed: %s",
            action.invocation_id,
            action.target["service"],
            action.target["handler"],
            action.attempt,
            message,
        )
        try:
            await self._produce(
                action,
                "keystate.AttemptFailedCommand",
                {
                    "invocation_id": action.invocation_id,
                    "attempt": action.attempt,
                    "failure": {"code": code, "message": message},
                    "retryable": retryable,
                    "retry_after_ms": retry_after_ms,
                    "entry_index": entry_index,
                },
            )
        except KafkaUnavailable as exc:
            log.error("could not record the failure of %s: %s", action.invocation_id, exc)

    def _produce(self, action: Invoke, name: str, record: dict[str, Any]) -> asyncio.Future[Any]:
        iid = action.invocation_id
        partition = InvocationId.parse(iid).partition(self._partitions)
        return self._producer.produce(
            self._topic,
            self._codec.encode(name, record),
            key=log_key(action.target, iid),
            partition=partition,
            headers=[("type", name.encode()), ("invocation_id", iid.encode())],
        )


def _log_failed_delivery(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("journal append failed: %s", future.exception())
