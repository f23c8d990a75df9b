"""The state machine's entry point: one command in, table writes and actions out."""

from __future__ import annotations

from typing import Any

from keystate.schemas.enums import InvocationState, TimerKind

from . import cancellation, completion, idempotency, journal, lifecycle, promises, restart, state_edit, timers
from .actions import Action
from .model import Config, value
from .rows import get_status
from .tables import Tables

__all__ = ["Command", "apply"]

Command = tuple[str, dict[str, Any]]
"""(full record name, record) as decoded from the log."""


def apply(tables: Tables, command: Command, now: int, cfg: Config) -> list[Action]:
    """Apply one command at time `now` (ms, from the command's log record); returns the actions.

    Pure: the same tables, command, time and config give the same writes and actions.
    Unknown commands change nothing (a newer writer on an older processor must not wedge it).
    """
    name, cmd = command
    out: list[Action] = []
    handler = _HANDLERS.get(name)
    if handler is not None:
        handler(tables, cmd, now, cfg, out)
    return out


def _on_timer_fired(tables: Tables, cmd: dict[str, Any], now: int, cfg: Config, out: list[Action]) -> None:
    kind = cmd["timer_kind"]
    row = timers.take(tables, cmd)
    iid = cmd["invocation_id"]
    if kind == TimerKind.RETRY:
        # Also appended by a processor taking over a partition, without a row: fenced by the
        # attempt it names; one that names none could restart any attempt, so it is ignored.
        if cmd.get("attempt") is not None:
            lifecycle.on_resume(tables, iid, cmd["attempt"], now, cfg, out)
        return
    if row is None:
        return
    if kind == TimerKind.SLEEP:
        completion.do_complete_entry(tables, iid, cmd["entry_index"], value(b""), now, cfg, out)
    elif kind == TimerKind.DELAYED_INVOKE:
        status = get_status(tables, iid)
        if status is not None and status.status is InvocationState.SCHEDULED:
            lifecycle.do_admit(tables, status, now, cfg, out)
    elif kind == TimerKind.PURGE:
        lifecycle.on_purge(tables, iid, journal_only=cmd.get("entry_index") == lifecycle.JOURNAL_ONLY)


def _on_query(tables: Tables, cmd: dict[str, Any], now: int, cfg: Config, out: list[Action]) -> None:
    """Attach/output: what is known of an invocation, by id, idempotency key or workflow id."""
    status = None
    if cmd.get("invocation_id"):
        status = get_status(tables, cmd["invocation_id"])
    elif cmd.get("idempotency"):
        ref = cmd["idempotency"]
        target = ref["target"]
        status = idempotency.existing(
            tables, (target["service"], target.get("key") or "", target["handler"], ref["idempotency_key"])
        )
    elif cmd.get("workflow"):
        target = cmd["workflow"]
        status = idempotency.existing(tables, (target["service"], target["key"], "", ""))
    idempotency.reply(out, cmd["reply_topic"], cmd["request_id"], status)
    if cmd["attach"] and status is not None:
        idempotency.do_attach_reply_topic(tables, status, cmd["reply_topic"])


def _on_purge(tables: Tables, cmd: dict[str, Any], now: int, cfg: Config, out: list[Action]) -> None:
    lifecycle.on_purge(tables, cmd["invocation_id"])


_HANDLERS = {
    "keystate.InvokeCommand": lifecycle.on_invoke,
    "keystate.JournalAppendCommand": journal.on_journal_append,
    "keystate.CompletionCommand": journal.on_completion,
    "keystate.SuspendCommand": lifecycle.on_suspend,
    "keystate.AttemptFailedCommand": lifecycle.on_attempt_failed,
    "keystate.TimerFiredCommand": _on_timer_fired,
    "keystate.CancelCommand": cancellation.on_cancel,
    "keystate.KillCommand": cancellation.on_kill,
    "keystate.CompleteAwakeableCommand": promises.on_complete_awakeable,
    "keystate.ResumeCommand": lifecycle.on_resume_paused,
    "keystate.ResumeCommandV1": lifecycle.on_resume_paused,
    "keystate.PauseCommand": lifecycle.on_pause,
    "keystate.PurgeCommand": _on_purge,
    "keystate.QueryOutputCommand": _on_query,
    "keystate.SetStateCommand": state_edit.on_set_state,
    "keystate.RestartAsNewCommand": restart.on_restart_as_new,
}
