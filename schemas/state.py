"""Object state as operators edit it: the version of a state, and the edit command as a typed record."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Self

__all__ = ["SetStateCommand", "state_version"]

_VERSION_BYTES = 16


def state_version(state: Mapping[str, bytes] | Iterable[tuple[str, bytes]]) -> str:
    """The opaque version of a key's whole state: changes whenever any key or value changes.

    A hash over the (key, value) pairs sorted by key, each part length-prefixed so that no two
    different states encode alike. The admin API (`GET /services/{svc}/state/{key}`) and the
    processor applying a `SetStateCommand` both call this, so their versions agree.
    """
    pairs = sorted(state.items() if isinstance(state, Mapping) else state)
    digest = hashlib.sha256()
    for key, value in pairs:
        encoded = key.encode("utf-8")
        digest.update(len(encoded).to_bytes(4, "big") + encoded + len(value).to_bytes(8, "big") + value)
    return digest.hexdigest()[: 2 * _VERSION_BYTES]


@dataclass(frozen=True, slots=True, kw_only=True)
class SetStateCommand:
    """`keystate.SetStateCommand`: the whole new state of one key, applied in order with its exclusive handlers."""

    service: str
    key: str
    new_state: dict[str, bytes]
    expected_version: str | None = None
    request_id: str | None = None
    reply_topic: str | None = None

    @classmethod
    def from_avro(cls, record: Mapping[str, Any]) -> Self:
        return cls(
            service=record["service"],
            key=record["key"],
            new_state=dict(record["new_state"]),
            expected_version=record.get("expected_version"),
            request_id=record.get("request_id"),
            reply_topic=record.get("reply_topic"),
        )

    def to_avro(self) -> dict[str, Any]:
        return {
            "service": self.service,
            "key": self.key,
            "new_state": dict(self.new_state),
            "expected_version": self.expected_version,
            "request_id": self.request_id,
            "reply_topic": self.reply_topic,
        }
