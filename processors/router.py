"""The keystate.requests router: InvocationRequest records from users' producers become InvokeCommands."""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from keystate.schemas._codec import Codec
from keystate.schemas.errors import ContractError
from keystate.schemas.ids import InvocationId, InvocationTarget, ServiceType, idempotency_partition_key
from keystate.schemas.headers import DEFAULT_REDACT_HEADERS, strip_secrets
from keystate.schemas.limits import MAX_DELAY_MS
from keystate.server.meta import MetaState, handler_is_private
from keystate.server.tracing import with_kafka_trace_headers

from .records import KafkaHeaders

__all__ = [
    "CORRELATION_ID",
    "MAX_DELAY_MS",
    "Invalid",
    "Refused",
    "Routed",
    "TopicExists",
    "correlation_of",
    "route_request",
    "topic_name_problem",
]

INVOCATION_REQUEST = "keystate.InvocationRequest"
CORRELATION_ID = "correlation-id"


_TOPIC_CHARS = re.compile(r"[a-zA-Z0-9._-]+")
_MAX_TOPIC_LENGTH = 249

TopicExists = Callable[[str], bool]
"""Whether a topic exists on the cluster (the shell answers from cached metadata)."""


@dataclass(frozen=True, slots=True)
class Routed:
    """A valid request, as the InvokeCommand to append to the log."""

    invocation_id: InvocationId
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Invalid:
    """A record that cannot be accepted; `reason` says what to fix."""

    reason: str


@dataclass(frozen=True, slots=True)
class Refused:
    """A well-formed request keystate will not run (an ingress-private handler): answered with a failure.

    `result` is the InvocationResult to publish to keystate.results and to `reply_topic`, so the
    producer learns why, as an HTTP caller would.
    """

    invocation_id: InvocationId
    result: dict[str, Any]
    reply_topic: str | None


def private_handler_message(service: str, handler: str) -> str:
    """Restate's refusal of an ingress-private handler, with how to reach it (as the HTTP ingress says it)."""
    return (
        f"the invoked service is not public: {service}/{handler} is ingress-private, only other handlers can call "
        "it; to call it from keystate.requests, declare it with ingress_private=False and register the "
        "deployment again"
    )


def topic_name_problem(name: str) -> str | None:
    """Why `name` is not a legal Kafka topic name, or None if it is."""
    if name in ("", ".", ".."):
        return f"{name!r} is not a legal topic name"
    if len(name) > _MAX_TOPIC_LENGTH:
        return f"a topic name has at most {_MAX_TOPIC_LENGTH} characters, this one has {len(name)}"
    if not _TOPIC_CHARS.fullmatch(name):
        return f"{name[:80]!r} is not a legal topic name: use only ASCII letters, digits, '.', '_' and '-'"
    return None


def correlation_of(
    key: bytes | None,
    kafka_headers: KafkaHeaders | None,
    request_headers: Mapping[str, str],
    redact: Collection[str],
) -> dict[str, Any] | None:
    """The `keystate.Correlation` a request's result carries: its Kafka key and Kafka headers; None if it has neither.

    Headers that are not UTF-8 are left out, and so are the secret ones (`redact`), even those a service
    forwards: results are public. A `correlation-id` given only in the InvocationRequest's `headers` map
    counts too, so producers that cannot set Kafka headers can still correlate.
    """
    headers: dict[str, str] = {}
    pairs = kafka_headers.items() if isinstance(kafka_headers, Mapping) else kafka_headers or ()
    for name, raw in pairs:
        if isinstance(raw, str):
            headers[name] = raw
        elif raw is not None:
            try:
                headers[name] = raw.decode("utf-8")
            except UnicodeDecodeError:
                continue
    found = next((v for k, v in request_headers.items() if k.lower() == CORRELATION_ID), None)
    if found is not None and not any(k.lower() == CORRELATION_ID for k in headers):
        headers[CORRELATION_ID] = found
    headers = strip_secrets(headers, redact)
    if key is None and not headers:
        return None
    return {"key": key, "headers": headers}


def route_request(
    codec: Codec,
    value: bytes | None,
    meta: MetaState,
    now_ms: int,
    source: str,
    topic_exists: TopicExists | None = None,
    redact: frozenset[str] = DEFAULT_REDACT_HEADERS,
    *,
    record_key: bytes | None = None,
    kafka_headers: KafkaHeaders | None = None,
) -> Routed | Invalid | Refused:
    """Validate one keystate.requests record against the registered services and the cluster's topics.

    Headers named in `redact` (the secret deny-list) are dropped unless the service forwards them.
    The record's Kafka key (`record_key`) and `kafka_headers` travel with the invocation onto its result (`correlation_of`).
    """
    if value is None:
        return Invalid("empty record value; produce an Avro InvocationRequest in the Confluent wire format")
    try:
        request = codec.decode_as(INVOCATION_REQUEST, value)
    except ContractError as exc:
        return Invalid(f"not an InvocationRequest: {exc}")
    correlation = correlation_of(record_key, kafka_headers, request.get("headers") or {}, redact)
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
    if delay is not None and delay > MAX_DELAY_MS:
        return Invalid(
            f"delay_ms {delay} is too large: at most {MAX_DELAY_MS} ({MAX_DELAY_MS // 86_400_000} days); schedule nearer"
        )
    reply_topic = request.get("reply_topic")
    if reply_topic is not None:
        problem = topic_name_problem(reply_topic)
        if problem is None and topic_exists is not None and not topic_exists(reply_topic):
            problem = f"reply topic {reply_topic!r} does not exist"
        if problem is not None:
            return Invalid(f"{problem}; create the reply topic first, or leave 'reply_topic' null for keystate.results")
    target = {
        "service": service,
        "handler": handler,
        "key": key,
        "service_type": service_type,
        "handler_kind": handlers[handler]["kind"],
    }
    invocation_target = InvocationTarget(service, handler, key)
    idempotency_key = request.get("idempotency_key")
    if idempotency_key:
        # Every record with one idempotency key must meet the same idempotency row, on one partition.
        iid = InvocationId.new(idempotency_partition_key(invocation_target, idempotency_key))
    else:
        iid = InvocationId.for_target(invocation_target)
    if handler_is_private(metadata, handlers[handler]):
        failure = {"code": 400, "message": private_handler_message(service, handler)}
        result = {
            "invocation_id": str(iid),
            "target": target,
            "status": "FAILED",
            "output": None,
            "failure": failure,
            "idempotency_key": idempotency_key,
            "completed_at_ms": now_ms,
            "correlation": correlation,
        }
        return Refused(iid, result, reply_topic)
    headers = strip_secrets(request.get("headers") or {}, redact, metadata.get("forward_headers", ()))
    # A produced request joins its producer's trace, as an HTTP request does (keystate.server.tracing).
    headers = with_kafka_trace_headers(headers, kafka_headers)
    record = {
        "invocation_id": str(iid),
        "target": target,
        "argument": request["argument"],
        "headers": headers,
        "idempotency_key": idempotency_key,
        "caller": None,
        "reply_topic": reply_topic,
        "execute_at_ms": now_ms + delay if delay else None,
        "created_at_ms": now_ms,
        "source": source,
        "correlation": correlation,
    }
    return Routed(iid, record)
