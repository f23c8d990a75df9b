"""The admin API client of the CLI groups (deployments, invocations, services, state, sql) and their output.

Errors: `CliError` is the one root; it is printed (without a traceback) by `run_group` and says what
went wrong and how to fix it, naming the admin URL. A token-protected admin API gets
`Authorization: Bearer <token>` with the token of `--admin-token-file FILE` or else
`$KEYSTATE_ADMIN_TOKEN` (the file wins, as on the server).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from rich.console import Console, RenderableType
from rich.table import Table
from rich.text import Text

__all__ = [
    "ADMIN_TOKEN_ENV",
    "DEFAULT_ADMIN",
    "Admin",
    "AdminHttpError",
    "AdminToken",
    "CliError",
    "NoQueryRoute",
    "add_admin_options",
    "add_watch_option",
    "admin_from",
    "admin_subparser",
    "admin_token",
    "confirm",
    "console",
    "print_json",
    "quote",
    "render_text",
    "rows_table",
    "run_group",
    "short",
    "show",
    "sql_literal",
    "watch",
]

DEFAULT_ADMIN = "http://127.0.0.1:9070"
ADMIN_TOKEN_ENV = "KEYSTATE_ADMIN_TOKEN"
_HOW_TO_GIVE = f"set ${ADMIN_TOKEN_ENV} or pass --admin-token-file FILE"
# Piped output is not wrapped at 80 columns: ids and targets stay on one line for grep and scripts.
_PIPE_WIDTH = 240


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


def admin_token(file: Path | str | None = None, environ: Mapping[str, str] | None = None) -> AdminToken | None:
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


@dataclass(frozen=True, slots=True)
class HttpFailure:
    """A non-2xx answer of the admin API: its status and the `message` of its JSON body."""

    status: int
    message: str


class AdminHttpError(CliError):
    """The admin API answered with an error status; `failure` keeps it for callers that explain it better."""

    def __init__(self, admin: str, failure: HttpFailure) -> None:
        super().__init__(f"the admin API answered {failure.status}: {failure.message}")
        self.admin = admin
        self.failure = failure


class NoQueryRoute(CliError):
    """The admin API has no `POST /query` (a keystate older than SQL introspection)."""


@dataclass(frozen=True, slots=True)
class Admin:
    """The admin API at `url`, called with `token` (if any)."""

    url: str
    token: AdminToken | None = None
    timeout: float = 60.0

    def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """`method` on `path` (with its query string); the status and the JSON answer (None if empty)."""
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"content-type": "application/json", "accept": "application/json"}
        headers.update(self.token.headers if self.token is not None else {})
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers)
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 401:
                raise self._unauthorized() from exc
            raise AdminHttpError(self.url, _failure(exc)) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise CliError(
                f"cannot reach the admin API at {self.url} ({reason}); is keystate running? "
                "Point --admin (or $KEYSTATE_ADMIN_URL) at its admin port"
            ) from exc
        try:
            return status, json.loads(raw or b"null")
        except ValueError as exc:
            raise CliError(
                f"the admin API at {self.url} answered {path} with something that is not JSON; "
                "is --admin the admin port (9070)?"
            ) from exc

    def query(self, sql: str) -> list[dict[str, Any]]:
        """The rows of `sql` through `POST /query` (read-only SQL over sys_invocation, sys_journal, state, ...)."""
        try:
            _, answer = self.call("POST", "/query", {"query": sql})
        except AdminHttpError as exc:
            if exc.failure.status in (404, 405):
                raise NoQueryRoute(
                    f"the admin API at {self.url} has no POST /query (answered {exc.failure.status}); it is older "
                    "than SQL introspection: upgrade keystate there"
                ) from exc
            if exc.failure.status == 400:
                raise CliError(f"the admin API at {self.url} refused the query: {exc.failure.message}") from exc
            raise
        if not isinstance(answer, dict) or not isinstance(answer.get("rows"), list):
            raise CliError(f'the admin API at {self.url} answered POST /query without "rows"; is --admin the admin port?')
        return list(answer["rows"])

    def _unauthorized(self) -> CliError:
        # Our own message, not the body: --admin may point at some other server.
        if self.token is None:
            return CliError(
                f"the admin API at {self.url} requires a token (answered 401): {_HOW_TO_GIVE} holding the token "
                "it was started with"
            )
        return CliError(
            f"the admin API at {self.url} refused the admin token from {self.token.source} (answered 401); use the "
            f"token it was started with (its ${ADMIN_TOKEN_ENV} or --admin-token-file)"
        )


def _failure(exc: urllib.error.HTTPError) -> HttpFailure:
    """The admin's `{"code", "message"}` error; anything else is not echoed (it may be some other server's page)."""
    try:
        message = json.loads(exc.read()).get("message")
    except (ValueError, AttributeError, OSError):
        message = None
    if not isinstance(message, str) or not message:
        message = f"{exc.reason} (not the admin API's JSON error; is --admin the admin port, 9070?)"
    return HttpFailure(exc.code, message)


def admin_from(args: argparse.Namespace) -> Admin:
    """The admin API that --admin / $KEYSTATE_ADMIN_URL and --admin-token-file / $KEYSTATE_ADMIN_TOKEN name."""
    url = (getattr(args, "admin", None) or os.environ.get("KEYSTATE_ADMIN_URL") or DEFAULT_ADMIN).rstrip("/")
    return Admin(url, admin_token(getattr(args, "admin_token_file", None)), getattr(args, "timeout", 60.0))


def add_admin_options(parser: argparse.ArgumentParser, *, top: bool) -> None:
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


def admin_subparser(sub: argparse._SubParsersAction, name: str, *, json_flag: bool = False, **kwargs: Any) -> argparse.ArgumentParser:
    """A sub-command taking the admin options after it too, and `--json` if it reads."""
    parser: argparse.ArgumentParser = sub.add_parser(name, **kwargs)
    add_admin_options(parser, top=False)
    if json_flag:
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    return parser


def run_group(parser: argparse.ArgumentParser, prog: str, argv: Sequence[str] | None) -> int:
    """Parse `argv`, run the chosen action; a `CliError` is printed as `prog: message` and exits 1."""
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    try:
        return int(args.run(args))
    except CliError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 1


def console(stderr: bool = False) -> Console:
    """A console on stdout (or stderr); not wrapped at 80 columns when piped."""
    stream = sys.stderr if stderr else sys.stdout
    width = None if stream.isatty() else _PIPE_WIDTH
    return Console(file=stream, width=width, highlight=False, soft_wrap=False)


def render_text(renderable: RenderableType, width: int = 160) -> str:
    """`renderable` as plain text, as a terminal `width` columns wide shows it (for tests and --watch)."""
    out = Console(width=width, record=True, file=open(os.devnull, "w"), color_system=None, highlight=False)  # noqa: SIM115
    try:
        out.print(renderable)
        return out.export_text()
    finally:
        out.file.close()


def print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def short(value: Any, width: int = 60) -> str:
    """`value` as one line of at most `width` characters ("" for None)."""
    if value is None:
        return ""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def rows_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None, title: str | None = None) -> Table:
    """A table of `rows` with `columns` (default: the first row's keys, in its order)."""
    names = list(columns if columns is not None else (rows[0].keys() if rows else []))
    table = Table(title=title, show_lines=False, header_style="bold")
    for name in names:
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*(_cell(row.get(name)) for name in names))
    return table


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value, default=str)


def sql_literal(text: str) -> str:
    """`text` as a SQL string literal (quotes doubled), for values the user gives."""
    return "'" + text.replace("'", "''") + "'"


def quote(text: str) -> str:
    """`text` as one path segment of an admin URL."""
    return urllib.parse.quote(text, safe="")


def confirm(question: str, yes: bool) -> bool:
    """True if `yes` was given or the user answers y; without a terminal, --yes is required."""
    if yes:
        return True
    if not sys.stdin.isatty():
        raise CliError(f"{question} needs a confirmation and there is no terminal to ask on; pass --yes to confirm")
    answer = input(f"{question} [y/N] ").strip().lower()
    return answer in ("y", "yes")


def show(items: RenderableType | Sequence[RenderableType], out: Console | None = None) -> None:
    """Print `items` in order; text is not wrapped or cropped (a long failure message stays one line)."""
    out = out or console()
    for item in items if isinstance(items, list | tuple) else [items]:
        plain = isinstance(item, str | Text)
        out.print(item, soft_wrap=plain, markup=False if isinstance(item, str) else None)


def watch(
    render: Callable[[], RenderableType | Sequence[RenderableType]], interval: float | None, out: Console | None = None
) -> int:
    """Print `render()` once, or with `interval` refresh it every `interval` s until Ctrl-C."""
    out = out or console()
    if interval is None:
        show(render(), out)
        return 0
    from rich.console import Group
    from rich.live import Live

    def group() -> RenderableType:
        items = render()
        if isinstance(items, list | tuple):
            return Group(*items)
        return cast(RenderableType, items)

    try:
        with Live(group(), console=out, auto_refresh=False) as live:
            while True:
                time.sleep(interval)
                live.update(group(), refresh=True)
    except KeyboardInterrupt:
        return 0


def add_watch_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-w", "--watch", nargs="?", type=float, const=2.0, default=None, metavar="SECONDS",
        help="refresh every SECONDS (default 2) until Ctrl-C",
    )
