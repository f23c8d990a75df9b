"""`PATCH /services/{name}` end to end: the override reaches the ingress, the processor and the invoker, and the CLI."""

from __future__ import annotations

import pytest

from harness import Stack, http
from test_cli_stack import run, run_json
from test_query import send, sql, until

pytestmark = pytest.mark.integration


def patch(stack: Stack, service: str, body: object) -> tuple[int, object]:
    resp = http("PATCH", f"{stack.admin_url}/services/{service}", body)
    return resp.status, resp.json()


def journal_rows(stack: Stack, iid: str) -> int:
    return len(sql(stack, f"SELECT index FROM sys_journal WHERE id = '{iid}'"))


def completed(stack: Stack, iid: str) -> bool:
    rows = sql(stack, f"SELECT status FROM sys_invocation WHERE id = '{iid}'")
    return bool(rows) and rows[0]["status"] == "completed"


def test_patched_settings_reach_the_ingress_the_processor_and_the_invoker(running: Stack) -> None:
    # Bad bodies and unknown services say what is wrong.
    status, body = patch(running, "Greeter", {"journal_retention": "forever"})
    assert status == 400 and "journal_retention" in str(body) and "PT1H" in str(body), body
    status, body = patch(running, "Greeter", {"retention": "1d"})
    assert status == 400 and "unknown field retention" in str(body), body
    status, body = patch(running, "Greeter", {"workflow_completion_retention": "1d"})
    assert status == 400 and "workflows only" in str(body), body
    assert patch(running, "NoSuchService", {"public": False})[0] == 404

    # public=false: the ingress refuses Greeter, a handler still calls it.
    assert http("POST", f"{running.url}/Greeter/greet", "ann").status == 200
    status, service = patch(running, "Greeter", {"public": False})
    assert status == 200, service
    assert isinstance(service, dict) and service["public"] is False and service["overridden"] == ["public"]
    refused = http("POST", f"{running.url}/Greeter/greet", "ann")
    assert refused.status == 400, refused.body
    called = http("POST", f"{running.url}/Caller/greet_and_count", "ann")
    assert called.status == 200 and "ann" in called.json()["greeting"], called.body
    shown = {r["name"]: r["public"] for r in sql(running, "SELECT name, public FROM sys_service")}
    assert shown["Greeter"] is False and shown["Caller"] is True

    # journal_retention=0: a completed invocation's journal is gone, its status row stays.
    kept = send(running, "Payloads/echo_text", "kept")
    until("the journal of an invocation before the patch", lambda: completed(running, kept) and journal_rows(running, kept), running)
    status, service = patch(running, "Payloads", {"journal_retention": "0s", "idempotency_retention": "1h 30m"})
    assert status == 200, service
    assert isinstance(service, dict) and service["journal_retention_ms"] == 0
    assert service["idempotency_retention_ms"] == 90 * 60_000 and service["public"] is True
    gone = send(running, "Payloads/echo_text", "gone")
    until("the invocation after the patch completed", lambda: completed(running, gone), running)
    assert journal_rows(running, gone) == 0
    assert journal_rows(running, kept) > 0  # set at completion: the patch does not reach back
    [shown] = sql(running, "SELECT journal_retention_ms, idempotency_retention_ms FROM sys_service WHERE name = 'Payloads'")
    assert shown == {"journal_retention_ms": 0, "idempotency_retention_ms": 90 * 60_000}

    # abort_timeout reaches the invoker: an attempt longer than it fails with the service's timeout.
    assert patch(running, "Holder", {"abort_timeout": "1s"})[0] == 200
    held = send(running, "Holder/hold", 300)

    def failure() -> str | None:
        rows = sql(running, f"SELECT last_failure FROM sys_invocation WHERE id = '{held}'")
        return rows[0]["last_failure"] if rows and rows[0]["last_failure"] else None

    assert "abort timeout of 1 s" in until("the attempt's abort timeout", failure, running)
    assert http("PATCH", f"{running.admin_url}/invocations/{held}/kill").status == 202


def test_the_cli_patches_and_views_a_service_config(running: Stack, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        running, capsys, "services", "config", "patch", "Flaky", "--journal-retention", "2h30m",
        "--inactivity-timeout", "500ms", "--public", "false",
    )
    assert code == 0, err
    assert "2h30m" in out and "500ms" in out
    config = run_json(running, capsys, "services", "config", "view", "Flaky")
    assert (config["journal_retention_ms"], config["inactivity_timeout_ms"], config["ingress_private"]) == (
        9_000_000, 500, True,
    )
    # A later patch keeps what it does not name.
    assert run(running, capsys, "services", "config", "patch", "Flaky", "--abort-timeout", "1d")[0] == 0
    code, out, _ = run(running, capsys, "services", "config", "view", "Flaky")
    assert code == 0 and "2h30m" in out and "1d" in out and "500ms" in out
    assert "changed with config patch" in out
    assert run_json(running, capsys, "services", "config", "view", "Flaky")["overridden"] == [
        "abort_timeout_ms", "inactivity_timeout_ms", "journal_retention_ms", "public",
    ]
    assert http("POST", f"{running.url}/Flaky/always_fails").status == 400
