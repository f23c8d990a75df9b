"""Topic bootstrap: create keystate's topics with the right configs, idempotently; raise their record size limit."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

from keystate.schemas.limits import ENV_VAR, kafka_sizes, max_payload_bytes
from keystate.schemas.topics import Topics

from .errors import KafkaUnavailable, TopicConfigError
from .kafka_security import AuthWatch, KafkaSecurity, admin_config, list_topics

__all__ = [
    "CHANGELOG_COMPACTION",
    "MAX_MESSAGE_BYTES",
    "TopicSettings",
    "TopicSpec",
    "REPLY_TOPIC_RETENTION_MS",
    "check_record_limits",
    "create_reply_topic",
    "ensure_topics",
    "reply_topic_spec",
    "refuse_legacy_changelogs",
    "topic_specs",
]

log = logging.getLogger(__name__)

_DAY_MS = 24 * 3600 * 1000
MAX_MESSAGE_BYTES = "max.message.bytes"

# The changelog's cleaner settings: keep it close to live state, so a rebuild reads little more than
# what is live. The broker's defaults (1 GiB segments rolled weekly, cleaned at 50 % dirty) leave
# almost everything in the active segment, which is never compacted. Segments roll every 15 minutes
# or 64 MiB, and are cleaned at 10 % dirty, and at the latest 6 hours after a write. Deletes
# (tombstones) stay a day: a store whose checkpoint is older than that is rebuilt (processors/restore.py).
CHANGELOG_COMPACTION: Mapping[str, str] = {
    "cleanup.policy": "compact",
    "segment.ms": str(15 * 60 * 1000),
    "segment.bytes": str(64 << 20),
    "min.cleanable.dirty.ratio": "0.1",
    "max.compaction.lag.ms": str(6 * 3600 * 1000),
    "delete.retention.ms": str(_DAY_MS),
}


@dataclass(frozen=True, slots=True)
class TopicSettings:
    """How many partitions and replicas keystate's topics get, and how long logs are kept."""

    partitions: int = 8
    replication_factor: int = 1
    log_retention_ms: int = 7 * _DAY_MS
    results_retention_ms: int = 1 * _DAY_MS
    dlq_retention_ms: int = 14 * _DAY_MS
    # Every topic takes records of one payload plus envelope (see keystate.schemas.limits).
    max_payload_bytes: int = field(default_factory=max_payload_bytes)

    def __post_init__(self) -> None:
        max_payload_bytes(self.max_payload_bytes)  # raises PayloadLimitError out of range
        if self.partitions < 1:
            raise TopicConfigError(f"partitions must be at least 1, got {self.partitions}")
        if self.replication_factor < 1:
            raise TopicConfigError(
                f"replication factor must be at least 1, got {self.replication_factor}"
            )


@dataclass(frozen=True, slots=True)
class TopicSpec:
    name: str
    partitions: int
    config: Mapping[str, str] = field(default_factory=dict)
    # The log and the changelogs are co-partitioned: a different count would scatter keys.
    fixed_partitions: bool = True


def topic_specs(topics: Topics, settings: TopicSettings) -> list[TopicSpec]:
    """Every topic keystate needs, with its config."""
    durable: dict[str, str] = {MAX_MESSAGE_BYTES: str(kafka_sizes(settings.max_payload_bytes).topic_max_message_bytes)}
    if settings.replication_factor >= 3:
        durable["min.insync.replicas"] = "2"
    compact = {**durable, "cleanup.policy": "compact"}
    n = settings.partitions
    return [
        TopicSpec(
            topics.log, n, {**durable, "cleanup.policy": "delete", "retention.ms": str(settings.log_retention_ms)}
        ),
        # Users produce here with any partitioner; the router re-partitions, so the count is free.
        TopicSpec(topics.requests, n, {**durable, "cleanup.policy": "delete"}, fixed_partitions=False),
        TopicSpec(
            topics.requests_dlq,
            1,
            {**durable, "cleanup.policy": "delete", "retention.ms": str(settings.dlq_retention_ms)},
            fixed_partitions=False,
        ),
        TopicSpec(
            topics.results,
            n,
            {**durable, "cleanup.policy": "delete", "retention.ms": str(settings.results_retention_ms)},
            fixed_partitions=False,
        ),
        # One partition keeps registrations in one order for every reader.
        TopicSpec(topics.meta, 1, compact),
        TopicSpec(topics.changelog_topic, n, {**durable, **CHANGELOG_COMPACTION}),
    ]


def ensure_topics(
    bootstrap: str,
    topics: Topics | None = None,
    settings: TopicSettings | None = None,
    *,
    timeout: float = 30.0,
    migrating: bool = False,
    security: KafkaSecurity | None = None,
) -> list[str]:
    """Create missing topics; check existing ones. Returns the names it created.

    Refuses while the per-table changelogs of an older version exist, unless `migrating` them.
    `security` defaults to the KAFKA_* environment.
    """
    topics = topics or Topics()
    settings = settings or TopicSettings()
    specs = topic_specs(topics, settings)
    admin, existing = _admin(bootstrap, security, timeout)

    if not migrating:
        refuse_legacy_changelogs(topics, set(existing))
    _check_partitions(specs, {name: len(t.partitions) for name, t in existing.items()})

    _raise_record_limits(admin, [s for s in specs if s.name in existing], bootstrap, timeout)
    _check_compaction(admin, topics.changelog_topic if topics.changelog_topic in existing else None, bootstrap, timeout)
    missing = [s for s in specs if s.name not in existing]
    if not missing:
        return []
    futures = admin.create_topics(
        [
            NewTopic(s.name, num_partitions=s.partitions, replication_factor=settings.replication_factor, config=dict(s.config))
            for s in missing
        ],
        operation_timeout=timeout,
        request_timeout=timeout,
    )
    created = []
    raced = []
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            error = exc.args[0]
            # Created by another process between our list and create, or not in the listed metadata yet.
            if getattr(error, "name", lambda: "")() == "TOPIC_ALREADY_EXISTS":
                raced.append(name)
                continue
            raise KafkaUnavailable(f"cannot create topic {name} on {bootstrap}: {exc}") from exc
    if raced:
        try:
            listed = {name: len(admin.list_topics(name, timeout=timeout).topics[name].partitions) for name in raced}
        except KafkaException as exc:
            raise KafkaUnavailable(f"cannot describe topics {', '.join(raced)} on {bootstrap}: {exc}") from exc
        _check_partitions(specs, listed)
    log.info("created topics %s", ", ".join(sorted(created)))
    return created


# An ingress's reply topic holds answers that matter for the length of an HTTP call: an hour is plenty,
# and bounds what the topic of an ingress that is gone for good keeps.
REPLY_TOPIC_RETENTION_MS = 3600 * 1000


def reply_topic_spec(topics: Topics, ingress_id: str, max_payload_bytes: int) -> TopicSpec:
    """The reply topic of one ingress: one partition, so a reply and the result after it arrive in order."""
    config = {
        MAX_MESSAGE_BYTES: str(kafka_sizes(max_payload_bytes).topic_max_message_bytes),
        "cleanup.policy": "delete",
        "retention.ms": str(REPLY_TOPIC_RETENTION_MS),
    }
    return TopicSpec(topics.replies(ingress_id), 1, config)


def create_reply_topic(
    bootstrap: str,
    topics: Topics,
    ingress_id: str,
    max_payload_bytes: int,
    *,
    timeout: float = 30.0,
    security: KafkaSecurity | None = None,
) -> str:
    """Create the ingress's reply topic (the broker's default replication factor) unless it exists; its name.

    The ingress's Kafka principal needs CREATE on `<prefix>replies.*`. The topic outlives the ingress (a
    restart with the same id reuses it; retention bounds what it keeps): delete those of ingresses that are
    gone for good by hand.
    """
    spec = reply_topic_spec(topics, ingress_id, max_payload_bytes)
    admin, existing = _admin(bootstrap, security, timeout)
    if spec.name in existing:
        _raise_record_limits(admin, [spec], bootstrap, timeout)
        return spec.name
    new = NewTopic(spec.name, num_partitions=1, replication_factor=-1, config=dict(spec.config))
    for name, future in admin.create_topics([new], operation_timeout=timeout, request_timeout=timeout).items():
        try:
            future.result()
        except KafkaException as exc:
            if getattr(exc.args[0], "name", lambda: "")() != "TOPIC_ALREADY_EXISTS":
                raise KafkaUnavailable(
                    f"cannot create the ingress's reply topic {name} on {bootstrap}: {exc}; give the ingress's "
                    f"Kafka user CREATE on topics starting with {topics.replies_prefix}"
                ) from exc
    log.info("created reply topic %s", spec.name)
    return spec.name


def check_record_limits(
    bootstrap: str, topics: Topics, max_payload_bytes: int, *, timeout: float = 30.0, security: KafkaSecurity | None = None
) -> None:
    """Raise `TopicConfigError` if a keystate topic takes records too small for `max_payload_bytes`.

    Processes call this at start: a record refused by the broker inside a transaction would fail it.
    """
    need = kafka_sizes(max_payload_bytes).topic_max_message_bytes
    names = [topics.log, topics.requests, topics.requests_dlq, topics.results, topics.meta, topics.changelog_topic]
    admin, listed = _admin(bootstrap, security, timeout)
    existing = set(listed)
    refuse_legacy_changelogs(topics, existing)
    low = _below(admin, dict.fromkeys(names, need), bootstrap, timeout)
    if low:
        listing = "; ".join(f"{name} takes {current}" for name, (current, _) in sorted(low.items()))
        raise TopicConfigError(
            f"the payload limit of {max_payload_bytes} bytes needs topics that take records of {need} bytes "
            f"({MAX_MESSAGE_BYTES}), but {listing}. Run `keystate topics create` with the same {ENV_VAR}, "
            "or lower the payload limit (--max-payload-bytes)"
        )


def _admin(bootstrap: str, security: KafkaSecurity | None, timeout: float) -> tuple[AdminClient, dict[str, Any]]:
    """An AdminClient and the topics it listed (proof that Kafka answers and takes our credentials)."""
    security = KafkaSecurity.from_env() if security is None else security
    watch = AuthWatch(security)
    admin = AdminClient(admin_config(bootstrap, security, watch=watch))
    try:
        return admin, dict(list_topics(admin, f"listing the topics on {bootstrap}", watch, timeout).topics)
    except KafkaException as exc:
        raise KafkaUnavailable(f"cannot list topics on {bootstrap}: {exc}") from exc


def _below(
    admin: AdminClient, wanted: dict[str, int], bootstrap: str, timeout: float
) -> dict[str, tuple[int, int]]:
    """(current, needed) `max.message.bytes` of the topics in `wanted` that take less than needed."""
    resources = [ConfigResource(ConfigResource.Type.TOPIC, name) for name in wanted]
    try:
        described = {
            resource.name: future.result(timeout)
            for resource, future in admin.describe_configs(resources, request_timeout=timeout).items()
        }
    except KafkaException as exc:
        raise KafkaUnavailable(f"cannot read the configs of keystate's topics on {bootstrap}: {exc}") from exc
    low = {}
    for name, need in wanted.items():
        entry = described.get(name, {}).get(MAX_MESSAGE_BYTES)
        current = int(entry.value) if entry is not None and entry.value is not None else 0
        if current < need:
            low[name] = (current, need)
    return low


def _raise_record_limits(admin: AdminClient, specs: list[TopicSpec], bootstrap: str, timeout: float) -> None:
    """Raise `max.message.bytes` of existing topics that are below what the payload limit needs.

    Only ever raised, never lowered: records already written stay readable, and a larger topic
    limit set by an operator is kept.
    """
    wanted = {s.name: int(s.config[MAX_MESSAGE_BYTES]) for s in specs if MAX_MESSAGE_BYTES in s.config}
    if not wanted:
        return
    low = _below(admin, wanted, bootstrap, timeout)
    if not low:
        return
    alters = [
        ConfigResource(
            ConfigResource.Type.TOPIC,
            name,
            incremental_configs=[ConfigEntry(MAX_MESSAGE_BYTES, str(need), incremental_operation=AlterConfigOpType.SET)],
        )
        for name, (_, need) in low.items()
    ]
    problems = []
    for resource, future in admin.incremental_alter_configs(alters, request_timeout=timeout).items():
        current, need = low[resource.name]
        try:
            future.result(timeout)
            log.info("raised %s of topic %s from %d to %d bytes", MAX_MESSAGE_BYTES, resource.name, current, need)
        except KafkaException as exc:
            problems.append(f"{resource.name} has {MAX_MESSAGE_BYTES}={current}, needs {need} ({exc.args[0]})")
    if problems:
        raise TopicConfigError(
            "topics take records smaller than keystate's payload limit needs and could not be changed: "
            + "; ".join(problems)
            + f". Raise it with `kafka-configs --alter --entity-type topics --entity-name <topic> --add-config "
            f"{MAX_MESSAGE_BYTES}=<bytes>`, or lower the payload limit ({ENV_VAR} / --max-payload-bytes)"
        )


def _check_partitions(specs: list[TopicSpec], counts: Mapping[str, int]) -> None:
    """Raise `TopicConfigError` when an existing co-partitioned topic has another partition count."""
    problems = [
        f"{spec.name} has {counts[spec.name]} partitions, keystate is configured for {spec.partitions}"
        for spec in specs
        if spec.fixed_partitions and spec.name in counts and counts[spec.name] != spec.partitions
    ]
    if problems:
        raise TopicConfigError(
            "existing topics do not match: "
            + "; ".join(problems)
            + ". Changing the count would move keys to other partitions; set the partition count "
            "to the existing one (--partitions) or use a new topic prefix."
        )


def refuse_legacy_changelogs(topics: Topics, existing: set[str]) -> None:
    """Raise `TopicConfigError` when the per-table changelogs of keystate before 0.2 exist.

    Their state is not in the one changelog topic this version reads; running on would lose it.
    """
    legacy = sorted(name for name in topics.changelogs if name in existing)
    if legacy:
        raise TopicConfigError(
            f"this cluster has keystate's per-table changelog topics of an older version ({', '.join(legacy)}); "
            f"this version keeps all tables in {topics.changelog_topic}. Stop every processor, then run "
            f"`keystate topics migrate --prefix {topics.prefix}` to copy them over (it deletes the old topics "
            "when done), or delete them if their state is not needed"
        )


def _check_compaction(admin: AdminClient, topic: str | None, bootstrap: str, timeout: float) -> None:
    """Give an existing changelog keystate's cleaner settings where it runs on the broker's defaults.

    A setting an operator chose for the topic is kept, with a warning saying what keystate would use.
    """
    if topic is None:
        return
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    try:
        current = admin.describe_configs([resource], request_timeout=timeout)[resource].result(timeout)
    except KafkaException as exc:
        raise KafkaUnavailable(f"cannot read the configs of {topic} on {bootstrap}: {exc}") from exc
    to_set = []
    for name, wanted in CHANGELOG_COMPACTION.items():
        entry = current.get(name)
        if entry is not None and entry.value == wanted:
            continue
        if entry is not None and not entry.is_default and name != "cleanup.policy":
            log.warning("%s has %s=%s set on the topic; keystate would use %s", topic, name, entry.value, wanted)
            continue
        to_set.append(ConfigEntry(name, wanted, incremental_operation=AlterConfigOpType.SET))
    if not to_set:
        return
    altered = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=to_set)
    try:
        admin.incremental_alter_configs([altered], request_timeout=timeout)[altered].result(timeout)
    except KafkaException as exc:
        raise TopicConfigError(f"cannot set the cleaner settings of {topic}: {exc.args[0]}") from exc
    log.info("set %s on %s", ", ".join(f"{e.name}={e.value}" for e in to_set), topic)
