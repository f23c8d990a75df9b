"""The keystate.requests router: InvocationRequest records from users' producers become InvokeCommands."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from keystate.schemas._codec import Codec
from keystate.schemas.errors import ContractError
from keystate.schemas.ids import InvocationId, InvocationTarget, ServiceType
from keystate.server.meta import MetaState

__all__ = ["Invalid", "Routed", "route_request"]

INVOCATION_REQUEST = "keystate.InvocationRequest"


@dataclass(frozen=True, slots=True)
class Routed:
    """A valid request, as the InvokeCommand to append to the log."""

    invocation_id: InvocationId
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Invalid:
    """A record that cannot be accepted; `reason` says what to fix."""

    reason: str


def route_request(codec: Codec, value: bytes | None, meta: MetaState, now_ms: int, source: str) -> Routed | Invalid:
    """Validate one keystate.requests record against the registered services."""
    if value is None:
        return Invalid("empty record value; produce an Avro InvocationRequest in the Confluent wire format")
    try:
        request = codec.decode_as(INVOCATION_REQUEST, value)
    except ContractError as exc:
        return Invalid(f"not an InvocationRequest: {exc}")
    service, handler, key = request["service"], request["handler"], request.get("key")
    entry = meta.service(service)
    if entry is None:
        known = ", ".join(sorted(meta.services)) or "none registered"
        return Invalid(f"unknown service {service!r} (known: {known})")
    metadata = entry.metadata
    handlers = {h["name"]: h for h in metadata["handlers"]}
    if handler not in handlers:
        return Invalid(f"service {service!r} has no handler {handler!r} (handlers: {', '.join(sorted(handlers))})")
    service_type = metadata["service_type"]
    if service_type == ServiceType.SERVICE.value and key is not None:
        return Invalid(f"{service} is a service: leave 'key' null (it is for virtual objects and workflows)")
    if service_type != ServiceType.SERVICE.value and not key:
        return Invalid(f"{service} is a {service_type.lower().replace('_', ' ')}: 'key' is required")
    delay = request.get("delay_ms")
    if delay is not None and delay < 0:
        return Invalid(f"delay_ms must not be negative, got {delay}")
    target = {
        "service": service,
        "handler": handler,
        "key": key,
        "service_type": service_type,
        "handler_kind": handlers[handler]["kind"],
    }
    iid = InvocationId.for_target(InvocationTarget(service, handler, key))
    record = {
        "invocation_id": str(iid),
        "target": target,
        "argument": request["argument"],
        "headers": request.get("headers") or {},
        "idempotency_key": request.get("idempotency_key"),
        "caller": None,
        "reply_topic": request.get("reply_topic"),
        "execute_at_ms": now_ms + delay if delay else None,
        "created_at_ms": now_ms,
        "source": source,
    }
    return Routed(iid, record)
