"""Contexts handed to handlers, durable futures, and the asyncio driver of one attempt."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random as _random
import time as _time
import traceback
import typing
import uuid as _uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Generic, TypeVar, cast

from keystate.schemas.ids import HandlerKind, InvocationTarget, ServiceType

from ._machine import Failure, Machine, Result, Value
from ._run import RunOptions, StepRetry
from ._service import Handler, handler_of
from ._tracing import handler_context, run_span
from .errors import AttemptEnded, RetryableError, Suspended, TerminalError
from .serde import Serde, serde_for

__all__ = [
    "Context",
    "DurableCallFuture",
    "DurableFuture",
    "DurablePromise",
    "DurableSleepFuture",
    "InvocationCore",
    "ObjectContext",
    "ObjectSharedContext",
    "Request",
    "RunOptions",
    "SendHandle",
    "WorkflowContext",
    "WorkflowSharedContext",
    "context_class",
]

T = TypeVar("T")
log = logging.getLogger("keystate.sdk")


@dataclass(frozen=True, slots=True)
class Request:
    """The invocation as received: its id, the request headers and the raw input body."""

    id: str
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


class DurableFuture(Generic[T]):
    """The result of a journal entry, available once the entry completes; await it, or combine it."""

    def __init__(
        self, core: InvocationCore, index: int, decode: Callable[[bytes], T], *, suspendable: bool = True
    ) -> None:
        self._core = core
        self._index = index
        self._decode = decode
        self._suspendable = suspendable

    @property
    def index(self) -> int:
        return self._index

    def is_completed(self) -> bool:
        return self._core.machine.result(self._index) is not None

    def __await__(self) -> Generator[Any, None, T]:
        return self._get().__await__()

    async def _get(self) -> T:
        await self._core.wait_any([self])
        return self._value()

    def _value(self) -> T:
        result = self._core.machine.result(self._index)
        if result is None:  # pragma: no cover - wait_any returns only once completed
            raise RuntimeError(f"entry {self._index} is not completed")
        if isinstance(result, Failure):
            raise TerminalError(result.message, result.code)
        return self._decode(result.value)


class DurableCallFuture(DurableFuture[T]):
    """The result of a call; also knows the callee's invocation id."""

    def __init__(self, core: InvocationCore, index: int, decode: Callable[[bytes], T], invocation_id: str) -> None:
        super().__init__(core, index, decode)
        self._invocation_id = invocation_id

    async def invocation_id(self) -> str:
        return self._invocation_id

    def cancel_invocation(self) -> None:
        """Ask the callee to stop; this call then completes with a failure."""
        self._core.context_cancel(self._invocation_id)


class DurableSleepFuture(DurableFuture[None]):
    """A durable timer: completes when the processor's timer fires."""


class SendHandle:
    """A one-way call: its invocation id (the call itself is not awaited)."""

    def __init__(self, core: InvocationCore, invocation_id: str) -> None:
        self._core = core
        self._invocation_id = invocation_id

    async def invocation_id(self) -> str:
        return self._invocation_id

    def cancel_invocation(self) -> None:
        self._core.context_cancel(self._invocation_id)


class _Ready(Generic[T]):
    """An awaitable already resolved: state reads are answered from the eager state."""

    def __init__(self, value: T) -> None:
        self._value = value

    def __await__(self) -> Generator[Any, None, T]:
        return self._value
        yield  # unreachable: makes this a generator


def _none(_: bytes) -> None:
    return None


class InvocationCore:
    """Runs one attempt's handler on top of a `Machine`: futures, run steps, suspension timer.

    The transport feeds processor messages to `feed` and sends `machine.take_output()` whenever
    `on_output` is called; `finished` is set once the machine is closed.

    `request_response`: the transport cannot deliver acks or completions during the attempt, so
    a handler blocked on an incomplete entry suspends at once, and a new run step, which can
    never be acknowledged, is awaited like a completable entry: the attempt suspends on it and
    the processor re-invokes with the run journaled.
    """

    def __init__(
        self,
        machine: Machine,
        handler: Handler,
        *,
        suspend_after: float,
        on_output: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = _time.time,
        request_response: bool = False,
    ) -> None:
        self.machine = machine
        self.handler = handler
        self.request_response = request_response
        self.suspend_after = 0.0 if request_response else suspend_after
        self.clock = clock
        self._on_output = on_output
        self._loop = asyncio.get_running_loop()
        self._futures: dict[int, asyncio.Future[Result]] = {}
        self._waiting: Counter[int] = Counter()
        self._runs_in_flight = 0
        self._timer: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._suspended = False
        self._ended = False
        self.handler_task: asyncio.Task[None] | None = None
        self.finished = asyncio.Event()

    # ---- transport side ---------------------------------------------------------------------

    def feed(self, name: str, record: dict[str, Any]) -> None:
        """One message from the processor (ProtocolError if it breaks the protocol)."""
        self.machine.notify_input(name, record)
        for index in self.machine.take_notifications():
            future = self._futures.get(index)
            result = self.machine.result(index)
            if future is not None and not future.done() and result is not None:
                future.set_result(result)
        if self.machine.ready and self.handler_task is None and not self.machine.closed:
            # In the attempt's trace (see _tracing), so the handler's own spans join it.
            context = handler_context(self.machine.start.headers if self.machine.start else None)
            self.handler_task = self._loop.create_task(self._run_handler(), context=context)
        self.changed()

    def abort(self) -> None:
        """The transport is gone: stop the handler and every run step of this attempt."""
        self._end()
        for task in [self.handler_task, *self._tasks]:
            if task is not None and not task.done():
                task.cancel()

    # ---- bookkeeping ------------------------------------------------------------------------

    def changed(self) -> None:
        """Something happened: send output, re-arm the suspension timer, notice the end."""
        self._on_output()
        if self.machine.closed:
            self._end()
        else:
            self._reschedule()

    @contextlib.contextmanager
    def op(self) -> Iterator[None]:
        try:
            yield
        finally:
            self.changed()

    def _end(self) -> None:
        if self._ended:
            return
        self._ended = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        exc_type = Suspended if self._suspended else AttemptEnded
        for future in self._futures.values():
            if not future.done():
                future.set_exception(exc_type("the attempt ended"))
                future.exception()  # retrieved: nobody may be awaiting it, don't log it
        self.finished.set()

    def _blocked(self) -> list[int]:
        """Incomplete entries the handler awaits, when nothing else (a run step) can progress."""
        if self._runs_in_flight:
            return []
        return sorted(i for i, n in self._waiting.items() if n > 0 and self.machine.result(i) is None)

    def _reschedule(self) -> None:
        blocked = bool(self._blocked())
        if blocked and self._timer is None:
            self._timer = self._loop.call_later(self.suspend_after, self._suspend)
        elif not blocked and self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _suspend(self) -> None:
        self._timer = None
        waiting_on = self._blocked()
        if not waiting_on or self.machine.closed:
            return
        self._suspended = True
        self.machine.sys_suspend(waiting_on)
        self.changed()

    def _result_future(self, index: int) -> asyncio.Future[Result]:
        future = self._futures.get(index)
        if future is None:
            future = self._futures[index] = self._loop.create_future()
            result = self.machine.result(index)
            if result is not None:
                future.set_result(result)
        return future

    async def wait_any(self, futures: list[DurableFuture[Any]]) -> None:
        """Until one of `futures` is completed; suspension may end the attempt meanwhile."""
        if self.machine.closed:
            raise Suspended("the attempt ended") if self._suspended else AttemptEnded("the attempt ended")
        inner = [self._result_future(f.index) for f in futures]
        if any(f.done() for f in inner):
            _raise_ended(inner)
            return
        indexes = [f.index for f in futures if f._suspendable]
        self._waiting.update(indexes)
        self._reschedule()
        try:
            await asyncio.wait(inner, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._waiting.subtract(indexes)
            for i in indexes:
                if self._waiting[i] <= 0:
                    del self._waiting[i]
            if not self.machine.closed:
                self._reschedule()
        _raise_ended(inner)

    # ---- the handler and its run steps ------------------------------------------------------

    async def _run_handler(self) -> None:
        handler, machine = self.handler, self.machine
        ctx = context_class(handler)(self)
        try:
            try:
                argument, _ = machine.input
                if handler.takes_input:
                    try:
                        arg = handler.input_serde.deserialize(argument)
                    except Exception as exc:
                        raise TerminalError(f"cannot decode the input of {handler.qualified}: {exc}", 400) from exc
                    value = await handler.fn(ctx, arg)
                else:
                    value = await handler.fn(ctx)
                result: Result = Value(handler.output_serde.serialize(value))
            except TerminalError as exc:
                result = Failure(exc.status_code, exc.message)
            machine.sys_write_output(result)
        except AttemptEnded:
            pass
        except RetryableError as exc:
            log.info("handler %s asked to retry invocation %s: %r", handler.qualified, self.invocation_id, exc)
            machine.sys_fail(
                exc.status_code, exc.message, retryable=True, retry_after_ms=exc.retry_after_ms,
                stacktrace=traceback.format_exc(),
            )
        except asyncio.CancelledError:
            if not machine.closed:
                machine.sys_fail(500, "the handler was cancelled", retryable=True)
        except Exception as exc:
            # A bug or an outage in user code: visible by default, with where it happened.
            log.warning("handler %s failed in invocation %s: %r", handler.qualified, self.invocation_id, exc, exc_info=True)
            machine.sys_fail(500, repr(exc), retryable=True, stacktrace=traceback.format_exc())
        finally:
            self.changed()

    @property
    def invocation_id(self) -> str:
        return self.machine.start.invocation_id if self.machine.start else "?"

    def run(
        self,
        name: str,
        action: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        serde: Serde[Any],
        retry: StepRetry,
    ) -> DurableFuture[Any]:
        with self.op():
            index, replayed = self.machine.sys_run(name)
            # Streaming: the ack follows shortly, never suspend on it. Request/response: no ack
            # can come, so waiting on the step is what suspends the attempt.
            future: DurableFuture[Any] = DurableFuture(
                self, index, serde.deserialize, suspendable=self.request_response
            )
            if replayed is None:
                self._runs_in_flight += 1
                coro = self._execute_run(index, name, action, args, kwargs, serde, retry)
                task = self._loop.create_task(coro)
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return future

    async def _execute_run(
        self,
        index: int,
        name: str,
        action: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        serde: Serde[Any],
        retry: StepRetry,
    ) -> None:
        machine = self.machine
        try:
            try:
                with run_span(name, index):
                    if inspect.iscoroutinefunction(action):
                        value = await action(*args, **kwargs)
                    else:
                        # Sync steps run in a thread: a slow call must not stall the other invocations.
                        value = await asyncio.to_thread(action, *args, **kwargs)
                        if inspect.isawaitable(value):  # e.g. a lambda returning a coroutine
                            value = await value
                result: Result = Value(serde.serialize(value))
            except TerminalError as exc:
                result = Failure(exc.status_code, exc.message)
            except Exception as exc:
                assert machine.start is not None
                start = machine.start
                if retry.gives_up(start.retry_count, start.duration_since_first_attempt_ms):
                    result = Failure(500, f"{type(exc).__name__}: {exc}")
                else:
                    retry_ms = retry.delay_ms(start.retry_count)
                    if isinstance(exc, RetryableError) and exc.retry_after is not None:
                        retry_ms = exc.retry_after_ms
                    machine.sys_fail(
                        500,
                        repr(exc),
                        retryable=True,
                        related_entry_index=index,
                        retry_after_ms=retry_ms,
                        stacktrace=traceback.format_exc(),
                    )
                    return
            machine.sys_run_done(index, name, result)
            self.changed()
            if not self.request_response:
                await self._result_future(index)  # the ack: the step is acted on only once durable
        except (AttemptEnded, asyncio.CancelledError):
            pass
        finally:
            self._runs_in_flight -= 1
            self.changed()

    def record(self, name: str, data: bytes, decode: Callable[[bytes], T]) -> DurableFuture[T]:
        """Journal a decision the handler made (as a run step with `data` as its result).

        A replay returns the journaled decision instead of `data`. Like any step it counts once
        durable: streaming waits for the ack, request/response suspends on it.
        """
        with self.op():
            index, replayed = self.machine.sys_run(name)
            if replayed is None:
                self.machine.sys_run_done(index, name, Value(data))
            return DurableFuture(self, index, decode, suspendable=self.request_response)

    def context_cancel(self, invocation_id: str) -> None:
        with self.op():
            self.machine.sys_cancel_invocation(invocation_id)


def _raise_ended(inner: list[asyncio.Future[Result]]) -> None:
    """Re-raise the end of the attempt set on a result future (results themselves never raise)."""
    for f in inner:
        exc = f.exception() if f.done() else None
        if exc is not None:
            raise exc


class Context:
    """What every handler may do: durable steps, calls, sends, timers, awakeables, randomness."""

    def __init__(self, core: InvocationCore) -> None:
        self._core = core
        self._random: _random.Random | None = None

    @property
    def _machine(self) -> Machine:
        return self._core.machine

    def request(self) -> Request:
        start = self._machine.start
        assert start is not None
        return Request(id=start.invocation_id, headers=dict(start.headers), body=start.argument)

    # ---- durable steps ----------------------------------------------------------------------

    def run(
        self,
        name: str,
        action: Callable[..., T] | Callable[..., Awaitable[T]],
        *positional: Any,
        serde: Serde[T] | None = None,
        max_attempts: int | None = None,
        max_retry_duration: timedelta | None = None,
        type_hint: type[T] | None = None,
        args: tuple[Any, ...] | None = None,
        kwargs: dict[str, Any] | None = None,
        initial_retry_interval: timedelta | None = None,
    ) -> DurableFuture[T]:
        """Run `action(*args, **kwargs)` once and journal its result; replays return the journaled result.

        The arguments go either positionally (`ctx.run("x", fn, 1, 2)`) or as restate-sdk passes
        them (`ctx.run("x", fn, args=(1, 2), kwargs={...})`), not both. A sync `action` runs in a
        thread. The future completes once the result is durable. `max_attempts` and
        `max_retry_duration` bound the retries as in `RunOptions`.
        """
        call_args = _run_arguments(name, positional, args, kwargs)
        options = RunOptions(
            serde=serde, type_hint=type_hint, max_attempts=max_attempts, max_retry_duration=max_retry_duration,
            initial_retry_interval=initial_retry_interval,
        )
        return self._run(name, action, call_args, kwargs or {}, options)

    def run_typed(
        self,
        name: str,
        action: Callable[..., T] | Callable[..., Awaitable[T]],
        options: RunOptions[T] | None = None,
        /,
        *args: Any,
        **kwargs: Any,
    ) -> DurableFuture[T]:
        """`run` with its options in a `RunOptions`, passing `*args, **kwargs` to `action`."""
        if options is not None and not isinstance(options, RunOptions):
            raise TypeError(f"ctx.run_typed({name!r}, action, options, *args): options must be a keystate.RunOptions or None, "
                            f"got {type(options).__name__}")
        return self._run(name, action, args, kwargs, options or RunOptions())

    def _run(
        self, name: str, action: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any], opts: RunOptions[T]
    ) -> DurableFuture[T]:
        if not callable(action):
            raise TypeError(f"ctx.run({name!r}, action): action must be callable, got {type(action).__name__}")
        hint = opts.type_hint if opts.type_hint is not None else _return_hint(action)
        return self._core.run(name, action, args, kwargs, serde_for(hint, opts.serde), opts.step_retry())

    def sleep(self, delta: timedelta) -> DurableSleepFuture:
        """A durable timer; survives crashes and suspension."""
        with self._core.op():
            wake_up_at_ms = int(self._core.clock() * 1000 + delta / timedelta(milliseconds=1))
            index = self._machine.sys_sleep(wake_up_at_ms)
            return DurableSleepFuture(self._core, index, _none)

    def random(self) -> _random.Random:
        """A `random.Random` seeded the same on every attempt of this invocation."""
        if self._random is None:
            start = self._machine.start
            assert start is not None
            self._random = _random.Random(start.random_seed)
        return self._random

    def uuid(self) -> _uuid.UUID:
        """A version-4 UUID drawn from `random()`: the same on every attempt."""
        return _uuid.UUID(int=self.random().getrandbits(128), version=4)

    def time(self) -> DurableFuture[float]:
        """The wall clock as a durable step: replays see the first attempt's time."""
        return self.run("time", _time.time)

    # ---- calls and sends --------------------------------------------------------------------

    def service_call(
        self, tpe: Callable[..., Awaitable[T]], arg: Any = None, idempotency_key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> DurableCallFuture[T]:
        return self._call(tpe, ServiceType.SERVICE, None, arg, idempotency_key, headers)

    def object_call(
        self, tpe: Callable[..., Awaitable[T]], key: str, arg: Any = None, idempotency_key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> DurableCallFuture[T]:
        return self._call(tpe, ServiceType.VIRTUAL_OBJECT, key, arg, idempotency_key, headers)

    def workflow_call(
        self, tpe: Callable[..., Awaitable[T]], key: str, arg: Any = None, idempotency_key: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> DurableCallFuture[T]:
        return self._call(tpe, ServiceType.WORKFLOW, key, arg, idempotency_key, headers)

    def generic_call(
        self, service: str, handler: str, arg: bytes, key: str | None = None,
        idempotency_key: str | None = None, headers: dict[str, str] | None = None,
    ) -> DurableCallFuture[bytes]:
        """Call by name with raw bytes; the result is raw bytes."""
        target = _generic_target(service, handler, key)
        with self._core.op():
            index, callee = self._machine.sys_call(target, bytes(arg), headers, idempotency_key)
            return DurableCallFuture(self._core, index, bytes, callee)

    def service_send(
        self, tpe: Callable[..., Awaitable[Any]], arg: Any = None, send_delay: timedelta | None = None,
        idempotency_key: str | None = None, headers: dict[str, str] | None = None,
    ) -> SendHandle:
        return self._send(tpe, ServiceType.SERVICE, None, arg, send_delay, idempotency_key, headers)

    def object_send(
        self, tpe: Callable[..., Awaitable[Any]], key: str, arg: Any = None, send_delay: timedelta | None = None,
        idempotency_key: str | None = None, headers: dict[str, str] | None = None,
    ) -> SendHandle:
        return self._send(tpe, ServiceType.VIRTUAL_OBJECT, key, arg, send_delay, idempotency_key, headers)

    def workflow_send(
        self, tpe: Callable[..., Awaitable[Any]], key: str, arg: Any = None, send_delay: timedelta | None = None,
        idempotency_key: str | None = None, headers: dict[str, str] | None = None,
    ) -> SendHandle:
        return self._send(tpe, ServiceType.WORKFLOW, key, arg, send_delay, idempotency_key, headers)

    def generic_send(
        self, service: str, handler: str, arg: bytes, key: str | None = None, send_delay: timedelta | None = None,
        idempotency_key: str | None = None, headers: dict[str, str] | None = None,
    ) -> SendHandle:
        target = _generic_target(service, handler, key)
        return self._send_target(target, bytes(arg), send_delay, idempotency_key, headers)

    def _call(
        self, tpe: Callable[..., Any], expected: ServiceType, key: str | None, arg: Any,
        idempotency_key: str | None, headers: dict[str, str] | None,
    ) -> DurableCallFuture[Any]:
        handler = _checked_handler(tpe, expected, key)
        target = _target_of(handler, key)
        with self._core.op():
            argument = handler.input_serde.serialize(arg)
            index, callee = self._machine.sys_call(target, argument, headers, idempotency_key)
            return DurableCallFuture(self._core, index, handler.output_serde.deserialize, callee)

    def _send(
        self, tpe: Callable[..., Any], expected: ServiceType, key: str | None, arg: Any,
        send_delay: timedelta | None, idempotency_key: str | None, headers: dict[str, str] | None,
    ) -> SendHandle:
        handler = _checked_handler(tpe, expected, key)
        argument = handler.input_serde.serialize(arg)
        return self._send_target(_target_of(handler, key), argument, send_delay, idempotency_key, headers)

    def _send_target(
        self, target: InvocationTarget, argument: bytes, send_delay: timedelta | None,
        idempotency_key: str | None, headers: dict[str, str] | None,
    ) -> SendHandle:
        with self._core.op():
            invoke_at_ms = None
            if send_delay is not None and send_delay > timedelta(0):
                invoke_at_ms = int(self._core.clock() * 1000 + send_delay / timedelta(milliseconds=1))
            _, callee = self._machine.sys_send(target, argument, headers, idempotency_key, invoke_at_ms)
            return SendHandle(self._core, callee)

    # ---- awakeables and cancellation ----------------------------------------------------------

    def awakeable(
        self, serde: Serde[T] | None = None, type_hint: type[T] | None = None
    ) -> tuple[str, DurableFuture[T]]:
        """An id to hand to the outside world, and the future it completes."""
        decode = cast("Callable[[bytes], T]", serde_for(type_hint, serde).deserialize)
        with self._core.op():
            index, awakeable_id = self._machine.sys_awakeable()
            return awakeable_id, DurableFuture(self._core, index, decode)

    def resolve_awakeable(self, name: str, value: Any, serde: Serde[Any] | None = None) -> None:
        data = serde_for(type(value), serde).serialize(value)
        with self._core.op():
            self._machine.sys_complete_awakeable(name, Value(data))

    def reject_awakeable(self, name: str, failure_message: str, failure_code: int = 500) -> None:
        with self._core.op():
            self._machine.sys_complete_awakeable(name, Failure(failure_code, failure_message))

    def cancel_invocation(self, invocation_id: str) -> None:
        """Ask another invocation to stop (it fails with a cancellation failure)."""
        self._core.context_cancel(invocation_id)


class ObjectSharedContext(Context):
    """A virtual object's shared handler: reads state, never writes it."""

    def key(self) -> str:
        start = self._machine.start
        assert start is not None and start.target.key is not None
        return start.target.key

    def get(self, name: str, serde: Serde[T] | None = None, type_hint: type[T] | None = None) -> Awaitable[T | None]:
        """The value of a state key, or None (journaled: replays see the same value)."""
        with self._core.op():
            data = self._machine.sys_get_state(name)
        if data is None:
            return _Ready(None)
        return _Ready(serde_for(type_hint, serde).deserialize(data))

    def state_keys(self) -> Awaitable[list[str]]:
        with self._core.op():
            return _Ready(self._machine.sys_state_keys())


class ObjectContext(ObjectSharedContext):
    """A virtual object's exclusive handler: reads and writes state."""

    def set(self, name: str, value: T, serde: Serde[T] | None = None) -> None:
        data = serde_for(type(value), serde).serialize(value)
        with self._core.op():
            self._machine.sys_set_state(name, data)

    def clear(self, name: str) -> None:
        with self._core.op():
            self._machine.sys_clear_state(name)

    def clear_all(self) -> None:
        with self._core.op():
            self._machine.sys_clear_all_state()


class DurablePromise(Generic[T]):
    """A workflow's named promise: resolved once, by the workflow or by a signal handler."""

    def __init__(self, core: InvocationCore, name: str, serde: Serde[T]) -> None:
        self._core = core
        self.name = name
        self._serde = serde

    def value(self) -> DurableFuture[T]:
        """Waits until the promise is resolved (or raises TerminalError when rejected)."""
        with self._core.op():
            index = self._core.machine.sys_get_promise(self.name)
            return DurableFuture(self._core, index, self._decode)

    def peek(self) -> DurableFuture[T | None]:
        """The value if resolved already, else None; never waits for a resolution."""
        with self._core.op():
            index = self._core.machine.sys_peek_promise(self.name)

        # The processor answers an unresolved peek with an empty Value: None for every serde.
        def decode(data: bytes) -> T | None:
            return None if not data else self._serde.deserialize(data)

        return DurableFuture(self._core, index, decode)

    def resolve(self, value: T) -> DurableFuture[None]:
        """Completes the promise; the future fails with TerminalError(409) if it was completed already."""
        return self._complete(Value(self._serde.serialize(value)))

    def reject(self, message: str, code: int = 500) -> DurableFuture[None]:
        return self._complete(Failure(code, message))

    def _complete(self, completion: Result) -> DurableFuture[None]:
        with self._core.op():
            index = self._core.machine.sys_complete_promise(self.name, completion)
            return DurableFuture(self._core, index, _none)

    def _decode(self, data: bytes) -> T:
        return self._serde.deserialize(data)  # type: ignore[return-value]

    def __await__(self) -> Generator[Any, None, T]:
        return self.value().__await__()


class WorkflowSharedContext(ObjectSharedContext):
    """A workflow's shared handler (signal, query): reads state, completes promises."""

    def promise(self, name: str, serde: Serde[T] | None = None, type_hint: type[T] | None = None) -> DurablePromise[T]:
        return DurablePromise(self._core, name, serde_for(type_hint, serde))


class WorkflowContext(ObjectContext):
    """A workflow's main handler: state, promises, and everything a handler may do."""

    def promise(self, name: str, serde: Serde[T] | None = None, type_hint: type[T] | None = None) -> DurablePromise[T]:
        return DurablePromise(self._core, name, serde_for(type_hint, serde))


def context_class(handler: Handler) -> type[Context]:
    """The context type a handler gets: its capabilities follow its service type and kind."""
    if handler.service_type is ServiceType.SERVICE:
        return Context
    if handler.service_type is ServiceType.VIRTUAL_OBJECT:
        return ObjectSharedContext if handler.kind is HandlerKind.SHARED else ObjectContext
    return WorkflowContext if handler.kind is HandlerKind.WORKFLOW else WorkflowSharedContext


def _run_arguments(
    name: str, positional: tuple[Any, ...], args: tuple[Any, ...] | None, kwargs: dict[str, Any] | None
) -> tuple[Any, ...]:
    """The positional arguments of a run action, given inline or as restate-sdk's `args=`."""
    if args is not None and positional:
        raise TypeError(f"ctx.run({name!r}, ...): pass the action's arguments either after it or as args=(...), not both")
    if args is not None and not isinstance(args, (tuple, list)):
        raise TypeError(f"ctx.run({name!r}, ..., args=...): args must be a tuple, e.g. args=({args!r},)")
    if kwargs is not None and not isinstance(kwargs, dict):
        raise TypeError(f"ctx.run({name!r}, ..., kwargs=...): kwargs must be a dict of keyword arguments")
    return tuple(args) if args is not None else positional


def _return_hint(action: Callable[..., Any]) -> Any:
    """The return annotation of a run action, to pick its serde; None when it has none."""
    try:
        return typing.get_type_hints(action).get("return")
    except Exception:  # builtins, partials, unresolvable forward references
        return None


def _checked_handler(tpe: Callable[..., Any], expected: ServiceType, key: str | None) -> Handler:
    handler = handler_of(tpe)
    if handler.service_type is not expected:
        verb = {ServiceType.SERVICE: "service_call/service_send", ServiceType.VIRTUAL_OBJECT: "object_call/object_send",
                ServiceType.WORKFLOW: "workflow_call/workflow_send"}[handler.service_type]
        raise TypeError(f"{handler.qualified} belongs to a {handler.service_type.value}: use ctx.{verb}")
    if expected is not ServiceType.SERVICE and not key:
        raise ValueError(f"calling {handler.qualified} needs a key (object key or workflow id)")
    return handler


def _target_of(handler: Handler, key: str | None) -> InvocationTarget:
    return InvocationTarget(handler.service, handler.name, key, handler.service_type, handler.kind)


def _generic_target(service: str, handler: str, key: str | None) -> InvocationTarget:
    # The SDK does not know the callee's type: a guess the processor replaces from its registry.
    service_type = ServiceType.SERVICE if key is None else ServiceType.VIRTUAL_OBJECT
    return InvocationTarget(service, handler, key, service_type, HandlerKind.EXCLUSIVE)

