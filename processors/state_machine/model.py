"""Record names, result helpers and settings the state machine works with (rows: keystate.schemas.records)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from keystate.schemas.enums import HandlerKind, OnMaxAttempts, ServiceType
from keystate.schemas.records import Result, Target

__all__ = [
    "Config",
    "HandlerLookup",
    "Result",
    "RetryPolicy",
    "VALUE",
    "FAILURE",
    "failure",
    "value",
    "is_keyed",
    "is_completed",
    "is_exclusive",
    "is_workflow_run",
]

NS = "keystate."
VALUE = NS + "Value"
FAILURE = NS + "Failure"

def value(data: bytes) -> Result:
    return (VALUE, {"value": data})


def failure(code: int, message: str) -> Result:
    return (FAILURE, {"code": code, "message": message})


def is_keyed(target: Mapping[str, Any]) -> bool:
    return target["service_type"] in (ServiceType.VIRTUAL_OBJECT, ServiceType.WORKFLOW)


def is_completed(name: str, entry: Mapping[str, Any]) -> bool:
    """Whether a journal entry that waits for something (call, sleep, awakeable, promise) has its result."""
    if name == NS + "SleepEntry":
        return bool(entry["fired"])
    return entry.get("result") is not None


def is_workflow_run(target: Mapping[str, Any]) -> bool:
    return bool(target["service_type"] == ServiceType.WORKFLOW and target["handler_kind"] == HandlerKind.WORKFLOW)


def is_exclusive(target: Mapping[str, Any]) -> bool:
    """Exclusive handlers of one key run one at a time (workflow `run` too)."""
    return is_keyed(target) and target["handler_kind"] in (HandlerKind.EXCLUSIVE, HandlerKind.WORKFLOW)


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff of failed attempts; `max_attempts=None` retries forever."""

    initial_interval_ms: int = 100
    factor: float = 2.0
    max_interval_ms: int = 10_000
    max_attempts: int | None = None
    # What happens when max_attempts is reached: FAIL ends the invocation, PAUSE parks it
    # until an operator resumes (or cancels or kills) it.
    on_max_attempts: OnMaxAttempts = OnMaxAttempts.FAIL

    def delay_ms(self, retry_count: int) -> int:
        """The wait before retry number `retry_count` (1 for the first retry)."""
        delay = self.initial_interval_ms * self.factor ** max(0, retry_count - 1)
        return int(min(delay, self.max_interval_ms))

    @classmethod
    def from_record(cls, record: Mapping[str, Any] | None) -> RetryPolicy | None:
        if record is None:
            return None
        return cls(
            initial_interval_ms=record["initial_interval_ms"],
            factor=record["factor"],
            max_interval_ms=record["max_interval_ms"],
            max_attempts=record.get("max_attempts"),
            on_max_attempts=OnMaxAttempts(record.get("on_max_attempts") or OnMaxAttempts.FAIL),
        )


def _no_deployment(service: str) -> str | None:
    return None


def _never_removed(deployment_id: str) -> bool:
    return False


def _no_policy(service: str, handler: str) -> RetryPolicy | None:
    return None


def _no_retention(service: str) -> int | None:
    return None


HandlerLookup = Callable[[str, str], "tuple[str, str] | None"]
"""(service, handler) -> (service type, handler kind) as registered, e.g. ("WORKFLOW", "SHARED"); None if unknown."""


@dataclass(frozen=True, slots=True)
class Config:
    """Settings the state machine reads; lookups must be pure functions of their arguments."""

    retry_policy: RetryPolicy = field(default_factory=RetryPolicy)
    # Completed invocations stay answerable this long, then a timer purges them.
    completion_retention_ms: int = 24 * 3600 * 1000
    # A completed invocation's journal stays readable this long (0: deleted at completion); its
    # status row is then kept at least as long. The processor's setting defaults to a day like
    # Restate's; 0 here keeps the pure machine's stories short.
    journal_retention_ms: int = 0
    # Which deployment new invocations of a service go to (pinned at their first attempt).
    deployment_for: Callable[[str], str | None] = _no_deployment
    # Whether a deployment was removed: an invocation pinned to it is paused instead of started
    # on other code (the shell knows it from the tombstones in keystate.meta).
    deployment_removed: Callable[[str], bool] = _never_removed
    service_retry_policy: Callable[[str, str], RetryPolicy | None] = _no_policy
    # Per-service retention (the manifest's journalRetention, which the SDK fills from its workflow or
    # idempotency retention) overriding both defaults: the status and the journal are kept that long.
    service_retention_ms: Callable[[str], int | None] = _no_retention
    # Per-service journal retention, apart from the above as in Restate (PATCH /services journal_retention);
    # None: `service_retention_ms` serves the journal too.
    service_journal_retention_ms: Callable[[str], int | None] | None = None
    # The registered truth about callees; None (no registry, e.g. in tests) trusts the caller's target.
    handler_target: HandlerLookup | None = None
    # Results of HTTP calls also go to keystate.results (the public stream of every result); False: only to
    # the waiting ingress's reply topic, which saves a partition in the completing transaction.
    publish_ingress_results: bool = True

    def resolve_target(self, target: Mapping[str, Any]) -> dict[str, Any] | str:
        """`target` with its registered service type and handler kind, or a message saying why it cannot be called.

        Callers may only guess (ctx.generic_call knows names, not types); the type decides whether
        a workflow run is deduplicated and whether a handler waits in its key's inbox.
        """
        if self.handler_target is None:
            return dict(target)
        service, handler, key = target["service"], target["handler"], target.get("key")
        found = self.handler_target(service, handler)
        if found is None:
            return (
                f"{service}/{handler} is not a registered handler (no service {service!r}, or it has no handler "
                f"{handler!r}); check the names, or register the deployment that serves it"
            )
        try:
            service_type, handler_kind = ServiceType(found[0]), HandlerKind(found[1])
        except ValueError:
            return (
                f"{service}/{handler} is registered as {found[0]!r}/{found[1]!r}, which this processor does not know; "
                f"upgrade the processor, or register the deployment again"
            )
        keyed = service_type.keyed
        if keyed and key is None:
            kind = "virtual object" if service_type is ServiceType.VIRTUAL_OBJECT else "workflow"
            return f"{service} is a {kind}: call {service}/{handler} with a key"
        if not keyed and key is not None:
            return f"{service} is a service and takes no key, but {key[:100]!r} was given; call {service}/{handler} without one"
        return {**target, "service_type": service_type, "handler_kind": handler_kind}

    def retention_for(self, target: Target) -> int:
        configured = self.service_retention_ms(target.service)
        return self.completion_retention_ms if configured is None else configured

    def journal_retention_for(self, target: Target) -> int:
        """How long a completed invocation of `target` keeps its journal: the service's retention, else the default."""
        lookup = self.service_retention_ms if self.service_journal_retention_ms is None else self.service_journal_retention_ms
        configured = lookup(target.service)
        return self.journal_retention_ms if configured is None else configured

    def policy_for(self, target: Target) -> RetryPolicy:
        return self.service_retry_policy(target.service, target.handler) or self.retry_policy
