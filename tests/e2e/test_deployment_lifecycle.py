"""A removed deployment's pinned invocations are paused, not re-run on other code, and resume explicitly."""

from __future__ import annotations

import pytest
from confluent_kafka import Producer

from keystate.cli.deployments import invocations_main
from keystate.schemas.topics import Topics

from harness import SERVICES_SCRIPT, Stack, free_port, http
from test_durable import _attach, _send, _until

pytestmark = pytest.mark.integration


def _invocation(stack: Stack, iid: str) -> dict:
    resp = http("GET", f"{stack.admin_url}/invocations/{iid}")
    return resp.json() if resp.status == 200 else {}


def test_forced_removal_pauses_pinned_invocations_and_a_resume_onto_another_deployment_completes_them(
    stack: Stack, deployment_env: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # The deployments' access logs count the attempts each served: one line per WebSocket, written when
    # it closes, so every attempt gets its own socket here (no warm connections).
    stack.processor("a", "--idle-connection-timeout", "0")
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
    # Suspended, so no connection to v1 is open whose close would be logged later (the count below).
    _until(lambda: _invocation(stack, pinned).get("status") == "SUSPENDED", stack=stack)

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
    calls_on_v1 = old.log_path.read_text().count("/invoke/Approvals/approve")

    assert invocations_main(["resume", pinned, "--deployment", v2["id"], "--admin", stack.admin_url]) == 0

    assert _attach(stack, pinned).json() == "approved: ok"
    # The read model follows the changelog a moment behind the result.
    _until(lambda: _invocation(stack, pinned).get("deployment_id") == v2["id"], stack=stack)
    assert "/invoke/Approvals/approve" in new.log_path.read_text()
    assert old.log_path.read_text().count("/invoke/Approvals/approve") == calls_on_v1


def test_the_processor_pauses_an_invocation_whose_deployment_was_removed_behind_the_admins_back(
    stack: Stack, deployment_env: dict[str, str]
) -> None:
    stack.processor("a")
    stack.ingress()
    old_port, new_port = free_port(), free_port()
    stack.deployment(SERVICES_SCRIPT, old_port, name="v1", env=deployment_env)
    v1 = stack.register(f"http://127.0.0.1:{old_port}")["id"]
    pinned = _send(stack, "Approvals/approve", "behind")
    awakeable = _until(lambda: http("POST", f"{stack.url}/Mailbox/behind/peek").json(), stack=stack)
    new = stack.deployment(SERVICES_SCRIPT, new_port, name="v2", env=deployment_env)
    v2 = stack.register(f"http://127.0.0.1:{new_port}")["id"]
    # A live attempt goes on on its own deployment; once suspended, the next attempt is the processor's choice.
    _until(lambda: _invocation(stack, pinned).get("status") == "SUSPENDED", stack=stack)
    # A tombstone written by some other tool (or an admin that could not see the invocation): no PauseCommand.
    producer = Producer({"bootstrap.servers": stack.bootstrap})
    producer.produce(Topics(stack.prefix).meta, None, key=v1.encode())
    assert producer.flush(30) == 0
    del producer  # closed now, not when the broker is already gone
    _until(lambda: http("GET", f"{stack.admin_url}/deployments/{v1}").status == 404, stack=stack)

    # The completion wakes it: its next attempt would have to run on v1, so it is paused instead.
    assert http("POST", f"{stack.url}/restate/awakeables/{awakeable}/resolve", "ok").status in (200, 202)

    paused = _until(lambda: (inv := _invocation(stack, pinned)).get("status") == "PAUSED" and inv, stack=stack)
    assert f"deployment {v1}, which this invocation is pinned to, was removed" in paused["last_failure"]["message"]
    assert "/invoke/Approvals/approve" not in new.log_path.read_text()

    assert http("PATCH", f"{stack.admin_url}/invocations/{pinned}/resume?deployment=latest").status == 202
    assert _attach(stack, pinned).json() == "approved: ok"
    _until(lambda: _invocation(stack, pinned).get("deployment_id") == v2, stack=stack)
