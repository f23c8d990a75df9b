"""Schema ids of the records written to the wire as top-level values (Confluent wire format)."""

from __future__ import annotations

from typing import Final

__all__ = ["SCHEMA_IDS", "UPGRADES"]

# Ids are forever: an id is written into every record on Kafka, so never change or reuse one,
# even after its record is removed. A new record, or an incompatible new version of a record,
# gets a new id. Ranges are for readability only: 1xx log commands, 2xx table values,
# 3xx public topics, 4xx meta, 5xx processor <-> deployment protocol.
# Shared inner types (Failure, Value, Target, the journal *Entry records, ...) are never
# top-level values and have no id.
SCHEMA_IDS: Final[dict[str, int]] = {
    # keystate.log
    # 101: InvokeCommand before `correlation`; still read, upgraded on read (UPGRADES).
    "keystate.InvokeCommandV1": 101,
    "keystate.JournalAppendCommand": 102,
    "keystate.SuspendCommand": 103,
    "keystate.AttemptFailedCommand": 104,
    "keystate.CompletionCommand": 105,
    "keystate.TimerFiredCommand": 106,
    "keystate.CancelCommand": 107,
    "keystate.KillCommand": 108,
    "keystate.ResolvePromiseCommand": 109,
    "keystate.CompleteAwakeableCommand": 110,
    "keystate.QueryOutputCommand": 111,
    "keystate.QueryOutputReply": 112,
    "keystate.PurgeCommand": 113,
    # 114: ResumeCommand before it could name a deployment; still read.
    "keystate.ResumeCommandV1": 114,
    "keystate.PauseCommand": 115,
    "keystate.ResumeCommand": 116,
    "keystate.InvokeCommand": 117,
    "keystate.SetStateCommand": 118,
    "keystate.RestartAsNewCommand": 119,
    # processor tables (changelog values)
    # 201: InvocationStatus before `correlation` and `reply_topics`; still read, upgraded on read.
    "keystate.InvocationStatusV1": 201,
    "keystate.JournalRecord": 202,
    "keystate.StateValue": 203,
    # 204: InboxItem before `state_edit`; still read, upgraded on read.
    "keystate.InboxItemV1": 204,
    "keystate.ObjectStatus": 205,
    "keystate.TimerValue": 206,
    "keystate.PromiseValue": 207,
    "keystate.IdempotencyValue": 208,
    "keystate.InvocationStatus": 209,
    "keystate.InboxItem": 210,
    # public topics
    "keystate.InvocationRequest": 301,
    # 302: InvocationResult before `correlation`; still read, upgraded on read.
    "keystate.InvocationResultV1": 302,
    "keystate.DeadLetter": 303,
    "keystate.InvocationResult": 304,
    # keystate.meta
    # 401: the layout before ingress_private / forward_headers; still read, upgraded on read.
    "keystate.DeploymentRecordV1": 401,
    "keystate.DeploymentRecord": 402,
    # key "service:<name>": settings changed with PATCH /services/{name} (keystate.server.meta).
    "keystate.ServiceSettings": 403,
    # processor <-> deployment protocol
    # 501: StartMessage before attempt_headers; sent to SDKs without warm connections, read and upgraded.
    "keystate.StartMessageV1": 501,
    "keystate.EntryMessage": 502,
    "keystate.AckMessage": 503,
    "keystate.CompletionMessage": 504,
    "keystate.SuspensionMessage": 505,
    "keystate.ErrorMessage": 506,
    "keystate.EndMessage": 507,
    "keystate.MessageBatch": 508,
    "keystate.HeartbeatMessage": 509,
    "keystate.StartMessage": 510,
}

UPGRADES: Final[dict[str, str]] = {
    "keystate.InvokeCommandV1": "keystate.InvokeCommand",
    "keystate.InvocationStatusV1": "keystate.InvocationStatus",
    "keystate.InboxItemV1": "keystate.InboxItem",
    "keystate.InvocationResultV1": "keystate.InvocationResult",
    "keystate.StartMessageV1": "keystate.StartMessage",
}
"""Old versions the codec upgrades on read: old full name -> current full name.

The current version may only add fields with defaults; decoding an old record returns the
current name with those defaults filled in, so readers see one shape. (keystate.meta's
DeploymentRecordV1 predates this table and is upgraded by keystate.server.meta.)
"""
