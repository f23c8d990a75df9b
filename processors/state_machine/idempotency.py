"""Deduplication: one invocation per idempotency key, one `run` per workflow id, within retention."""

from __future__ import annotations

import json
from dataclasses import replace
from typing import Any

from keystate.schemas.enums import InvocationState, OutputStatus
from keystate.schemas.ids import InvocationId, InvocationIdStr
from keystate.schemas.records import CallerRef, IdempotencyValue, InvocationStatus, Result

from .actions import Action, Publish, SendToPartition
from .model import failure, is_workflow_run
from .rows import get_idempotency, get_status, put_status
from .tables import Key, Tables

__all__ = [
    "answer_duplicate",
    "completion_to",
    "do_attach_reply_topic",
    "dedup_key",
    "do_forget",
    "do_remember",
    "existing",
    "reply",
    "result_record",
]


def dedup_key(cmd: dict[str, Any]) -> Key | None:
    """The idempotency-table key of an InvokeCommand, or None when it is not deduplicated."""
    target = cmd["target"]
    if is_workflow_run(target):
        # Handler names are never empty, so "" cannot collide with an idempotency key row.
        return (target["service"], target["key"], "", "")
    key = cmd.get("idempotency_key")
    if key is None:
        return None
    return (target["service"], target.get("key") or "", target["handler"], key)


def existing(tables: Tables, key: Key) -> InvocationStatus | None:
    """The status of the invocation registered under `key`, if it still exists."""
    row = get_idempotency(tables, key)
    return None if row is None else get_status(tables, row.invocation_id)


def do_remember(tables: Tables, key: Key, invocation_id: InvocationIdStr) -> str:
    tables.idempotency.put(key, IdempotencyValue(invocation_id=invocation_id).to_avro())
    return json.dumps(list(key))


def do_forget(tables: Tables, status: InvocationStatus) -> None:
    if status.dedup_key:
        tables.idempotency.delete(tuple(json.loads(status.dedup_key)))


def result_record(status: InvocationStatus) -> dict[str, Any]:
    """OutputStatus, result and expiry of a status, for a QueryOutputReply."""
    if status.status is not InvocationState.COMPLETED:
        return {"status": OutputStatus.RUNNING, "result": None, "expires_at_ms": None}
    return {
        # OutputStatus has CompletionStatus's symbols; do_complete always sets one.
        "status": OutputStatus(status.completion_status or OutputStatus.UNKNOWN),
        "result": status.result,
        "expires_at_ms": status.modified_at_ms + status.retention_ms,
    }


def reply(
    out: list[Action],
    topic: str | None,
    request_id: str,
    status: InvocationStatus | None,
    previously_accepted: bool = False,
) -> None:
    """Answer a request on `topic` (None: keystate.results), keyed by the invocation it names."""
    if status is None:
        record = {"request_id": request_id, "invocation_id": None, "status": OutputStatus.UNKNOWN, "result": None,
                  "previously_accepted": False, "expires_at_ms": None}
        key = request_id
    else:
        record = {"request_id": request_id, "invocation_id": status.invocation_id,
                  "previously_accepted": previously_accepted, **result_record(status)}
        key = status.invocation_id
    out.append(Publish(topic, key.encode(), "keystate.QueryOutputReply", record))


def do_attach_reply_topic(tables: Tables, status: InvocationStatus, topic: str | None) -> InvocationStatus:
    """Also send the running invocation's result to `topic` (an ingress's reply topic) when it completes.

    The reply saying RUNNING and the result then travel on one single-partition topic, in that order,
    so the waiting ingress cannot read the result before it knows to wait for it.
    """
    if topic is None or status.status is InvocationState.COMPLETED:
        return status
    if topic == status.reply_topic or topic in status.reply_topics:
        return status
    attached = replace(status, reply_topics=(*status.reply_topics, topic))
    put_status(tables, attached)
    return attached


def answer_duplicate(out: list[Action], caller: CallerRef | None, status: InvocationStatus) -> bool:
    """Answer the caller of a duplicate; returns True when the caller must be attached for later."""
    if caller is None:
        return False
    target = status.target
    result: Result | None
    if target.workflow_run:
        result = failure(409, f"workflow {target.service}/{target.key} was already started")
    elif status.status is InvocationState.COMPLETED:
        result = status.result
    else:
        return True
    out.append(completion_to(caller, result))
    return False


def completion_to(caller: CallerRef, result: Result | None) -> SendToPartition:
    iid = caller.invocation_id
    return SendToPartition(
        InvocationId.parse(iid).partition_key,
        iid.encode(),
        "keystate.CompletionCommand",
        {"invocation_id": iid, "entry_index": caller.entry_index, "result": result},
        iid,
    )
