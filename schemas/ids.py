"""Ids and partitioning: invocation ids that carry their partition key hash, murmur2 like Kafka."""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass
from typing import NewType

from .enums import HandlerKind, ServiceType

__all__ = [
    "EntryIndex",
    "InvalidIdError",
    "InvocationId",
    "InvocationIdStr",
    "InvocationTarget",
    "PartitionKey",
    "ServiceId",
    "ServiceType",
    "HandlerKind",
    "murmur2",
    "partition_for",
    "partition_for_hash",
    "positive_hash",
    "idempotency_partition_key",
]

PartitionKey = NewType("PartitionKey", int)
"""The positive 31-bit murmur2 hash that decides a partition (Kafka's `toPositive(murmur2(key))`)."""

EntryIndex = NewType("EntryIndex", int)
"""Position of an entry in an invocation's journal; the input entry is 0."""

InvocationIdStr = NewType("InvocationIdStr", str)
"""The text form `inv_...` of an `InvocationId`, as records and table keys hold it (parse it to route)."""

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's murmur2 (`org.apache.kafka.common.utils.Utils.murmur2`), as a signed 32-bit int."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    body = length - (length & 3)
    for i in range(0, body, 4):
        k = int.from_bytes(data[i : i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    tail = length & 3
    if tail == 3:
        h ^= data[body + 2] << 16
    if tail >= 2:
        h ^= data[body + 1] << 8
    if tail >= 1:
        h ^= data[body]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


def positive_hash(key: str | bytes) -> PartitionKey:
    """The partition key hash of `key`: `murmur2(key) & 0x7fffffff`, as Kafka's default partitioner."""
    data = key.encode("utf-8") if isinstance(key, str) else key
    return PartitionKey(murmur2(data) & 0x7FFFFFFF)


def partition_for_hash(partition_key: PartitionKey | int, partitions: int) -> int:
    """The partition of a partition key hash among `partitions`."""
    if partitions <= 0:
        raise ValueError(f"partition count must be positive, got {partitions}")
    return partition_key % partitions


def partition_for(key: str | bytes, partitions: int) -> int:
    """The partition Kafka's Java client would choose for a record with this key."""
    return partition_for_hash(positive_hash(key), partitions)


class InvalidIdError(ValueError):
    """A text that should be an id is not one; the message says what was expected."""


@dataclass(frozen=True, slots=True)
class ServiceId:
    """A keyed service instance: a virtual object or a workflow and its key."""

    name: str
    key: str

    @property
    def partition_key(self) -> PartitionKey:
        return positive_hash(f"{self.name}/{self.key}")

    def __str__(self) -> str:
        return f"{self.name}/{self.key}"


@dataclass(frozen=True, slots=True)
class InvocationTarget:
    """What an invocation runs: service, handler, and the key for objects and workflows."""

    service: str
    handler: str
    key: str | None = None
    service_type: ServiceType = ServiceType.SERVICE
    handler_kind: HandlerKind = HandlerKind.EXCLUSIVE

    @property
    def service_id(self) -> ServiceId | None:
        return None if self.key is None else ServiceId(self.service, self.key)

    def to_record(self) -> dict[str, object]:
        """The Avro `keystate.Target` of this target."""
        return {
            "service": self.service,
            "handler": self.handler,
            "key": self.key,
            "service_type": self.service_type.value,
            "handler_kind": self.handler_kind.value,
        }

    def __str__(self) -> str:
        if self.key is None:
            return f"{self.service}/{self.handler}"
        return f"{self.service}/{self.key}/{self.handler}"


_ID_PREFIX = "inv_"
_HASH_CHARS = 8  # hex digits of the 31-bit partition key hash
_RANDOM_BYTES = 15  # 120 random bits: collisions are not a practical concern
_RANDOM_CHARS = 24  # base32 of 15 bytes, no padding


@dataclass(frozen=True, slots=True)
class InvocationId:
    """An invocation id whose text form `inv_<hash><random>` carries its partition key hash.

    Any component routes a command for an invocation by `partition_for_hash(id.partition_key, n)`
    without a lookup. Keyed targets use the hash of `Service/key`, so every invocation of one
    object or workflow lands on the same partition; services get a random hash.
    """

    partition_key: PartitionKey
    random: bytes

    @classmethod
    def new(cls, partition_key: PartitionKey | None = None, random: bytes | None = None) -> InvocationId:
        if partition_key is None:
            partition_key = PartitionKey(int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF)
        if random is None:
            random = os.urandom(_RANDOM_BYTES)
        if not 0 <= partition_key <= 0x7FFFFFFF:
            raise InvalidIdError(f"partition key hash must be in [0, 2^31), got {partition_key}")
        if len(random) != _RANDOM_BYTES:
            raise InvalidIdError(f"invocation id needs {_RANDOM_BYTES} random bytes, got {len(random)}")
        return cls(partition_key, random)

    @classmethod
    def for_target(cls, target: InvocationTarget, random: bytes | None = None) -> InvocationId:
        """A new id routed like its target: by `Service/key` when keyed, anywhere otherwise."""
        sid = target.service_id
        return cls.new(None if sid is None else sid.partition_key, random)

    @classmethod
    def parse(cls, text: str) -> InvocationId:
        expected = len(_ID_PREFIX) + _HASH_CHARS + _RANDOM_CHARS
        if not text.startswith(_ID_PREFIX) or len(text) != expected:
            raise InvalidIdError(
                f"not an invocation id: {text[:80]!r}; expected '{_ID_PREFIX}' followed by "
                f"{_HASH_CHARS + _RANDOM_CHARS} characters, as returned in the x-restate-id header"
            )
        body = text[len(_ID_PREFIX) :]
        try:
            partition_key = int(body[:_HASH_CHARS], 16)
            random = base64.b32decode(body[_HASH_CHARS:].upper())
        except ValueError as exc:
            raise InvalidIdError(f"not an invocation id: {text[:80]!r} ({exc})") from exc
        return cls.new(PartitionKey(partition_key), random)

    def __str__(self) -> str:
        encoded = base64.b32encode(self.random).decode("ascii").lower()
        return f"{_ID_PREFIX}{self.partition_key:08x}{encoded}"

    def partition(self, partitions: int) -> int:
        return partition_for_hash(self.partition_key, partitions)


def idempotency_partition_key(target: InvocationTarget, idempotency_key: str) -> PartitionKey:
    """Where an idempotent invocation lives: its object's partition, or one fixed by the key for services.

    Every producer of an idempotent request (ingress, SDK, router) must use it, so the idempotency
    table row and the invocation land on one partition.
    """
    sid = target.service_id
    if sid is not None:
        return sid.partition_key
    return positive_hash(f"{target.service}/{target.handler}/{idempotency_key}")
