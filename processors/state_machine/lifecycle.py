"""Invocation lifecycle: accept, start attempts, suspend, back off, complete, purge."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from keystate.schemas.enums import CompletionStatus, InvocationState, OnMaxAttempts, TimerKind
from keystate.schemas.ids import InvocationId, InvocationIdStr, PartitionKey, positive_hash
from keystate.schemas.records import CallerRef, Correlation, Failure, InvocationStatus, Result, StateValue, Target

from . import idempotency, inbox, state_edit, timers
from .actions import Action, Invoke, Publish, StopInvocation
from .model import VALUE, Config, failure, is_completed
from .rows import get_journal, get_status, put_journal, put_status
from .tables import Tables

__all__ = [
    "JOURNAL_ONLY",
    "do_complete",
    "do_delete_journal",
    "do_start_attempt",
    "journal_retention",
    "on_attempt_failed",
    "on_invoke",
    "on_pause",
    "on_resume",
    "do_purge",
    "do_release_key",
    "on_purge",
    "on_resume_paused",
    "on_suspend",
    "partition_key_of",
    "removed_reason",
]

INPUT_ENTRY = "keystate.InputEntry"
# A started invocation is pinned to its deployment; these are the states a PauseCommand stops.
_PAUSABLE = (InvocationState.INVOKED, InvocationState.SUSPENDED, InvocationState.BACKING_OFF)
# The code of the last_failure a pause leaves for operators: the deployment is gone, like a 503.
PAUSED_CODE = 503
# The entry index of a PURGE timer that deletes only the journal (its retention is shorter than the status row's).
JOURNAL_ONLY = 0


def removed_reason(deployment_id: str, invocation_id: InvocationIdStr) -> str:
    """Why an invocation pinned to a removed deployment is PAUSED, and how to go on (operators read it)."""
    return (
        f"paused: deployment {deployment_id}, which this invocation is pinned to, was removed; resume it on "
        f"another deployment with PATCH /invocations/{invocation_id}/resume?deployment=<id> (or =latest), "
        "or kill it"
    )


def partition_key_of(invocation_id: InvocationIdStr) -> PartitionKey:
    return InvocationId.parse(invocation_id).partition_key


def live_status(tables: Tables, invocation_id: InvocationIdStr, attempt: int | None = None) -> InvocationStatus | None:
    """The status of a running invocation (at `attempt`, if given); None for stale or finished ones."""
    status = get_status(tables, invocation_id)
    if status is None or status.status is InvocationState.COMPLETED:
        return None
    if attempt is not None and status.attempt != attempt:
        return None
    return status


def _caller(record: dict[str, Any] | None) -> CallerRef | None:
    return None if record is None else CallerRef.from_avro(record)


def _correlation(record: dict[str, Any] | None) -> Correlation | None:
    return None if record is None else Correlation.from_avro(record)


def on_invoke(tables: Tables, cmd: dict[str, Any], now: int, cfg: Config, out: list[Action]) -> None:
    iid: InvocationIdStr = cmd["invocation_id"]
    request_id = cmd.get("request_id")
    same = get_status(tables, iid)
    reply_topic = cmd.get("reply_topic")
    if same is not None:
        # Redelivered, or a retried send with the same id: the first one wins.
        if request_id:
            idempotency.reply(out, reply_topic, request_id, same, previously_accepted=True)
        return
    caller = _caller(cmd.get("caller"))
    dedup = idempotency.dedup_key(cmd)
    if dedup is not None:
        first = idempotency.existing(tables, dedup)
        if first is not None:
            if request_id:
                idempotency.reply(out, reply_topic, request_id, first, previously_accepted=True)
                # The ingress waits for the first one's result on its reply topic, after this reply.
                first = idempotency.do_attach_reply_topic(tables, first, reply_topic)
            known = caller == first.caller or caller in first.attached_callers
            if idempotency.answer_duplicate(out, caller, first) and not known and caller is not None:
                put_status(tables, replace(first, attached_callers=(*first.attached_callers, caller)))
            return
    target = Target.from_avro(cmd["target"])
    status = InvocationStatus(
        invocation_id=iid,
        target=target,
        status=InvocationState.SCHEDULED,
        attempt=0,
        journal_length=1,
        waiting_on=(),
        deployment_id=None,
        headers=cmd["headers"],
        idempotency_key=cmd.get("idempotency_key"),
        caller=caller,
        reply_topic=reply_topic,
        created_at_ms=cmd["created_at_ms"],
        modified_at_ms=now,
        execute_at_ms=cmd.get("execute_at_ms"),
        result=None,
        completion_status=None,
        last_failure=None,
        retry_count=0,
        retention_ms=cfg.retention_for(target),
        source=cmd["source"],
        cancel_requested=False,
        cancel_pending=False,
        attached_callers=(),
        dedup_key=None if dedup is None else idempotency.do_remember(tables, dedup, iid),
        correlation=_correlation(cmd.get("correlation")),
        reply_topics=(),
    )
    put_status(tables, status)
    put_journal(tables, iid, 0, (INPUT_ENTRY, {"argument": cmd["argument"], "headers": cmd["headers"]}))
    if request_id:
        idempotency.reply(out, reply_topic, request_id, status)
    execute_at = cmd.get("execute_at_ms")
    if execute_at is not None and execute_at > now:
        timers.do_register(tables, iid, TimerKind.DELAYED_INVOKE, None, None, execute_at, out)
        return
    do_admit(tables, status, now, cfg, out)


def do_admit(tables: Tables, status: InvocationStatus, now: int, cfg: Config, out: list[Action]) -> None:
    """Start a scheduled invocation, or queue it behind the key's running exclusive one."""
    target = status.target
    iid = status.invocation_id
    if target.exclusive:
        service, key = target.object_key()
        if not inbox.try_lock(tables, service, key, iid):
            inbox.do_enqueue(tables, service, key, iid)
            put_status(tables, replace(status, status=InvocationState.INBOXED, modified_at_ms=now))
            return
    do_start_attempt(tables, status, now, cfg, out)


def do_start_attempt(tables: Tables, status: InvocationStatus, now: int, cfg: Config, out: list[Action]) -> None:
    """Bump the attempt number (fencing the old one) and order the invoker to run it.

    An invocation pinned to a removed deployment is paused instead: running it on whatever code
    is latest now could replay its journal against different handlers.
    """
    iid = status.invocation_id
    target = status.target
    if status.deployment_id is not None and cfg.deployment_removed(status.deployment_id):
        reason = Failure(code=PAUSED_CODE, message=removed_reason(status.deployment_id, iid))
        put_status(tables, replace(status, status=InvocationState.PAUSED, last_failure=reason, modified_at_ms=now))
        out.append(StopInvocation(iid))
        return
    deployment = status.deployment_id or cfg.deployment_for(target.service)
    status = replace(
        status,
        status=InvocationState.INVOKED,
        attempt=status.attempt + 1,
        waiting_on=(),
        deployment_id=deployment,
        modified_at_ms=now,
    )
    put_status(tables, status)
    journal = [record for _, record in sorted(tables.journal.scan((iid,)), key=lambda kv: kv[0][1])]
    state = None
    if target.keyed:
        # Sorted: scan order differs between live and restored tables, actions must not.
        rows = sorted(tables.state.scan(target.object_key()), key=lambda kv: kv[0][2])
        state = [{"key": k[2], "value": StateValue.from_avro(v).value} for k, v in rows]
    out.append(
        Invoke(
            invocation_id=iid,
            attempt=status.attempt,
            target=target.to_avro(),
            journal=journal,
            state=state,
            deployment_id=deployment,
            retry_count=status.retry_count,
            random_seed=positive_hash(iid),
            first_attempt_at_ms=status.created_at_ms,
        )
    )


def on_resume(tables: Tables, iid: InvocationIdStr, attempt: int, now: int, cfg: Config, out: list[Action]) -> None:
    """Start a new attempt if the invocation is still at `attempt` (a retry timer, or a takeover)."""
    status = live_status(tables, iid, attempt)
    if status is None or status.status not in (InvocationState.INVOKED, InvocationState.BACKING_OFF):
        return
    do_start_attempt(tables, status, now, cfg, out)


def on_suspend(tables: Tables, cmd: dict[str, Any], now: int, cfg: Config, out: list[Action]) -> None:
    status = live_status(tables, cmd["invocation_id"], cmd["attempt"])
    if status is None or status.status is not InvocationState.INVOKED:
        return
    waiting: tuple[int, ...] = tuple(cmd["waiting_on"])
    # A completion may have arrived while the attempt was deciding to suspend.
    if not waiting or any(_entry_completed(tables, status.invocation_id, i) for i in waiting):
        do_start_attempt(tables, status, now, cfg, out)
        return
    put_status(tables, replace(status, status=InvocationState.SUSPENDED, waiting_on=waiting, modified_at_ms=now))


def _entry_completed(tables: Tables, iid: InvocationIdStr, index: int) -> bool:
    record = get_journal(tables, iid, index)
    return record is not None and is_completed(record.name, record.body)


def on_attempt_failed(tables: Tables, cmd: dict[str, Any], now: int, cfg: Config, out: list[Action]) -> None:
    status = live_status(tables, cmd["invocation_id"], cmd["attempt"])
    if status is None or status.status is not InvocationState.INVOKED:
        return
    failed = Failure.from_avro(cmd["failure"])
    policy = cfg.policy_for(status.target)
    retries = status.retry_count + 1
    exhausted = policy.max_attempts is not None and retries >= policy.max_attempts
    if exhausted and cmd["retryable"] and policy.on_max_attempts == OnMaxAttempts.PAUSE:
        put_status(
            tables,
            replace(status, status=InvocationState.PAUSED, retry_count=retries, last_failure=failed, modified_at_ms=now),
        )
        return
    if not cmd["retryable"] or exhausted:
        message = failed.message
        if exhausted and cmd["retryable"]:
            message = f"gave up after {retries} attempts: {message}"
        do_complete(tables, status, failure(failed.code, message), now, cfg, out)
        return
    delay = cmd.get("retry_after_ms")
    if delay is None:
        delay = policy.delay_ms(retries)
    status = replace(
        status, status=InvocationState.BACKING_OFF, retry_count=retries, last_failure=failed, modified_at_ms=now
    )
    put_status(tables, status)
    timers.do_register(tables, status.invocation_id, TimerKind.RETRY, None, status.attempt, now + delay, out)


def do_complete(
    tables: Tables,
    status: InvocationStatus,
    result: Result,
    now: int,
    cfg: Config,
    out: list[Action],
    completion: CompletionStatus | None = None,
) -> None:
    """Finish an invocation: publish its result, answer its callers, free its key, keep it for retention."""
    iid = status.invocation_id
    target = status.target
    succeeded = result[0] == VALUE
    if completion is None:
        cancelled = status.cancel_requested and not succeeded and result[1]["code"] == 409
        if succeeded:
            completion = CompletionStatus.SUCCEEDED
        else:
            completion = CompletionStatus.CANCELLED if cancelled else CompletionStatus.FAILED
    journal_ms = journal_retention(cfg, status)
    if journal_ms == 0:
        do_delete_journal(tables, iid)
    timers.do_delete_all(tables, iid)
    out.append(StopInvocation(iid))
    record = {
        "invocation_id": iid,
        "target": target.to_avro(),
        "status": completion,
        "output": result[1]["value"] if succeeded else None,
        "failure": None if succeeded else result[1],
        "idempotency_key": status.idempotency_key,
        "completed_at_ms": now,
        "correlation": None if status.correlation is None else status.correlation.to_avro(),
    }
    # keystate.results (None) is the public stream of every result; then the requester's reply topic and
    # the reply topics of ingresses attached to it, each once.
    for topic in dict.fromkeys((None, status.reply_topic, *status.reply_topics)):
        if topic is None and not _public(status, cfg):
            continue
        out.append(Publish(topic, iid.encode(), "keystate.InvocationResult", record))
    for caller in (status.caller, *status.attached_callers):
        if caller is not None:
            out.append(idempotency.completion_to(caller, result))
    # The result replaces the request headers: a status row holds at most one payload.
    completed = replace(
        status,
        status=InvocationState.COMPLETED,
        headers={},
        result=result,
        completion_status=completion,
        waiting_on=(),
        attached_callers=(),
        reply_topics=(),
        modified_at_ms=now,
    )
    # The status row outlives the journal: a journal without its invocation could not be found or purged.
    keep_ms = max(status.retention_ms, journal_ms)
    if keep_ms > 0:
        put_status(tables, replace(completed, retention_ms=keep_ms))
        timers.do_register(tables, iid, TimerKind.PURGE, None, None, now + keep_ms, out)
        if 0 < journal_ms < keep_ms:
            timers.do_register(tables, iid, TimerKind.PURGE, JOURNAL_ONLY, None, now + journal_ms, out)
    else:
        do_purge(tables, completed)
    if target.exclusive:
        do_release_key(tables, *target.object_key(), iid, now, cfg, out)


def do_release_key(
    tables: Tables, service: str, key: str, holder: str, now: int, cfg: Config, out: list[Action]
) -> None:
    """Free the key `holder` locked: apply the state edits next in its inbox, then start the next invocation."""
    while True:
        item = inbox.do_release(tables, service, key, holder)
        if item is None:
            return
        if item.state_edit is None:
            break
        state_edit.do_apply(tables, item.state_edit, out)
        holder = item.invocation_id
    waiting = get_status(tables, item.invocation_id)
    if waiting is not None:
        do_start_attempt(tables, waiting, now, cfg, out)


def _public(status: InvocationStatus, cfg: Config) -> bool:
    """Whether the result goes to keystate.results: always, unless the lead's setting keeps HTTP calls' results
    on the waiting ingress's reply topic only (one partition less per completing transaction)."""
    return cfg.publish_ingress_results or status.source != "ingress" or status.reply_topic is None


def journal_retention(cfg: Config, status: InvocationStatus) -> int:
    """How long `status`'s journal is kept once it completes; a deduplicated one's no longer than its status row.

    As in Restate, the idempotency (or workflow) retention caps the journal retention: the row that
    answers duplicates must not outlive... nor be outlived by the journal it explains.
    """
    journal_ms = cfg.journal_retention_for(status.target)
    return min(journal_ms, status.retention_ms) if status.dedup_key else journal_ms


def on_purge(tables: Tables, iid: InvocationIdStr, journal_only: bool = False) -> None:
    """Purge a completed invocation (a PURGE timer or PurgeCommand); `journal_only`: its journal's retention ended."""
    status = get_status(tables, iid)
    if status is None or status.status is not InvocationState.COMPLETED:
        return
    if journal_only:
        do_delete_journal(tables, iid)
    else:
        do_purge(tables, status)


def do_delete_journal(tables: Tables, iid: InvocationIdStr) -> None:
    for key, _ in list(tables.journal.scan((iid,))):
        tables.journal.delete(key)


def do_purge(tables: Tables, status: InvocationStatus) -> None:
    """Forget a completed invocation and its journal; a workflow's run takes the workflow's state and promises along."""
    iid = status.invocation_id
    tables.status.delete((iid,))
    do_delete_journal(tables, iid)
    timers.do_delete_all(tables, iid)
    idempotency.do_forget(tables, status)
    target = status.target
    if target.workflow_run:
        for table in (tables.state, tables.promises):
            for key, _ in list(table.scan(target.object_key())):
                table.delete(key)




def on_pause(tables: Tables, cmd: dict[str, Any], now: int, cfg: Config, out: list[Action]) -> None:
    """Park a started invocation (on the named deployment, if any) until an operator resumes it.

    The running attempt is stopped and fenced: PAUSED accepts no journal appends, suspensions or
    failures of that attempt, and a pending retry timer finds nothing to restart. Completions that
    arrive meanwhile are kept in the journal for the next attempt.
    """
    status = live_status(tables, cmd["invocation_id"])
    if status is None or status.status not in _PAUSABLE:
        return
    wanted = cmd.get("deployment_id")
    if wanted is not None and status.deployment_id != wanted:
        return
    reason = Failure(code=PAUSED_CODE, message=cmd["reason"])
    put_status(tables, replace(status, status=InvocationState.PAUSED, last_failure=reason, modified_at_ms=now))
    out.append(StopInvocation(status.invocation_id))


def on_resume_paused(tables: Tables, cmd: dict[str, Any], now: int, cfg: Config, out: list[Action]) -> None:
    """Start a paused invocation again, on `deployment_id` if the command names one (it stays pinned there)."""
    status = live_status(tables, cmd["invocation_id"])
    if status is None or status.status is not InvocationState.PAUSED:
        return
    deployment = cmd.get("deployment_id") or status.deployment_id
    do_start_attempt(tables, replace(status, retry_count=0, deployment_id=deployment), now, cfg, out)
