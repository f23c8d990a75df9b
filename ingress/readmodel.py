"""`InvocationReadModel`: invocation summaries for operators, built by following the status changelog."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from confluent_kafka import Message

from keystate.schemas._codec import codec
from keystate.schemas.errors import ContractError
from keystate.server.errors import KafkaUnavailable
from keystate.server.kafka import KafkaSettings, TopicFollower

__all__ = ["INVOCATION_STATUS", "InvocationSummary", "InvocationReadModel"]

log = logging.getLogger(__name__)

INVOCATION_STATUS = "keystate.InvocationStatus"


@dataclass(frozen=True, slots=True)
class InvocationSummary:
    """What operators see of one invocation; a small part of its InvocationStatus."""

    invocation_id: str
    target: dict[str, Any]
    status: str
    deployment_id: str | None
    attempt: int
    retry_count: int
    created_at_ms: int
    modified_at_ms: int
    execute_at_ms: int | None
    completion_status: str | None
    last_failure: dict[str, Any] | None
    idempotency_key: str | None

    @classmethod
    def of(cls, status: dict[str, Any]) -> InvocationSummary:
        return cls(
            invocation_id=status["invocation_id"],
            target=status["target"],
            status=status["status"],
            deployment_id=status.get("deployment_id"),
            attempt=status["attempt"],
            retry_count=status["retry_count"],
            created_at_ms=status["created_at_ms"],
            modified_at_ms=status["modified_at_ms"],
            execute_at_ms=status.get("execute_at_ms"),
            completion_status=status.get("completion_status"),
            last_failure=status.get("last_failure"),
            idempotency_key=status.get("idempotency_key"),
        )

    @property
    def completed(self) -> bool:
        return self.status == "COMPLETED"


class InvocationReadModel:
    """Follows `<prefix>status-changelog` from the beginning: invocation id -> `InvocationSummary`.

    Keys are JSON arrays `["<invocation id>"]`; a tombstone (purge) removes the invocation.
    `start` returns at once; `ready` turns true when the changelog has been read to the end it had
    at start, so a large changelog does not hold up the ingress.
    """

    def __init__(self, settings: KafkaSettings) -> None:
        self.topic = settings.topics.changelog("status")
        self.invocations: dict[str, InvocationSummary] = {}
        self.error: str | None = None
        self.ready = False
        self._follower = TopicFollower(settings, self.topic, self._on_record, from_beginning=True)
        self._task: asyncio.Task[None] | None = None

    async def start(self, timeout: float | None = None) -> None:
        """Start reading; with `timeout`, also wait until the read model caught up (tests, tools)."""
        self._task = asyncio.create_task(self._restore())
        if timeout is not None:
            await asyncio.wait_for(asyncio.shield(self._task), timeout)

    async def _restore(self) -> None:
        try:
            await self._follower.start(timeout=None)  # type: ignore[arg-type]
        except KafkaUnavailable as exc:
            self.error = str(exc)
            log.error("the invocation read model cannot follow %s: %s", self.topic, exc)
            return
        self.ready = True

    def stop(self) -> None:
        self.ready = False
        self._follower.stop()
        if self._task is not None:
            self._task.cancel()

    def _on_record(self, msg: Message) -> None:
        key = msg.key()
        try:
            invocation_id = json.loads(key)[0] if key is not None else None
        except (ValueError, IndexError, TypeError, KeyError):
            invocation_id = None
        value = msg.value()
        if value is None:
            if invocation_id is not None:
                self.invocations.pop(invocation_id, None)
            return
        try:
            status = codec().decode_as(INVOCATION_STATUS, value)
        except ContractError as exc:
            log.warning("ignoring a record on %s at offset %s: %s", self.topic, msg.offset(), exc)
            return
        self.apply(status)

    def apply(self, status: dict[str, Any]) -> None:
        self.invocations[status["invocation_id"]] = InvocationSummary.of(status)

    def get(self, invocation_id: str) -> InvocationSummary | None:
        return self.invocations.get(invocation_id)

    def select(
        self, *, statuses: Iterable[str] = (), service: str | None = None, deployment_id: str | None = None
    ) -> list[InvocationSummary]:
        """Invocations matching every given filter, most recently modified first."""
        wanted = {s.upper() for s in statuses}
        found = [
            s
            for s in self.invocations.values()
            if (not wanted or s.status in wanted or (s.completion_status or "") in wanted)
            and (service is None or s.target["service"] == service)
            and (deployment_id is None or s.deployment_id == deployment_id)
        ]
        found.sort(key=lambda s: s.modified_at_ms, reverse=True)
        return found

    def pinned_to(self, deployment_id: str) -> list[InvocationSummary]:
        """Invocations that have not completed and run on `deployment_id`."""
        return [s for s in self.invocations.values() if s.deployment_id == deployment_id and not s.completed]
