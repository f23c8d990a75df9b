"""One batch through one transaction, isolating any record that makes the transaction fail.

Transport-agnostic: the Kafka session and the broker-free test driver each provide a
`Transaction`; a void run's writes are dropped from the stores' overlays (nothing reached disk), and
the isolation logic is the same code for both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

from keystate.server.commands import LogRecord

from .errors import BatchFailed
from .quarantine import Drop, Quarantine, Reject, verdict_for
from .records import FOLDED_TOPIC, DeliveryFailure, InRecord, OutRecord
from .step import BatchStep, StepResult

__all__ = ["EarlyRun", "Transaction", "run_batch"]

log = logging.getLogger(__name__)



class EarlyRun(Protocol):
    """What a run started before its transaction (keystate.processors.early), as the runner drives it."""

    def collect(self) -> Sequence[LogRecord]:
        """Entries of the early attempts to write and apply in this batch (waits a short window for them)."""
        ...

    def more(self, result: StepResult) -> Sequence[LogRecord] | None:
        """Start the attempts `result` (a run with the entries) lets start, and wait for them within the
        window: every entry so far (a longer list), or None when there is nothing more to fold."""
        ...

    def close(self, folded: int) -> None:
        """The batch writes the first `folded` entries handed out; the rest are produced after the commit."""
        ...

    def trim(self, result: StepResult) -> None:
        """Drop from `result` the effects already started early (a re-run repeats them)."""
        ...

    def settle(self, committed: bool) -> None:
        """Whether the run's transaction committed; called exactly once."""
        ...


class Transaction(Protocol):
    """The producer side of a batch: begin, produce everything (reporting refused records), commit or abort."""

    def begin(self) -> None: ...

    def produce(self, records: Sequence[OutRecord]) -> list[DeliveryFailure]:
        """Hand `records` to the producer; the records it refused at once, by index."""
        ...

    def commit(self, offsets: Mapping[tuple[str, int], int]) -> list[DeliveryFailure]:
        """Commit with `offsets`; [] when committed, else the records the broker refused (then abort)."""
        ...

    def abort(self) -> None: ...

    def delivered(self) -> Mapping[tuple[str, int], int]:
        """The highest offset written per (topic, partition) by the transaction just committed."""
        ...


def run_batch(
    step: BatchStep,
    records: list[InRecord],
    now_ms: int,
    txn: Transaction,
    release: Callable[[StepResult], None] | None = None,
    early: Callable[[StepResult], EarlyRun | None] | None = None,
) -> tuple[StepResult, Quarantine]:
    """Apply and commit `records`; a record to blame is quarantined and the batch re-run without it.

    `release` gets the result as soon as its transaction committed, before the stores write it:
    its effects (attempts to start, replies) need only the commit, and the write is not on their path.
    `early` gets each run's result before its transaction begins (to start what may run while it
    commits, see keystate.processors.early); the `EarlyRun` it returns may hand back entries of those
    attempts, which the run then also writes and applies (the run is redone with them; if that run is
    rejected, they are given back and the run redone without), and hears whether that run committed
    (True, before `release`) or not (False), exactly once.
    Raises `BatchFailed` when a failure cannot be blamed on one record (the session then rejoins).
    """
    quarantine: Quarantine = {}
    fold = True  # off once Kafka refused a folded entry
    # Each re-run adds or escalates one verdict (SkipPublish -> Reject -> Drop), so this bounds it.
    for _ in range(4 * (len(records) + len(step.pending)) + 4):
        result = step.run(records, now_ms, quarantine)
        if result.rejected is not None:
            origin, reason = result.rejected
            previous = quarantine.get(origin)
            quarantine[origin] = Drop(reason) if isinstance(previous, (Reject, Drop)) else Reject(reason)
            step.discard(result.touched)
            continue
        if not result.produced:
            # Nothing to write (records that change nothing, e.g. entries this processor already wrote and
            # applied in an earlier batch, see keystate.processors.early): no transaction. Their offsets
            # wait for the next transaction of their partition; a restart reads them again, to no effect.
            if release is not None:
                release(result)
            step.committed(result, {}, now_ms)
            return result, quarantine
        handle = early(result) if early is not None else None
        if handle is not None and fold:
            result = _fold(step, records, now_ms, quarantine, result, handle)
            if result.rejected is not None:  # cannot be: the same run without the entries was not rejected
                handle.settle(False)
                step.discard(result.touched)
                raise BatchFailed(f"a batch re-run without its early entries was rejected: {result.rejected[1]}")
        try:
            txn.begin()
            failures = txn.produce(result.produced)
            if not failures:
                failures = txn.commit(result.offsets)
        except BaseException:
            # Whether it committed is unknown: the stores drop the batch and catch up from the changelog
            # (and the early attempts stop: if it did commit, the next owner or the sweep restarts them).
            if handle is not None:
                handle.settle(False)
            step.discard(result.touched)
            raise
        if handle is not None:
            handle.settle(not failures)
        if not failures:
            if release is not None:
                release(result)
            step.committed(result, txn.delivered(), now_ms)
            return result, quarantine
        txn.abort()
        blamed = [f for f in failures if f.record_fault]
        if not blamed:
            raise BatchFailed(f"the transaction failed: {failures[0].error}")
        for failure in blamed:
            out = result.produced[failure.index]
            if out.origin is not None and out.origin[0] == FOLDED_TOPIC:
                # An early attempt's entry: the batch is re-run without folding; the attempt starts
                # again and appends it itself, where a refusal fails the attempt (retryably).
                log.warning("invocation %s: Kafka refused a folded entry (%s); re-running without folding", out.invocation_id, failure.error)
                fold = False
                continue
            if out.origin is None:
                raise BatchFailed(f"a record to {out.topic} failed and has no origin: {failure.error}")
            log.error(
                "invocation %s: Kafka refused a record to %s (caused by %s[%d]@%d): %s; isolating it",
                out.invocation_id,
                out.topic,
                *out.origin,
                failure.error,
            )
            quarantine[out.origin] = verdict_for(out, f"Kafka refused it: {failure.error}", quarantine.get(out.origin))
        step.discard(result.touched)
    raise BatchFailed(f"could not isolate the failing records of a batch of {len(records)}")


def _fold(
    step: BatchStep, records: list[InRecord], now_ms: int, quarantine: Quarantine, result: StepResult, handle: EarlyRun
) -> StepResult:
    """`result`, redone with the early attempts' entries when they came in time.

    Each run with entries may start more attempts (e.g. the next call queued on the same object once
    the one before it ended); their entries make the next run, as long as the window lasts.
    """
    entries: Sequence[LogRecord] | None = handle.collect()
    kept, used = result, 0
    while entries is not None and len(entries) > used:
        step.discard(kept.touched)
        run = step.run(records, now_ms, quarantine, entries)
        if run.rejected is not None:
            # One of the new entries cannot be written or applied here: they go the usual way, after
            # the commit, and the batch is the last run that took its entries (the same run again).
            log.warning("an early attempt's entry could not join its batch (%s); it is written after the commit", run.rejected[1])
            step.discard(run.touched)
            kept = step.run(records, now_ms, quarantine, entries[:used])
            break
        kept, used = run, len(entries)
        entries = handle.more(run)
    handle.close(used)
    handle.trim(kept)
    return kept
