"""What the admin's invocation listing shows: invocation summaries, pages of them, and the cursors between pages."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["Cursor", "InvocationSummary", "Page", "decode_cursor", "encode_cursor"]


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
    def of(cls, status: Mapping[str, Any]) -> InvocationSummary:
        return cls(
            invocation_id=status["invocation_id"],
            target=dict(status["target"]),
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


Cursor = tuple[int, str]
"""Where a page ends: (modified_at_ms, invocation id) of its last row."""


def encode_cursor(cursor: Cursor) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(cursor)).encode()).decode().rstrip("=")


def decode_cursor(text: str) -> Cursor:
    """The cursor behind `text`; ValueError if it is not one `encode_cursor` made."""
    try:
        raw = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (ValueError, binascii.Error) as exc:
        raise ValueError(f"cursor={text[:80]!r} is not a cursor this API returned") from exc
    if not (isinstance(raw, list) and len(raw) == 2 and isinstance(raw[0], int) and isinstance(raw[1], str)):
        raise ValueError(f"cursor={text[:80]!r} is not a cursor this API returned")
    return raw[0], raw[1]


@dataclass(frozen=True, slots=True)
class Page:
    """One page of a listing, newest change first; `next_cursor` is None on the last page."""

    invocations: list[InvocationSummary]
    total: int
    next_cursor: Cursor | None
