"""One batch through one transaction, isolating any record that makes the transaction fail.

Transport-agnostic: the Kafka session and the broker-free test driver each provide a
`Transaction`; a void run's writes are dropped from the stores' overlays (nothing reached disk), and
the isolation logic is the same code for both.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from keystate.server.commands import LogRecord

from .errors import BatchFailed
from .quarantine import Drop, Quarantine, Reject, verdict_for
from .records import FOLDED_TOPIC, DeliveryFailure, InRecord, OutRecord
from .step import BatchStep, StepResult

if TYPE_CHECKING:
    from concurrent.futures import Future

__all__ = ["Committed", "EarlyRun", "Pipeline", "Transaction", "run_batch"]

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
    quarantine: Quarantine | None = None,
    fold: bool = True,
) -> tuple[StepResult, Quarantine]:
    """Apply and commit `records`; a record to blame is quarantined and the batch re-run without it.

    `release` gets the result as soon as its transaction committed, before the stores write it:
    its effects (attempts to start, replies) need only the commit, and the write is not on their path.
    `early` gets each run's result before its transaction begins (to start what may run while it
    commits, see keystate.processors.early); the `EarlyRun` it returns may hand back entries of those
    attempts, which the run then also writes and applies (the run is redone with them; if that run is
    rejected, they are given back and the run redone without), and hears whether that run committed
    (True, before `release`) or not (False), exactly once.
    `quarantine` and `fold` (off once Kafka refused a folded entry) carry what an earlier transaction of
    these records already blamed.
    Raises `BatchFailed` when a failure cannot be blamed on one record (the session then rejoins).
    """
    quarantine = {} if quarantine is None else quarantine
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
        fold = _blame(result, failures, quarantine) and fold
        step.discard(result.touched)
    raise BatchFailed(f"could not isolate the failing records of a batch of {len(records)}")


def _blame(result: StepResult, failures: Sequence[DeliveryFailure], quarantine: Quarantine) -> bool:
    """Quarantine the records to blame for a failed transaction of `result`; False when Kafka refused a
    folded entry (the batch is then re-run without folding). Raises BatchFailed when none is to blame."""
    blamed = [f for f in failures if f.record_fault]
    if not blamed:
        raise BatchFailed(f"the transaction failed: {failures[0].error}")
    fold = True
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
    return fold


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


_Outcome = tuple[list[DeliveryFailure], float]
"""A pipelined transaction's refused records ([] when committed) and how long it took."""


@dataclass(slots=True)
class _InFlight:
    records: list[InRecord]
    result: StepResult
    handle: EarlyRun | None
    commit: Future[_Outcome]
    now_ms: int


@dataclass(slots=True)
class Committed:
    """One transaction the pipeline committed (for the shell's stats)."""

    records: int
    result: StepResult
    commit_s: float
    """How long its transaction took (for a batch re-run through `run_batch`: its whole run)."""


class Pipeline:
    """Pipelined group commit: batch N+1 is applied (into the stores' next overlay) and its early attempts
    start while batch N's transaction commits on another thread; N+1's transaction begins once N's ended.

    N+1's effects are released only after N+1 commits, like any batch's. If N's transaction fails,
    every overlay goes (N+1 read N's rows), N+1's early attempts stop, and both batches run again one
    after the other through `run_batch`, which isolates a record to blame. A batch that needs no
    transaction, or whose run is rejected, also goes through `run_batch` once N has ended.
    `unwritten` names the records of the batches lost to a failure the caller must handle (it raised).
    """

    def __init__(
        self,
        step: BatchStep,
        txn: Transaction,
        submit: Callable[[Callable[[], _Outcome]], Future[_Outcome]],
        release: Callable[[StepResult], None] | None = None,
        early: Callable[[StepResult], EarlyRun | None] | None = None,
        before_begin: Callable[[], None] | None = None,
        clock: Callable[[], float] = lambda: 0.0,
        waiting: Callable[[], AbstractContextManager[object]] = nullcontext,
    ) -> None:
        self._step = step
        self._txn = txn
        self._submit = submit
        self._release = release
        self._early = early
        self._before_begin = before_begin
        self._clock = clock  # seconds, for the commit times in `Committed` (this module does no I/O)
        self._waiting = waiting  # around the wait for a commit (the shell's watchdog)
        self._flight: _InFlight | None = None
        self.unwritten: list[InRecord] = []

    @property
    def busy(self) -> bool:
        """A transaction is committing."""
        return self._flight is not None

    def run(self, records: list[InRecord], now_ms: int) -> list[Committed]:
        """Apply `records` and start their transaction; what committed meanwhile (the batch before, or
        batches `run_batch` re-ran). Raises as `run_batch` does, with `unwritten` set."""
        self.unwritten = []
        step = self._step
        result = step.run(records, now_ms, {})
        if result.rejected is not None or not result.produced:
            step.discard(result.touched)
            try:
                done = self.drain()
            except BaseException:
                self.unwritten.extend(records)
                raise
            return [*done, self._sync(records, now_ms)]
        try:
            handle = self._early(result) if self._early is not None else None
        except BaseException:
            step.discard(result.touched)
            raise
        try:
            done, void = self._settle()
        except BaseException:
            if handle is not None:
                handle.settle(False)
            self.unwritten.extend(records)
            raise
        if void:
            # The batch before failed on a record and ran again alone, after every overlay went: so does this one.
            if handle is not None:
                handle.settle(False)
            return [*done, self._sync(records, now_ms)]
        held = False
        try:
            if handle is not None:
                result = _fold(step, records, now_ms, {}, result, handle)
                if result.rejected is not None:  # cannot be: the same run without the entries was not rejected
                    raise BatchFailed(f"a batch re-run without its early entries was rejected: {result.rejected[1]}")
            step.hold(result)
            held = True
            if self._before_begin is not None:
                self._before_begin()
            self._flight = _InFlight(records, result, handle, self._submit(self._commit(result)), now_ms)
        except BaseException:
            if handle is not None:
                handle.settle(False)
            if held:
                step.discard_held()
            else:
                step.discard(result.touched)
            self.unwritten.extend(records)
            raise
        return done

    def _commit(self, result: StepResult) -> Callable[[], _Outcome]:
        """The transaction of `result`, to run on the committing thread: its failures and how long it took."""
        txn, produced, offsets, clock = self._txn, result.produced, result.offsets, self._clock

        def commit() -> _Outcome:
            started = clock()
            txn.begin()
            failures = txn.produce(produced) or txn.commit(offsets)
            return failures, clock() - started

        return commit

    def drain(self) -> list[Committed]:
        """Wait for the committing transaction, if any, and settle it; what committed."""
        return self._settle()[0]

    def _settle(self) -> tuple[list[Committed], bool]:
        """`drain`, and whether every overlay went (a run applied over them is void): when the transaction
        failed on a record, its batch ran again through `run_batch`, which blames and isolates it."""
        flight, self._flight = self._flight, None
        if flight is None:
            return [], False
        step = self._step
        try:
            with self._waiting():
                failures, took = flight.commit.result()
        except BaseException:
            # Whether it committed is unknown: as in run_batch, the stores drop it and the session rejoins.
            if flight.handle is not None:
                flight.handle.settle(False)
            step.discard_held()
            self.unwritten.extend(flight.records)
            raise
        if failures:
            if flight.handle is not None:
                flight.handle.settle(False)
            step.discard_held()
            try:
                self._txn.abort()
                quarantine: Quarantine = {}
                fold = _blame(flight.result, failures, quarantine)
            except BaseException:
                self.unwritten.extend(flight.records)
                raise
            return [self._sync(flight.records, flight.now_ms, quarantine, fold)], True
        if flight.handle is not None:
            flight.handle.settle(True)
        if self._release is not None:
            self._release(flight.result)
        flight.result.held = True
        step.committed(flight.result, self._txn.delivered(), flight.now_ms)
        return [Committed(len(flight.records), flight.result, took)], False

    def _sync(self, records: list[InRecord], now_ms: int, quarantine: Quarantine | None = None, fold: bool = True) -> Committed:
        started = self._clock()
        try:
            result, _ = run_batch(self._step, records, now_ms, self._txn, self._release, self._early, quarantine, fold)
        except BaseException:
            self.unwritten.extend(records)
            raise
        return Committed(len(records), result, self._clock() - started)
