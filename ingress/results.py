"""`ResultWaiter`: follows keystate.results from its end and hands each InvocationResult to whoever waits for it."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from confluent_kafka import Message

from keystate.schemas._codec import codec
from keystate.schemas.errors import ContractError
from keystate.server.kafka import KafkaSettings, TopicFollower

from .errors import Overloaded

__all__ = ["INVOCATION_RESULT", "ResultWaiter", "target_text"]

log = logging.getLogger(__name__)

INVOCATION_RESULT = "keystate.InvocationResult"


def target_text(target: dict[str, Any]) -> str:
    """`Service/handler` or `Service/key/handler`, as in the URL and the Kafka `target` header."""
    if target.get("key") is None:
        return f"{target['service']}/{target['handler']}"
    return f"{target['service']}/{target['key']}/{target['handler']}"


class ResultWaiter:
    """Futures for invocation results, resolved by following the results topic.

    Register with `expect` BEFORE producing the invocation: the follower starts at the end of the
    topic, so a result written before the registration would otherwise be missed. A waiter may
    also be keyed by idempotency key, because a repeated request with the same key is answered
    with the result of the first invocation.
    """

    def __init__(self, settings: KafkaSettings, *, max_pending: int = 10_000) -> None:
        self._settings = settings
        self._max_pending = max_pending
        self._follower = TopicFollower(settings, settings.topics.results, self._on_record, from_beginning=False)
        self._by_id: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._by_idempotency: dict[tuple[str, str], set[asyncio.Future[dict[str, Any]]]] = {}
        self.ready = False

    async def start(self, timeout: float = 30.0) -> None:
        await self._follower.start(timeout)
        self.ready = True

    def stop(self) -> None:
        self.ready = False
        self._follower.stop()
        for future in self._by_id.values():
            future.cancel()
        self._by_id.clear()
        self._by_idempotency.clear()

    @property
    def pending(self) -> int:
        return len(self._by_id)

    def waiting_for(self) -> tuple[str, ...]:
        """Ids of the invocations whose results are awaited, oldest first."""
        return tuple(self._by_id)

    def expect(
        self, invocation_id: str, *, target: str | None = None, idempotency_key: str | None = None
    ) -> asyncio.Future[dict[str, Any]]:
        """A future for the InvocationResult of `invocation_id`; call `forget` when done with it."""
        if len(self._by_id) >= self._max_pending:
            raise Overloaded(
                f"{len(self._by_id)} calls are already waiting for their results (limit {self._max_pending}); "
                "retry later, use /send, or raise max_pending_calls"
            )
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._by_id[invocation_id] = future
        if idempotency_key is not None and target is not None:
            self._by_idempotency.setdefault((target, idempotency_key), set()).add(future)
        return future

    def forget(self, invocation_id: str, *, target: str | None = None, idempotency_key: str | None = None) -> None:
        future = self._by_id.pop(invocation_id, None)
        if future is None or idempotency_key is None or target is None:
            return
        waiting = self._by_idempotency.get((target, idempotency_key))
        if waiting is not None:
            waiting.discard(future)
            if not waiting:
                del self._by_idempotency[(target, idempotency_key)]

    def _on_record(self, msg: Message) -> None:
        value = msg.value()
        if value is None:
            return
        try:
            result = codec().decode_as(INVOCATION_RESULT, value)
        except ContractError as exc:
            log.warning("ignoring a record on %s at offset %s: %s", msg.topic(), msg.offset(), exc)
            return
        self.deliver(result)

    def deliver(self, result: dict[str, Any]) -> None:
        """Resolve whoever waits for this result (by invocation id, or by idempotency key)."""
        future = self._by_id.get(result["invocation_id"])
        if future is not None and not future.done():
            future.set_result(result)
        key = result.get("idempotency_key")
        if key is not None:
            for other in self._by_idempotency.get((target_text(result["target"]), key), ()):
                if not other.done():
                    other.set_result(result)
