"""Verdicts on records that broke a batch, so the batch can be re-run without them.

A record that makes a transaction fail (a produce Kafka refuses, a value over the record size, an
apply that raises) would otherwise fail every re-run and stop its partition. The runner blames it
and re-runs the batch with a verdict for it:

- `SkipPublish`: apply the command, but drop its records to the output topics that failed;
- `Reject`: neither apply nor route it; dead-letter it (and fail its invocation) with a reason;
- `Drop`: even its dead letter could not be written: skip it, logging why.
"""

from __future__ import annotations

from dataclasses import dataclass

from .records import Origin, OutKind, OutRecord

__all__ = ["Drop", "Quarantine", "Reject", "SkipPublish", "Verdict", "verdict_for"]


@dataclass(frozen=True, slots=True)
class SkipPublish:
    topics: frozenset[str]
    reason: str


@dataclass(frozen=True, slots=True)
class Reject:
    reason: str


@dataclass(frozen=True, slots=True)
class Drop:
    reason: str


Verdict = SkipPublish | Reject | Drop
Quarantine = dict[Origin, Verdict]


def verdict_for(failed: OutRecord, reason: str, previous: Verdict | None) -> Verdict:
    """The verdict that isolates the record that caused `failed`, escalating an earlier one."""
    if failed.kind is OutKind.DEAD_LETTER or isinstance(previous, Reject):
        return Drop(reason)
    if failed.kind is OutKind.PUBLISH:
        topics = previous.topics if isinstance(previous, SkipPublish) else frozenset()
        return SkipPublish(topics | {failed.topic}, reason)
    return Reject(reason)
