"""Service settings changed through the admin API (`keystate.ServiceSettings` in keystate.meta) and how they apply.

A deployment declares a service's settings; `PATCH /services/{name}` overrides them with a record
keyed `service:<name>` in keystate.meta. The override outlives re-registrations (as in Restate, it
stays until changed), so the effective settings are always: the latest deployment's, then the
override on top. Pure functions here; `save_service_settings` is the one writer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from keystate.schemas._codec import codec
from keystate.schemas.errors import ContractError

from .errors import KafkaUnavailable, MetaError

if TYPE_CHECKING:
    from .kafka import AsyncProducer
    from .meta import MetaView

__all__ = [
    "DURATION_SETTINGS",
    "SERVICE_SETTINGS",
    "SETTINGS_KEY_PREFIX",
    "completion_retention_ms",
    "effective_metadata",
    "journal_retention_ms",
    "merged_settings",
    "save_service_settings",
    "service_of_key",
    "settings_key",
]

SERVICE_SETTINGS = "keystate.ServiceSettings"
# Deployment ids start with "dp_", so the two kinds of keys in keystate.meta never collide.
SETTINGS_KEY_PREFIX = "service:"
# The overridable durations, as the record names them (milliseconds).
DURATION_SETTINGS = (
    "idempotency_retention_ms",
    "workflow_completion_retention_ms",
    "journal_retention_ms",
    "inactivity_timeout_ms",
    "abort_timeout_ms",
)


def settings_key(service: str) -> str:
    """The keystate.meta key of `service`'s settings."""
    return SETTINGS_KEY_PREFIX + service


def service_of_key(key: str) -> str | None:
    """The service a keystate.meta key holds settings for; None for a deployment's key."""
    return key[len(SETTINGS_KEY_PREFIX):] if key.startswith(SETTINGS_KEY_PREFIX) else None


def merged_settings(old: Mapping[str, Any] | None, service: str, patch: Mapping[str, Any], now_ms: int) -> dict[str, Any]:
    """The settings record after `patch` (public and/or *_ms fields): fields it does not name keep their value."""
    unknown = set(patch) - {"public", *DURATION_SETTINGS}
    if unknown:
        raise MetaError(f"unknown service settings {sorted(unknown)}; known: public, {', '.join(DURATION_SETTINGS)}")
    record: dict[str, Any] = {"service_name": service, "public": None, **dict.fromkeys(DURATION_SETTINGS)}
    if old is not None:
        record.update({k: v for k, v in old.items() if k in record})
    record.update(patch)
    record["service_name"] = service
    record["modified_at_ms"] = now_ms
    return record


def effective_metadata(declared: dict[str, Any], settings: Mapping[str, Any] | None) -> dict[str, Any]:
    """A service's metadata as its deployment declared it, with the overridden public flag and timeouts applied.

    public=false makes the service ingress-private; its handlers that only inherited the service's
    visibility follow, a handler that declared its own keeps it (as an ingress-private service with
    one public handler behaves). Retentions are read with `journal_retention_ms` / `completion_retention_ms`.
    """
    if not settings:
        return declared
    effective = dict(declared)
    public = settings.get("public")
    if public is not None:
        was_private = bool(declared.get("ingress_private", False))
        effective["ingress_private"] = not public
        effective["handlers"] = [
            {**h, "ingress_private": not public} if bool(h.get("ingress_private", was_private)) == was_private else h
            for h in declared["handlers"]
        ]
    for name in ("inactivity_timeout_ms", "abort_timeout_ms"):
        if settings.get(name) is not None:
            effective[name] = settings[name]
    return effective


def journal_retention_ms(declared: Mapping[str, Any], settings: Mapping[str, Any] | None) -> int | None:
    """How long a completed invocation's journal is kept; None: the processor's default."""
    if settings and settings.get("journal_retention_ms") is not None:
        return int(settings["journal_retention_ms"])
    return _declared_retention(declared)


def completion_retention_ms(declared: Mapping[str, Any], settings: Mapping[str, Any] | None) -> int | None:
    """How long a completed invocation (status row, idempotency key, workflow result) is kept; None: the default.

    Per service, as the processor's lookup is: a workflow's is its workflow completion retention,
    any other service's its idempotency retention.
    """
    name = "workflow_completion_retention_ms" if declared.get("service_type") == "WORKFLOW" else "idempotency_retention_ms"
    if settings and settings.get(name) is not None:
        return int(settings[name])
    return _declared_retention(declared)


def _declared_retention(declared: Mapping[str, Any]) -> int | None:
    # The manifest's journalRetention, which the SDK fills from its idempotency or workflow retention.
    value = declared.get("retention_ms")
    return None if value is None else int(value)


async def save_service_settings(
    view: MetaView, producer: AsyncProducer, service: str, patch: Mapping[str, Any], *, now_ms: int, timeout: float = 30.0
) -> dict[str, Any]:
    """Merge `patch` into `service`'s settings, write them to keystate.meta and return once `view` has read them back."""
    async with view.settings_lock:  # one read-merge-write at a time in this process
        record = merged_settings(view.state.settings.get(service), service, patch, now_ms)
        try:
            value = codec().encode(SERVICE_SETTINGS, record)
            record = dict(codec().decode_as(SERVICE_SETTINGS, value))
        except ContractError as exc:
            raise MetaError(f"cannot store the settings of {service}: {exc}") from exc
        key = settings_key(service)
        delivery = producer.produce(
            view.settings.topics.meta, value, key=key.encode("utf-8"), headers=[("type", SERVICE_SETTINGS.encode())]
        )
        try:
            await asyncio.wait_for(delivery, timeout)
        except TimeoutError as exc:
            raise KafkaUnavailable(
                f"Kafka did not acknowledge the settings of {service} within {timeout:g} s; is it running?"
            ) from exc
        await view.wait_for_settings(service, record, timeout)
        return record
