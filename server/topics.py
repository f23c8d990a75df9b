"""Topic bootstrap: create keystate's topics with the right configs, idempotently."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

from keystate.schemas.topics import Topics

from .errors import KafkaUnavailable, TopicConfigError

__all__ = ["TopicSettings", "TopicSpec", "ensure_topics", "topic_specs"]

log = logging.getLogger(__name__)

_DAY_MS = 24 * 3600 * 1000


@dataclass(frozen=True, slots=True)
class TopicSettings:
    """How many partitions and replicas keystate's topics get, and how long logs are kept."""

    partitions: int = 8
    replication_factor: int = 1
    log_retention_ms: int = 7 * _DAY_MS
    results_retention_ms: int = 1 * _DAY_MS
    dlq_retention_ms: int = 14 * _DAY_MS

    def __post_init__(self) -> None:
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
    durable: dict[str, str] = {}
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
        *(TopicSpec(name, n, compact) for name in topics.changelogs),
    ]


def ensure_topics(
    bootstrap: str,
    topics: Topics | None = None,
    settings: TopicSettings | None = None,
    *,
    timeout: float = 30.0,
) -> list[str]:
    """Create missing topics; check existing ones. Returns the names it created."""
    topics = topics or Topics()
    settings = settings or TopicSettings()
    specs = topic_specs(topics, settings)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        existing = admin.list_topics(timeout=timeout).topics
    except KafkaException as exc:
        raise KafkaUnavailable(f"cannot list topics on {bootstrap}: {exc}") from exc

    problems = [
        f"{spec.name} has {len(existing[spec.name].partitions)} partitions, keystate is configured "
        f"for {spec.partitions}"
        for spec in specs
        if spec.fixed_partitions
        and spec.name in existing
        and len(existing[spec.name].partitions) != spec.partitions
    ]
    if problems:
        raise TopicConfigError(
            "existing topics do not match: "
            + "; ".join(problems)
            + ". Changing the count would move keys to other partitions; set the partition count "
            "to the existing one (--partitions) or use a new topic prefix."
        )

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
    for name, future in futures.items():
        try:
            future.result()
            created.append(name)
        except KafkaException as exc:
            error = exc.args[0]
            # Another process created it between our list and create: that is fine.
            if getattr(error, "name", lambda: "")() == "TOPIC_ALREADY_EXISTS":
                continue
            raise KafkaUnavailable(f"cannot create topic {name} on {bootstrap}: {exc}") from exc
    log.info("created topics %s", ", ".join(sorted(created)))
    return created
