"""The one way a command is written to keystate.log: partition, key, Avro value and readable headers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from keystate.schemas._codec import codec
from keystate.schemas.ids import InvocationId, partition_for_hash

__all__ = ["LogRecord", "command_record", "log_key"]


@dataclass(frozen=True, slots=True)
class LogRecord:
    """A command ready to produce to the log topic at an explicit partition."""

    name: str
    partition: int
    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]
    invocation_id: str | None

    def produce_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for confluent-kafka's `produce` (and `AsyncProducer.produce`)."""
        return {"key": self.key, "partition": self.partition, "headers": self.headers}


def log_key(target: Mapping[str, Any] | None, invocation_id: str) -> bytes:
    """The Kafka record key of an invocation's commands: `Service/key` when keyed, else its id."""
    key = None if target is None else target.get("key")
    return f"{target['service']}/{key}".encode() if target is not None and key is not None else invocation_id.encode()


def command_record(
    name: str,
    record: Mapping[str, Any],
    partitions: int,
    *,
    partition_key: int | None = None,
    key: bytes | None = None,
    target: Mapping[str, Any] | None = None,
    invocation_id: str | None = None,
) -> LogRecord:
    """Encode `record` as the command `name` for the log partition that owns it.

    The partition comes from `partition_key` when given, else from the record's invocation id
    (which carries its partition key hash). The key is `key`, else derived from `target` (or the
    record's own target) and the invocation id. Headers name the type, the invocation (the record's,
    or `invocation_id` for commands that only refer to one, such as an awakeable's completion) and
    the target, so `kcat -f '%h'` shows what flows without decoding.
    """
    iid = record.get("invocation_id") or invocation_id
    if partition_key is None:
        if not iid:
            raise ValueError(f"{name} has no invocation id and no partition key: cannot route it")
        partition_key = InvocationId.parse(iid).partition_key
    partition = partition_for_hash(partition_key, partitions)
    target = target if target is not None else record.get("target")
    if key is None:
        key = log_key(target, iid or "")
    headers = [("type", name.encode())]
    if iid:
        headers.append(("invocation_id", iid.encode()))
    if target is not None and "service" in target:
        path = "/".join(str(p) for p in (target["service"], target.get("key"), target.get("handler")) if p is not None)
        headers.append(("target", path.encode()))
    return LogRecord(name, partition, key, codec().encode(name, record), headers, iid or None)
