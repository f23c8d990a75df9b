"""`keystate deployments register URI | list | describe ID | remove ID [--force]` and
`keystate invocations cancel|kill ID`: talk to the admin API."""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

__all__ = ["invocations_main", "main"]

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
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        raise _http_error(exc) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        admin = url.split("/deployments", 1)[0].split("/invocations", 1)[0]
        raise _CliError(
            f"cannot reach the admin API at {admin} ({reason}); is keystate running? "
            "Point --admin (or $KEYSTATE_ADMIN_URL) at its admin port"
        ) from exc
    try:
        return status, json.loads(raw or b"null")
    except ValueError as exc:
        raise _CliError(f"the admin API at {url} answered with something that is not JSON; is --admin the admin port (9070)?") from exc


def _http_error(exc: urllib.error.HTTPError) -> _CliError:
    raw = exc.read()
    try:
        message = json.loads(raw).get("message") or raw.decode("utf-8", "replace")
    except (ValueError, AttributeError):
        message = raw.decode("utf-8", "replace") or exc.reason
    return _CliError(f"the admin API answered {exc.code}: {message}")


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


def _describe(args: argparse.Namespace) -> int:
    _, deployment = _request("GET", f"{_admin_url(args)}/deployments/{_quote(args.id)}", None, args.timeout)
    _print_deployment(deployment)
    print(f"  created: {deployment['created_at']}")
    print(f"  protocol: {deployment['protocol_version']}, transports: {', '.join(deployment['transports'])}")
    for service in deployment["services"]:
        for h in service["handlers"]:
            types = f"{h.get('input_content_type') or 'application/json'} -> {h.get('output_content_type') or 'application/json'}"
            print(f"    {service['name']}/{h['name']}: {h['ty']}, {types}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    query = "?force=true" if args.force else ""
    _request("DELETE", f"{_admin_url(args)}/deployments/{_quote(args.id)}{query}", None, args.timeout)
    print(f"removed deployment {args.id}")
    return 0


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _with_admin(sub: argparse._SubParsersAction, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, **kwargs)
    parser.add_argument("--admin", default=argparse.SUPPRESS, help="admin API URL")
    return parser


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
    describe = _with_admin(sub, "describe", help="show one deployment, its services and handlers")
    describe.add_argument("id", help="deployment id (dp_...), as shown by `keystate deployments list`")
    describe.set_defaults(run=_describe)
    remove = _with_admin(sub, "remove", help="remove a deployment; refused while invocations are pinned to it")
    remove.add_argument("id", help="deployment id (dp_...)")
    remove.add_argument("--force", action="store_true", help="remove it even if unfinished invocations run on it (breaks them)")
    remove.set_defaults(run=_remove)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _run(_parser(), "keystate deployments", argv)


def _run(parser: argparse.ArgumentParser, prog: str, argv: list[str] | None) -> int:
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.run(args))
    except _CliError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1


def _invocation_action(args: argparse.Namespace) -> int:
    _request("PATCH", f"{_admin_url(args)}/invocations/{_quote(args.id)}/{args.action}", None, args.timeout)
    print(f"{args.action} of {args.id} requested")
    return 0


def _invocations_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keystate invocations", description="cancel or kill invocations via the admin API")
    parser.add_argument("--admin", help=f"admin API URL (default: $KEYSTATE_ADMIN_URL or {DEFAULT_ADMIN})")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the admin API (default %(default)s)")
    sub = parser.add_subparsers(dest="action", required=True)
    for action, help_text in (
        ("cancel", "cancel gracefully: the handler sees a TerminalError and may compensate"),
        ("kill", "end at once, without running more of the handler's code"),
    ):
        command = _with_admin(sub, action, help=help_text)
        command.add_argument("id", help="invocation id (inv_...), as in the x-restate-id header")
        command.set_defaults(run=_invocation_action)
    return parser


def invocations_main(argv: list[str] | None = None) -> int:
    """`keystate invocations cancel|kill ID`."""
    return _run(_invocations_parser(), "keystate invocations", argv)
