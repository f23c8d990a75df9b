"""Operators' state edits (SetStateCommand): applied in order with the key's exclusive invocations.

An edit of a key that an exclusive invocation holds, or whose inbox has invocations waiting, waits in
that inbox like an exclusive invocation and is applied when its turn comes, so a handler never sees
its state change under it and the edit lands between the invocations queued before and after it.
"""

from __future__ import annotations

from typing import Any

from keystate.schemas.enums import OutputStatus
from keystate.schemas.records import InboxItem, SetStateCommand, StateValue
from keystate.schemas.state import state_version

from . import inbox
from .actions import Action, Publish
from .model import VALUE, Config, failure
from .rows import get_object
from .tables import Tables

__all__ = ["EDIT_PREFIX", "current_state", "do_apply", "on_set_state"]

# The inbox names a waiting edit by this prefix and its request id (it has no invocation id).
EDIT_PREFIX = "state-edit:"
VERSION_MISMATCH = 409


def current_state(tables: Tables, service: str, key: str) -> dict[str, bytes]:
    """The whole state of one key, state key -> value."""
    return {k[2]: StateValue.from_avro(v).value for k, v in tables.state.scan((service, key))}


def on_set_state(tables: Tables, cmd: dict[str, Any], now: int, cfg: Config, out: list[Action]) -> None:
    edit = SetStateCommand.from_avro(cmd)
    obj = get_object(tables, edit.service, edit.key)
    if obj is None or (obj.locked_by is None and not obj.queued):
        do_apply(tables, edit, out)
        return
    marker = EDIT_PREFIX + (edit.request_id or state_version(edit.new_state))
    for _, row in tables.inbox.scan((edit.service, edit.key)):
        if InboxItem.from_avro(row).invocation_id == marker:
            return  # redelivered while it waits
    inbox.do_enqueue(tables, edit.service, edit.key, marker, state_edit=edit)


def do_apply(tables: Tables, edit: SetStateCommand, out: list[Action]) -> None:
    """Replace the key's state with the edit's, unless the edit expects another version; answer the requester.

    Only rows that differ are written, so a redelivered edit writes nothing; and an edit whose state
    is already there counts as applied (its first delivery was).
    """
    state = current_state(tables, edit.service, edit.key)
    version = state_version(state)
    wanted = state_version(edit.new_state)
    if edit.expected_version is not None and edit.expected_version != version and wanted != version:
        message = (
            f"state of {edit.service}/{edit.key} not edited: it is at version {version}, the edit expected "
            f"{edit.expected_version}; read it again (GET /services/{edit.service}/state/{edit.key}) and retry"
        )
        _reply(edit, (OutputStatus.FAILED, failure(VERSION_MISMATCH, message)), out)
        return
    for name in state.keys() - edit.new_state.keys():
        tables.state.delete((edit.service, edit.key, name))
    for name, data in edit.new_state.items():
        if state.get(name) != data:
            tables.state.put((edit.service, edit.key, name), StateValue(value=data).to_avro())
    _reply(edit, (OutputStatus.SUCCEEDED, (VALUE, {"value": wanted.encode()})), out)


def _reply(edit: SetStateCommand, outcome: tuple[OutputStatus, tuple[str, dict[str, Any]]], out: list[Action]) -> None:
    """A QueryOutputReply to the admin that sent the edit: SUCCEEDED with the new version, or FAILED saying why."""
    if edit.request_id is None or edit.reply_topic is None:
        return
    status, result = outcome
    record = {
        "request_id": edit.request_id,
        "invocation_id": None,
        "status": status,
        "result": result,
        "previously_accepted": False,
        "expires_at_ms": None,
    }
    out.append(Publish(edit.reply_topic, edit.request_id.encode(), "keystate.QueryOutputReply", record))
