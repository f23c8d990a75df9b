"""`keystate deployments register URI | list`: talk to the admin API."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any

__all__ = ["main"]

DEFAULT_ADMIN = "http://127.0.0.1:9070"


def _admin_url(args: argparse.Namespace) -> str:
    return (args.admin or os.environ.get("KEYSTATE_ADMIN_URL") or DEFAULT_ADMIN).rstrip("/")


class _CliError(Exception):
    pass


def _request(method: str, url: str, body: dict[str, Any] | None, timeout: float) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode("utf-8")
    request = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            message = json.loads(raw).get("message") or raw.decode("utf-8", "replace")
        except (ValueError, AttributeError):
            message = raw.decode("utf-8", "replace") or exc.reason
        raise _CliError(f"the admin API answered {exc.code}: {message}") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        admin = url.split("/deployments", 1)[0]
        raise _CliError(
            f"cannot reach the admin API at {admin} ({reason}); is keystate running? "
            "Point --admin (or $KEYSTATE_ADMIN_URL) at its admin port"
        ) from exc


def _print_deployment(deployment: dict[str, Any]) -> None:
    print(f"{deployment['id']}  {deployment['uri']}")
    for service in deployment["services"]:
        handlers = ", ".join(h["name"] for h in service["handlers"])
        print(f"  {service['name']} ({service['ty']}): {handlers}")


def _register(args: argparse.Namespace) -> int:
    status, deployment = _request("POST", f"{_admin_url(args)}/deployments", {"uri": args.uri}, args.timeout)
    verb = "registered" if status == 201 else "already registered"
    print(f"{verb} deployment:")
    _print_deployment(deployment)
    return 0


def _list(args: argparse.Namespace) -> int:
    _, payload = _request("GET", f"{_admin_url(args)}/deployments", None, args.timeout)
    deployments = payload["deployments"]
    if not deployments:
        print("no deployments registered; register one with `keystate deployments register URI`")
    for deployment in deployments:
        _print_deployment(deployment)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keystate deployments", description=__doc__)
    parser.add_argument("--admin", help=f"admin API URL (default: $KEYSTATE_ADMIN_URL or {DEFAULT_ADMIN})")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the admin API (default %(default)s)")
    sub = parser.add_subparsers(dest="action", required=True)
    register = sub.add_parser("register", help="discover the deployment at URI and register its services")
    register.add_argument("uri", help="base URL the deployment serves on, e.g. http://localhost:9080")
    register.add_argument("--admin", default=argparse.SUPPRESS, help="admin API URL")
    register.set_defaults(run=_register)
    listing = sub.add_parser("list", help="list registered deployments and their services")
    listing.add_argument("--admin", default=argparse.SUPPRESS, help="admin API URL")
    listing.set_defaults(run=_list)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.run(args))
    except _CliError as exc:
        print(f"keystate deployments: {exc}", file=sys.stderr)
        return 1
