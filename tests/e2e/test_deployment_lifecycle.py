"""A removed deployment's pinned invocations are paused, not re-run on other code, and resume explicitly."""

from __future__ import annotations

import pytest

from keystate.cli.deployments import invocations_main

from harness import SERVICES_SCRIPT, Stack, free_port, http
from test_durable import _attach, _send, _until

pytestmark = pytest.mark.integration


def _invocation(stack: Stack, iid: str) -> dict:
    resp = http("GET", f"{stack.admin_url}/invocations/{iid}")
    return resp.json() if resp.status == 200 else {}


def test_forced_removal_pauses_pinned_invocations_and_a_resume_onto_another_deployment_completes_them(
    stack: Stack, deployment_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    stack.processor("a")
    stack.ingress()
    old_port, new_port = free_port(), free_port()
    old = stack.deployment(SERVICES_SCRIPT, old_port, name="v1", env=deployment_env)
    v1 = stack.register(f"http://127.0.0.1:{old_port}")
    assert v1["state"] == "active"
    pinned = _send(stack, "Approvals/approve", "pin")
    awakeable = _until(lambda: http("POST", f"{stack.url}/Mailbox/pin/peek").json(), stack=stack)

    new = stack.deployment(SERVICES_SCRIPT, new_port, name="v2", env=deployment_env)
    v2 = stack.register(f"http://127.0.0.1:{new_port}")
    assert v2["state"] == "active" and "Approvals" in v2["latest_for"]
    draining = _until(
        lambda: (d := http("GET", f"{stack.admin_url}/deployments/{v1['id']}").json())["state"] == "draining" and d,
        stack=stack,
    )
    assert draining["pinned_invocations"] == 1 and draining["latest_for"] == []

    removed = http("DELETE", f"{stack.admin_url}/deployments/{v1['id']}?force=true")

    assert removed.status == 202, removed.body
    assert removed.json()["paused_invocations"] == [pinned]
    paused = _until(lambda: (inv := _invocation(stack, pinned)).get("status") == "PAUSED" and inv, stack=stack)
    assert paused["deployment_id"] == v1["id"]
    reason = paused["last_failure"]["message"]
    assert f"deployment {v1['id']}" in reason and "removed with force" in reason and "/resume?deployment=" in reason
    assert invocations_main(["describe", pinned, "--admin", stack.admin_url]) == 0
    assert f"  paused: [503] {reason}" in capsys.readouterr().out

    # Its deployment is gone: resuming it "where it was" is refused rather than run on whatever is latest.
    kept = http("PATCH", f"{stack.admin_url}/invocations/{pinned}/resume")
    assert kept.status == 409 and f"pinned to deployment {v1['id']}, which was removed" in kept.json()["message"]
    # The awakeable is resolved while it is paused: the completion waits in its journal.
    assert http("POST", f"{stack.url}/restate/awakeables/{awakeable}/resolve", "ok").status in (200, 202)
    assert _invocation(stack, pinned)["status"] == "PAUSED"
    calls_on_v1 = old.log_path.read_text().count("/invoke/Approvals/approve")

    assert invocations_main(["resume", pinned, "--deployment", v2["id"], "--admin", stack.admin_url]) == 0

    assert _attach(stack, pinned).json() == "approved: ok"
    assert _invocation(stack, pinned)["deployment_id"] == v2["id"]
    assert "/invoke/Approvals/approve" in new.log_path.read_text()
    assert old.log_path.read_text().count("/invoke/Approvals/approve") == calls_on_v1
