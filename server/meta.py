"""Registered deployments and services: a pure `MetaState`, the `MetaView` that follows keystate.meta, `register`."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, NamedTuple

from confluent_kafka import Message

from keystate.schemas._codec import codec
from keystate.schemas.errors import ContractError

from .deployment_changes import breaking_changes, discovery_differences
from .errors import KafkaUnavailable, MetaError, RegistrationConflict
from .kafka import AsyncProducer, KafkaSettings, TopicFollower
from .service_settings import (
    SERVICE_SETTINGS,
    completion_retention_ms,
    effective_metadata,
    journal_retention_ms,
    service_of_key,
    settings_key,
)

__all__ = [
    "DEPLOYMENT_RECORD",
    "DEPLOYMENT_RECORD_V1",
    "MetaState",
    "MetaView",
    "Registration",
    "handler_is_private",
    "register",
    "unregister",
    "upgrade_deployment_record",
]

log = logging.getLogger(__name__)

DEPLOYMENT_RECORD = "keystate.DeploymentRecord"
# Written before ingress-private handlers and forwarded headers existed; read and upgraded.
DEPLOYMENT_RECORD_V1 = "keystate.DeploymentRecordV1"


def upgrade_deployment_record(record: dict[str, Any]) -> dict[str, Any]:
    """A version-1 DeploymentRecord with the fields added since at their defaults: public, no forwarded secrets."""
    services = []
    for service in record["services"]:
        handlers = [{**h, "ingress_private": False} for h in service["handlers"]]
        services.append({**service, "handlers": handlers, "ingress_private": False, "forward_headers": []})
    return {**record, "services": services}


def handler_is_private(service: dict[str, Any], handler: dict[str, Any]) -> bool:
    """Whether the ingress must refuse calls to `handler` (already resolved against its service at discovery)."""
    return bool(handler.get("ingress_private", service.get("ingress_private", False)))


_NO_SETTINGS: Mapping[str, Any] = MappingProxyType({})


class ServiceEntry(NamedTuple):
    """A service as currently served: its metadata and the deployment new invocations go to.

    In `MetaState.services` the metadata is the effective one (the override's public flag and
    timeouts applied) and `settings` the override (`keystate.ServiceSettings`, empty if none).
    """

    metadata: dict[str, Any]
    deployment_id: str
    settings: Mapping[str, Any] = _NO_SETTINGS

    def journal_retention_ms(self) -> int | None:
        """How long a completed invocation's journal is kept; None: the processor's default."""
        return journal_retention_ms(self.metadata, self.settings)

    def completion_retention_ms(self) -> int | None:
        """How long a completed invocation is kept (idempotency / workflow retention); None: the processor's default."""
        return completion_retention_ms(self.metadata, self.settings)


@dataclass
class MetaState:
    """Deployments and the services they serve, built from DeploymentRecords in log order.

    Pure: `apply` and `apply_settings` are the only ways in. A service name resolves to the newest
    deployment (latest in log order) that declares it, so removing that deployment falls back to
    the previous one. `services` holds the effective settings: the declared ones with the service's
    override (`settings`) on top; `declared` the deployments' own.
    """

    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    services: dict[str, ServiceEntry] = field(default_factory=dict)
    declared: dict[str, ServiceEntry] = field(default_factory=dict)
    # Overrides by service name (ServiceSettings records); kept when a service has no deployment, so a
    # re-registration finds them.
    settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Deployments whose tombstone was read: invocations pinned to them must not run elsewhere.
    # Known while keystate.meta keeps the tombstone (delete.retention.ms after compaction).
    removed: set[str] = field(default_factory=set)

    def apply(self, deployment_id: str, record: dict[str, Any] | None) -> None:
        """Apply one keystate.meta record: a DeploymentRecord, or None (tombstone) to remove it."""
        if record is None:
            self.removed.add(deployment_id)
            if self.deployments.pop(deployment_id, None) is not None:
                self._rebuild_services()
            return
        if record.get("deployment_id") != deployment_id:
            raise MetaError(
                f"meta record key {deployment_id!r} does not match its deployment_id "
                f"{record.get('deployment_id')!r}; the record was not written by keystate"
            )
        self.removed.discard(deployment_id)
        if deployment_id in self.deployments:
            # A redelivered record, or a forced overwrite at the same uri (same id), keeps its place.
            self.deployments[deployment_id] = record
            self._rebuild_services()
            return
        self.deployments[deployment_id] = record
        for service in record["services"]:
            self._declare(ServiceEntry(service, deployment_id))

    def apply_settings(self, service: str, record: dict[str, Any] | None) -> None:
        """Apply one ServiceSettings record of keystate.meta, or None (tombstone) to drop the override."""
        if record is None:
            self.settings.pop(service, None)
        elif record.get("service_name") != service:
            raise MetaError(
                f"meta record key {settings_key(service)!r} does not match its service_name "
                f"{record.get('service_name')!r}; the record was not written by keystate"
            )
        else:
            self.settings[service] = record
        entry = self.declared.get(service)
        if entry is not None:
            self._declare(entry)

    def _declare(self, entry: ServiceEntry) -> None:
        name = entry.metadata["name"]
        self.declared[name] = entry
        settings = self.settings.get(name)
        if settings is None:
            self.services[name] = entry
        else:
            self.services[name] = ServiceEntry(effective_metadata(entry.metadata, settings), entry.deployment_id, settings)

    def _rebuild_services(self) -> None:
        self.services = {}
        self.declared = {}
        for deployment_id, record in self.deployments.items():
            for service in record["services"]:
                self._declare(ServiceEntry(service, deployment_id))

    def find_same(self, record: dict[str, Any]) -> dict[str, Any] | None:
        """The newest registered deployment with the same uri, protocol, transports and services."""
        wanted = _fingerprint(record)
        for existing in reversed(list(self.deployments.values())):
            if _fingerprint(existing) == wanted:
                return existing
        return None

    def find_by_uri(self, uri: str) -> dict[str, Any] | None:
        """The newest registered deployment at `uri`, whatever it serves."""
        for existing in reversed(list(self.deployments.values())):
            if existing["uri"] == uri:
                return existing
        return None

    def service(self, name: str) -> ServiceEntry | None:
        """The service with its effective settings (declared, then overridden), or None if no deployment serves it."""
        return self.services.get(name)

    def latest_for(self, deployment_id: str) -> list[str]:
        """The services whose new invocations go to `deployment_id` (it is their latest), sorted."""
        return sorted(name for name, entry in self.services.items() if entry.deployment_id == deployment_id)

    def current_services(self) -> dict[str, dict[str, Any]]:
        """Each registered service as its latest deployment declares it (overrides are not part of discovery)."""
        return {name: entry.metadata for name, entry in self.declared.items()}


def _normalized(record: dict[str, Any]) -> dict[str, Any]:
    """`record` as it reads back from keystate.meta (defaults filled in), so fingerprints compare alike."""
    try:
        return dict(codec().decode_as(DEPLOYMENT_RECORD, codec().encode(DEPLOYMENT_RECORD, record)))
    except ContractError as exc:
        raise MetaError(f"cannot store deployment {record.get('deployment_id')}: {exc}") from exc


def _fingerprint(record: dict[str, Any]) -> str:
    return json.dumps(
        [record["uri"], record["protocol_version"], sorted(record["transports"]), record["services"]],
        sort_keys=True,
        default=repr,
    )


class MetaView:
    """A `MetaState` kept current by following keystate.meta from the beginning."""

    def __init__(self, settings: KafkaSettings) -> None:
        self.state = MetaState()
        self.settings = settings
        self._follower = TopicFollower(settings, settings.topics.meta, self._on_record, from_beginning=True)
        self._waiters: dict[str, list[asyncio.Future[dict[str, Any] | None]]] = {}
        self.ready = False
        self.settings_lock = asyncio.Lock()  # PATCH /services: one read-merge-write at a time

    async def start(self, timeout: float = 30.0) -> None:
        """Read keystate.meta up to its current end; afterwards follow it."""
        try:
            await self._follower.start(timeout)
        except TimeoutError as exc:
            self._follower.stop()
            raise KafkaUnavailable(
                f"could not read {self.settings.topics.meta} within {timeout:g} s; is Kafka at "
                f"{self.settings.bootstrap} running?"
            ) from exc
        self.ready = True

    def stop(self) -> None:
        self.ready = False
        self._follower.stop()
        for futures in self._waiters.values():
            for future in futures:
                future.cancel()
        self._waiters.clear()

    def _on_record(self, msg: Message) -> None:
        key = msg.key()
        if key is None:
            log.warning("ignoring a keystate.meta record without a key at offset %s", msg.offset())
            return
        deployment_id = key.decode("utf-8", "replace")
        self.apply(deployment_id, msg.value())

    def apply(self, deployment_id: str, value: bytes | None) -> None:
        """Decode and apply one keystate.meta record (the follower's callback): a deployment's or a service's settings."""
        service = service_of_key(deployment_id)
        if service is not None:
            self._apply_settings(deployment_id, service, value)
            return
        record: dict[str, Any] | None = None
        if value is not None:
            try:
                name, record = codec().decode(value)
            except ContractError as exc:
                log.warning("ignoring an undecodable keystate.meta record for %s: %s", deployment_id, exc)
                return
            if name == DEPLOYMENT_RECORD_V1:
                record = upgrade_deployment_record(record)
            elif name != DEPLOYMENT_RECORD:
                log.warning("ignoring a %s record in keystate.meta under deployment key %s", name, deployment_id)
                return
        try:
            self.state.apply(deployment_id, record)
        except MetaError as exc:
            log.warning("ignoring keystate.meta record: %s", exc)
            return
        for future in self._waiters.pop(deployment_id, []):
            if not future.done():
                future.set_result(record)

    def _apply_settings(self, key: str, service: str, value: bytes | None) -> None:
        record: dict[str, Any] | None = None
        if value is not None:
            try:
                name, record = codec().decode(value)
            except ContractError as exc:
                log.warning("ignoring undecodable settings of service %s in keystate.meta: %s", service, exc)
                return
            if name != SERVICE_SETTINGS:
                log.warning("ignoring a %s record in keystate.meta under the settings key %s", name, key)
                return
        try:
            self.state.apply_settings(service, record)
        except MetaError as exc:
            log.warning("ignoring keystate.meta record: %s", exc)
            return
        for future in self._waiters.pop(key, []):
            if not future.done():
                future.set_result(record)

    async def wait_for_settings(self, service: str, record: dict[str, Any], timeout: float = 30.0) -> None:
        """Wait until the view has read `record` (or a later change) as `service`'s settings."""

        def settled() -> bool:
            current = self.state.settings.get(service)
            return current is not None and (current == record or current["modified_at_ms"] > record["modified_at_ms"])

        await self._wait(settings_key(service), settled, timeout, f"the settings of {service}")

    async def wait_for(
        self, deployment_id: str, timeout: float = 30.0, *, removed: bool = False, like: dict[str, Any] | None = None
    ) -> dict[str, Any] | None:
        """Wait until the view has the deployment (as `like`, if given) or, with `removed`, no longer has it."""
        wanted = None if like is None else _fingerprint(like)

        def settled() -> bool:
            current = self.state.deployments.get(deployment_id)
            if removed:
                return current is None
            return current is not None and (wanted is None or _fingerprint(current) == wanted)

        await self._wait(deployment_id, settled, timeout, f"deployment {deployment_id}")
        return self.state.deployments.get(deployment_id)

    async def _wait(self, key: str, settled: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait until `settled()`, checking each time a record with `key` is applied (read-your-writes)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not settled():
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise MetaError(
                    f"{what} was written to {self.settings.topics.meta} but not read back within {timeout:g} s; "
                    f"check that Kafka at {self.settings.bootstrap} is healthy and retry"
                )
            future: asyncio.Future[dict[str, Any] | None] = loop.create_future()
            self._waiters.setdefault(key, []).append(future)
            try:
                await asyncio.wait_for(future, remaining)
            except TimeoutError:
                continue

    # Read helpers for the HTTP layers.
    def deployments(self) -> Iterable[dict[str, Any]]:
        return self.state.deployments.values()


class Registration(NamedTuple):
    deployment: dict[str, Any]
    created: bool
    # A forced registration of a registered uri replaced that deployment's record (same id).
    overwritten: bool = False


async def register(
    view: MetaView,
    producer: AsyncProducer,
    record: dict[str, Any],
    *,
    force: bool = False,
    breaking: bool = False,
    timeout: float = 30.0,
) -> Registration:
    """Register a deployment and return once `view` has read it back (read-your-writes).

    The same uri with the same services returns the existing deployment (`created=False`).
    Refused with `RegistrationConflict` (Restate's rule): breaking changes to registered services
    unless `breaking` or `force`; a registered uri whose discovery changed unless `force`, which
    then overwrites that deployment in place (its pinned invocations run the new code).
    """
    record = _normalized(record)
    existing = view.state.find_same(record)
    if existing is not None:
        return Registration(existing, False)
    uri = record["uri"]
    same_uri = view.state.find_by_uri(uri)
    if same_uri is not None and not force:
        old_id = same_uri["deployment_id"]
        raise RegistrationConflict(
            f"{uri} is already registered as deployment {old_id} and its discovery changed "
            f"({'; '.join(discovery_differences(same_uri, record))}); a second deployment at the same uri would "
            f"leave {old_id}'s pinned invocations running the new code. Serve the new version at a new uri and "
            f"register that, or overwrite {old_id} with `keystate deployments register --force {uri}` "
            '(admin API: "force": true)'
        )
    if not (force or breaking):
        changes = breaking_changes(view.state.current_services(), record)
        if changes:
            raise RegistrationConflict(
                f"the deployment at {uri} makes breaking changes: {'; '.join(changes)}. Callers and invocations "
                f"of the old handlers would fail; keep the old handlers, or register it anyway with "
                f'`keystate deployments register --breaking {uri}` (admin API: "breaking": true)'
            )
    if same_uri is not None:
        record = {**record, "deployment_id": same_uri["deployment_id"]}
    deployment_id = record["deployment_id"]
    try:
        value = codec().encode(DEPLOYMENT_RECORD, record)
    except ContractError as exc:
        raise MetaError(f"cannot store deployment {deployment_id}: {exc}") from exc
    topic = view.settings.topics.meta
    delivery = producer.produce(
        topic, value, key=deployment_id.encode("utf-8"), headers=[("type", DEPLOYMENT_RECORD.encode())]
    )
    try:
        await asyncio.wait_for(delivery, timeout)
    except TimeoutError as exc:
        raise KafkaUnavailable(
            f"Kafka did not acknowledge deployment {deployment_id} within {timeout:g} s; is it running?"
        ) from exc
    stored = await view.wait_for(deployment_id, timeout, like=record)
    assert stored is not None
    if same_uri is not None:
        log.warning("deployment %s at %s overwritten with changed discovery (forced)", deployment_id, uri)
    return Registration(stored, same_uri is None, same_uri is not None)


async def unregister(
    view: MetaView, producer: AsyncProducer, deployment_id: str, *, timeout: float = 30.0
) -> dict[str, str | None]:
    """Remove a deployment (tombstone) and return once `view` no longer has it.

    Returns, for each service it was the latest deployment of, the deployment that is latest now
    (None: no deployment serves that service any more).
    """
    if deployment_id not in view.state.deployments:
        raise MetaError(f"unknown deployment {deployment_id}; list deployments with GET /deployments")
    was_latest = view.state.latest_for(deployment_id)
    # A None value is a tombstone: compaction drops the deployment for good.
    delivery = producer.produce(view.settings.topics.meta, None, key=deployment_id.encode("utf-8"))  # type: ignore[arg-type]
    await asyncio.wait_for(delivery, timeout)
    await view.wait_for(deployment_id, timeout, removed=True)
    successors: dict[str, str | None] = {}
    for name in was_latest:
        entry = view.state.service(name)
        successors[name] = None if entry is None else entry.deployment_id
    return successors
