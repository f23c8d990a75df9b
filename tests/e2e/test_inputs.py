"""Typed inputs, callee types from the registry and admin 404s, against real processes."""

from __future__ import annotations

from pathlib import Path

import pytest

from keystate.schemas.ids import InvocationId

from harness import Stack, free_port, http

pytestmark = pytest.mark.integration

TYPED_SERVICES = str(Path(__file__).with_name("typed_services.py"))


@pytest.fixture
def typed(stack: Stack) -> Stack:
    stack.processor("a")
    stack.ingress()
    port = free_port()
    stack.deployment(TYPED_SERVICES, port)
    stack.register(f"http://127.0.0.1:{port}")
    return stack


def test_input_of_the_wrong_type_is_a_400_and_does_not_block_the_key(typed: Stack) -> None:
    bad = http("POST", f"{typed.url}/Tally/t1/add", "x", timeout=30)
    assert bad.status == 400, typed.logs()
    message = bad.json()["message"]
    assert "Tally/add" in message and "expected int, but received str 'x'" in message

    # The failure was terminal: the key is free for the next call at once.
    assert http("POST", f"{typed.url}/Tally/t1/add", 5, timeout=30).json() == 5
    assert http("POST", f"{typed.url}/Tally/t1/add", 2.0, timeout=30).json() == 7


def test_generic_calls_use_the_registered_types_of_their_callees(typed: Stack) -> None:
    # Without the fix the shared handler waits in the inbox behind the run: a deadlock, cut short here.
    response = http("POST", f"{typed.url}/Generic/run_and_release", "wf-1", timeout=20)
    assert response.status == 200, typed.logs()
    released, again, unknown = response.json()

    assert released == '"released"'  # the shared handler ran beside the waiting run
    assert again == "409: workflow Flow/wf-1 was already started"
    assert unknown.startswith("404: cannot call Flow/relase: Flow/relase is not a registered handler")
    attached = http("GET", f"{typed.url}/restate/workflow/Flow/wf-1/attach", timeout=30)
    assert attached.json() == "first:go"


def test_admin_actions_on_unknown_invocations_are_404(typed: Stack) -> None:
    unknown = str(InvocationId.new())
    for method, path in (("PATCH", "cancel"), ("PATCH", "kill"), ("PATCH", "purge"), ("PATCH", "resume")):
        response = http(method, f"{typed.admin_url}/invocations/{unknown}/{path}", timeout=30)
        assert response.status == 404, (path, response.body)
        assert f"unknown invocation {unknown}" in response.json()["message"]

    sent = http("POST", f"{typed.url}/Flow/wf-cancel/run/send", "x", timeout=30)
    assert sent.status == 202
    invocation_id = sent.headers["x-restate-id"]
    assert http("PATCH", f"{typed.admin_url}/invocations/{invocation_id}/cancel", timeout=30).status == 202
    attached = http("GET", f"{typed.url}/restate/invocation/{invocation_id}/attach", timeout=30)
    assert attached.status == 409, attached.body
