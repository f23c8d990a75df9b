"""The invoker: runs attempts on deployments over WebSockets (reused when warm) and journals what comes back.

Every entry from the deployment is appended to keystate.log tagged with (invocation id, attempt);
a `ctx.run` result is acknowledged to the SDK only after Kafka acknowledged that append.
Whatever goes wrong with a deployment — refused connection, timeout, garbage, a message out of
protocol — becomes an AttemptFailedCommand (retried with backoff), never a crashed partition.

An attempt never ends without a terminal command on the log: it ends with its Output (End), a
SuspendCommand or an AttemptFailedCommand, and only once every entry it appended is delivered.
If an append failed, the attempt ends with a retryable AttemptFailedCommand instead; the terminal
command itself is retried with backoff for as long as the attempt is current.
At most `max_concurrent_attempts_per_deployment` attempts run against one deployment; the rest
wait in FIFO order, and `backlogged_partitions()` tells the processor where to stop consuming.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from yarl import URL

from keystate.schemas.ids import InvocationId
from keystate.schemas.limits import SETTING_HINT, kafka_sizes, max_payload_bytes
from keystate.server.commands import LogRecord, command_record
from keystate.server.address_policy import AddressNotAllowed, AddressPolicy, GuardedResolver, literal_address
from keystate.server.identity import RequestIdentity, signing_middleware
from keystate.server.kafka import AsyncProducer, KafkaUnavailable

from . import metrics, tracing
from .early import Gate
from .invoker_slots import AttemptSlots
from .invoker_stream import Attempt, AttemptError, AttemptStream, Oversized, Terminal, failure
from .state_machine import Invoke
from .ws_pool import SocketPool

__all__ = ["Invoker", "InvokerSettings"]

log = logging.getLogger(__name__)

_RUN_ENTRY = "keystate.RunEntry"
_OUTPUT_ENTRY = "keystate.OutputEntry"
# Entries after which a handler goes on without hearing from keystate; after any other (a ctx.run ack,
# a call's result, a timer, a promise, its output) it waits, so an early attempt's batch stops waiting.
# State reads are answered from the state sent with the attempt (the SDK needs it whole).
_GOES_ON = frozenset(
    "keystate." + name
    for name in ("GetStateEntry", "GetStateKeysEntry", "SetStateEntry", "ClearStateEntry", "ClearAllStateEntry",
                 "SendEntry", "CompleteAwakeableEntry", "CancelInvocationEntry")
)
_APPEND = "keystate.JournalAppendCommand"
_TERMINAL_RETRY_INITIAL_S = 0.1
_TERMINAL_RETRY_MAX_S = 5.0


@dataclass(frozen=True, slots=True)
class InvokerSettings:
    """Limits of the invoker: per attempt (hitting them fails it retryably) and per deployment."""

    # No message from the deployment for this long (SDKs send heartbeats every 10 s while an
    # attempt is quiet): the deployment is presumed dead or cut off.
    inactivity_timeout_s: float = 60.0
    # An attempt running longer than this is stopped (a suspended invocation does not count).
    # Like the inactivity timeout, it starts when the attempt gets its slot, not while it queues.
    abort_timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    max_message_bytes: int = 32 * 1024 * 1024
    # The payload limit (keystate.schemas.limits: $KEYSTATE_MAX_PAYLOAD_BYTES or 8 MiB). An entry whose
    # log record exceeds it plus the envelope headroom fails its invocation for good: the producer
    # could not write it, and retrying would not shrink it.
    max_payload_bytes: int = field(default_factory=max_payload_bytes)
    # Each running attempt holds one connection to its deployment (one socket on each side).
    # 512 keeps both a processor and a deployment process under the common 1024 open-files limit
    # with room to spare, and is more than one Python deployment process serves at once without
    # queueing internally; an attempt waiting on a durable step suspends and frees its slot, so only
    # handlers that are actually running hold one. Attempts beyond it wait (FIFO), they do not fail.
    max_concurrent_attempts_per_deployment: int = 512
    # High watermark of attempts waiting for a slot (all deployments): above it the processor stops
    # consuming the log partitions whose attempts wait, until the queue is below half of it.
    max_queued_attempts: int = 10_000
    # The key every request to a deployment is signed with (WebSocket handshake or POST; see
    # keystate.server.identity); None: unsigned, refused by deployments that set identity_keys.
    # A reused WebSocket (below) was signed at its handshake; the attempts it carries are not signed again.
    identity: RequestIdentity | None = None
    # Addresses attempts may connect to (the admin's registration rule, $KEYSTATE_DEPLOYMENT_ALLOW): a
    # registered name that later resolves elsewhere (DNS rebinding) is not connected to.
    deployment_allow: AddressPolicy = field(default_factory=AddressPolicy.from_env)
    # Warm connections (keystate.processors.ws_pool): a WebSocket whose attempt ended with End,
    # Suspension or Error goes back to a pool (if the deployment agreed to reuse it) and carries the
    # next attempt on that deployment, for up to this long idle. Keep it below the SDK's idle_timeout
    # (60 s by default), so that the processor, not the deployment, closes an idle socket. 0: one
    # WebSocket per attempt. At most max_concurrent_attempts_per_deployment sockets are idle per endpoint.
    idle_connection_timeout_s: float = 30.0

    @property
    def resume_below_queued_attempts(self) -> int:
        """The low watermark of the queue: consumption resumes below it."""
        return max(1, self.max_queued_attempts // 2)


TimeoutsLookup = Callable[[str], "tuple[float | None, float | None]"]
"""service -> its (inactivity, abort) timeout in seconds, declared or set with PATCH /services; None: the settings'."""


class Invoker:
    """Runs `Invoke` actions; `notify` pushes completions to live attempts; `stop` ends them.

    `backlogged_partitions` and `is_live` may be called from any thread.
    """

    def __init__(
        self,
        producer: AsyncProducer,
        log_topic: str,
        partitions: int,
        resolve_uri: Callable[[str | None, str], tuple[str, list[str]] | None],
        settings: InvokerSettings | None = None,
        timeouts_for: TimeoutsLookup | None = None,
    ) -> None:
        self._producer = producer
        self._topic = log_topic
        self._partitions = partitions
        self._resolve_uri = resolve_uri
        self._settings = settings or InvokerSettings()
        self._timeouts_for = timeouts_for
        self._live: dict[str, Attempt] = {}
        self._session: aiohttp.ClientSession | None = None
        self._stream: AttemptStream | None = None
        self._pool: SocketPool | None = None  # idle WebSockets for the next attempts (warm connections)
        self._sends: set[asyncio.Task[None]] = set()  # completions on their way to a socket (kept from GC)
        s = self._settings
        self._max_record_bytes = kafka_sizes(s.max_payload_bytes).record_bytes
        self._slots = AttemptSlots(
            s.max_concurrent_attempts_per_deployment, s.max_queued_attempts, s.resume_below_queued_attempts
        )

    async def start(self) -> None:
        # The pool holds exactly as many connections per host as attempts may run against it, so an
        # attempt that has its slot never waits for a connection inside its connect timeout (idle warm
        # sockets hold connections too: each attempt first trims them to what the limit leaves, see _attempt).
        # Resolved addresses are checked against the policy (cached ones were checked when resolved).
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=self._settings.max_concurrent_attempts_per_deployment,
            resolver=GuardedResolver(self._settings.deployment_allow, "a registered deployment"),
        )
        identity = self._settings.identity
        if identity is not None:
            log.info("requests to deployments are signed with the identity key %s (%s)", identity.public_key, identity.path)
        self._session = aiohttp.ClientSession(
            connector=connector,
            timeout=aiohttp.ClientTimeout(total=None, connect=self._settings.connect_timeout_s),
            middlewares=(signing_middleware(identity),) if identity is not None else (),
        )
        s = self._settings
        if s.idle_connection_timeout_s > 0:
            self._pool = SocketPool(s.max_concurrent_attempts_per_deployment, s.idle_connection_timeout_s)
        self._stream = AttemptStream(self._session, self._settings, self._append, self._pool)

    async def close(self) -> None:
        tasks = [a.task for a in self._live.values() if a.task is not None]
        for iid in list(self._live):
            self.stop(iid)
        if tasks:
            await asyncio.wait(tasks, timeout=5.0)
        if self._pool is not None:
            await self._pool.close()
        if self._session is not None:
            await self._session.close()

    def live(self) -> int:
        """Attempts running or queued."""
        return len(self._live)

    def queued(self) -> int:
        """Attempts waiting for a slot of their deployment."""
        return self._slots.queued()

    def is_live(self, invocation_id: str) -> bool:
        """Whether an attempt of the invocation is running or queued here. Safe from any thread."""
        return invocation_id in self._live  # one dict lookup: atomic under the GIL

    def backlogged_partitions(self) -> frozenset[int]:
        """Log partitions whose attempts wait while the queue is over its watermark. Safe from any thread."""
        return self._slots.backlog

    def invoke(self, action: Invoke, gate: Gate | None = None) -> None:
        """Start `action`'s attempt; with `gate`, it writes nothing to the log before the gate opens."""
        old = self._live.get(action.invocation_id)
        if old is not None and old.action.attempt >= action.attempt:
            return
        if old is not None:
            self.stop(action.invocation_id)
        attempt = Attempt(action, self._partition_of(action.invocation_id), gate=gate)
        self._live[action.invocation_id] = attempt
        metrics.attempt_started(action.target["service"], action.attempt)
        attempt.task = asyncio.create_task(self._run(attempt), name=f"attempt {action.invocation_id}#{action.attempt}")

    def notify(self, invocation_id: str, attempt_no: int, index: int, result: Any) -> None:
        attempt = self._live.get(invocation_id)
        if attempt is None or attempt.action.attempt != attempt_no:
            return  # it suspended or ended: the next attempt gets the result from the journal
        assert self._stream is not None
        message = self._stream.completion(index, result)
        if attempt.ws is None:
            attempt.pending.append(message)
        else:
            if not attempt.answered:
                attempt.unanswered.append(message)  # sent again if the socket turns out dead
            task = asyncio.create_task(self._send(attempt, attempt.ws, message))
            self._sends.add(task)
            task.add_done_callback(self._sends.discard)

    def stop(self, invocation_id: str) -> None:
        attempt = self._live.pop(invocation_id, None)
        if attempt is not None and attempt.task is not None and attempt.task is not asyncio.current_task():
            attempt.task.cancel()

    def abandon(self, gate: Gate) -> None:
        """The batch that started the attempts of `gate` did not commit: stop them before they write."""
        for iid in [i for i, a in self._live.items() if a.gate is gate]:
            log.info("invocation %s: its batch did not commit; the attempt started meanwhile is stopped", iid)
            self.stop(iid)

    def stop_where(self, predicate: Callable[[str], bool]) -> list[asyncio.Task[None]]:
        """Stop the attempts of the matching invocations; their tasks (to wait for them to end)."""
        tasks = []
        for iid in [i for i in self._live if predicate(i)]:
            attempt = self._live.get(iid)
            if attempt is not None and attempt.task is not None:
                tasks.append(attempt.task)
            self.stop(iid)
        return tasks

    async def flush(self, timeout_s: float) -> int:
        """Wait until the commands appended so far are on the log; how many are not."""
        return await asyncio.to_thread(self._producer.flush, timeout_s)

    def _partition_of(self, invocation_id: str) -> int:
        return int(InvocationId.parse(invocation_id).partition(self._partitions))

    def _current(self, attempt: Attempt) -> bool:
        return self._live.get(attempt.action.invocation_id) is attempt

    async def _send(self, attempt: Attempt, ws: aiohttp.ClientWebSocketResponse, message: bytes) -> None:
        try:
            # Only while the attempt still holds the socket: once it ended, the socket may carry another
            # attempt (warm connections), and a late completion must never reach that one.
            if attempt.ws is ws and not ws.closed:
                await ws.send_bytes(message)
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            pass  # the receive loop sees the broken socket and fails the attempt

    # ---- one attempt ----------------------------------------------------------------------------
    async def _run(self, attempt: Attempt) -> None:
        action = attempt.action
        attempt.trace = tracing.start_attempt(action)
        terminal: Terminal | None = tracing.STOPPED
        try:
            terminal = await self._attempt(attempt)
            if attempt.gate is not None:
                attempt.gate.blocked(action.invocation_id)  # it ended: its batch need not wait for it
            terminal = await self._settle_appends(attempt, terminal)
            if terminal is not None:
                await self._write_terminal(attempt, terminal)
        except asyncio.CancelledError:
            raise  # stopped: the invocation ended, moved, or a newer attempt replaced this one
        except Exception:  # an invoker bug: loud, and the processor's sweep restarts the invocation
            log.exception(
                "invocation %s attempt %d: the invoker failed; the attempt ends without a terminal command",
                action.invocation_id,
                action.attempt,
            )
        finally:
            tracing.end_attempt(attempt.trace, action, terminal, attempt.output_appended)
            if self._live.get(action.invocation_id) is attempt:
                del self._live[action.invocation_id]
            await self._close_ws(attempt)

    async def _attempt(self, attempt: Attempt) -> Terminal | None:
        """Run the attempt on its deployment; the command that ends it, or None if it ended with its Output."""
        action = attempt.action
        url = "(unresolved)"
        try:
            resolved = self._resolve_uri(action.deployment_id, action.target["service"])
            if resolved is None:
                raise AttemptError(
                    f"no deployment serves {action.target['service']}; register one with "
                    "`keystate deployments register <uri>`"
                )
            uri, transports = resolved
            self._set_timeouts(attempt)
            url = f"{uri.rstrip('/')}/invoke/{action.target['service']}/{action.target['handler']}"
            literal = literal_address(URL(uri).host or "")
            if literal is not None:  # names are checked by the resolver; literals are never resolved
                self._settings.deployment_allow.check(literal, uri)
            deployment = _deployment_key(url)
            await self._slots.acquire(deployment, attempt.partition)
            try:
                if self._pool is not None:
                    attempt.pool_key, attempt.pool_group = uri.rstrip("/"), deployment
                    # Idle sockets hold connections of the per-endpoint limit: leave room for this attempt's.
                    room = self._settings.max_concurrent_attempts_per_deployment - self._slots.running(deployment)
                    await self._pool.trim(deployment, keep=room)
                # The abort and inactivity timeouts run from here: time in the queue does not count.
                assert self._stream is not None
                return await asyncio.wait_for(self._stream.run(attempt, url, transports), attempt.abort_timeout_s)
            finally:
                try:
                    await self._close_ws(attempt)  # the socket is closed or pooled before the slot goes back
                finally:
                    self._slots.release(deployment)
        except asyncio.CancelledError:
            raise
        except aiohttp.ServerTimeoutError as exc:
            if not attempt.connected:
                return failure(
                    action, 503, f"could not connect to {url} within {self._settings.connect_timeout_s:g} s (connect timeout)"
                )
            return failure(action, 503, f"no answer from {url}: {exc or 'read timeout'}")
        except TimeoutError:
            return failure(action, 500, f"attempt exceeded the abort timeout of {attempt.abort_timeout_s:g} s")
        except AttemptError as exc:
            return failure(action, 500, str(exc))
        except Oversized as exc:
            return failure(action, 500, str(exc), retryable=False, entry_index=exc.index)
        except (aiohttp.ClientError, ConnectionError, OSError) as exc:
            return failure(action, 503, f"cannot reach the deployment at {url}: {exc}")
        except KafkaUnavailable as exc:
            return failure(action, 503, f"could not append to {self._topic}: {exc}")
        except AddressNotAllowed as exc:
            return failure(action, 503, f"not connecting to the deployment: {exc}")
        except Exception as exc:  # an invoker bug must not kill the process; record it on the invocation
            log.exception("invocation %s attempt %d crashed the invoker", action.invocation_id, action.attempt)
            return failure(action, 500, f"invoker error: {exc!r}")

    def _set_timeouts(self, attempt: Attempt) -> None:
        """The attempt's timeouts: its service's (read per attempt, so a PATCH applies to the next attempt)."""
        inactivity, abort = (None, None) if self._timeouts_for is None else self._timeouts_for(attempt.action.target["service"])
        attempt.inactivity_timeout_s = self._settings.inactivity_timeout_s if inactivity is None else inactivity
        attempt.abort_timeout_s = self._settings.abort_timeout_s if abort is None else abort

    async def _close_ws(self, attempt: Attempt) -> None:
        """Detach the attempt's socket; pool it if the attempt ended cleanly on a reusable one, else close it."""
        ws, attempt.ws = attempt.ws, None  # from now on nothing of this attempt writes to it
        if ws is None or ws.closed:
            return
        if attempt.reusable and self._pool is not None and attempt.pool_key is not None:
            attempt.reusable = False
            self._pool.put(attempt.pool_key, attempt.pool_group, ws)
            return
        try:
            await ws.close()
        except (TimeoutError, aiohttp.ClientError, ConnectionError, OSError):
            pass  # closing a broken socket: nothing left to tell the deployment

    async def _settle_appends(self, attempt: Attempt, terminal: Terminal | None) -> Terminal | None:
        """Wait until Kafka took every entry of the attempt; if one failed, the attempt failed (retryably)."""
        if attempt.unsettled:
            await asyncio.gather(*attempt.unsettled, return_exceptions=True)
        if attempt.append_failure is None:
            return terminal
        index, exc = attempt.append_failure
        action = attempt.action
        log.error(
            "invocation %s attempt %d: entry %d could not be appended to %s (%s); recording a retryable failure",
            action.invocation_id, action.attempt, index, self._topic, exc,
        )
        return failure(
            action, 503, f"journal entry {index} could not be appended to {self._topic}: {exc}", entry_index=index
        )

    async def _write_terminal(self, attempt: Attempt, terminal: Terminal) -> None:
        """Produce the attempt's terminal command, retrying with backoff while the attempt is current."""
        action = attempt.action
        if attempt.gate is not None:
            await attempt.gate.wait()
        delay = _TERMINAL_RETRY_INITIAL_S
        while self._current(attempt):
            try:
                await self._produce(self._record(action, terminal.name, terminal.record))
                return
            except KafkaUnavailable as exc:
                log.error(
                    "invocation %s attempt %d: could not write %s to %s (%s); retrying in %.1f s",
                    action.invocation_id, action.attempt, terminal.name, self._topic, exc, delay,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _TERMINAL_RETRY_MAX_S)
        log.info(
            "invocation %s attempt %d: no longer current, %s not written", action.invocation_id, action.attempt, terminal.name
        )

    # ---- the log ----------------------------------------------------------------------------------
    async def _append(self, attempt: Attempt, message: dict[str, Any], ws: aiohttp.ClientWebSocketResponse | None) -> None:
        action = attempt.action
        index = message["index"]
        entry = message["entry"]
        entry_type = entry["entry"][0]
        journaled = tracing.entry_span(attempt.trace, index, entry)  # before the record: it may add headers
        command = self._record(
            action,
            _APPEND,
            {"invocation_id": action.invocation_id, "attempt": action.attempt, "entry_index": index, "entry": entry},
        )
        size = _record_size(command)
        if size > self._max_record_bytes:
            limit = self._settings.max_payload_bytes
            raise Oversized(
                f"the handler's {entry_type.removeprefix('keystate.')} (entry {index}) makes a log record of "
                f"{size:,} bytes, over the {self._max_record_bytes:,} bytes a record may have with the payload limit "
                f"of {limit:,} bytes (max_payload_bytes); keep large values outside keystate, or {SETTING_HINT}",
                index,
            )
        delivered = await self._deliver(attempt, command, blocking=entry_type not in _GOES_ON)
        attempt.unsettled.add(delivered)
        delivered.add_done_callback(lambda f: self._appended(attempt, index, f))
        if journaled is not None:
            delivered.add_done_callback(journaled)
        if entry_type == _OUTPUT_ENTRY:
            attempt.output_appended = True
        if entry_type == _RUN_ENTRY and ws is not None:
            await delivered
            assert self._stream is not None
            await ws.send_bytes(self._stream.ack(index))

    async def _deliver(self, attempt: Attempt, command: LogRecord, *, blocking: bool) -> asyncio.Future[Any]:
        """Produce `command`; an attempt started before its batch committed offers it to the batch first.

        See keystate.processors.early: an offered entry is written by the batch's own transaction (or,
        unfolded, produced when the gate opens); past the batch's collection it waits for the gate.
        """
        gate = attempt.gate
        if gate is not None:
            offered = gate.offer(command, blocking=blocking)
            if offered is not None:
                return offered
            await gate.wait()
        return self._producer.produce(self._topic, command.value, **command.produce_kwargs())

    def open_gate(self, gate: Gate) -> None:
        """The batch of `gate`'s attempts committed: their offered entries are written or produced now."""
        gate.open(lambda r: self._producer.produce(self._topic, r.value, **r.produce_kwargs()))

    def _appended(self, attempt: Attempt, index: int, future: asyncio.Future[Any]) -> None:
        attempt.unsettled.discard(future)
        if attempt.append_failure is None:
            exc = future.exception() if not future.cancelled() else asyncio.CancelledError("delivery cancelled")
            if exc is not None:
                attempt.append_failure = (index, exc)

    def _record(self, action: Invoke, name: str, record: dict[str, Any]) -> LogRecord:
        return command_record(name, record, self._partitions, target=action.target)

    async def _produce(self, command: LogRecord) -> None:
        await self._producer.produce(self._topic, command.value, **command.produce_kwargs())


def _record_size(command: LogRecord) -> int:
    """Bytes of a record as the producer counts them against its limit: key, value and headers."""
    return len(command.key) + len(command.value) + sum(len(k) + len(v) for k, v in command.headers)


def _deployment_key(url: str) -> Hashable:
    """What one slot limit covers: an endpoint, as aiohttp's per-host connection limit counts them."""
    parsed = URL(url)
    return (parsed.scheme, parsed.host, parsed.port)
