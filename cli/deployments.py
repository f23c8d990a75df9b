"""`keystate deployments register URI [--force] [--breaking] | list | describe ID | remove ID [--force]`.

Talks to the admin API (see `_admin` for --admin and the token). `list` and `describe` print tables,
or the admin's JSON with `--json`.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from ._admin import (
    ADMIN_TOKEN_ENV,
    AdminToken,
    CliError,
    add_admin_options,
    admin_from,
    admin_subparser,
    admin_token,
    console,
    print_json,
    quote,
    run_group,
    show,
)

__all__ = [
    "ADMIN_TOKEN_ENV",
    "AdminToken",
    "CliError",
    "admin_token",
    "deployment_table",
    "deployments_table",
    "invocations_main",
    "main",
]

_STATES = {
    "active": "active: new invocations of {latest} go to it",
    "draining": "draining: no longer latest; {pinned} started invocation(s) still pinned to it",
    "drained": "drained: no longer latest and nothing pinned to it; safe to remove",
    "unknown": "not latest; pinned invocations unknown (the read model is still reading)",
}


def _state_text(deployment: dict[str, Any]) -> str:
    state = deployment.get("state")
    if state == "draining":
        return f"draining ({deployment.get('pinned_invocations')} pinned)"
    return state or ""


def deployments_table(deployments: Sequence[dict[str, Any]]) -> Table:
    """One row per deployment: id, uri, state, its services (name and type), created."""
    table = Table(header_style="bold")
    for name in ("ID", "URI", "STATE", "SERVICES", "CREATED"):
        table.add_column(name, overflow="fold")
    for d in deployments:
        services = ", ".join(f"{s['name']} ({s['ty']})" for s in d["services"])
        table.add_row(d["id"], d["uri"], _state_text(d), services, d.get("created_at", ""))
    return table


def deployment_table(deployment: dict[str, Any]) -> list[RenderableType]:
    """One deployment: a summary and a table of its handlers."""
    lines = [f"{deployment['id']}  {deployment['uri']}"]
    state = deployment.get("state")
    if state in _STATES:
        latest = ", ".join(deployment.get("latest_for") or [])
        lines.append("state: " + _STATES[state].format(latest=latest, pinned=deployment.get("pinned_invocations")))
    if deployment.get("created_at"):
        lines.append(f"created: {deployment['created_at']}")
    if deployment.get("protocol_version") is not None:
        lines.append(f"protocol: {deployment['protocol_version']}, transports: {', '.join(deployment.get('transports', []))}")
    handlers = Table(header_style="bold")
    for name in ("SERVICE", "TYPE", "HANDLER", "KIND", "INPUT", "OUTPUT", "PUBLIC"):
        handlers.add_column(name, overflow="fold")
    for service in deployment["services"]:
        for h in service["handlers"]:
            public = not (service.get("ingress_private") or h.get("ingress_private"))
            handlers.add_row(
                service["name"], service["ty"], h["name"], h["ty"],
                h.get("input_content_type") or "application/json", h.get("output_content_type") or "application/json",
                "yes" if public else "no",
            )
    return [Text("\n".join(lines)), handlers]


def _register(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"uri": args.uri}
    if args.force:
        body["force"] = True
    if args.breaking:
        body["breaking"] = True
    status, deployment = admin_from(args).call("POST", "/deployments", body)
    if args.json:
        print_json(deployment)
        return 0
    if deployment.get("overwritten"):
        verb = "overwrote (forced) deployment"
    else:
        verb = "registered deployment" if status == 201 else "already registered deployment"
    show([f"{verb}:", *deployment_table(deployment)])
    return 0


def _list(args: argparse.Namespace) -> int:
    _, payload = admin_from(args).call("GET", "/deployments")
    deployments = payload["deployments"]
    if args.json:
        print_json(deployments)
    elif not deployments:
        print("no deployments registered; register one with `keystate deployments register URI`")
    else:
        console().print(deployments_table(deployments))
    return 0


def _describe(args: argparse.Namespace) -> int:
    _, deployment = admin_from(args).call("GET", f"/deployments/{quote(args.id)}")
    if args.json:
        print_json(deployment)
    else:
        show(deployment_table(deployment))
    return 0


def _remove(args: argparse.Namespace) -> int:
    query = "?force=true" if args.force else ""
    _, payload = admin_from(args).call("DELETE", f"/deployments/{quote(args.id)}{query}")
    print(f"removed deployment {args.id}")
    payload = payload if isinstance(payload, dict) else {}
    for entry in payload.get("latest", []):
        if entry["deployment_id"] is None:
            print(f"  {entry['service']}: no deployment serves it any more; register one")
        else:
            print(f"  {entry['service']}: latest is now {entry['deployment_id']}")
    paused = payload.get("paused_invocations", [])
    if paused:
        print(f"  paused {len(paused)} pinned invocation(s); resume each on another deployment with "
              "`keystate invocations resume ID --deployment latest`:")
        for invocation_id in paused:
            print(f"    {invocation_id}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keystate deployments", description=__doc__)
    add_admin_options(parser, top=True)
    sub = parser.add_subparsers(dest="action", required=True)
    register = admin_subparser(sub, "register", json_flag=True, help="discover the deployment at URI and register its services")
    register.add_argument("uri", help="base URL the deployment serves on, e.g. http://localhost:9080")
    register.add_argument(
        "--breaking", action="store_true",
        help="register even if it changes a service's type or removes or changes the kind of a handler",
    )
    register.add_argument(
        "--force", action="store_true",
        help="overwrite the deployment registered at the same URI if its discovery changed (implies --breaking)",
    )
    register.set_defaults(run=_register)
    listing = admin_subparser(sub, "list", json_flag=True, help="list registered deployments and their services")
    listing.set_defaults(run=_list)
    describe = admin_subparser(sub, "describe", json_flag=True, help="show one deployment, its services and handlers")
    describe.add_argument("id", help="deployment id (dp_...), as shown by `keystate deployments list`")
    describe.set_defaults(run=_describe)
    remove = admin_subparser(sub, "remove", help="remove a deployment; refused while invocations are pinned to it")
    remove.add_argument("id", help="deployment id (dp_...)")
    remove.add_argument(
        "--force", action="store_true",
        help="remove it even if unfinished invocations run on it: they are paused until resumed elsewhere",
    )
    remove.set_defaults(run=_remove)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`keystate deployments register|list|describe|remove`."""
    return run_group(_parser(), "keystate deployments", argv)


def invocations_main(argv: Sequence[str] | None = None) -> int:
    """`keystate invocations ...`; kept here for callers of the older module (see `invocations.main`)."""
    from .invocations import main as invocations

    return invocations(argv)
