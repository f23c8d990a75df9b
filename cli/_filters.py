"""Invocation filters of the CLI as SQL over `sys_invocation`: target prefixes, statuses, service, key, deployment.

Pure: no I/O, so parsing and the SQL they make are unit-tested directly.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ._admin import CliError, sql_literal

__all__ = [
    "ACTION_STATUSES",
    "STATUSES",
    "InvocationFilter",
    "Target",
    "count_sql",
    "ids_sql",
    "is_invocation_id",
    "list_sql",
    "parse_statuses",
    "parse_target",
    "where_sql",
]

# sys_invocation.status, Restate's names.
STATUSES = ("pending", "scheduled", "ready", "running", "backing-off", "suspended", "paused", "completed")
# Accepted for --status besides STATUSES: keystate's older upper-case names and the two outcomes of "completed".
_ALIASES = {
    "backing_off": "backing-off",
    "invoked": "running",
    "succeeded": "succeeded",
    "success": "succeeded",
    "failed": "failed",
    "failure": "failed",
}
# The statuses each action can apply to: a bulk action only picks invocations it can act on.
ACTION_STATUSES: dict[str, tuple[str, ...]] = {
    "cancel": tuple(s for s in STATUSES if s != "completed"),
    "kill": tuple(s for s in STATUSES if s != "completed"),
    "pause": tuple(s for s in STATUSES if s not in ("completed", "paused")),
    "resume": ("paused",),
    "purge": ("completed",),
    "restart-as-new": ("completed", "paused"),
}
_TARGET_FORMS = "a service (Greeter), service/handler (Greeter/greet), object/key (Counter/alice) or object/key/handler"


@dataclass(frozen=True, slots=True)
class Target:
    """A target prefix: a service; plus a second part (a service's handler or an object's key); plus a handler."""

    service: str
    part: str | None = None
    handler: str | None = None


def is_invocation_id(text: str) -> bool:
    return text.startswith("inv_")


def parse_target(text: str) -> Target:
    """`svc`, `svc/handler`, `obj/key` or `obj/key/handler` (a key may hold slashes in the 3-part form)."""
    parts = text.split("/")
    if len(parts) > 3:
        parts = [parts[0], "/".join(parts[1:-1]), parts[-1]]
    if not all(parts):
        raise CliError(f"{text!r} is not a target: give {_TARGET_FORMS}, or an invocation id (inv_...)")
    if len(parts) == 1:
        return Target(parts[0])
    if len(parts) == 2:
        return Target(parts[0], parts[1])
    return Target(parts[0], parts[1], parts[2])


def parse_statuses(given: list[str] | None) -> tuple[str, ...]:
    """The --status values (repeatable, comma-separated, any case) as Restate's names; unknown ones refused."""
    found: list[str] = []
    for chunk in given or []:
        for word in chunk.split(","):
            name = word.strip().lower()
            if not name:
                continue
            name = _ALIASES.get(name, name)
            if name not in STATUSES and name not in ("succeeded", "failed"):
                raise CliError(
                    f"unknown status {word.strip()!r}; use one of {', '.join(STATUSES)}, or succeeded / failed "
                    "(completed with that outcome)"
                )
            if name not in found:
                found.append(name)
    return tuple(found)


@dataclass(frozen=True, slots=True)
class InvocationFilter:
    """Which invocations a list or a bulk action is about; all given parts must hold."""

    target: Target | None = None
    statuses: tuple[str, ...] = ()
    service: str | None = None
    key: str | None = None
    deployment: str | None = None
    # Set by a bulk action: the statuses it can act on (ANDed with `statuses`).
    actionable: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """True if nothing narrows it down (a bulk action then needs --all)."""
        return not (self.target or self.statuses or self.service or self.key or self.deployment)

    def for_action(self, action: str) -> InvocationFilter:
        return replace(self, actionable=ACTION_STATUSES[action])


def _status_sql(status: str) -> str:
    if status == "succeeded":
        return "(status = 'completed' AND completion_result = 'success')"
    if status == "failed":
        return "(status = 'completed' AND completion_result = 'failure')"
    return f"status = {sql_literal(status)}"


def _target_sql(target: Target) -> list[str]:
    conditions = [f"target_service_name = {sql_literal(target.service)}"]
    if target.part is not None and target.handler is None:
        # svc/handler for a service, obj/key for an object or workflow: the row's own type says which.
        part = sql_literal(target.part)
        conditions.append(
            f"((target_service_ty = 'service' AND target_handler_name = {part}) OR "
            f"(target_service_ty <> 'service' AND target_service_key = {part}))"
        )
    elif target.part is not None:
        conditions.append(f"target_service_key = {sql_literal(target.part)}")
        conditions.append(f"target_handler_name = {sql_literal(target.handler or '')}")
    return conditions


def where_sql(f: InvocationFilter) -> str:
    """` WHERE ...` for `f`, or "" if it matches every invocation."""
    conditions: list[str] = []
    if f.target is not None:
        conditions += _target_sql(f.target)
    if f.service:
        conditions.append(f"target_service_name = {sql_literal(f.service)}")
    if f.key is not None:
        conditions.append(f"target_service_key = {sql_literal(f.key)}")
    if f.deployment:
        conditions.append(f"pinned_deployment_id = {sql_literal(f.deployment)}")
    if f.statuses:
        conditions.append("(" + " OR ".join(_status_sql(s) for s in f.statuses) + ")")
    if f.actionable:
        conditions.append("status IN (" + ", ".join(sql_literal(s) for s in f.actionable) + ")")
    return " WHERE " + " AND ".join(conditions) if conditions else ""


_LIST_COLUMNS = (
    "id, target, status, completion_result, attempt, retry_count, created_at, modified_at, "
    "pinned_deployment_id, last_failure, last_failure_error_code"
)


def list_sql(f: InvocationFilter, limit: int) -> str:
    """The newest `limit` invocations `f` matches, with the columns `invocations list` shows."""
    return f"SELECT {_LIST_COLUMNS} FROM sys_invocation{where_sql(f)} ORDER BY created_at DESC, id LIMIT {int(limit)}"


def ids_sql(f: InvocationFilter, limit: int) -> str:
    """The oldest `limit` invocations `f` matches: id, target and status (what a bulk action acts on)."""
    return f"SELECT id, target, status FROM sys_invocation{where_sql(f)} ORDER BY created_at, id LIMIT {int(limit)}"


def count_sql(f: InvocationFilter) -> str:
    return f"SELECT count(*) AS n FROM sys_invocation{where_sql(f)}"
