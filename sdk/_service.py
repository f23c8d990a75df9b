"""Service, VirtualObject and Workflow declarations and the metadata of their handlers."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from keystate.schemas.ids import HandlerKind, ServiceType

from .serde import Serde, serde_for

__all__ = ["Handler", "Service", "VirtualObject", "Workflow", "handler_of"]

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

_ATTR = "__keystate_handler__"


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

    def __init__(self, name: str, *, description: str | None = None, metadata: dict[str, str] | None = None) -> None:
        if not name or "/" in name:
            raise ValueError(f"invalid service name {name!r}: it must be non-empty and contain no '/'")
        self.name = name
        self.description = description
        self.metadata = dict(metadata or {})
        self.handlers: dict[str, Handler] = {}

    def _register(
        self,
        fn: Callable[..., Awaitable[Any]],
        name: str | None,
        kind: HandlerKind,
        input_serde: Serde[Any] | None,
        output_serde: Serde[Any] | None,
    ) -> None:
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
            input_serde=serde_for(arg_hint, input_serde),
            output_serde=serde_for(hints.get("return"), output_serde),
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
    ) -> Callable[[F], F]:
        """Register `async def h(ctx: Context, arg: T) -> R` (or `h(ctx)`) as a handler."""
        if kind is not None:
            raise ValueError("services have no handler kinds; use a VirtualObject for exclusive/shared")

        def register(fn: F) -> F:
            # Services have no concurrency kind; the contract's Target needs one, EXCLUSIVE is its default.
            self._register(fn, name, HandlerKind.EXCLUSIVE, input_serde, output_serde)
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
    ) -> Callable[[F], F]:
        """Register an exclusive (`ObjectContext`) or shared (`ObjectSharedContext`) handler."""
        kinds = {None: HandlerKind.EXCLUSIVE, "exclusive": HandlerKind.EXCLUSIVE, "shared": HandlerKind.SHARED}
        if kind not in kinds:
            raise ValueError(f"kind must be 'exclusive' or 'shared', got {kind!r}")

        def register(fn: F) -> F:
            self._register(fn, name, kinds[kind], input_serde, output_serde)
            return fn

        return register


class Workflow(_ServiceBase):
    """A workflow: `main` runs once per workflow id; shared handlers signal and query it."""

    service_type = ServiceType.WORKFLOW

    def main(
        self,
        name: str | None = None,
        *,
        input_serde: Serde[Any] | None = None,
        output_serde: Serde[Any] | None = None,
    ) -> Callable[[F], F]:
        """Register the run handler (`WorkflowContext`); a workflow has exactly one."""

        def register(fn: F) -> F:
            if any(h.kind is HandlerKind.WORKFLOW for h in self.handlers.values()):
                raise ValueError(f"workflow {self.name} already has a main handler")
            self._register(fn, name, HandlerKind.WORKFLOW, input_serde, output_serde)
            return fn

        return register

    def handler(
        self,
        name: str | None = None,
        *,
        input_serde: Serde[Any] | None = None,
        output_serde: Serde[Any] | None = None,
    ) -> Callable[[F], F]:
        """Register a shared handler (`WorkflowSharedContext`), e.g. a signal or a query."""

        def register(fn: F) -> F:
            self._register(fn, name, HandlerKind.SHARED, input_serde, output_serde)
            return fn

        return register


AnyService = Service | VirtualObject | Workflow
