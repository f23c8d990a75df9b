"""`keystate state get SVC KEY | edit SVC KEY [--set k=v] [--remove k] [--file F] | clear SVC KEY [--yes]`.

Reads `GET /services/{svc}/state/{key}` (values base64, with an opaque version) and writes the whole new
state with `POST /services/{svc}/state` carrying the version read: the owning processor applies it in
order with the key's exclusive handlers, and refuses it if the state changed since it was read.

The document `edit` opens in $EDITOR maps each state key to its value: the JSON value itself where
the bytes are JSON (what the SDK's serde writes), else `{"$base64": "..."}`.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import shlex
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from ._admin import (
    Admin,
    AdminHttpError,
    CliError,
    add_admin_options,
    admin_from,
    admin_subparser,
    confirm,
    console,
    print_json,
    quote,
    run_group,
)

__all__ = ["apply_edits", "document_of", "main", "state_of_document", "state_table"]

_B64 = "$base64"


def _decode(values: Mapping[str, str]) -> dict[str, bytes]:
    try:
        return {k: base64.b64decode(v, validate=True) for k, v in values.items()}
    except (ValueError, TypeError) as exc:
        raise CliError(f"the admin API answered state values that are not base64 ({exc}); is --admin the admin port?") from exc


def state_table(state: Mapping[str, bytes]) -> Table:
    """Key → value, as UTF-8 text where it decodes, else base64 (marked)."""
    table = Table(header_style="bold")
    table.add_column("KEY", overflow="fold")
    table.add_column("VALUE", overflow="fold")
    for key in sorted(state):
        raw = state[key]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = f"(base64) {base64.b64encode(raw).decode()}"
        table.add_row(key, text)
    return table


def document_of(state: Mapping[str, bytes]) -> dict[str, Any]:
    """The editable JSON document of `state`: JSON values as themselves, other bytes as {"$base64": ...}."""
    doc: dict[str, Any] = {}
    for key in sorted(state):
        try:
            doc[key] = json.loads(state[key].decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            doc[key] = {_B64: base64.b64encode(state[key]).decode()}
    return doc


def state_of_document(doc: Any, before: Mapping[str, bytes]) -> dict[str, bytes]:
    """The state `doc` describes; a value equal to its document form before keeps its exact bytes."""
    if not isinstance(doc, dict):
        raise CliError('the state document must be a JSON object of key → value, like {"count": 3}')
    old_doc = document_of(before)
    state: dict[str, bytes] = {}
    for key, value in doc.items():
        if key in before and old_doc.get(key) == value:
            state[key] = before[key]  # unchanged: not re-encoded (its whitespace and key order stay)
        elif isinstance(value, dict) and set(value) == {_B64}:
            try:
                state[key] = base64.b64decode(value[_B64], validate=True)
            except (ValueError, TypeError) as exc:
                raise CliError(f'the value of {key!r} is not valid base64 in {{"{_B64}": ...}} ({exc})') from exc
        else:
            state[key] = json.dumps(value, separators=(",", ":")).encode("utf-8")
    return state


def apply_edits(state: Mapping[str, bytes], sets: Sequence[str], removes: Sequence[str]) -> dict[str, bytes]:
    """`state` with `--set k=v` (v as JSON, else as a JSON string) and `--remove k` applied."""
    result = dict(state)
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CliError(f"--set {item!r} must look like key=value (value as JSON, e.g. count=3 or name='\"bob\"')")
        try:
            json.loads(value)
            encoded = value.encode("utf-8")
        except ValueError:
            encoded = json.dumps(value).encode("utf-8")
        result[key] = encoded
    for key in removes:
        result.pop(key, None)
    return result


def _no_state_routes(admin: Admin, exc: AdminHttpError) -> CliError | AdminHttpError:
    """A 404/405 from an admin without the state routes says so; other errors (unknown service...) stay."""
    if exc.failure.status in (404, 405) and "unknown service" not in exc.failure.message:
        return CliError(
            f"the admin API at {admin.url} has no state routes (answered {exc.failure.status}: {exc.failure.message}); "
            "it is older than state editing: upgrade keystate there"
        )
    return exc


def _read(admin: Admin, service: str, key: str) -> tuple[str | None, dict[str, bytes]]:
    try:
        _, answer = admin.call("GET", f"/services/{quote(service)}/state/{quote(key)}")
    except AdminHttpError as exc:
        raise _no_state_routes(admin, exc) from exc
    if not isinstance(answer, dict) or not isinstance(answer.get("state"), dict):
        raise CliError(f'the admin API at {admin.url} answered the state read without "state"; is --admin the admin port?')
    return answer.get("version"), _decode(answer["state"])


def _write(admin: Admin, service: str, key: str, version: str | None, state: Mapping[str, bytes]) -> str:
    """Send the new state; what became of it (applied, or queued behind the key's running invocations)."""
    body = {
        "object_key": key,
        "version": version,
        "new_state": {k: base64.b64encode(v).decode() for k, v in state.items()},
    }
    try:
        status, _ = admin.call("POST", f"/services/{quote(service)}/state", body)
    except AdminHttpError as exc:
        if exc.failure.status == 409:
            raise CliError(
                f"the state of {service}/{key} changed since it was read, so the edit was refused "
                f"({exc.failure.message}); run the command again to edit the current state, or add --force to "
                "replace it whatever it is by then"
            ) from exc
        raise _no_state_routes(admin, exc) from exc
    if status == 202:
        return "queued: it waits for the key's running invocations and is applied in their order"
    return "applied"


def _get(args: argparse.Namespace) -> int:
    version, state = _read(admin_from(args), args.service, args.key)
    if args.json:
        print_json({"version": version, "state": {k: base64.b64encode(v).decode() for k, v in state.items()}})
    elif not state:
        print(f"{args.service}/{args.key} has no state")
    else:
        console().print(state_table(state))
    return 0


def _edit_in_editor(doc: dict[str, Any], service: str, key: str) -> Any:
    editor = os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi"
    with tempfile.TemporaryDirectory(prefix="keystate-state-") as tmp:
        path = Path(tmp) / f"{service}-{key}.json".replace("/", "_")
        path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        try:
            subprocess.run([*shlex.split(editor), str(path)], check=True)
        except (OSError, subprocess.CalledProcessError) as exc:
            raise CliError(f"the editor {editor!r} failed ({exc}); set $EDITOR, or use --set k=v or --file F") from exc
        text = path.read_text(encoding="utf-8")
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CliError(f"the edited state is not JSON ({exc}); nothing was changed") from exc


def _edit(args: argparse.Namespace) -> int:
    admin = admin_from(args)
    version, before = _read(admin, args.service, args.key)
    if args.file:
        try:
            doc = json.loads(Path(args.file).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise CliError(f"cannot read the state document {args.file} ({exc}); give a JSON object of key → value") from exc
        after = state_of_document(doc, before)
    elif args.set or args.remove:
        after = apply_edits(before, args.set or [], args.remove or [])
    else:
        after = state_of_document(_edit_in_editor(document_of(before), args.service, args.key), before)
    if after == before:
        print(f"no change to the state of {args.service}/{args.key}; nothing sent")
        return 0
    # --force: no version, so the edit replaces whatever state the object has when its turn comes (on a
    # busy object, handlers queued before the edit change the state first: with the version it is refused).
    outcome = _write(admin, args.service, args.key, None if args.force else version, after)
    print(f"new state of {args.service}/{args.key} ({len(after)} keys): {outcome}")
    return 0


def _clear(args: argparse.Namespace) -> int:
    admin = admin_from(args)
    version, before = _read(admin, args.service, args.key)
    if not before:
        print(f"{args.service}/{args.key} has no state; nothing to clear")
        return 0
    if not confirm(f"clear all {len(before)} state keys of {args.service}/{args.key}?", args.yes):
        print("nothing done")
        return 1
    outcome = _write(admin, args.service, args.key, None if args.force else version, {})
    print(f"cleared the state of {args.service}/{args.key}: {outcome}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="keystate state", description=__doc__)
    add_admin_options(parser, top=True)
    sub = parser.add_subparsers(dest="action", required=True)
    get = admin_subparser(sub, "get", json_flag=True, help="the state of a virtual object or workflow")
    edit = admin_subparser(sub, "edit", help="edit the state in $EDITOR, or with --set / --remove / --file")
    clear = admin_subparser(sub, "clear", help="remove every state key of an object or workflow")
    for command in (get, edit, clear):
        command.add_argument("service", help="virtual object or workflow name")
        command.add_argument("key", help="the object's or workflow's key")
    get.set_defaults(run=_get)
    edit.add_argument("--set", action="append", metavar="KEY=VALUE", help="set KEY to VALUE (JSON; else a JSON string)")
    edit.add_argument("--remove", action="append", metavar="KEY", help="remove KEY")
    edit.add_argument("--file", help="replace the state with this JSON document (the form `edit` opens)")
    for command in (edit, clear):
        command.add_argument(
            "--force",
            action="store_true",
            help="apply even if the state changed since it was read (no version check; as Restate's --force)",
        )
    edit.set_defaults(run=_edit)
    clear.add_argument("-y", "--yes", action="store_true", help="do not ask for confirmation")
    clear.set_defaults(run=_clear)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """`keystate state get|edit|clear SVC KEY`."""
    return run_group(_parser(), "keystate state", argv)
