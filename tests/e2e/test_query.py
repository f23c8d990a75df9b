"""SQL introspection end to end: a workflow, a virtual object and failing services run, then `POST /query` shows it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from harness import Stack, http

pytestmark = pytest.mark.integration


def sql(stack: Stack, query: str) -> list[dict[str, Any]]:
    resp = http("POST", f"{stack.admin_url}/query", {"query": query}, {"Accept": "application/json"})
    assert resp.status == 200, resp.body
    return list(resp.json()["rows"])


def until(what: str, probe: Callable[[], Any], stack: Stack, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = probe()
        if got:
            return got
        time.sleep(0.1)
    raise AssertionError(f"never saw {what}\n{stack.logs()}")


def send(stack: Stack, path: str, body: Any) -> str:
    resp = http("POST", f"{stack.url}/{path}/send", body)
    assert resp.status == 202, resp.body
    return str(resp.json()["invocationId"])


def invocation(stack: Stack, iid: str, **wanted: Any) -> dict[str, Any]:
    """The sys_invocation row of `iid` once it has every `wanted` value."""
    def probe() -> dict[str, Any] | None:
        rows = sql(stack, f"SELECT * FROM sys_invocation WHERE id = '{iid}'")
        return rows[0] if rows and all(rows[0][k] == v for k, v in wanted.items()) else None

    return dict(until(f"{iid} with {wanted}", probe, stack))


def journal(stack: Stack, iid: str) -> list[tuple[str, str | None, bool]]:
    rows = sql(stack, f"SELECT entry_type, name, completed FROM sys_journal WHERE id = '{iid}' ORDER BY index")
    return [(r["entry_type"], r["name"], r["completed"]) for r in rows]


def test_sql_shows_what_a_workflow_an_object_and_failing_services_did(running: Stack, deployment_env: dict[str, str]) -> None:
    # A workflow waiting for its promise, then completed by a click.
    run_id = send(running, "UserSignup/ann/run", {"name": "Ann", "email": "ann@example.com"})
    row = invocation(running, run_id, status="suspended")
    assert (row["target"], row["target_service_ty"], row["target_service_key"], row["invoked_by"]) == (
        "UserSignup/ann/run", "workflow", "ann", "ingress"
    )
    assert journal(running, run_id) == [
        ("Input", None, True), ("Run", "create", True), ("Run", "mail", True), ("GetPromise", "email-link-clicked", False),
    ]
    entry = sql(running, f"SELECT entry_json FROM sys_journal WHERE id = '{run_id}' AND index = 0")[0]["entry_json"]
    assert json.loads(json.loads(entry)["argument"]) == {"name": "Ann", "email": "ann@example.com"}
    secret = until("the mailed secret", lambda: Path(deployment_env["KEYSTATE_SIGNUP_OUTBOX"]).read_text().strip()
                   if Path(deployment_env["KEYSTATE_SIGNUP_OUTBOX"]).exists() else None, running)
    assert http("POST", f"{running.url}/UserSignup/ann/click", secret).status == 200
    done = invocation(running, run_id, status="completed")
    assert (done["completion_result"], done["completion_failure"]) == ("success", None)
    promise = sql(running, "SELECT key, completed, completion_success_value_utf8 FROM sys_promise WHERE service_key = 'ann'")
    assert promise == [{"key": "email-link-clicked", "completed": True, "completion_success_value_utf8": json.dumps(secret)}]

    # A virtual object: two completed adds and their state; a booking asleep with its state and timer.
    assert http("POST", f"{running.url}/Counter/sql/add", 5).status == 200
    assert http("POST", f"{running.url}/Counter/sql/add", 2).status == 200
    adds = until("both adds", lambda: (rows := sql(
        running, "SELECT status, completion_result FROM sys_invocation WHERE target = 'Counter/sql/add'"
    )) and len(rows) == 2 and rows, running)
    assert adds == [{"status": "completed", "completion_result": "success"}] * 2
    until("the count", lambda: sql(running, "SELECT key, value_utf8 FROM state WHERE service_name = 'Counter' AND service_key = 'sql'")
          == [{"key": "count", "value_utf8": "7"}], running)
    trip_id = send(running, "Trip/sql/book", "sleep")
    invocation(running, trip_id, status="suspended", target_service_ty="virtual_object")
    assert journal(running, trip_id) == [("Input", None, True), ("SetState", "status", True), ("Sleep", None, False)]
    wake = sql(running, f"SELECT sleep_wakeup_at FROM sys_journal WHERE id = '{trip_id}' AND entry_type = 'Sleep'")
    assert wake[0]["sleep_wakeup_at"].endswith("Z")
    assert sql(running, "SELECT key, value_utf8 FROM state WHERE service_name = 'Trip' AND service_key = 'sql'") == [
        {"key": "status", "value_utf8": '"booking"'}
    ]

    # Failing services: one paused after its attempts, one failed for good.
    marker = deployment_env["KEYSTATE_TEST_RELEASE"] + ".sql-marker"
    paused_id = send(running, "Patient/needs_marker", marker)
    paused = invocation(running, paused_id, status="paused")
    assert paused["last_failure"] is not None and f"{marker} is missing" in paused["last_failure"]
    assert paused["last_failure_error_code"] == 500 and paused["retry_count"] >= 1
    failed_id = send(running, "Flaky/always_fails", None)
    failed = invocation(running, failed_id, status="completed")
    assert failed["completion_result"] == "failure" and "boom" in failed["completion_failure"]
    assert "boom" in failed["last_failure"] and failed["retry_count"] >= 1

    deployments = sql(running, "SELECT status FROM sys_deployment")
    assert deployments == [{"status": "active"}]
    services = {r["name"]: r["ty"] for r in sql(running, "SELECT name, ty FROM sys_service")}
    assert (services["UserSignup"], services["Counter"], services["Greeter"]) == ("Workflow", "VirtualObject", "Service")


def test_a_completed_invocations_journal_stays_visible(running: Stack) -> None:
    assert http("POST", f"{running.url}/Counter/kept/add", 3).status == 200
    row = until("the add", lambda: sql(running, "SELECT id FROM sys_invocation WHERE target = 'Counter/kept/add' AND status = 'completed'"),
                running)
    entries = journal(running, row[0]["id"])
    assert entries[:3] == [("Input", None, True), ("GetState", "count", True), ("SetState", "count", True)]
    assert entries[3:] == [("Output", None, True)]  # kept for the journal retention, output included
