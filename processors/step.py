"""The pure batch step: consumed records in, records to produce plus effects out.

No Kafka client and no clock here: the session (or the test driver) hands in plain `InRecord`s,
the time, and lookups (registered services, whether a topic exists). Every produced record
remembers the consumed record that caused it, so one that Kafka refuses can be isolated.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from keystate.schemas._codec import Codec
from keystate.schemas.headers import redact_headers
from keystate.schemas.limits import SETTING_HINT
from keystate.schemas.topics import Topics
from keystate.server.commands import LogRecord, command_record
from keystate.server.meta import MetaState

from . import changelog
from .metrics import BatchCounts
from .partition import PartitionProcessor
from .quarantine import Drop, Quarantine, Reject, SkipPublish
from .records import FOLDED_TOPIC, PENDING_TOPIC, InRecord, Origin, OutKind, OutRecord
from .router import Invalid, Refused, TopicExists, route_request
from .state_machine import Action, Publish, SendToPartition
from .store import Checkpoint

if TYPE_CHECKING:
    from .early import GateAction

__all__ = ["BatchStep", "Effect", "StepLookups", "StepResult", "StepSettings", "result_headers", "retry_command"]

log = logging.getLogger(__name__)

Effect = tuple[int, "Action | GateAction"]
"""(log partition, action) to run after the commit."""

# Room for a dead letter's own fields and headers next to the rejected value.
_LETTER_OVERHEAD = 4096


@dataclass(frozen=True, slots=True)
class StepSettings:
    topics: Topics
    log_partitions: int
    # Largest record the step hands to the producer (key + value + headers): the payload limit's
    # record size (keystate.schemas.limits.kafka_sizes), which producers and topics are sized for.
    max_record_bytes: int
    # Secret headers dropped from keystate.requests (keystate.schemas.headers; $KEYSTATE_REDACT_HEADERS).
    redact_headers: frozenset[str] = field(default_factory=redact_headers)


@dataclass(frozen=True, slots=True)
class StepLookups:
    """What the step may ask of the world; the session answers from caches."""

    meta: Callable[[], MetaState]
    topic_exists: TopicExists


@dataclass(slots=True)
class StepResult:
    produced: list[OutRecord] = field(default_factory=list)
    effects: list[Effect] = field(default_factory=list)
    offsets: dict[tuple[str, int], int] = field(default_factory=dict)
    touched: set[int] = field(default_factory=set)
    # A log record that must be rejected before anything of this run can be produced: its apply
    # raised or produced an oversized record. The tables of `touched` are dirty: restore, re-run.
    rejected: tuple[Origin, str] | None = None
    pending_used: int = 0
    held: bool = False  # its transaction committed while the next batch was applied (pipelined)
    # partition -> changelog key -> index in `produced` of the row's one record in this batch
    rows: dict[int, dict[bytes, int]] = field(default_factory=dict)
    dropped_unowned: int = 0
    dead_lettered: int = 0
    # Completions and dead letters of this run, observed only if its transaction commits (a re-run counts anew).
    counts: BatchCounts = field(default_factory=BatchCounts)


class _Rerun(Exception):
    def __init__(self, origin: Origin, reason: str) -> None:
        super().__init__(reason)
        self.origin = origin
        self.reason = reason


class BatchStep:
    """Applies batches to the partition processors this process owns; holds commands to append."""

    def __init__(self, settings: StepSettings, lookups: StepLookups, codec: Codec) -> None:
        self.settings = settings
        self.lookups = lookups
        self.codec = codec
        self.partitions: dict[int, PartitionProcessor] = {}
        self.pending: list[OutRecord] = []
        self._held = 0  # pending commands a committing (held) result already carries
        self._seq = 0
        self._now = 0
        # Identity of the changelog topic (its topic id), written with every checkpoint.
        self.changelog_id = ""

    # ---- commands the shell appends on its own --------------------------------------------------
    def append(self, name: str, record: dict[str, object], target: dict[str, object] | None = None) -> None:
        """Append a command in the next transaction (a takeover resume, a sweep)."""
        out = command_record(name, record, self.settings.log_partitions, target=target)
        self._seq += 1
        self.pending.append(self._command(out, (PENDING_TOPIC, out.partition, self._seq)))

    def adopt(self, proc: PartitionProcessor, now_ms: int) -> int:
        """Take over a restored partition: queue a resume of every INVOKED invocation; how many.

        The resume goes through the log so it lands after whatever the previous owner's attempt appended.
        """
        self.partitions[proc.partition] = proc
        resumed = 0
        for iid, status in proc.unfinished():
            self.append("keystate.TimerFiredCommand", retry_command(iid, status["attempt"], now_ms), status["target"])
            resumed += 1
        return resumed

    def forget_partitions(self, partitions: set[int]) -> None:
        """Drop the partitions and their queued commands (revoked or lost); their stores drop the open batch."""
        for p in partitions:
            proc = self.partitions.pop(p, None)
            if proc is not None:
                proc.store.discard_all()
        self.pending = [r for r in self.pending if r.partition not in partitions]
        self._held = 0  # the session drains a committing result before partitions go

    def discard(self, partitions: set[int]) -> None:
        """The run is void (aborted or to be re-run): the stores of `partitions` drop what it wrote."""
        for p in partitions:
            proc = self.partitions.get(p)
            if proc is not None:
                proc.store.discard()

    def unheld_pending(self) -> list[OutRecord]:
        """The queued commands no committing result carries yet."""
        return self.pending[self._held :]

    def hold(self, result: StepResult) -> None:
        """`result`'s transaction is committing: the next run applies over it (its stores keep its overlay)."""
        self._held += result.pending_used
        for p in self.partitions.values():
            p.store.hold()

    def discard_held(self) -> None:
        """The held result's transaction did not commit: every overlay goes (the next run read them)."""
        self._held = 0
        for p in self.partitions.values():
            p.store.discard_all()

    def committed(self, result: StepResult, delivered: Mapping[tuple[str, int], int], now_ms: int) -> None:
        """The result's transaction committed: its queued commands are written, its rows go to the stores.

        `delivered` holds the highest offset the transaction wrote per (topic, partition): the store's
        checkpoint moves past its own rows, so a restart reads the changelog only after them.
        """
        del self.pending[: result.pending_used]
        self._held = max(0, self._held - result.pending_used)
        topic = self.settings.topics.changelog_topic
        for p in (self.partitions if result.held else result.touched):
            proc = self.partitions.get(p)
            if proc is None:
                continue
            if result.held and p not in result.touched:
                proc.store.tables.settle()  # its (empty) layer of the held batch
                continue
            written = (result.produced[i] for i in result.rows.get(p, {}).values())
            rows = [(r.key or b"", r.value, r.headers) for r in written]
            last = delivered.get((topic, p))
            checkpoint = None if last is None else Checkpoint(self.changelog_id, last + 1, now_ms)
            proc.store.commit(rows, checkpoint)

    # ---- the step ---------------------------------------------------------------------------------
    def run(
        self, records: list[InRecord], now_ms: int, quarantine: Quarantine, folded: Sequence[LogRecord] = ()
    ) -> StepResult:
        """Apply `records` (and queue the pending commands); the result is void if `rejected` is set.

        `folded`: log commands not yet on the log (entries of attempts started early, see
        keystate.processors.early), written by this batch's transaction and applied after `records`.
        """
        self._now = now_ms
        result = StepResult(pending_used=len(self.pending) - self._held)
        for out in self.pending[self._held :]:
            assert out.origin is not None
            verdict = quarantine.get(out.origin)
            if verdict is None:
                result.produced.append(out)
            else:
                log.error("dropping %s for invocation %s: %s", _type(out), out.invocation_id, verdict.reason)
        try:
            for record in records:
                if record.topic == self.settings.topics.requests:
                    self._route(record, now_ms, quarantine.get(record.origin), result)
                else:
                    self._apply(record, quarantine, result)
            for command in folded:
                self._seq += 1
                origin = (FOLDED_TOPIC, command.partition, self._seq)
                self._emit(self._command(command, origin), result)
                record = InRecord(FOLDED_TOPIC, command.partition, self._seq, command.key, command.value, now_ms)
                self._apply(record, quarantine, result)
        except _Rerun as rerun:
            result.rejected = (rerun.origin, rerun.reason)
        return result

    def _apply(self, record: InRecord, quarantine: Quarantine, result: StepResult) -> None:
        proc = self.partitions.get(record.partition)
        if proc is None:
            # Revoked between poll and now: the new owner reads it again from the committed offset.
            result.dropped_unowned += 1
            return
        if record.topic != FOLDED_TOPIC:  # a folded command was not consumed: no offset to commit
            result.offsets[(record.topic, record.partition)] = record.offset + 1
        verdict = quarantine.get(record.origin)
        try:
            command = self.codec.decode(record.value)  # type: ignore[arg-type]
        except Exception as exc:  # any garbage: never retried, never wedging the partition
            self._dead_letter(record, f"undecodable record in the log: {exc}", result, cause="undecodable")
            return
        iid = command[1].get("invocation_id")
        if isinstance(verdict, Drop):
            log.error("dropping %s for invocation %s at %s: %s", command[0], iid, _where(record), verdict.reason)
            return
        if isinstance(verdict, Reject):
            self._dead_letter(record, verdict.reason, result, iid, cause="rejected")
            self._fail_invocation(proc, command[0], iid, verdict.reason, record.origin, result)
            return
        skip = verdict.topics if isinstance(verdict, SkipPublish) else frozenset()
        result.touched.add(record.partition)
        try:
            actions = proc.apply(command, record.timestamp_ms)
        except Exception as exc:
            raise _Rerun(record.origin, f"applying {command[0]} for invocation {iid} raised {exc!r}") from exc
        for table, key, value in proc.drain():
            if table == "status":
                result.counts.status_written(value)
            row_key, row_value, headers = changelog.row_record(table, key, value)
            out = OutRecord(
                OutKind.CHANGELOG,
                self.settings.topics.changelog_topic,
                record.partition,
                row_key,
                row_value,
                headers,
                record.origin,
                iid,
            )
            self._check_size(out)
            # One changelog record per row per batch: a later write of the row replaces the earlier one
            # (blamed on its own command if Kafka refuses it).
            where = result.rows.setdefault(record.partition, {})
            index = where.get(row_key)
            if index is None:
                where[row_key] = len(result.produced)
                result.produced.append(out)
            else:
                result.produced[index] = out
        for action in actions:
            self._act(record, action, skip, verdict, result)

    def _act(self, record: InRecord, action: Action, skip: frozenset[str], verdict: object, result: StepResult) -> None:
        if isinstance(action, SendToPartition):
            out = command_record(
                action.name, action.record, self.settings.log_partitions, partition_key=action.partition_key, key=action.key
            )
            self._emit(self._command(out, record.origin, action.invocation_id), result)
        elif isinstance(action, Publish):
            topic = action.topic or self.settings.topics.results
            iid = action.record.get("invocation_id")
            if topic in skip:
                assert isinstance(verdict, SkipPublish)
                log.error("invocation %s: not publishing %s to %s: %s", iid, action.name, topic, verdict.reason)
                return
            value = self.codec.encode(action.name, action.record)
            headers = [("type", action.name.encode()), *result_headers(action.record)]
            self._emit(OutRecord(OutKind.PUBLISH, topic, None, action.key, value, headers, record.origin, iid), result)
        else:
            result.effects.append((record.partition, action))

    def _emit(self, out: OutRecord, result: StepResult) -> None:
        self._check_size(out)
        result.produced.append(out)

    def _check_size(self, out: OutRecord) -> None:
        size = out.size()
        if size > self.settings.max_record_bytes:
            assert out.origin is not None
            raise _Rerun(
                out.origin,
                f"{_type(out)} for {out.topic} is {size} bytes, over the record size limit of "
                f"{self.settings.max_record_bytes} bytes; keep values smaller, or {SETTING_HINT}",
            )

    def _route(self, record: InRecord, now_ms: int, verdict: object, result: StepResult) -> None:
        result.offsets[(record.topic, record.partition)] = record.offset + 1
        if isinstance(verdict, Drop):
            log.error("dropping request at %s: %s", _where(record), verdict.reason)
            return
        if isinstance(verdict, Reject):
            self._dead_letter(record, verdict.reason, result, cause="rejected")
            return
        source = f"kafka:{record.topic}/{record.partition}/{record.offset}"
        try:
            routed = route_request(
                self.codec,
                record.value,
                self.lookups.meta(),
                now_ms,
                source,
                self.lookups.topic_exists,
                self.settings.redact_headers,
                record_key=record.key,
                kafka_headers=record.headers,
            )
            if isinstance(routed, Invalid):
                self._dead_letter(record, routed.reason, result, cause="invalid")
                return
            if isinstance(routed, Refused):
                self._refuse(record, routed, result)
                return
            out = command_record("keystate.InvokeCommand", routed.record, self.settings.log_partitions)
        except Exception as exc:  # a poison request must never stop the router
            self._dead_letter(record, f"the request could not be routed: {exc}", result, cause="unroutable")
            return
        if len(out.key) + len(out.value) > self.settings.max_record_bytes:
            self._dead_letter(
                record,
                f"the request makes an InvokeCommand of {len(out.value)} bytes, over the record size limit of "
                f"{self.settings.max_record_bytes} bytes; send a smaller argument, or {SETTING_HINT}",
                result,
                cause="too_large",
            )
            return
        result.produced.append(self._command(out, record.origin))

    def _refuse(self, record: InRecord, refused: Refused, result: StepResult) -> None:
        """Answer a refused request with its failure on keystate.results (and its reply topic), as for a finished one."""
        iid = str(refused.invocation_id)
        log.warning("refusing request at %s (invocation %s): %s", _where(record), iid, refused.result["failure"]["message"])
        value = self.codec.encode("keystate.InvocationResult", refused.result)
        headers = [("type", b"keystate.InvocationResult"), *result_headers(refused.result)]
        for topic in dict.fromkeys([self.settings.topics.results, refused.reply_topic]):
            if topic is not None:
                out = OutRecord(OutKind.PUBLISH, topic, None, iid.encode(), value, headers, record.origin, iid)
                result.produced.append(out)

    def _command(self, out: LogRecord, origin: Origin, invocation_id: str | None = None) -> OutRecord:
        """A log command as a record of this batch, caused by `origin`."""
        iid = invocation_id or out.invocation_id
        return OutRecord(OutKind.COMMAND, self.settings.topics.log, out.partition, out.key, out.value, out.headers, origin, iid)

    def _dead_letter(
        self, record: InRecord, reason: str, result: StepResult, invocation_id: object = None, *, cause: str
    ) -> None:
        """Write the record to the DLQ with the reason (`cause`: its class, a metrics label); the offset moves past it."""
        result.counts.dead_lettered("requests" if record.topic == self.settings.topics.requests else "log", cause)
        log.warning("dead-lettering %s (invocation %s): %s", _where(record), invocation_id, reason)
        value = record.value
        room = self.settings.max_record_bytes - _LETTER_OVERHEAD - len(record.key or b"") - len(reason.encode())
        if value is not None and len(value) > room:
            reason = f"{reason} (value of {len(value)} bytes not kept: over the record size limit)"
            value = None
        letter = {
            "reason": reason,
            "topic": record.topic,
            "partition": record.partition,
            "offset": record.offset,
            "key": record.key,
            "value": value,
            "failed_at_ms": self._now,
        }
        result.produced.append(
            OutRecord(
                OutKind.DEAD_LETTER,
                self.settings.topics.requests_dlq,
                None,
                record.key,
                self.codec.encode("keystate.DeadLetter", letter),
                [("type", b"keystate.DeadLetter"), ("reason", reason.encode()[:1000])],
                record.origin,
            )
        )
        result.dead_lettered += 1

    def _fail_invocation(
        self, proc: PartitionProcessor, name: str, iid: object, reason: str, origin: Origin, result: StepResult
    ) -> None:
        """End the running attempt of the invocation whose command was rejected, with the reason."""
        if not isinstance(iid, str) or name == "keystate.AttemptFailedCommand":
            return  # failing it again would loop; the sweep and the DLQ tell the operator
        status = proc.tables.status.get((iid,))
        if status is None or status["status"] != "INVOKED":
            now = None if status is None else status["status"]
            log.error("invocation %s: %s rejected (%s); it stays %s", iid, name, reason, now)
            return
        failed = {
            "invocation_id": iid,
            "attempt": status["attempt"],
            "failure": {"code": 500, "message": f"{name} could not be written: {reason}"},
            "retryable": False,
            "retry_after_ms": None,
            "entry_index": None,
        }
        out = command_record("keystate.AttemptFailedCommand", failed, self.settings.log_partitions, target=status["target"])
        log.error("invocation %s: failing it, %s could not be written: %s", iid, name, reason)
        result.produced.append(self._command(out, origin))

    # ---- the sweep --------------------------------------------------------------------------------
    def sweep(self, now_ms: int, grace_ms: int, is_live: Callable[[str], bool]) -> int:
        """Queue a RETRY for each INVOKED invocation unchanged for `grace_ms` with no live attempt."""
        count = 0
        for proc in self.partitions.values():
            for iid, status in proc.stale_invoked(now_ms, grace_ms):
                if is_live(iid):
                    continue
                log.warning("invocation %s: INVOKED without a live attempt since %d; restarting it", iid, status["modified_at_ms"])
                self.append("keystate.TimerFiredCommand", retry_command(iid, status["attempt"], now_ms), status["target"])
                count += 1
        return count


def retry_command(iid: str, attempt: int, now_ms: int) -> dict[str, object]:
    """The TimerFiredCommand that starts a new attempt of an invocation stuck at `attempt`."""
    return {"invocation_id": iid, "timer_kind": "RETRY", "entry_index": None, "attempt": attempt, "fire_at_ms": now_ms}


def result_headers(record: Mapping[str, object]) -> list[tuple[str, bytes]]:
    """Kafka headers echoing a result's correlation (the request's own headers), for readers that match on headers.

    keystate's own `type` header is never overwritten by an echoed one.
    """
    correlation = record.get("correlation")
    if not isinstance(correlation, Mapping):
        return []
    headers: Mapping[str, str] = correlation.get("headers") or {}
    return [(name, value.encode()) for name, value in headers.items() if name.lower() != "type"]


def _where(record: InRecord) -> str:
    return f"{record.topic}[{record.partition}]@{record.offset}"


def _type(out: OutRecord) -> str:
    for name, value in out.headers or ():
        if name == "type":
            return value.decode(errors="replace")
    return out.kind.value
