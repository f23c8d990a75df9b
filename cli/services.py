"""`keystate services list | describe NAME | config view NAME | config patch NAME --... `.

Reads `GET /services` and `GET /services/{name}`; `config patch` sends Restate's
`PATCH /services/{name}` body (durations as "1d", "10m", "30s", "500ms").
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Sequence
from typing import Any

from rich.console import RenderableType
from rich.table import Table
from rich.text import Text

from ._admin import (
    AdminHttpError,
    CliError,
    add_admin_options,
    admin_from,
    admin_subparser,
    console,
    print_json,
    quote,
    run_group,
    show,
)

__all__ = ["config_table", "main", "parse_duration", "patch_body", "service_table", "services_table"]

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "min": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION = re.compile(r"(\d+)(ms|min|s|m|h|d)")


def parse_duration(text: str) -> int:
    """"1d", "2h30m", "10s", "500ms" (Restate's humantime form) in milliseconds; anything else refused."""
    compact = text.replace(" ", "")
    if not compact or _DURATION.sub("", compact) != "":
        raise CliError(f"{text!r} is not a duration: write it like 1d, 2h30m, 10m, 30s or 500ms")
    return sum(int(n) * _UNITS_MS[unit] for n, unit in _DURATION.findall(compact))


def _ms_text(ms: int | None) -> str:
    """Milliseconds in the largest exact units ("1d", "1h30m"); "default" for None."""
    if ms is None:
        return "default"
    if ms == 0:
        return "0s"
    parts = []
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000), ("ms", 1)):
        if ms >= size:
            parts.append(f"{ms // size}{unit}")
            ms %= size
    return "".join(parts)


def _public(service: dict[str, Any]) -> bool:
    return not service.get("ingress_private")


def services_table(services: Sequence[dict[str, Any]]) -> Table:
    """`services list`: name, type, public, handlers, deployment."""
    table = Table(header_style="bold")
    for name in ("NAME", "TYPE", "PUBLIC", "HANDLERS", "DEPLOYMENT"):
        table.add_column(name, overflow="fold")
    for s in services:
        handlers = ", ".join(h["name"] for h in s["handlers"])
        table.add_row(s["name"], s["ty"], "yes" if _public(s) else "no", handlers, s.get("deployment_id") or "")
    return table


def config_table(service: dict[str, Any]) -> Table:
    """A service's settings: public, retentions, timeouts, retry policy."""
    table = Table(header_style="bold", title=f"{service['name']} configuration", title_justify="left")
    table.add_column("SETTING")
    table.add_column("VALUE", overflow="fold")
    table.add_row("public", "yes" if _public(service) else "no")
    table.add_row("journal retention", _ms_text(service.get("journal_retention_ms")))
    if service.get("ty") == "Workflow":
        table.add_row("workflow completion retention", _ms_text(service.get("workflow_completion_retention_ms")))
    elif "idempotency_retention_ms" in service:
        table.add_row("idempotency retention", _ms_text(service.get("idempotency_retention_ms")))
    table.add_row("inactivity timeout", _ms_text(service.get("inactivity_timeout_ms")))
    table.add_row("abort timeout", _ms_text(service.get("abort_timeout_ms")))
    table.add_row("retry policy", "default" if not service.get("retry_policy") else str(service["retry_policy"]))
    if service.get("forward_headers"):
        table.add_row("forwarded headers", ", ".join(service["forward_headers"]))
    if service.get("overridden"):
        # Set with `config patch`: they stay until patched again, whatever deployment is registered.
        table.add_row("changed with config patch", ", ".join(service["overridden"]))
    return table


def service_table(service: dict[str, Any]) -> list[RenderableType]:
    """`services describe`: the service, its handlers and its settings."""
    head = Text(f"{service['name']}  {service['ty']}  deployment {service.get('deployment_id') or '-'}")
    handlers = Table(header_style="bold")
    for name in ("HANDLER", "KIND", "INPUT", "OUTPUT", "PUBLIC"):
        handlers.add_column(name, overflow="fold")
    for h in service["handlers"]:
        public = _public(service) and not h.get("ingress_private")
        handlers.add_row(
            h["name"], h["ty"], h.get("input_content_type") or "application/json",
            h.get("output_content_type") or "application/json", "yes" if public else "no",
        )
    return [head, handlers, config_table(service)]


def _get(args: argparse.Namespace) -> dict[str, Any]:
    _, service = admin_from(args).call("GET", f"/services/{quote(args.name)}")
    return dict(service)


def _list(args: argparse.Namespace) -> int:
    _, payload = admin_from(args).call("GET", "/services")
    services = payload["services"]
    if args.json:
        print_json(services)
    elif not services:
        print("no services registered; register a deployment with `keystate deployments register URI`")
    else:
        console().print(services_table(services))
    return 0


def _describe(args: argparse.Namespace) -> int:
    service = _get(args)
    if args.json:
        print_json(service)
    else:
        show(service_table(service))
    return 0


def _config_view(args: argparse.Namespace) -> int:
    service = _get(args)
    if args.json:
        keys = ("name", "public", "ingress_private", "journal_retention_ms", "idempotency_retention_ms",
                "workflow_completion_retention_ms", "inactivity_timeout_ms", "abort_timeout_ms", "retry_policy", "overridden")
        print_json({k: service.get(k) for k in keys if k in service})
    else:
        console().print(config_table(service))
    return 0


def patch_body(args: argparse.Namespace) -> dict[str, Any]:
    """Restate's ModifyServiceRequest from the flags given (durations checked here, sent as written)."""
    body: dict[str, Any] = {}
    for flag in ("idempotency_retention", "journal_retention", "workflow_completion_retention", "inactivity_timeout", "abort_timeout"):
        value = getattr(args, flag)
        if value is not None:
            parse_duration(value)
            body[flag] = value
    if args.public is not None:
        body["public"] = args.public
    if not body:
        raise CliError(
            "nothing to change: give one of --public, --journal-retention, --idempotency-retention, "
            "--workflow-completion-retention, --inactivity-timeout, --abort-timeout"
        )
    return body


def _config_patch(args: argparse.Namespace) -> int:
    body = patch_body(args)
    admin = admin_from(args)
    try:
        _, service = admin.call("PATCH", f"/services/{quote(args.name)}", body)
    except AdminHttpError as exc:
        if exc.failure.status in (404, 405) and "unknown service" not in exc.failure.message:
            raise CliError(
                f"the admin API at {admin.url} cannot change service settings (PATCH /services/{{name}} answered "
                f"{exc.failure.status}); set them in the service's code (keystate.Service(..., journal_retention=..., "
                "inactivity_timeout=...)) and register the deployment again"
            ) from exc
        raise
    if args.json:
        print_json(service)
    elif isinstance(service, dict) and "name" in service:
        console().print(config_table(service))
    else:
        print(f"updated {args.name}")
    return 0


def _bool(text: str) -> bool:
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"{text!r} must be true or false")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keystate services", description=__doc__)
    add_admin_options(parser, top=True)
    sub = parser.add_subparsers(dest="action", required=True)
    admin_subparser(sub, "list", json_flag=True, help="list services, their types and handlers").set_defaults(run=_list)
    describe = admin_subparser(sub, "describe", json_flag=True, help="a service's handlers and settings")
    describe.add_argument("name", help="service name")
    describe.set_defaults(run=_describe)
    config = sub.add_parser("config", help="view or change a service's settings")
    config_sub = config.add_subparsers(dest="config_action", required=True)
    view = admin_subparser(config_sub, "view", json_flag=True, help="a service's settings")
    view.add_argument("name", help="service name")
    view.set_defaults(run=_config_view)
    patch = admin_subparser(config_sub, "patch", json_flag=True, help="change a service's settings")
    patch.add_argument("name", help="service name")
    patch.add_argument("--public", type=_bool, metavar="true|false", help="callable through the ingress or only from services")
    for flag, what in (
        ("--idempotency-retention", "how long an idempotency key is remembered"),
        ("--journal-retention", "how long a completed invocation's journal stays readable"),
        ("--workflow-completion-retention", "how long a completed workflow's result and state stay"),
        ("--inactivity-timeout", "how long an attempt may be silent before it is suspended"),
        ("--abort-timeout", "how long after the inactivity timeout an attempt is aborted"),
    ):
        patch.add_argument(flag, metavar="DURATION", help=f"{what} (e.g. 1d, 10m, 30s)")
    patch.set_defaults(run=_config_patch)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`keystate services list|describe|config view|config patch`."""
    return run_group(_parser(), "keystate services", argv)
