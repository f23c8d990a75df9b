"""The pure state machine: apply(tables, command, now, config) -> actions; no I/O, no clock.

Tables hold Avro dicts; the state machine reads and writes them as the typed records of
keystate.schemas.records (see rows.py), with the enums of keystate.schemas.enums.
"""

from .actions import (
    Action,
    Invoke,
    NotifyCompletion,
    Publish,
    RegisterTimer,
    SendToPartition,
    StopInvocation,
    in_transaction,
)
from .apply import Command, apply
from .model import Config, RetryPolicy
from .tables import Change, InMemoryTable, Tables

__all__ = [
    "Action",
    "Change",
    "Command",
    "Config",
    "InMemoryTable",
    "Invoke",
    "NotifyCompletion",
    "Publish",
    "RegisterTimer",
    "RetryPolicy",
    "SendToPartition",
    "StopInvocation",
    "Tables",
    "apply",
    "in_transaction",
]
