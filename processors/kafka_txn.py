"""The batch's Kafka transaction: confluent-kafka errors become processor errors here, and only here."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition

from .bounded import BoundedCaller
from .errors import GroupMoved, TransactionFailed
from .records import DeliveryFailure, OutRecord
from .watchdog import Watchdog

__all__ = ["FENCING", "KafkaTransaction", "RECORD_FAULTS", "transaction_failed"]

# Errors that say the record itself cannot be written; any other failure is the cluster's or ours.
RECORD_FAULTS = frozenset(
    {
        KafkaError.MSG_SIZE_TOO_LARGE,
        KafkaError.RECORD_LIST_TOO_LARGE,
        KafkaError.UNKNOWN_TOPIC_OR_PART,
        KafkaError._UNKNOWN_TOPIC,
        KafkaError._UNKNOWN_PARTITION,
        KafkaError.TOPIC_EXCEPTION,
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.INVALID_RECORD,
        KafkaError.POLICY_VIOLATION,
        KafkaError._INVALID_ARG,
    }
)
# The group moved on (a rebalance) while a batch was open: its offsets belong to an old generation.
GROUP_MOVED = frozenset({KafkaError.ILLEGAL_GENERATION, KafkaError.REBALANCE_IN_PROGRESS, KafkaError.UNKNOWN_MEMBER_ID})
# Another producer or group member took this process's transactional id or static member id.
FENCING = frozenset(
    {KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH, KafkaError.FENCED_INSTANCE_ID}
)


def describe(error: KafkaError) -> str:
    return f"{error.name()}: {error.str()}"


def transaction_failed(operation: str, exc: KafkaException) -> TransactionFailed:
    """The processor error for a failed transactional operation (fatal ones need a new producer)."""
    error = exc.args[0] if exc.args else None
    if not isinstance(error, KafkaError):
        return TransactionFailed(f"{operation} failed: {exc}", fatal=True)
    fenced = error.code() in FENCING or "fenced" in error.str().lower()
    fatal = error.fatal() or fenced or error.code() == KafkaError.INVALID_TXN_STATE
    return TransactionFailed(f"{operation} failed: {describe(error)}", fatal=fatal, fenced=fenced)


class KafkaTransaction:
    """One transactional producer's batch transactions, every call bounded and watched.

    The calls that wait for the broker run on `caller`'s thread: past their bound they raise
    `CallAbandoned` and the producer must not be touched again (see `bounded.py`).
    """

    def __init__(
        self,
        producer: Producer,
        consumers: Mapping[str, Consumer],
        watchdog: Watchdog,
        timeout_s: float,
        caller: BoundedCaller,
    ) -> None:
        self._producer = producer
        # topic -> the consumer (and so the group) whose offsets of that topic the transaction commits
        self._consumers = consumers
        self._watchdog = watchdog
        self._timeout = timeout_s
        self._caller = caller
        self.commit_s = 0.0  # time spent in send_offsets + commit, for the session's stats
        self._delivered: dict[tuple[str, int], int] = {}
        self._refused: list[tuple[int, KafkaError]] = []

    def begin(self) -> None:
        self._delivered = {}
        try:
            self._producer.begin_transaction()
        except KafkaException as exc:
            raise transaction_failed("begin_transaction", exc) from exc

    def produce(self, records: Sequence[OutRecord]) -> list[DeliveryFailure]:
        """Hand the records to the producer; no flush: `commit` waits for them (and reports refusals)."""
        self._refused = []
        failures: list[DeliveryFailure] = []
        for i, record in enumerate(records):
            kwargs: dict[str, Any] = {
                "key": record.key,
                "headers": record.headers,
                "on_delivery": partial(_delivered, self._refused, self._delivered, i),
            }
            if record.partition is not None:
                kwargs["partition"] = record.partition
            if not self._produce_one(record, kwargs, failures, i):
                break  # the batch is aborted anyway; blame this one and re-run
        return failures

    def _produce_one(self, record: OutRecord, kwargs: dict[str, Any], failures: list[DeliveryFailure], i: int) -> bool:
        while True:
            refused: KafkaException | None = None
            try:
                self._producer.produce(record.topic, record.value, **kwargs)
                return True
            except BufferError:
                with self._watchdog.calling("produce (queue full)", self._timeout):
                    self._producer.poll(0.05)
                continue
            except KafkaException as exc:
                refused = exc
            # Examined outside the handler: confluent-kafka's error methods misbehave inside it.
            error = refused.args[0] if refused.args else None
            if not isinstance(error, KafkaError) or error.fatal() or error.code() in FENCING:
                raise transaction_failed("produce", refused)
            failures.append(DeliveryFailure(i, describe(error), error.code() in RECORD_FAULTS))
            return False

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> list[DeliveryFailure]:
        """Send the offsets and commit; the records the broker refused, if any (the caller then aborts).

        No flush before: the offsets travel while the records are acknowledged, and
        `commit_transaction` waits for those acknowledgements itself (one round trip less per batch).
        """
        started = time.perf_counter()
        try:
            by_consumer: dict[int, tuple[Consumer, list[TopicPartition]]] = {}
            for (topic, partition), offset in offsets.items():
                consumer = self._consumers[topic]
                by_consumer.setdefault(id(consumer), (consumer, []))[1].append(TopicPartition(topic, partition, offset))
            # One call per consumer group (KIP-447 allows several groups in one transaction).
            for consumer, positions in by_consumer.values():
                group = consumer.consumer_group_metadata()
                with self._watchdog.calling("send_offsets_to_transaction", self._timeout):
                    self._caller.call(
                        "send_offsets_to_transaction",
                        self._timeout,
                        partial(self._producer.send_offsets_to_transaction, positions, group, self._timeout),
                    )
            with self._watchdog.calling("commit_transaction", self._timeout):
                self._caller.call("commit_transaction", self._timeout, partial(self._producer.commit_transaction, self._timeout))
        except KafkaException as exc:
            failed = transaction_failed("commit", exc)
            if self._refused and not failed.fatal:
                # A record was refused: the transaction must abort; the caller blames the record.
                return [DeliveryFailure(i, describe(e), e.code() in RECORD_FAULTS) for i, e in sorted(self._refused)]
            if not failed.fatal:
                self._abort_quietly()
                error = exc.args[0] if exc.args else None
                if isinstance(error, KafkaError) and error.code() in GROUP_MOVED:
                    raise GroupMoved(str(failed)) from exc
            raise failed from exc
        except SystemError as exc:
            # confluent-kafka calls the delivery callbacks with a fatal error pending: the callback
            # "fails" with SystemError whose cause is the real KafkaException.
            if isinstance(exc.__cause__, KafkaException):
                raise transaction_failed("commit", exc.__cause__) from exc
            raise TransactionFailed(f"commit failed: {exc}", fatal=True) from exc
        finally:
            self.commit_s += time.perf_counter() - started
        return []

    def delivered(self) -> dict[tuple[str, int], int]:
        """The highest offset written per (topic, partition) by the current (just committed) transaction."""
        return self._delivered

    def abort(self) -> None:
        with self._watchdog.calling("abort_transaction", self._timeout):
            try:
                self._caller.call("abort_transaction", self._timeout, partial(self._producer.abort_transaction, self._timeout))
            except KafkaException as exc:
                raise transaction_failed("abort_transaction", exc) from exc

    def _abort_quietly(self) -> None:
        try:
            self.abort()
        except TransactionFailed:
            pass  # the session replaces this producer anyway


def _delivered(
    refused: list[tuple[int, KafkaError]],
    offsets: dict[tuple[str, int], int],
    index: int,
    error: KafkaError | None,
    msg: Message,
) -> None:
    # Only keep it: while flush() has a fatal error pending, calling the error's methods raises SystemError.
    if error is not None:
        refused.append((index, error))
        return
    topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
    if topic is not None and partition is not None and offset is not None and offset >= 0:
        where = (topic, partition)
        if offset > offsets.get(where, -1):
            offsets[where] = offset
