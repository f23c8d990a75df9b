"""Full restarts and deployment versions."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from harness import SERVICES_SCRIPT, Stack, free_port, http
from test_durable import _attach, _send, _until

pytestmark = pytest.mark.integration


def test_full_restart_with_a_timer_a_delayed_send_and_a_waiting_workflow(running: Stack, deployment_env: dict[str, str]) -> None:
    outbox = Path(deployment_env["KEYSTATE_SIGNUP_OUTBOX"])
    timer = _send(running, "Sleeper/nap", 4000)
    delayed = http("POST", f"{running.url}/Counter/restart/add/send?delay=4s", 1).json()["invocationId"]
    workflow = _send(running, "UserSignup/zed/run", {"name": "Zed", "email": "zed@example.com"})
    secret = _until(lambda: outbox.exists() and outbox.read_text().strip(), stack=running)
    # A step runs at least once: it is run again after a crash unless its result was journaled first.
    # Crash only once the mail step is on the log (a batch may write it a few ms after the mail went).
    _until(lambda: _journaled(running, workflow, "mail"), stack=running)

    processor, ingress = running.procs[0], running.procs[1]
    processor.kill9()
    ingress.kill9()
    running.processor("a")
    running.ingress()

    assert http("POST", f"{running.url}/UserSignup/zed/click", secret).status == 200
    assert _attach(running, timer).json() == 4000
    assert _attach(running, delayed).json() == 0
    assert _attach(running, workflow).json() is True
    assert http("POST", f"{running.url}/Counter/restart/get").json() == 1  # the delayed send ran once
    assert outbox.read_text().split() == [secret]  # and the workflow mailed once


def test_new_deployment_takes_new_invocations_while_old_ones_finish_where_they_started(
    stack: Stack, deployment_env: dict[str, str]
) -> None:
    # One WebSocket per attempt: the deployments' access logs then show each attempt (a warm socket
    # is logged once, when it closes).
    stack.processor("a", "--idle-connection-timeout", "0")
    stack.ingress()
    old_port, new_port = free_port(), free_port()
    old = stack.deployment(SERVICES_SCRIPT, old_port, name="v1", env=deployment_env)
    v1 = stack.register(f"http://127.0.0.1:{old_port}")["id"]
    pinned = _send(stack, "Approvals/approve", "pin")
    awakeable = _until(lambda: http("POST", f"{stack.url}/Mailbox/pin/peek").json(), stack=stack)

    new = stack.deployment(SERVICES_SCRIPT, new_port, name="v2", env=deployment_env)
    v2 = stack.register(f"http://127.0.0.1:{new_port}")["id"]
    assert v1 != v2
    assert http("POST", f"{stack.url}/Greeter/greet", "new").json() == "Hello new!"
    assert "/invoke/Greeter/greet" in new.log_path.read_text()
    assert "/invoke/Greeter/greet" not in old.log_path.read_text()

    refused = http("DELETE", f"{stack.admin_url}/deployments/{v1}")
    assert refused.status == 409, refused.body
    time.sleep(1.5)  # the pinned invocation suspends; its next attempt must still go to v1
    assert http("POST", f"{stack.url}/restate/awakeables/{awakeable}/resolve", "ok").status in (200, 202)
    assert _attach(stack, pinned).json() == "approved: ok"
    assert old.log_path.read_text().count("/invoke/Approvals/approve") >= 2
    assert "/invoke/Approvals/approve" not in new.log_path.read_text()
    described = http("GET", f"{stack.admin_url}/invocations/{pinned}")
    assert described.status == 200 and described.json()["deployment_id"] == v1
    _until(lambda: http("DELETE", f"{stack.admin_url}/deployments/{v1}").status in (200, 202, 204), stack=stack)


def _journaled(stack: Stack, invocation_id: str, run_name: str) -> bool:
    """Whether the invocation's `ctx.run(run_name)` result is in its journal (through POST /query)."""
    query = (
        "SELECT count(*) AS n FROM sys_journal WHERE entry_type = 'Run' AND completed "
        f"AND id = '{invocation_id}' AND name = '{run_name}'"
    )
    resp = http("POST", f"{stack.admin_url}/query", {"query": query}, {"Accept": "application/json"})
    return resp.status == 200 and resp.json()["rows"][0]["n"] > 0
