"""The CLI against a real stack: what happened, seen through `keystate invocations|state|sql|services`.

Lists, describes, state and bulk actions read through the admin's POST /query and the state routes.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from keystate.cli import main as cli

from harness import Stack, http
from test_durable import _attach, _send, _until

pytestmark = pytest.mark.integration


def run(stack: Stack, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """`keystate ARGV --admin <the stack's admin>`: exit code, stdout, stderr."""
    capsys.readouterr()
    group, *rest = argv
    code = cli([group, "--admin", stack.admin_url, *rest])
    out = capsys.readouterr()
    return code, out.out, out.err


def run_json(stack: Stack, capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    code, out, err = run(stack, capsys, *argv, "--json")
    assert code == 0, err
    return json.loads(out)


def row(text: str, *cells: str) -> bool:
    """True if one line of a table in `text` holds `cells` as consecutive columns."""
    pattern = r"│\s*" + r"\s*│\s*".join(re.escape(c) for c in cells) + r"\s*│"
    return any(re.search(pattern, line) for line in text.splitlines())


def listed(stack: Stack, capsys: pytest.CaptureFixture[str], *argv: str) -> dict[str, dict[str, Any]]:
    return {r["id"]: r for r in run_json(stack, capsys, "invocations", "list", *argv)}


def described(stack: Stack, capsys: pytest.CaptureFixture[str], invocation_id: str) -> dict[str, Any] | None:
    """`invocations describe ID --json`, or None while the read model does not have it yet."""
    code, out, _ = run(stack, capsys, "invocations", "describe", invocation_id, "--json")
    return json.loads(out) if code == 0 else None


def stored(stack: Stack, capsys: pytest.CaptureFixture[str], service: str, key: str) -> dict[str, bytes]:
    state = run_json(stack, capsys, "state", "get", service, key)["state"]
    return {k: base64.b64decode(v) for k, v in state.items()}


def test_a_workflow_an_object_and_a_failing_service_through_the_cli(
    running: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    wf = http("POST", f"{running.url}/ShortFlow/cli-wf/short_run", "a")
    assert wf.json() == "cli-wf:a"
    wf_id = wf.headers["x-restate-id"]
    put = http("POST", f"{running.url}/Mailbox/cli-box/put", "hello")
    assert put.status == 200, put.body
    put_id = put.headers["x-restate-id"]
    failing = _send(running, "Flaky/always_fails")
    assert _attach(running, failing).status == 500

    # The failing service: completed with a failure after its three attempts, the error in the row.
    row = _until(lambda: listed(running, capsys, "Flaky", "--status", "failed").get(failing), stack=running)
    assert (row["status"], row["completion_result"], row["target"]) == ("completed", "failure", "Flaky/always_fails")
    assert "boom" in run_json(running, capsys, "invocations", "describe", failing)["invocation"]["completion_failure"]

    # The workflow: its journal, in order, as the timeline shows it.
    flow = _until(lambda: (d := described(running, capsys, wf_id)) and d["invocation"]["status"] == "completed" and d, stack=running)
    assert flow["invocation"]["completion_result"] == "success"
    assert flow["invocation"]["target"] == "ShortFlow/cli-wf/short_run"
    assert [e["entry_type"] for e in flow["journal"]] == ["Input", "SetState", "Output"]
    code, out, _ = run(running, capsys, "invocations", "describe", wf_id)
    assert code == 0
    assert f"{wf_id}  ShortFlow/cli-wf/short_run  completed (success)" in out
    assert "journal (3 entries)" in out and "SetState" in out and "  completed: success" in out

    # The object: found by its obj/key prefix, and its state.
    by_key = _until(lambda: (found := listed(running, capsys, "Mailbox/cli-box")).get(put_id) and found, stack=running)
    assert by_key[put_id]["target"] == "Mailbox/cli-box/put" and by_key[put_id]["status"] == "completed"
    # The read model follows the changelog a moment behind the handler's answer.
    _until(lambda: stored(running, capsys, "Mailbox", "cli-box") == {"value": b'"hello"'}, stack=running)
    code, out, _ = run(running, capsys, "state", "get", "Mailbox", "cli-box")
    assert code == 0 and '"hello"' in out

    # And the same through SQL.
    rows = run_json(
        running, capsys, "sql",
        f"SELECT id, status, completion_result FROM sys_invocation WHERE id IN ('{wf_id}', '{failing}') ORDER BY id",
    )
    assert {r["id"]: (r["status"], r["completion_result"]) for r in rows} == {
        wf_id: ("completed", "success"), failing: ("completed", "failure"),
    }
    code, out, err = run(running, capsys, "sql", "SELECT nope FROM sys_invocation")
    assert code == 1 and "refused the query" in err


def test_a_bulk_cancel_asks_first_then_cancels_every_match_with_a_summary(
    running: Stack, capsys: pytest.CaptureFixture[str]
) -> None:
    naps = {_send(running, "Sleeper/nap", 600_000) for _ in range(3)}
    _until(lambda: naps <= set(listed(running, capsys, "Sleeper/nap", "--status", "suspended")), stack=running)

    # No terminal to ask on: nothing is done without --yes.
    code, out, err = run(running, capsys, "invocations", "cancel", "Sleeper/nap")
    assert code == 1 and "pass --yes to confirm" in err
    assert "3 invocations to cancel" in out
    assert all(r["status"] != "completed" for r in listed(running, capsys, "Sleeper").values() if r["id"] in naps)

    code, out, err = run(running, capsys, "invocations", "cancel", "Sleeper/nap", "--yes")

    assert code == 0, err
    assert "cancelled 3, failed 0" in out
    for iid in naps:
        assert _attach(running, iid).status == 409
    failed = _until(
        lambda: naps <= set(done := listed(running, capsys, "Sleeper", "--status", "failed")) and done, stack=running
    )
    assert {failed[i]["completion_result"] for i in naps} == {"failure"}
    # Nothing left to cancel: a second run says so.
    code, out, _ = run(running, capsys, "invocations", "cancel", "Sleeper/nap", "--yes")
    assert code == 0 and "no invocations to cancel match" in out


def test_state_edit_and_clear_reach_the_handlers(
    running: Stack, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert http("POST", f"{running.url}/Mailbox/cli-edit/put", "hello").status == 200
    # Edits start from the state the read model has: wait until it has the put.
    _until(lambda: stored(running, capsys, "Mailbox", "cli-edit") == {"value": b'"hello"'}, stack=running)

    code, out, err = run(running, capsys, "state", "edit", "Mailbox", "cli-edit", "--set", 'value="bye"')
    assert code == 0, err
    _until(lambda: http("POST", f"{running.url}/Mailbox/cli-edit/peek").json() == "bye", stack=running)
    _until(lambda: stored(running, capsys, "Mailbox", "cli-edit") == {"value": b'"bye"'}, stack=running)

    # $EDITOR gets the state as JSON; what it saves is sent.
    editor = tmp_path / "editor.py"
    editor.write_text(
        "import json, sys\n"
        "doc = json.load(open(sys.argv[1]))\n"
        "assert doc == {'value': 'bye'}, doc\n"
        "json.dump({'value': 'from-editor'}, open(sys.argv[1], 'w'))\n"
    )
    monkeypatch.setenv("EDITOR", f"{sys.executable} {editor}")
    monkeypatch.delenv("VISUAL", raising=False)
    code, out, err = run(running, capsys, "state", "edit", "Mailbox", "cli-edit")
    assert code == 0, err
    _until(lambda: http("POST", f"{running.url}/Mailbox/cli-edit/peek").json() == "from-editor", stack=running)
    _until(lambda: stored(running, capsys, "Mailbox", "cli-edit") == {"value": b'"from-editor"'}, stack=running)

    code, out, err = run(running, capsys, "state", "clear", "Mailbox", "cli-edit", "--yes")
    assert code == 0, err
    _until(lambda: http("POST", f"{running.url}/Mailbox/cli-edit/peek").json() is None, stack=running)


def test_services_and_single_invocation_actions(running: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    services = {s["name"]: s for s in run_json(running, capsys, "services", "list")}
    assert (services["Mailbox"]["ty"], services["ShortFlow"]["ty"], services["Sleeper"]["ty"]) == (
        "VirtualObject", "Workflow", "Service",
    )
    code, out, _ = run(running, capsys, "services", "describe", "Mailbox")
    assert code == 0
    assert row(out, "put", "Exclusive") and row(out, "peek", "Shared")
    code, out, _ = run(running, capsys, "services", "config", "view", "Flaky")
    assert code == 0 and "journal retention" in out and "Flaky configuration" in out

    nap = _send(running, "Sleeper/nap", 600_000)
    code, out, err = run(running, capsys, "invocations", "cancel", nap)
    assert code == 0, err
    assert f"cancel of {nap} requested" in out
    assert _attach(running, nap).status == 409
    _until(lambda: ((described(running, capsys, nap) or {}).get("invocation") or {}).get("status") == "completed", stack=running)
    code, _, err = run(running, capsys, "invocations", "kill", nap)
    assert code == 1 and "has already completed" in err


def test_pause_resume_restart_as_new_and_purge_through_the_cli(running: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    # pause / resume one sleeping invocation; it then finishes.
    sleeping = _send(running, "Sleeper/nap", 1500)
    _until(lambda: sleeping in listed(running, capsys, "Sleeper/nap", "--status", "suspended"), stack=running)
    code, out, err = run(running, capsys, "invocations", "pause", sleeping)
    assert code == 0 and f"pause of {sleeping} requested" in out, err
    _until(lambda: sleeping in listed(running, capsys, "Sleeper", "--status", "paused"), stack=running)
    code, out, err = run(running, capsys, "invocations", "resume", sleeping)
    assert code == 0, err
    assert _attach(running, sleeping).json() == 1500

    # restart-as-new: the same target and input again, under a new id.
    done = _send(running, "Sleeper/nap", 5)
    assert _attach(running, done).json() == 5
    _until(lambda: done in listed(running, capsys, "Sleeper/nap", "--status", "succeeded"), stack=running)
    code, out, err = run(running, capsys, "invocations", "restart-as-new", done)
    assert code == 0, err
    new_id = out.split(" as ")[1].strip()
    assert new_id.startswith("inv_") and new_id != done
    assert _attach(running, new_id).json() == 5

    # purge in bulk: every succeeded nap goes.
    _until(lambda: {sleeping, done, new_id} <= set(listed(running, capsys, "Sleeper/nap", "--status", "succeeded")), stack=running)
    code, out, err = run(running, capsys, "invocations", "purge", "Sleeper/nap", "--status", "succeeded", "--yes")
    assert code == 0, err
    assert "purged 3, failed 0" in out
    _until(lambda: not {sleeping, done, new_id} & set(listed(running, capsys, "Sleeper")), stack=running)
