"""`keystate sql "SELECT ..."`: read-only SQL over the admin's introspection tables, as a table or --json.

Tables: sys_invocation, sys_journal, state, sys_inbox, sys_promise, sys_idempotency, sys_deployment,
sys_service (Restate's names and columns where the concept matches).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rich.console import RenderableType
from rich.text import Text

from ._admin import add_admin_options, admin_from, add_watch_option, print_json, rows_table, run_group, watch

__all__ = ["main"]


def _run(args: argparse.Namespace) -> int:
    admin = admin_from(args)
    if args.json:
        print_json(admin.query(args.query))
        return 0

    def render() -> list[RenderableType]:
        rows = admin.query(args.query)
        if not rows:
            return [Text("no rows")]
        return [rows_table(rows), Text(f"{len(rows)} row{'s' if len(rows) != 1 else ''}")]

    return watch(render, args.watch)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keystate sql", description=__doc__)
    add_admin_options(parser, top=True)
    parser.add_argument("query", help='the query, e.g. "SELECT id, status FROM sys_invocation LIMIT 10"')
    parser.add_argument("--json", action="store_true", help="print the rows as JSON instead of a table")
    add_watch_option(parser)
    parser.set_defaults(run=_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`keystate sql QUERY [--json]`."""
    return run_group(_parser(), "keystate sql", argv)
