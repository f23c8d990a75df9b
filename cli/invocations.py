"""`keystate invocations list|describe|cancel|kill|purge|pause|resume|restart-as-new`.

Reads go through the admin's `POST /query` (sys_invocation, sys_journal); actions through
`PATCH /invocations/{id}/{action}`. An action takes one invocation id, or a target prefix
(`svc`, `svc/handler`, `obj/key`, `obj/key/handler`) and/or filters for a bulk action: it shows how many
match, asks to confirm (unless --yes), shows progress and sums up what succeeded and failed.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rich.console import RenderableType
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from ._admin import (
    Admin,
    CliError,
    NoQueryRoute,
    add_admin_options,
    add_watch_option,
    admin_from,
    admin_subparser,
    confirm,
    console,
    print_json,
    quote,
    rows_table,
    run_group,
    short,
    sql_literal,
    watch,
)
from ._filters import (
    InvocationFilter,
    count_sql,
    ids_sql,
    is_invocation_id,
    list_sql,
    parse_statuses,
    parse_target,
)

__all__ = ["BulkOutcome", "invocation_summary", "invocations_table", "journal_timeline", "main"]

_ACTIONS = {
    "cancel": ("cancel gracefully: the handler sees a TerminalError and may compensate", "cancelled"),
    "kill": ("end at once, without running more of the handler's code", "killed"),
    "purge": ("forget completed invocations: their status, journal and idempotency entry", "purged"),
    "pause": ("stop retrying until resumed", "paused"),
    "resume": ("start paused invocations again (optionally on another deployment)", "resumed"),
    "restart-as-new": ("run a completed (or paused) invocation again as a new one, from a journal prefix", "restarted"),
}
_PREVIEW = 10


def _status_text(row: dict[str, Any]) -> str:
    status = row.get("status") or ""
    result = row.get("completion_result")
    return f"{status} ({result})" if status == "completed" and result else status


def invocations_table(rows: Sequence[dict[str, Any]], total: int | None = None) -> list[RenderableType]:
    """`invocations list`: one row per invocation, newest first, and how many of how many are shown."""
    table = Table(header_style="bold")
    for name in ("ID", "TARGET", "STATUS", "ATTEMPT", "CREATED", "MODIFIED", "DEPLOYMENT", "LAST FAILURE"):
        table.add_column(name, overflow="fold")
    for r in rows:
        failure = r.get("last_failure")
        if failure and r.get("last_failure_error_code") is not None:
            failure = f"[{r['last_failure_error_code']}] {failure}"
        table.add_row(
            r["id"], r.get("target") or "", _status_text(r), str(r.get("attempt") or ""),
            r.get("created_at") or "", r.get("modified_at") or "", r.get("pinned_deployment_id") or "",
            short(failure, 60),
        )
    shown = f"{len(rows)} invocation{'s' if len(rows) != 1 else ''}"
    if total is not None and total > len(rows):
        shown += f" of {total} matching (raise --limit to see more)"
    return [table, Text(shown)]


def invocation_summary(row: dict[str, Any]) -> list[str]:
    """The lines above the journal in `invocations describe`."""
    lines = [f"{row['id']}  {row.get('target')}  {_status_text(row)}"]
    lines.append(
        f"  deployment: {row.get('pinned_deployment_id') or '-'}, attempt {row.get('attempt')}, "
        f"retries {row.get('retry_count')}"
    )
    lines.append(f"  created: {row.get('created_at')}, modified: {row.get('modified_at')}")
    if row.get("scheduled_at"):
        lines.append(f"  scheduled at: {row['scheduled_at']}")
    invoked_by = row.get("invoked_by")
    if invoked_by:
        caller = f" {row['invoked_by_id']}" if row.get("invoked_by_id") else ""
        lines.append(f"  invoked by: {invoked_by}{caller}")
    if row.get("idempotency_key"):
        lines.append(f"  idempotency key: {row['idempotency_key']}")
    if row.get("last_failure") and row.get("status") != "completed":
        label = "paused" if row.get("status") == "paused" else "last failure"
        lines.append(f"  {label}: [{row.get('last_failure_error_code')}] {row['last_failure']}")
    if row.get("status") == "completed":
        outcome = row.get("completion_result") or "-"
        failure = f": {row['completion_failure']}" if row.get("completion_failure") else ""
        lines.append(f"  completed: {outcome}{failure}")
    return lines


def _entry_value(entry: dict[str, Any]) -> str:
    """A short view of a journal entry: what it called, until when it sleeps, else its decoded JSON."""
    kind = entry.get("entry_type")
    if kind in ("Call", "OneWayCall") and entry.get("invoked_target"):
        invoked = f" ({entry['invoked_id']})" if entry.get("invoked_id") else ""
        return f"→ {entry['invoked_target']}{invoked}"
    if kind == "Sleep" and entry.get("sleep_wakeup_at"):
        return f"until {entry['sleep_wakeup_at']}"
    raw = entry.get("entry_json")
    try:
        decoded = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError:
        decoded = raw
    if isinstance(decoded, dict):
        decoded = {k: v for k, v in decoded.items() if k not in ("name", "entry_type", "completed", "index")}
    return short(decoded, 70)


def journal_timeline(entries: Sequence[dict[str, Any]]) -> Table:
    """The journal as a timeline: index, entry type, name, completed, a short value."""
    table = Table(title=f"journal ({len(entries)} entries)", title_justify="left", header_style="bold")
    for name in ("#", "ENTRY", "NAME", "COMPLETED", "VALUE"):
        table.add_column(name, overflow="fold")
    for e in sorted(entries, key=lambda e: int(e.get("index") or 0)):
        done = e.get("completed")
        table.add_row(
            str(e.get("index")), e.get("entry_type") or "", e.get("name") or e.get("promise_name") or "",
            "✓" if done else ("…" if done is not None else ""), _entry_value(e),
        )
    return table


def _filter(args: argparse.Namespace, target: str | None) -> InvocationFilter:
    return InvocationFilter(
        target=parse_target(target) if target else None,
        statuses=parse_statuses(args.status),
        service=args.service,
        key=args.key,
        deployment=getattr(args, "filter_deployment", None),
    )


def _list(args: argparse.Namespace) -> int:
    admin = admin_from(args)
    f = _filter(args, args.target)
    if args.limit < 1:
        raise CliError(f"--limit {args.limit} must be at least 1")

    def rows() -> tuple[list[dict[str, Any]], int]:
        listed = admin.query(list_sql(f, args.limit))
        total = int(admin.query(count_sql(f))[0]["n"]) if len(listed) >= args.limit else len(listed)
        return listed, total

    if args.json:
        print_json(rows()[0])
        return 0

    def render() -> list[RenderableType]:
        listed, total = rows()
        if not listed:
            return [Text("no invocations match")]
        return invocations_table(listed, total)

    return watch(render, args.watch)


def _row_of_admin_json(inv: dict[str, Any]) -> dict[str, Any]:
    """GET /invocations/{id}'s answer in sys_invocation's columns (for an admin without POST /query)."""
    failure = inv.get("last_failure") or {}
    status = str(inv.get("status") or "").lower().replace("_", "-")
    return {
        "id": inv["id"], "target": inv.get("target"), "status": {"invoked": "running"}.get(status, status),
        "completion_result": inv.get("completion_status"), "pinned_deployment_id": inv.get("deployment_id"),
        "attempt": inv.get("attempt"), "retry_count": inv.get("retry_count"), "created_at": inv.get("created_at"),
        "modified_at": inv.get("modified_at"), "scheduled_at": inv.get("scheduled_at"),
        "idempotency_key": inv.get("idempotency_key"), "last_failure": failure.get("message"),
        "last_failure_error_code": failure.get("code"),
    }


def _describe_rows(admin: Admin, invocation_id: str) -> tuple[dict[str, Any], list[dict[str, Any]] | None]:
    """The invocation's sys_invocation row and journal; the journal is None where the admin has no /query."""
    literal = sql_literal(invocation_id)
    try:
        found = admin.query(f"SELECT * FROM sys_invocation WHERE id = {literal}")
    except NoQueryRoute:
        _, inv = admin.call("GET", f"/invocations/{quote(invocation_id)}")
        return _row_of_admin_json(inv), None
    if not found:
        raise CliError(
            f"no invocation {invocation_id} at {admin.url}: it never existed, was purged, or is too new for the "
            "read model; list invocations with `keystate invocations list`"
        )
    journal = admin.query(f"SELECT * FROM sys_journal WHERE id = {literal} ORDER BY index")
    return found[0], journal


def _describe(args: argparse.Namespace) -> int:
    admin = admin_from(args)
    if args.json:
        row, journal = _describe_rows(admin, args.id)
        print_json({"invocation": row, "journal": journal})
        return 0

    def render() -> list[RenderableType]:
        row, journal = _describe_rows(admin, args.id)
        if journal is None:
            note = f"(no journal: the admin API at {admin.url} has no POST /query; upgrade keystate there)"
            return [Text("\n".join(invocation_summary(row))), Text(note)]
        return [Text("\n".join(invocation_summary(row))), journal_timeline(journal)]

    return watch(render, args.watch)


def _action_path(args: argparse.Namespace, invocation_id: str) -> str:
    params: list[str] = []
    if getattr(args, "from_index", None) is not None:
        params.append(f"from={args.from_index}")
    if getattr(args, "deployment", None):
        params.append(f"deployment={quote(args.deployment)}")
    return f"/invocations/{quote(invocation_id)}/{args.action}" + ("?" + "&".join(params) if params else "")


@dataclass
class BulkOutcome:
    """What a bulk action did: the ids it acted on, the failures (id → the admin's message), new ids."""

    succeeded: list[str]
    failed: dict[str, str]
    new_ids: dict[str, str]


def _act_on(admin: Admin, args: argparse.Namespace, ids: Sequence[str], progress: Progress | None) -> BulkOutcome:
    outcome = BulkOutcome([], {}, {})
    task = progress.add_task(args.action, total=len(ids)) if progress is not None else None
    for invocation_id in ids:
        try:
            _, answer = admin.call("PATCH", _action_path(args, invocation_id))
        except CliError as exc:
            outcome.failed[invocation_id] = str(exc)
        else:
            outcome.succeeded.append(invocation_id)
            if isinstance(answer, dict) and answer.get("new_invocation_id"):
                outcome.new_ids[invocation_id] = answer["new_invocation_id"]
        if progress is not None and task is not None:
            progress.advance(task)
    return outcome


def _action(args: argparse.Namespace) -> int:
    admin = admin_from(args)
    if args.query and is_invocation_id(args.query):
        outcome = _act_on(admin, args, [args.query], None)
        if outcome.failed:
            raise CliError(outcome.failed[args.query])
        if args.query in outcome.new_ids:
            print(f"restarted {args.query} as {outcome.new_ids[args.query]}")
        else:
            print(f"{args.action} of {args.query} requested")
        return 0
    f = _filter(args, args.query)
    if f.empty and not args.all:
        raise CliError(
            f"name what to {args.action}: an invocation id (inv_...), a target (svc, svc/handler, obj/key), "
            "filters (--status, --service, --key, --deployment), or --all for every invocation it applies to"
        )
    f = f.for_action(args.action)
    total = int(admin.query(count_sql(f))[0]["n"])
    if total == 0:
        print(f"no invocations to {args.action} match")
        return 0
    rows = admin.query(ids_sql(f, args.limit))
    out = console()
    out.print(rows_table(rows[:_PREVIEW], ["id", "target", "status"]))
    if len(rows) > _PREVIEW:
        out.print(f"… and {len(rows) - _PREVIEW} more", markup=False)
    more = f" (the oldest {len(rows)}; raise --limit for the rest)" if total > len(rows) else ""
    out.print(f"{total} invocation{'s' if total != 1 else ''} to {args.action}{more}", markup=False)
    if not confirm(f"{args.action} {len(rows)} invocation{'s' if len(rows) != 1 else ''}?", args.yes):
        print("nothing done")
        return 1
    with Progress(console=console(stderr=True), transient=True) as progress:
        outcome = _act_on(admin, args, [r["id"] for r in rows], progress)
    past = _ACTIONS[args.action][1]
    out.print(f"{past} {len(outcome.succeeded)}, failed {len(outcome.failed)}", markup=False)
    for old, new in outcome.new_ids.items():
        out.print(f"  {old} -> {new}", markup=False)
    for invocation_id, message in outcome.failed.items():
        out.print(f"  {invocation_id}: {message}", markup=False)
    return 1 if outcome.failed else 0


def _add_filters(parser: argparse.ArgumentParser, *, deployment_filter: str) -> None:
    parser.add_argument(
        "--status", action="append",
        help="only these statuses (repeat or comma-separate): pending, scheduled, ready, running, backing-off, "
        "suspended, paused, completed, succeeded, failed",
    )
    parser.add_argument("--service", help="only invocations of this service")
    parser.add_argument("--key", help="only invocations of this object or workflow key")
    parser.add_argument(
        deployment_filter, dest="filter_deployment", metavar="DEPLOYMENT", help="only invocations pinned to this deployment"
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keystate invocations", description=__doc__)
    add_admin_options(parser, top=True)
    sub = parser.add_subparsers(dest="action", required=True)
    listing = admin_subparser(sub, "list", json_flag=True, help="list invocations, newest first")
    listing.add_argument("target", nargs="?", help="target prefix: svc, svc/handler, obj/key or obj/key/handler")
    _add_filters(listing, deployment_filter="--deployment")
    listing.add_argument("--limit", type=int, default=100, help="show at most this many (default %(default)s)")
    add_watch_option(listing)
    listing.set_defaults(run=_list)
    describe = admin_subparser(sub, "describe", json_flag=True, help="an invocation's status and its journal as a timeline")
    describe.add_argument("id", help="invocation id (inv_...), as in the x-restate-id header")
    add_watch_option(describe)
    describe.set_defaults(run=_describe)
    for action, (help_text, _) in _ACTIONS.items():
        command = admin_subparser(sub, action, help=help_text)
        command.add_argument(
            "query", nargs="?",
            help="an invocation id (inv_...), or a target prefix (svc, svc/handler, obj/key) for a bulk action",
        )
        moves = action in ("resume", "restart-as-new")
        # resume and restart-as-new take --deployment as where to run, as Restate's CLI does.
        _add_filters(command, deployment_filter="--pinned-to" if moves else "--deployment")
        if moves:
            command.add_argument(
                "--deployment", help="deployment id to run on, or `latest` (default: the one it is pinned to)"
            )
        if action == "restart-as-new":
            command.add_argument(
                "--from", dest="from_index", type=int,
                help="keep the journal's completed entries before this index (default: start from the input)",
            )
        command.add_argument("--all", action="store_true", help="act on every invocation this action applies to")
        command.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation of a bulk action")
        command.add_argument("--limit", type=int, default=1000, help="act on at most this many (default %(default)s)")
        command.set_defaults(run=_action)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`keystate invocations list|describe|cancel|kill|purge|pause|resume|restart-as-new`."""
    return run_group(_parser(), "keystate invocations", argv)
