"""Service, VirtualObject and Workflow declarations and the metadata of their handlers."""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal, TypeVar

from keystate.schemas.ids import HandlerKind, ServiceType

from .serde import Serde, serde_for

__all__ = ["Handler", "InvocationRetryPolicy", "Service", "VirtualObject", "Workflow", "handler_of"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_ATTR = "__keystate_handler__"


@dataclass(frozen=True, slots=True)
class InvocationRetryPolicy:
    """How the processor retries failed attempts: exponential backoff, then fail or pause.

    The delay before retry n (n >= 1) is `min(initial_interval * factor**(n-1), max_interval)`.
    `max_attempts` counts every attempt, the first included; None retries forever. When it is
    reached the invocation fails (`"fail"`, the last error becomes its output) or waits for an
    operator to resume it (`"pause"`).
    """

    initial_interval: timedelta = timedelta(milliseconds=50)
    factor: float = 2.0
    max_interval: timedelta = timedelta(seconds=60)
    max_attempts: int | None = None
    on_max_attempts: Literal["fail", "pause"] = "fail"

    def __post_init__(self) -> None:
        if self.initial_interval <= timedelta(0):
            raise ValueError(f"initial_interval must be positive, got {self.initial_interval}")
        if self.max_interval < self.initial_interval:
            raise ValueError(
                f"max_interval ({self.max_interval}) must not be shorter than initial_interval ({self.initial_interval})"
            )
        if not self.factor >= 1.0:
            raise ValueError(f"factor must be at least 1.0 (1.0 = constant delay), got {self.factor}")
        if self.max_attempts is not None and (isinstance(self.max_attempts, bool) or self.max_attempts < 1):
            raise ValueError(f"max_attempts must be a positive int or None (unlimited), got {self.max_attempts!r}")
        if self.on_max_attempts not in ("fail", "pause"):
            raise ValueError(f"on_max_attempts must be 'fail' or 'pause', got {self.on_max_attempts!r}")


_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")


def _header_names(names: Sequence[str]) -> tuple[str, ...]:
    if isinstance(names, str):
        raise TypeError(f"forward_headers must be a list of header names, e.g. [{names!r}], not a string")
    for name in names:
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise ValueError(f"forward_headers: {name!r} is not an HTTP header name")
    return tuple(sorted({n.lower() for n in names}))


_MEDIA_TYPE = re.compile(r"(\*|[!#$%&'*+.^_`|~0-9A-Za-z-]+)/(\*|[!#$%&'*+.^_`|~0-9A-Za-z-]+)(\s*;.*)?")


def _media_type(name: str, value: str | None, *, wildcard: bool) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _MEDIA_TYPE.fullmatch(value.strip()):
        raise ValueError(f"{name} must be a media type like 'application/json' or None, got {value!r}")
    if not wildcard and "*" in value.split(";", 1)[0]:
        raise ValueError(f"{name} is the content type of the output, a wildcard like {value!r} is not one")
    return value.strip()


def _positive(name: str, value: timedelta | None) -> timedelta | None:
    if value is not None and (not isinstance(value, timedelta) or value <= timedelta(0)):
        raise ValueError(f"{name} must be a positive timedelta or None, got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Handler:
    """A registered handler: where it lives, how it runs, and how its input and output are encoded."""

    service: str
    service_type: ServiceType
    name: str
    kind: HandlerKind
    fn: Callable[..., Awaitable[Any]]
    takes_input: bool
    input_serde: Serde[Any]
    output_serde: Serde[Any]
    retry_policy: InvocationRetryPolicy | None = None
    # None: as the service says (Restate's rule).
    ingress_private: bool | None = None
    # What the ingress accepts as the body (may be a wildcard like "text/*") and the content
    # type of the output; None: the serde's content type.
    accept: str | None = None
    content_type: str | None = None

    @property
    def qualified(self) -> str:
        return f"{self.service}/{self.name}"


def handler_of(fn: Any) -> Handler:
    """The handler a decorated function was registered as; TypeError for anything else."""
    found = getattr(fn, _ATTR, None)
    if not isinstance(found, Handler):
        raise TypeError(
            f"{getattr(fn, '__qualname__', fn)!r} is not a keystate handler: pass a function decorated "
            "with @service.handler(), or use ctx.generic_call / generic_send"
        )
    return found


class _ServiceBase:
    service_type: ServiceType

    def __init__(
        self,
        name: str,
        *,
        description: str | None = None,
        metadata: dict[str, str] | None = None,
        invocation_retry_policy: InvocationRetryPolicy | None = None,
        inactivity_timeout: timedelta | None = None,
        abort_timeout: timedelta | None = None,
        idempotency_retention: timedelta | None = None,
        ingress_private: bool = False,
        forward_headers: Sequence[str] = (),
    ) -> None:
        """None for a setting means: the server's default.

        `inactivity_timeout`: an attempt silent this long is asked to suspend (or retried);
        `abort_timeout`: an attempt asked to stop is aborted this long after;
        `idempotency_retention`: how long the result of an invocation sent with an idempotency
        key is kept to answer duplicates;
        `ingress_private`: the ingress refuses calls to its handlers (HTTP 400, and a failure
        result for keystate.requests); other handlers still call them. A handler's own
        `ingress_private` wins;
        `forward_headers`: names of headers on the server's secret deny-list (e.g.
        `authorization`) that this service still receives. They are then stored with the
        invocation in Kafka (log and changelog) like every other forwarded header.
        """
        if not name or "/" in name:
            raise ValueError(f"invalid service name {name!r}: it must be non-empty and contain no '/'")
        if invocation_retry_policy is not None and not isinstance(invocation_retry_policy, InvocationRetryPolicy):
            raise TypeError("invocation_retry_policy must be a keystate.InvocationRetryPolicy")
        self.name = name
        self.description = description
        self.metadata = dict(metadata or {})
        self.invocation_retry_policy = invocation_retry_policy
        self.inactivity_timeout = _positive("inactivity_timeout", inactivity_timeout)
        self.abort_timeout = _positive("abort_timeout", abort_timeout)
        self.idempotency_retention = _positive("idempotency_retention", idempotency_retention)
        if not isinstance(ingress_private, bool):
            raise TypeError(f"ingress_private must be True or False, got {ingress_private!r}")
        self.ingress_private = ingress_private
        self.forward_headers = _header_names(forward_headers)
        self.handlers: dict[str, Handler] = {}

    @property
    def journal_retention(self) -> timedelta | None:
        """How long a completed invocation (and its journal) is kept; None = server default."""
        return self.idempotency_retention

    def _register(
        self,
        fn: Callable[..., Awaitable[Any]],
        name: str | None,
        kind: HandlerKind,
        input_serde: Serde[Any] | None,
        output_serde: Serde[Any] | None,
        retry_policy: InvocationRetryPolicy | None = None,
        ingress_private: bool | None = None,
        accept: str | None = None,
        content_type: str | None = None,
    ) -> None:
        accept = _media_type("accept", accept, wildcard=True)
        content_type = _media_type("content_type", content_type, wildcard=False)
        if ingress_private is not None and not isinstance(ingress_private, bool):
            raise TypeError(f"ingress_private must be True, False or None (as the service), got {ingress_private!r}")
        if retry_policy is not None and not isinstance(retry_policy, InvocationRetryPolicy):
            raise TypeError("invocation_retry_policy must be a keystate.InvocationRetryPolicy")
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"handler {fn.__qualname__} must be an async function: async def h(ctx, arg)")
        handler_name = name or fn.__name__
        if handler_name in self.handlers:
            raise ValueError(f"service {self.name} already has a handler named {handler_name!r}")
        params = list(inspect.signature(fn).parameters.values())
        if len(params) not in (1, 2):
            raise TypeError(
                f"handler {fn.__qualname__} must take (ctx) or (ctx, arg), it takes {len(params)} parameters"
            )
        try:
            hints = typing.get_type_hints(fn)
        except Exception:  # unresolvable forward references: fall back to JSON
            hints = {}
        arg_hint = hints.get(params[1].name) if len(params) == 2 else None
        self.handlers[handler_name] = handler = Handler(
            service=self.name,
            service_type=self.service_type,
            name=handler_name,
            kind=kind,
            fn=fn,
            takes_input=len(params) == 2,
            # Input that cannot become the declared type is a terminal 400, not a retried TypeError.
            input_serde=serde_for(arg_hint, input_serde, check_type=True),
            output_serde=serde_for(hints.get("return"), output_serde),
            retry_policy=retry_policy,
            ingress_private=ingress_private,
            accept=accept,
            content_type=content_type,
        )
        setattr(fn, _ATTR, handler)


class Service(_ServiceBase):
    """A stateless service: handlers addressed by `service/handler`, run concurrently."""

    service_type = ServiceType.SERVICE

    def handler(
        self,
        name: str | None = None,
        kind: None = None,
        *,
        input_serde: Serde[Any] | None = None,
        output_serde: Serde[Any] | None = None,
        invocation_retry_policy: InvocationRetryPolicy | None = None,
        ingress_private: bool | None = None,
        accept: str | None = None,
        content_type: str | None = None,
    ) -> Callable[[F], F]:
        """Register `async def h(ctx: Context, arg: T) -> R` (or `h(ctx)`) as a handler.

        `accept`: the content types the ingress takes as the request body (wildcards like
        `text/*` allowed; default: the input serde's); `content_type`: the content type of the
        output (default: the output serde's). Both go into the discovery manifest as Restate's
        `input.contentType` and `output.contentType`.
        """
        if kind is not None:
            raise ValueError("services have no handler kinds; use a VirtualObject for exclusive/shared")

        def register(fn: F) -> F:
            # Services have no concurrency kind; the contract's Target needs one, EXCLUSIVE is its default.
            self._register(fn, name, HandlerKind.EXCLUSIVE, input_serde, output_serde, invocation_retry_policy, ingress_private,
                           accept, content_type)
            return fn

        return register


class VirtualObject(_ServiceBase):
    """A keyed object with K/V state: one exclusive handler per key at a time, shared ones concurrently."""

    service_type = ServiceType.VIRTUAL_OBJECT

    def handler(
        self,
        name: str | None = None,
        kind: Literal["exclusive", "shared"] | None = "exclusive",
        *,
        input_serde: Serde[Any] | None = None,
        output_serde: Serde[Any] | None = None,
        invocation_retry_policy: InvocationRetryPolicy | None = None,
        ingress_private: bool | None = None,
        accept: str | None = None,
        content_type: str | None = None,
    ) -> Callable[[F], F]:
        """Register an exclusive (`ObjectContext`) or shared (`ObjectSharedContext`) handler.

        `accept` and `content_type` as in `Service.handler`."""
        kinds = {None: HandlerKind.EXCLUSIVE, "exclusive": HandlerKind.EXCLUSIVE, "shared": HandlerKind.SHARED}
        if kind not in kinds:
            raise ValueError(f"kind must be 'exclusive' or 'shared', got {kind!r}")

        def register(fn: F) -> F:
            self._register(fn, name, kinds[kind], input_serde, output_serde, invocation_retry_policy, ingress_private,
                           accept, content_type)
            return fn

        return register


class Workflow(_ServiceBase):
    """A workflow: `main` runs once per workflow id; shared handlers signal and query it."""

    service_type = ServiceType.WORKFLOW

    def __init__(
        self,
        name: str,
        *,
        description: str | None = None,
        metadata: dict[str, str] | None = None,
        invocation_retry_policy: InvocationRetryPolicy | None = None,
        inactivity_timeout: timedelta | None = None,
        abort_timeout: timedelta | None = None,
        idempotency_retention: timedelta | None = None,
        workflow_retention: timedelta | None = timedelta(days=1),
        ingress_private: bool = False,
        forward_headers: Sequence[str] = (),
    ) -> None:
        """`workflow_retention`: how long a finished workflow's state, promises and result are
        kept (and its id blocked from running again); None = the server's default."""
        super().__init__(
            name,
            description=description,
            metadata=metadata,
            invocation_retry_policy=invocation_retry_policy,
            inactivity_timeout=inactivity_timeout,
            abort_timeout=abort_timeout,
            idempotency_retention=idempotency_retention,
            ingress_private=ingress_private,
            forward_headers=forward_headers,
        )
        self.workflow_retention = _positive("workflow_retention", workflow_retention)

    @property
    def journal_retention(self) -> timedelta | None:
        # The run handler's result is what a workflow id keeps: its retention wins.
        return self.workflow_retention

    def main(
        self,
        name: str | None = None,
        *,
        input_serde: Serde[Any] | None = None,
        output_serde: Serde[Any] | None = None,
        invocation_retry_policy: InvocationRetryPolicy | None = None,
        ingress_private: bool | None = None,
        accept: str | None = None,
        content_type: str | None = None,
    ) -> Callable[[F], F]:
        """Register the run handler (`WorkflowContext`); a workflow has exactly one."""

        def register(fn: F) -> F:
            if any(h.kind is HandlerKind.WORKFLOW for h in self.handlers.values()):
                raise ValueError(f"workflow {self.name} already has a main handler")
            self._register(fn, name, HandlerKind.WORKFLOW, input_serde, output_serde, invocation_retry_policy, ingress_private,
                           accept, content_type)
            return fn

        return register

    def handler(
        self,
        name: str | None = None,
        *,
        input_serde: Serde[Any] | None = None,
        output_serde: Serde[Any] | None = None,
        invocation_retry_policy: InvocationRetryPolicy | None = None,
        ingress_private: bool | None = None,
        accept: str | None = None,
        content_type: str | None = None,
    ) -> Callable[[F], F]:
        """Register a shared handler (`WorkflowSharedContext`), e.g. a signal or a query."""

        def register(fn: F) -> F:
            self._register(fn, name, HandlerKind.SHARED, input_serde, output_serde, invocation_retry_policy, ingress_private,
                           accept, content_type)
            return fn

        return register


AnyService = Service | VirtualObject | Workflow
