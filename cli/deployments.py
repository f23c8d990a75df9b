"""`keystate deployments register URI [--force] [--breaking] | list | describe ID | remove ID [--force]` and
`keystate invocations describe|cancel|kill ID`, `keystate invocations resume ID [--deployment ID|latest]`:
talk to the admin API.

A token-protected admin API gets `Authorization: Bearer <token>` with the token of
`--admin-token-file FILE` or else `$KEYSTATE_ADMIN_TOKEN` (the file wins, as on the server).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ADMIN_TOKEN_ENV", "AdminToken", "CliError", "admin_token", "invocations_main", "main"]

DEFAULT_ADMIN = "http://127.0.0.1:9070"
ADMIN_TOKEN_ENV = "KEYSTATE_ADMIN_TOKEN"
_HOW_TO_GIVE = f"set ${ADMIN_TOKEN_ENV} or pass --admin-token-file FILE"


def _admin_url(args: argparse.Namespace) -> str:
    return (args.admin or os.environ.get("KEYSTATE_ADMIN_URL") or DEFAULT_ADMIN).rstrip("/")


class CliError(Exception):
    """What went wrong talking to the admin API, and how to fix it; printed without a traceback."""


@dataclass(frozen=True, slots=True)
class AdminToken:
    """The admin API's bearer token and where it came from (for messages; the token is never printed)."""

    secret: str = field(repr=False)
    source: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.secret}"}


def admin_token(file: Path | str | None = None, environ: dict[str, str] | None = None) -> AdminToken | None:
    """The token of `file` if given, else of `$KEYSTATE_ADMIN_TOKEN`, else None; surrounding whitespace dropped."""
    env = os.environ if environ is None else environ
    if file is not None:
        try:
            secret = Path(file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise CliError(
                f"cannot read the admin token file {file} ({reason}); give --admin-token-file a readable file "
                f"holding the token, or set ${ADMIN_TOKEN_ENV}"
            ) from exc
        source = f"--admin-token-file {file}"
    elif env.get(ADMIN_TOKEN_ENV, "").strip():
        secret, source = env[ADMIN_TOKEN_ENV].strip(), f"${ADMIN_TOKEN_ENV}"
    else:
        return None
    if not secret:
        raise CliError(f"the admin token file {file} is empty; put the admin API's token in it")
    return AdminToken(secret, source)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """The admin API never redirects; following one would send the token to wherever it points."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        raise CliError(
            f"the admin API at {req.full_url} answered with a redirect ({code}), which the CLI does not follow "
            "(it would hand the admin token on); point --admin (or $KEYSTATE_ADMIN_URL) at the admin API itself"
        )


_OPENER = urllib.request.build_opener(_NoRedirect)


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
    """`method` on the admin API's `path` with the token of `args`, if any."""
    token = admin_token(args.admin_token_file)
    return _request(method, f"{_admin_url(args)}{path}", body, args.timeout, token)


def _request(
    method: str, url: str, body: dict[str, Any] | None, timeout: float, token: AdminToken | None = None
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode("utf-8")
    headers = {"content-type": "application/json", **(token.headers if token is not None else {})}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _OPENER.open(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        if exc.code == 401:
            raise _unauthorized(url, token) from exc
        raise _http_error(exc) from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        admin = url.split("/deployments", 1)[0].split("/invocations", 1)[0]
        raise CliError(
            f"cannot reach the admin API at {admin} ({reason}); is keystate running? "
            "Point --admin (or $KEYSTATE_ADMIN_URL) at its admin port"
        ) from exc
    try:
        return status, json.loads(raw or b"null")
    except ValueError as exc:
        raise CliError(f"the admin API at {url} answered with something that is not JSON; is --admin the admin port (9070)?") from exc


def _unauthorized(url: str, token: AdminToken | None) -> CliError:
    # Our own message, not the body: --admin may point at some other server.
    admin = url.split("/deployments", 1)[0].split("/invocations", 1)[0]
    if token is None:
        return CliError(
            f"the admin API at {admin} requires a token (answered 401): {_HOW_TO_GIVE} holding the token "
            "it was started with"
        )
    return CliError(
        f"the admin API at {admin} refused the admin token from {token.source} (answered 401); use the token it "
        f"was started with (its ${ADMIN_TOKEN_ENV} or --admin-token-file)"
    )


def _http_error(exc: urllib.error.HTTPError) -> CliError:
    raw = exc.read()
    try:
        message = json.loads(raw).get("message") or raw.decode("utf-8", "replace")
    except (ValueError, AttributeError):
        message = raw.decode("utf-8", "replace") or exc.reason
    return CliError(f"the admin API answered {exc.code}: {message}")


def _state_text(deployment: dict[str, Any]) -> str:
    state = deployment.get("state")
    if state is None:
        return ""
    pinned = deployment.get("pinned_invocations")
    if state == "draining":
        return f"  [draining: {pinned} pinned]"
    return f"  [{state}]"


def _print_deployment(deployment: dict[str, Any]) -> None:
    print(f"{deployment['id']}  {deployment['uri']}{_state_text(deployment)}")
    for service in deployment["services"]:
        handlers = ", ".join(h["name"] for h in service["handlers"])
        print(f"  {service['name']} ({service['ty']}): {handlers}")


def _register(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"uri": args.uri}
    if args.force:
        body["force"] = True
    if args.breaking:
        body["breaking"] = True
    status, deployment = _call(args, "POST", "/deployments", body)
    if deployment.get("overwritten"):
        verb = "overwrote (forced) deployment"
    else:
        verb = "registered deployment" if status == 201 else "already registered deployment"
    print(f"{verb}:")
    _print_deployment(deployment)
    return 0


def _list(args: argparse.Namespace) -> int:
    _, payload = _call(args, "GET", "/deployments")
    deployments = payload["deployments"]
    if not deployments:
        print("no deployments registered; register one with `keystate deployments register URI`")
    for deployment in deployments:
        _print_deployment(deployment)
    return 0


_STATES = {
    "active": "active: new invocations of {latest} go to it",
    "draining": "draining: no longer latest; {pinned} started invocation(s) still pinned to it",
    "drained": "drained: no longer latest and nothing pinned to it; safe to remove",
    "unknown": "not latest; pinned invocations unknown (the read model is still reading)",
}


def _describe(args: argparse.Namespace) -> int:
    _, deployment = _call(args, "GET", f"/deployments/{_quote(args.id)}")
    _print_deployment(deployment)
    state = deployment.get("state")
    if state in _STATES:
        latest = ", ".join(deployment.get("latest_for") or [])
        print("  state: " + _STATES[state].format(latest=latest, pinned=deployment.get("pinned_invocations")))
    print(f"  created: {deployment['created_at']}")
    print(f"  protocol: {deployment['protocol_version']}, transports: {', '.join(deployment['transports'])}")
    for service in deployment["services"]:
        for h in service["handlers"]:
            types = f"{h.get('input_content_type') or 'application/json'} -> {h.get('output_content_type') or 'application/json'}"
            print(f"    {service['name']}/{h['name']}: {h['ty']}, {types}")
    return 0


def _remove(args: argparse.Namespace) -> int:
    query = "?force=true" if args.force else ""
    _, payload = _call(args, "DELETE", f"/deployments/{_quote(args.id)}{query}")
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


def _quote(text: str) -> str:
    return urllib.parse.quote(text, safe="")


def _admin_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
    """--admin and --admin-token-file, before the action (`top`) or after it (then they override)."""
    if top:
        parser.add_argument("--admin", help=f"admin API URL (default: $KEYSTATE_ADMIN_URL or {DEFAULT_ADMIN})")
        parser.add_argument(
            "--admin-token-file", help=f"file holding the admin API's bearer token (default: ${ADMIN_TOKEN_ENV})"
        )
        parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the admin API (default %(default)s)")
    else:
        parser.add_argument("--admin", default=argparse.SUPPRESS, help="admin API URL")
        parser.add_argument("--admin-token-file", default=argparse.SUPPRESS, help="file holding the admin API's token")


def _with_admin(sub: argparse._SubParsersAction, name: str, **kwargs: Any) -> argparse.ArgumentParser:
    parser = sub.add_parser(name, **kwargs)
    _admin_options(parser, top=False)
    return parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keystate deployments", description=__doc__)
    _admin_options(parser, top=True)
    sub = parser.add_subparsers(dest="action", required=True)
    register = _with_admin(sub, "register", help="discover the deployment at URI and register its services")
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
    listing = _with_admin(sub, "list", help="list registered deployments and their services")
    listing.set_defaults(run=_list)
    describe = _with_admin(sub, "describe", help="show one deployment, its services and handlers")
    describe.add_argument("id", help="deployment id (dp_...), as shown by `keystate deployments list`")
    describe.set_defaults(run=_describe)
    remove = _with_admin(sub, "remove", help="remove a deployment; refused while invocations are pinned to it")
    remove.add_argument("id", help="deployment id (dp_...)")
    remove.add_argument(
        "--force", action="store_true",
        help="remove it even if unfinished invocations run on it: they are paused until resumed elsewhere",
    )
    remove.set_defaults(run=_remove)
    return parser


def main(argv: list[str] | None = None) -> int:
    return _run(_parser(), "keystate deployments", argv)


def _run(parser: argparse.ArgumentParser, prog: str, argv: list[str] | None) -> int:
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.run(args))
    except CliError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1


def _invocation_action(args: argparse.Namespace) -> int:
    query = ""
    if getattr(args, "deployment", None):
        query = f"?deployment={_quote(args.deployment)}"
    _call(args, "PATCH", f"/invocations/{_quote(args.id)}/{args.action}{query}")
    print(f"{args.action} of {args.id} requested")
    return 0


def _invocation_describe(args: argparse.Namespace) -> int:
    _, inv = _call(args, "GET", f"/invocations/{_quote(args.id)}")
    print(f"{inv['id']}  {inv['target']}  {inv['status']}")
    print(f"  deployment: {inv.get('deployment_id') or '-'}, attempt {inv['attempt']}, retries {inv['retry_count']}")
    failure = inv.get("last_failure")
    if failure:
        label = "paused" if inv["status"] == "PAUSED" else "last failure"
        print(f"  {label}: [{failure.get('code')}] {failure.get('message')}")
    if inv.get("completion_status"):
        print(f"  completed: {inv['completion_status']}")
    return 0


def _invocations_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="keystate invocations", description="describe, cancel, kill or resume invocations via the admin API"
    )
    _admin_options(parser, top=True)
    sub = parser.add_subparsers(dest="action", required=True)
    describe = _with_admin(sub, "describe", help="show an invocation's status, deployment and why it is paused")
    describe.add_argument("id", help="invocation id (inv_...), as in the x-restate-id header")
    describe.set_defaults(run=_invocation_describe)
    for action, help_text in (
        ("cancel", "cancel gracefully: the handler sees a TerminalError and may compensate"),
        ("kill", "end at once, without running more of the handler's code"),
        ("resume", "start a PAUSED invocation again"),
    ):
        command = _with_admin(sub, action, help=help_text)
        command.add_argument("id", help="invocation id (inv_...), as in the x-restate-id header")
        if action == "resume":
            command.add_argument(
                "--deployment",
                help="deployment id to resume on (it stays pinned there), or `latest`; needed when its deployment was removed",
            )
        command.set_defaults(run=_invocation_action)
    return parser


def invocations_main(argv: list[str] | None = None) -> int:
    """`keystate invocations describe|cancel|kill|resume ID`."""
    return _run(_invocations_parser(), "keystate invocations", argv)
