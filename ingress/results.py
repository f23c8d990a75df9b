"""`ResultWaiter`: follows the ingress's reply topic from its end; resolves waiters for InvocationResults and QueryOutputReplies."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import Any, cast

from confluent_kafka import Message

from keystate.schemas._codec import codec
from keystate.schemas.errors import ContractError
from keystate.server.kafka import KafkaSettings, TopicFollower

from .errors import Overloaded

__all__ = ["INVOCATION_RESULT", "QUERY_OUTPUT_REPLY", "PendingReply", "ResultWaiter", "target_text"]

log = logging.getLogger(__name__)

INVOCATION_RESULT = "keystate.InvocationResult"
QUERY_OUTPUT_REPLY = "keystate.QueryOutputReply"
_TYPES = {INVOCATION_RESULT.encode(): INVOCATION_RESULT, QUERY_OUTPUT_REPLY.encode(): QUERY_OUTPUT_REPLY}


def target_text(target: dict[str, Any]) -> str:
    """`Service/handler` or `Service/key/handler`, as in the URL and the Kafka `target` header."""
    if target.get("key") is None:
        return f"{target['service']}/{target['handler']}"
    return f"{target['service']}/{target['key']}/{target['handler']}"


@dataclass(eq=False)
class PendingReply:
    """A QueryOutputReply awaited by request id, and the InvocationResult of the invocation it names.

    With `follow`, the waiter registers `result` for the reply's invocation id synchronously when the
    reply is read, before any later record of the results topic is handled: the reply and the
    result share a key (the invocation id), so the result cannot be read first and be missed.
    """

    request_id: str
    reply: asyncio.Future[dict[str, Any]]
    follow: bool
    result: asyncio.Future[dict[str, Any]] | None = None
    result_id: str | None = None
    _registered: list[tuple[str, asyncio.Future[dict[str, Any]]]] = field(default_factory=list)


class ResultWaiter:
    """Futures for invocation results and query replies, resolved by following one topic.

    That topic is the ingress's own reply topic (`Topics.replies`): every command the ingress waits on
    names it as `reply_topic`, so the processors send the QueryOutputReply and the InvocationResult
    there, in that order, on its one partition; keystate.results stays the public stream.
    Register (`expect`, `expect_reply`) BEFORE producing the command: the follower starts at the
    end of the topic, so a record written before the registration would otherwise be missed.
    Records are told apart by their Kafka `type` header (the schema id in the value when absent).
    """

    def __init__(self, settings: KafkaSettings, topic: str | None = None, *, max_pending: int = 10_000) -> None:
        self._settings = settings
        self._max_pending = max_pending
        self.topic = topic or settings.topics.results
        self._follower = TopicFollower(settings, self.topic, self._on_record, from_beginning=False)
        # Several requests may wait for one invocation (attach, repeated idempotency keys).
        self._by_id: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._by_request: dict[str, PendingReply] = {}
        self.ready = False

    async def start(self, timeout: float = 30.0) -> None:
        await self._follower.start(timeout)
        self.ready = True

    def stop(self) -> None:
        self.ready = False
        self._follower.stop()
        for futures in self._by_id.values():
            for future in futures:
                future.cancel()
        for pending in self._by_request.values():
            pending.reply.cancel()
        self._by_id.clear()
        self._by_request.clear()

    @property
    def pending(self) -> int:
        """Waiters not yet forgotten: invocation results plus query replies."""
        return sum(len(f) for f in self._by_id.values()) + len(self._by_request)

    def waiting_for(self) -> tuple[str, ...]:
        """Ids of the invocations whose results are awaited, oldest first."""
        return tuple(self._by_id)

    def _check_capacity(self) -> None:
        if self.pending >= self._max_pending:
            raise Overloaded(
                f"{self.pending} requests are already waiting for their results (limit {self._max_pending}); "
                "retry later, use /send, or raise max_pending_calls"
            )

    def expect(self, invocation_id: str) -> asyncio.Future[dict[str, Any]]:
        """A future for the InvocationResult of `invocation_id`; pass it to `forget` when done."""
        self._check_capacity()
        return self._register(invocation_id)

    def _register(self, invocation_id: str) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._by_id.setdefault(invocation_id, []).append(future)
        return future

    def forget(self, invocation_id: str, future: asyncio.Future[dict[str, Any]]) -> None:
        futures = self._by_id.get(invocation_id)
        if futures is None:
            return
        if future in futures:
            futures.remove(future)
        if not futures:
            del self._by_id[invocation_id]

    def expect_reply(
        self, request_id: str, *, follow: bool, invocation_id: str | None = None
    ) -> PendingReply:
        """Wait for the QueryOutputReply of `request_id`; with `follow`, also for the named invocation's result.

        Give `invocation_id` when it is known already (attach by id): its result waiter is then
        registered now, so a result that ends the invocation before the reply is read is not missed.
        """
        self._check_capacity()
        pending = PendingReply(request_id, asyncio.get_running_loop().create_future(), follow)
        if follow and invocation_id is not None:
            self._follow(pending, invocation_id)
        self._by_request[request_id] = pending
        return pending

    def _follow(self, pending: PendingReply, invocation_id: str) -> None:
        if pending.result_id == invocation_id:
            return
        future = self._register(invocation_id)
        pending._registered.append((invocation_id, future))
        pending.result, pending.result_id = future, invocation_id

    def forget_reply(self, pending: PendingReply) -> None:
        if self._by_request.get(pending.request_id) is pending:
            del self._by_request[pending.request_id]
        for invocation_id, future in pending._registered:
            self.forget(invocation_id, future)
        pending._registered.clear()

    def _on_record(self, msg: Message) -> None:
        value = msg.value()
        if value is None:
            return
        headers = cast("list[tuple[str, bytes]]", msg.headers() or [])  # a consumed record's: (name, value) pairs
        kind = next((_TYPES.get(v) for k, v in headers if k == "type"), None)
        try:
            if kind is None:
                kind, record = codec().decode(value)
            else:
                record = codec().decode_as(kind, value)
        except ContractError as exc:
            log.warning("ignoring a record on %s at offset %s: %s", msg.topic(), msg.offset(), exc)
            return
        if kind == INVOCATION_RESULT:
            self.deliver(record)
        elif kind == QUERY_OUTPUT_REPLY:
            self.deliver_reply(record)

    def deliver(self, result: dict[str, Any]) -> None:
        """Resolve whoever waits for this invocation's result."""
        for future in self._by_id.get(result["invocation_id"], ()):
            if not future.done():
                future.set_result(result)

    def deliver_reply(self, reply: dict[str, Any]) -> None:
        """Resolve the request waiting for this reply; register for the result it still needs."""
        pending = self._by_request.get(reply["request_id"])
        if pending is None or pending.reply.done():
            return
        invocation_id = reply.get("invocation_id")
        # Synchronously, before the next record of this partition: the result may be next.
        if pending.follow and invocation_id is not None and reply.get("status") == "RUNNING":
            self._follow(pending, invocation_id)
        pending.reply.set_result(reply)
