"""Restart-as-new: a new invocation with a finished (or paused) one's target, input and journal prefix."""

from __future__ import annotations

from typing import Any

from keystate.schemas.enums import InvocationState, OutputStatus
from keystate.schemas.ids import InvalidIdError, InvocationId, InvocationIdStr
from keystate.schemas.records import InvocationStatus, JournalRecord

from .actions import Action, Publish
from .completion import COMPLETABLE
from .lifecycle import INPUT_ENTRY, do_admit
from .model import Config, failure, is_completed
from .rows import get_status, put_journal, put_status
from .tables import Tables

__all__ = ["SOURCE", "on_restart_as_new"]

SOURCE = "admin"
"""The `source` of a restarted invocation: an operator made it (no caller, no reply topic)."""
_RESTARTABLE = (InvocationState.COMPLETED, InvocationState.PAUSED)


class _Refused(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def on_restart_as_new(tables: Tables, cmd: dict[str, Any], now: int, cfg: Config, out: list[Action]) -> None:
    """Copy the old invocation's input and entries [1, from_index) into a new one and admit it; answer the admin."""
    old_id: InvocationIdStr = cmd["invocation_id"]
    new_id: InvocationIdStr = cmd["new_invocation_id"]
    if get_status(tables, new_id) is not None:
        _reply(out, cmd, OutputStatus.RUNNING, None, new_id)  # redelivered: it was created already
        return
    try:
        old, journal = _restartable(tables, old_id, new_id, cmd["from_index"])
    except _Refused as refused:
        _reply(out, cmd, OutputStatus.FAILED, failure(refused.code, refused.message), old_id)
        return
    input_body = journal[0].body
    status = InvocationStatus(
        invocation_id=new_id,
        target=old.target,
        status=InvocationState.SCHEDULED,
        attempt=0,
        journal_length=len(journal),
        waiting_on=(),
        deployment_id=cmd.get("deployment_id") or old.deployment_id,
        headers=dict(input_body["headers"]),
        idempotency_key=None,
        caller=None,
        reply_topic=None,
        created_at_ms=now,
        modified_at_ms=now,
        execute_at_ms=None,
        result=None,
        completion_status=None,
        last_failure=None,
        retry_count=0,
        retention_ms=cfg.retention_for(old.target),
        source=SOURCE,
        cancel_requested=False,
        attached_callers=(),
        dedup_key=None,
        correlation=None,
        reply_topics=(),
    )
    put_status(tables, status)
    for index, record in enumerate(journal):
        put_journal(tables, new_id, index, record.entry)
    _reply(out, cmd, OutputStatus.RUNNING, None, new_id)
    do_admit(tables, status, now, cfg, out)


def _restartable(
    tables: Tables, old_id: InvocationIdStr, new_id: InvocationIdStr, from_index: int
) -> tuple[InvocationStatus, list[JournalRecord]]:
    """The old status and the journal prefix to copy (input first), or `_Refused` saying why not."""
    old = get_status(tables, old_id)
    if old is None:
        raise _Refused(404, f"unknown invocation {old_id}: it never existed, or it completed and was purged")
    if old.status not in _RESTARTABLE:
        raise _Refused(
            409,
            f"invocation {old_id} is {old.status}; only completed or paused invocations can be restarted as new "
            f"(cancel or kill it first, or pause it)",
        )
    if old.target.workflow_run:
        raise _Refused(400, f"invocation {old_id} is the run of workflow {old.target.service}/{old.target.key}, "
                       "which runs once per workflow id; start a workflow with a new id instead")
    try:
        same_partition = InvocationId.parse(new_id).partition_key == InvocationId.parse(old_id).partition_key
    except InvalidIdError as exc:
        raise _Refused(400, f"the new invocation id is not valid: {exc}") from None
    if not same_partition:
        raise _Refused(400, f"new invocation id {new_id} does not carry the partition key of {old_id}")
    rows = {key[1]: JournalRecord.from_avro(row) for key, row in tables.journal.scan((old_id,))}
    if 0 not in rows or rows[0].name != INPUT_ENTRY:
        raise _Refused(
            409,
            f"the journal of invocation {old_id} is gone (its journal retention ended, or was 0), so it cannot be "
            "restarted; keep journals longer with the processor's --journal-retention",
        )
    copied = [rows[0]]
    for index in range(1, max(1, from_index)):
        record = rows.get(index)
        if record is not None and record.name == "keystate.OutputEntry":
            raise _Refused(
                400, f"journal entry {index} is the output of invocation {old_id}, which is not copied; "
                f"restart from {index} or earlier",
            )
        if record is None:
            raise _Refused(
                400,
                f"invocation {old_id} has no journal entry {index} to copy (its journal ends before); "
                f"restart from {index} or earlier",
            )
        if record.name in COMPLETABLE and not is_completed(record.name, record.body):
            raise _Refused(
                400,
                f"journal entry {index} ({record.name.removeprefix('keystate.')}) of invocation {old_id} is not "
                f"completed, so it cannot be copied; restart from {index} or earlier",
            )
        copied.append(record)
    return old, copied


def _reply(
    out: list[Action], cmd: dict[str, Any], status: OutputStatus, result: Any, invocation_id: InvocationIdStr
) -> None:
    record = {
        "request_id": cmd["request_id"],
        "invocation_id": invocation_id,
        "status": status,
        "result": result,
        "previously_accepted": False,
        "expires_at_ms": None,
    }
    out.append(Publish(cmd["reply_topic"], cmd["request_id"].encode(), "keystate.QueryOutputReply", record))
