"""Invocation lifecycle: accept, start attempts, suspend, back off, complete, purge."""

from __future__ import annotations

from typing import Any

from keystate.schemas.ids import InvocationId, positive_hash

from . import inbox, timers
from .actions import Action, Invoke, Publish, SendToPartition, StopInvocation
from .model import FAILURE, VALUE, Config, Result, failure, is_exclusive, is_keyed
from .tables import Tables

__all__ = [
    "do_complete",
    "do_start_attempt",
    "on_attempt_failed",
    "on_invoke",
    "on_resume",
    "on_purge",
    "on_suspend",
    "partition_key_of",
]

INPUT_ENTRY = "keystate.InputEntry"


def partition_key_of(invocation_id: str) -> int:
    return InvocationId.parse(invocation_id).partition_key


def live_status(tables: Tables, invocation_id: str, attempt: int | None = None) -> dict[str, Any] | None:
    """The status of a running invocation (at `attempt`, if given); None for stale or finished ones."""
    status = tables.status.get((invocation_id,))
    if status is None or status["status"] == "COMPLETED":
        return None
    if attempt is not None and status["attempt"] != attempt:
        return None
    return status


def on_invoke(tables: Tables, cmd: dict[str, Any], now: int, cfg: Config, out: list[Action]) -> None:
    iid = cmd["invocation_id"]
    if tables.status.get((iid,)) is not None:
        return  # redelivered or duplicate id: the first one wins
    target = cmd["target"]
    status = {
        "invocation_id": iid,
        "target": target,
        "status": "SCHEDULED",
        "attempt": 0,
        "journal_length": 1,
        "waiting_on": [],
        "deployment_id": None,
        "headers": cmd["headers"],
        "idempotency_key": cmd.get("idempotency_key"),
        "caller": cmd.get("caller"),
        "reply_topic": cmd.get("reply_topic"),
        "created_at_ms": cmd["created_at_ms"],
        "modified_at_ms": now,
        "execute_at_ms": cmd.get("execute_at_ms"),
        "result": None,
        "completion_status": None,
        "last_failure": None,
        "retry_count": 0,
        "retention_ms": cfg.completion_retention_ms,
        "source": cmd["source"],
    }
    tables.status.put((iid,), status)
    entry = {"entry": (INPUT_ENTRY, {"argument": cmd["argument"], "headers": cmd["headers"]})}
    tables.journal.put((iid, 0), entry)
    execute_at = cmd.get("execute_at_ms")
    if execute_at is not None and execute_at > now:
        timers.do_register(tables, iid, "DELAYED_INVOKE", None, None, execute_at, out)
        return
    do_admit(tables, status, now, cfg, out)


def do_admit(tables: Tables, status: dict[str, Any], now: int, cfg: Config, out: list[Action]) -> None:
    """Start a scheduled invocation, or queue it behind the key's running exclusive one."""
    target = status["target"]
    iid = status["invocation_id"]
    if is_exclusive(target) and not inbox.try_lock(tables, target["service"], target["key"], iid):
        inbox.do_enqueue(tables, target["service"], target["key"], iid)
        tables.status.put((iid,), {**status, "status": "INBOXED", "modified_at_ms": now})
        return
    do_start_attempt(tables, status, now, cfg, out)


def do_start_attempt(tables: Tables, status: dict[str, Any], now: int, cfg: Config, out: list[Action]) -> None:
    """Bump the attempt number (fencing the old one) and order the invoker to run it."""
    iid = status["invocation_id"]
    target = status["target"]
    deployment = status["deployment_id"] or cfg.deployment_for(target["service"])
    attempt = status["attempt"] + 1
    status = {
        **status,
        "status": "INVOKED",
        "attempt": attempt,
        "waiting_on": [],
        "deployment_id": deployment,
        "modified_at_ms": now,
    }
    tables.status.put((iid,), status)
    journal = [record for _, record in sorted(tables.journal.scan((iid,)), key=lambda kv: kv[0][1])]
    state = None
    if is_keyed(target):
        # Sorted: scan order differs between live and restored tables, actions must not.
        rows = sorted(tables.state.scan((target["service"], target["key"])), key=lambda kv: kv[0][2])
        state = [{"key": k[2], "value": v["value"]} for k, v in rows]
    out.append(
        Invoke(
            invocation_id=iid,
            attempt=attempt,
            target=target,
            journal=journal,
            state=state,
            deployment_id=deployment,
            retry_count=status["retry_count"],
            random_seed=positive_hash(iid),
            first_attempt_at_ms=status["created_at_ms"],
        )
    )


def on_resume(tables: Tables, iid: str, attempt: int, now: int, cfg: Config, out: list[Action]) -> None:
    """Start a new attempt if the invocation is still at `attempt` (a retry timer, or a takeover)."""
    status = live_status(tables, iid, attempt)
    if status is None or status["status"] not in ("INVOKED", "BACKING_OFF"):
        return
    do_start_attempt(tables, status, now, cfg, out)


def on_suspend(tables: Tables, cmd: dict[str, Any], now: int, cfg: Config, out: list[Action]) -> None:
    status = live_status(tables, cmd["invocation_id"], cmd["attempt"])
    if status is None or status["status"] != "INVOKED":
        return
    waiting = list(cmd["waiting_on"])
    # A completion may have arrived while the attempt was deciding to suspend.
    if not waiting or any(_entry_completed(tables, status["invocation_id"], i) for i in waiting):
        do_start_attempt(tables, status, now, cfg, out)
        return
    tables.status.put(
        (status["invocation_id"],), {**status, "status": "SUSPENDED", "waiting_on": waiting, "modified_at_ms": now}
    )


def _entry_completed(tables: Tables, iid: str, index: int) -> bool:
    record = tables.journal.get((iid, index))
    if record is None:
        return False
    name, entry = record["entry"]
    if name == "keystate.SleepEntry":
        return bool(entry["fired"])
    return entry.get("result") is not None


def on_attempt_failed(tables: Tables, cmd: dict[str, Any], now: int, cfg: Config, out: list[Action]) -> None:
    status = live_status(tables, cmd["invocation_id"], cmd["attempt"])
    if status is None or status["status"] != "INVOKED":
        return
    failed = cmd["failure"]
    policy = cfg.policy_for(status["target"])
    retries = status["retry_count"] + 1
    exhausted = policy.max_attempts is not None and retries >= policy.max_attempts
    if not cmd["retryable"] or exhausted:
        message = failed["message"]
        if exhausted and cmd["retryable"]:
            message = f"gave up after {retries} attempts: {message}"
        do_complete(tables, status, failure(failed["code"], message), now, cfg, out)
        return
    delay = cmd.get("retry_after_ms")
    if delay is None:
        delay = policy.delay_ms(retries)
    status = {
        **status,
        "status": "BACKING_OFF",
        "retry_count": retries,
        "last_failure": failed,
        "modified_at_ms": now,
    }
    tables.status.put((status["invocation_id"],), status)
    timers.do_register(tables, status["invocation_id"], "RETRY", None, status["attempt"], now + delay, out)


def do_complete(
    tables: Tables, status: dict[str, Any], result: Result, now: int, cfg: Config, out: list[Action]
) -> None:
    """Finish an invocation: publish its result, answer its caller, free its key, keep it for retention."""
    iid = status["invocation_id"]
    target = status["target"]
    succeeded = result[0] == VALUE
    completion = "SUCCEEDED" if succeeded else "FAILED"
    for key, _ in list(tables.journal.scan((iid,))):
        tables.journal.delete(key)
    timers.do_delete_all(tables, iid)
    out.append(StopInvocation(iid))
    record = {
        "invocation_id": iid,
        "target": target,
        "status": completion,
        "output": result[1]["value"] if succeeded else None,
        "failure": None if succeeded else result[1],
        "idempotency_key": status["idempotency_key"],
        "completed_at_ms": now,
    }
    out.append(Publish(None, iid.encode(), "keystate.InvocationResult", record))
    if status["reply_topic"]:
        out.append(Publish(status["reply_topic"], iid.encode(), "keystate.InvocationResult", record))
    caller = status["caller"]
    if caller is not None:
        out.append(
            SendToPartition(
                partition_key_of(caller["invocation_id"]),
                caller["invocation_id"].encode(),
                "keystate.CompletionCommand",
                {"invocation_id": caller["invocation_id"], "entry_index": caller["entry_index"], "result": result},
                caller["invocation_id"],
            )
        )
    if status["retention_ms"] > 0:
        tables.status.put(
            (iid,),
            {
                **status,
                "status": "COMPLETED",
                "result": result,
                "completion_status": completion,
                "waiting_on": [],
                "modified_at_ms": now,
            },
        )
        timers.do_register(tables, iid, "PURGE", None, None, now + status["retention_ms"], out)
    else:
        tables.status.delete((iid,))
    if is_exclusive(target):
        next_id = inbox.do_release(tables, target["service"], target["key"], iid)
        if next_id is not None:
            waiting = tables.status.get((next_id,))
            if waiting is not None:
                do_start_attempt(tables, waiting, now, cfg, out)


def on_purge(tables: Tables, iid: str) -> None:
    status = tables.status.get((iid,))
    if status is not None and status["status"] == "COMPLETED":
        tables.status.delete((iid,))


def failure_of(result: Result) -> dict[str, Any] | None:
    return result[1] if result[0] == FAILURE else None
