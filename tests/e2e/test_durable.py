"""Timers, awakeables, workflows, idempotency, attach/output, cancel/kill and retries, end to end."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from keystate.schemas.ids import InvocationId

from harness import SERVICES_SCRIPT, Stack, free_port, http

pytestmark = pytest.mark.integration


def _until(fn: Any, timeout: float = 30.0, stack: Stack | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        assert time.monotonic() < deadline, stack.logs() if stack else "timed out"
        time.sleep(0.05)


def _send(stack: Stack, path: str, body: Any = None, headers: dict[str, str] | None = None) -> str:
    resp = http("POST", f"{stack.url}/{path}/send", body, headers)
    assert resp.status == 202, resp.body
    return str(resp.json()["invocationId"])


def _attach(stack: Stack, iid: str, timeout: float = 60.0) -> Any:
    return http("GET", f"{stack.url}/restate/invocation/{iid}/attach", timeout=timeout)


def test_sleeps_are_durable_timers_and_run_concurrently(running: Stack) -> None:
    assert http("POST", f"{running.url}/Sleeper/nap", 300).json() == 300
    took = http("POST", f"{running.url}/Sleeper/naps", 1000).json()
    assert 1.0 <= took < 2.5, took  # three 1 s sleeps at once, not one after another


def test_delayed_send_runs_later_and_a_cancelled_one_never_runs(running: Stack) -> None:
    # The delays count from the sends: the processor must own its partitions before them (on a busy CI
    # machine it joined 7.5 s after its start, when both delays had passed and both adds ran at once).
    assert http("POST", f"{running.url}/Counter/delayed/get").json() == 0
    # The cancel asks the processor whether the invocation exists (404 if not): room for that on a busy machine.
    resp = http("POST", f"{running.url}/Counter/delayed/add/send?delay=4s", 1)
    assert resp.status == 202, resp.body
    cancelled = http("POST", f"{running.url}/Counter/delayed/add/send?delay=4s", 100).json()["invocationId"]
    assert http("PATCH", f"{running.admin_url}/invocations/{cancelled}/cancel").status in (200, 202)
    assert http("POST", f"{running.url}/Counter/delayed/get").json() == 0
    _until(lambda: http("POST", f"{running.url}/Counter/delayed/get").json() == 1, stack=running)
    assert _attach(running, cancelled).status == 409
    time.sleep(0.5)
    assert http("POST", f"{running.url}/Counter/delayed/get").json() == 1


def test_awakeable_resolved_over_http_and_its_timeout_branch(running: Stack) -> None:
    iid = _send(running, "Approvals/approve", "ann")
    awakeable = _until(lambda: http("POST", f"{running.url}/Mailbox/ann/peek").json(), stack=running)
    assert awakeable.startswith("awk_")
    resp = http("POST", f"{running.url}/restate/awakeables/{awakeable}/resolve", "yes")
    assert resp.status in (200, 202), resp.body
    assert _attach(running, iid).json() == "approved: yes"

    iid = _send(running, "Approvals/approve", "bob")
    awakeable = _until(lambda: http("POST", f"{running.url}/Mailbox/bob/peek").json(), stack=running)
    resp = http("POST", f"{running.url}/restate/awakeables/{awakeable}/reject", b"no way", {"content-type": "text/plain"})
    assert resp.status in (200, 202), resp.body
    rejected = _attach(running, iid)
    assert rejected.status == 500
    assert "no way" in rejected.json()["message"]

    iid = _send(running, "Approvals/approve", "cy")
    awakeable = _until(lambda: http("POST", f"{running.url}/Mailbox/cy/peek").json(), stack=running)
    assert http("POST", f"{running.url}/Approvals/answer", {"id": awakeable, "value": "from a handler"}).status == 200
    assert _attach(running, iid).json() == "approved: from a handler"


def test_idempotency_key_gives_the_same_invocation_and_response(running: Stack) -> None:
    key = {"idempotency-key": "order-17"}
    first = http("POST", f"{running.url}/Counter/idem/add", 5, key)
    second = http("POST", f"{running.url}/Counter/idem/add", 5, key)
    assert first.status == second.status == 200
    assert first.json() == second.json() == 0
    assert first.headers["x-restate-id"] == second.headers["x-restate-id"]
    assert "idempotency-expires" in second.headers
    assert http("POST", f"{running.url}/Counter/idem/get").json() == 5
    sent = http("POST", f"{running.url}/Counter/idem/add/send", 5, key)
    assert sent.status == 202
    assert sent.json()["invocationId"] == first.headers["x-restate-id"]
    by_key = http("GET", f"{running.url}/restate/invocation/Counter/idem/add/order-17/output")
    assert by_key.status == 200 and by_key.json() == 0


def test_attach_and_output_of_a_running_then_finished_invocation(running: Stack) -> None:
    iid = _send(running, "Sleeper/nap", 1500)
    assert http("GET", f"{running.url}/restate/invocation/{iid}/output").status == 470
    attached = _attach(running, iid)
    assert attached.status == 200 and attached.json() == 1500
    output = http("GET", f"{running.url}/restate/invocation/{iid}/output")
    assert output.status == 200 and output.json() == 1500
    unknown = str(InvocationId.new())
    assert http("GET", f"{running.url}/restate/invocation/{unknown}/output").status == 404


def test_user_signup_workflow_runs_once_and_waits_for_its_promise(running: Stack, deployment_env: dict[str, str]) -> None:
    outbox = Path(deployment_env["KEYSTATE_SIGNUP_OUTBOX"])
    user = {"name": "Ann", "email": "ann@example.com"}
    first = http("POST", f"{running.url}/UserSignup/ann/run/send", user)
    assert first.status == 202 and first.json()["status"] == "Accepted"
    again = http("POST", f"{running.url}/UserSignup/ann/run/send", user)
    assert again.status == 202
    assert again.json() == {"invocationId": first.json()["invocationId"], "status": "PreviouslyAccepted"}
    assert http("POST", f"{running.url}/UserSignup/ann/run", user).status == 409
    secret = _until(lambda: outbox.exists() and outbox.read_text().strip(), stack=running)
    assert http("GET", f"{running.url}/restate/workflow/UserSignup/ann/output").status == 470
    assert http("POST", f"{running.url}/UserSignup/ann/click", secret).status == 200
    result = http("GET", f"{running.url}/restate/workflow/UserSignup/ann/attach")
    assert result.status == 200 and result.json() is True
    assert outbox.read_text().split() == [secret]  # the mail step ran once


@pytest.mark.parametrize("mode", ["call", "sleep", "awakeable"])
def test_cancel_compensates_once_releases_the_lock_and_reports_409(running: Stack, mode: str) -> None:
    key = f"trip-{mode}"
    iid = _send(running, f"Trip/{key}/book", mode)
    _until(lambda: http("POST", f"{running.url}/Trip/{key}/trip_status").json()["status"] == "booking", stack=running)
    if mode != "sleep":
        time.sleep(0.5)  # let the call or awakeable be journaled
    assert http("PATCH", f"{running.admin_url}/invocations/{iid}/cancel").status in (200, 202)
    assert _attach(running, iid).status == 409
    assert http("POST", f"{running.url}/Trip/{key}/trip_status").json() == {"status": "compensated", "compensations": 1}
    # The object's lock is free again: the next exclusive call runs.
    assert http("POST", f"{running.url}/Trip/{key}/book", "now").json() == "booked"


def test_kill_stops_without_compensation_and_releases_the_lock(running: Stack) -> None:
    iid = _send(running, "Trip/trip-kill/book", "sleep")
    queued = _send(running, "Trip/trip-kill/book", "now")
    _until(lambda: http("POST", f"{running.url}/Trip/trip-kill/trip_status").json()["status"] == "booking", stack=running)
    assert http("PATCH", f"{running.admin_url}/invocations/{iid}/kill").status in (200, 202)
    assert _attach(running, iid).status == 409
    assert _attach(running, queued).json() == "booked"
    assert http("POST", f"{running.url}/Trip/trip-kill/trip_status").json()["compensations"] == 0


def test_retries_end_failed_after_max_attempts_and_honour_retry_after(running: Stack, tmp_path: Path) -> None:
    failed = http("POST", f"{running.url}/Flaky/always_fails")
    assert failed.status == 500
    assert "boom" in failed.json()["message"] and "3 attempts" in failed.json()["message"]
    started = time.monotonic()
    assert http("POST", f"{running.url}/Flaky/fails_then_waits", str(tmp_path / "marker")).json() == 1
    assert time.monotonic() - started >= 1.0


def test_request_response_deployment(stack: Stack, deployment_env: dict[str, str]) -> None:
    stack.processor("a")
    stack.ingress()
    port = free_port()
    stack.deployment(SERVICES_SCRIPT, port, env={**deployment_env, "KEYSTATE_TEST_TRANSPORTS": "request-response"})
    registered = stack.register(f"http://127.0.0.1:{port}")
    assert registered["transports"] == ["request-response"]
    assert http("POST", f"{stack.url}/Greeter/greet", "rr").json() == "Hello rr!"
    assert http("POST", f"{stack.url}/Counter/rr/add", 2).json() == 0
    body = {"user_id": "u", "credit_card": "4111", "subscriptions": ["a"]}
    assert http("POST", f"{stack.url}/SubscriptionService/add", body).json()["subscriptions"] == ["u:a"]
    assert http("POST", f"{stack.url}/Sleeper/nap", 200).json() == 200
    assert http("POST", f"{stack.url}/Caller/greet_and_count", "rr").json()["greeting"] == "Hello rr!"


def test_workflow_retention_purges_and_frees_the_id(running: Stack) -> None:
    assert http("POST", f"{running.url}/ShortFlow/w1/short_run", "a").json() == "w1:a"
    assert http("GET", f"{running.url}/restate/workflow/ShortFlow/w1/output").json() == "w1:a"
    assert http("POST", f"{running.url}/ShortFlow/w1/short_run", "b").status == 409
    _until(lambda: http("GET", f"{running.url}/restate/workflow/ShortFlow/w1/output").status == 404, stack=running)
    assert http("POST", f"{running.url}/ShortFlow/w1/short_run", "c").json() == "w1:c"


def test_exhausted_attempts_pause_until_resumed(running: Stack, tmp_path: Path) -> None:
    marker = tmp_path / "present"
    iid = _send(running, "Patient/needs_marker", str(marker))

    def paused() -> bool:
        resp = http("GET", f"{running.admin_url}/invocations/{iid}")
        return resp.status == 200 and resp.json()["status"] == "PAUSED"

    _until(paused, stack=running)
    described = http("GET", f"{running.admin_url}/invocations/{iid}").json()
    assert "is missing" in str(described)
    marker.touch()
    assert http("PATCH", f"{running.admin_url}/invocations/{iid}/resume").status in (200, 202)
    assert _attach(running, iid).json() == "done"


def test_as_completed_and_idempotent_calls_from_handlers(running: Stack) -> None:
    assert http("POST", f"{running.url}/Combos/in_completion_order").json() == [100, 600, 1200]
    assert http("POST", f"{running.url}/Combos/idempotent_twice", "idem-h").json() == [0, 0]
    assert http("POST", f"{running.url}/Counter/idem-h/get").json() == 1

    iid = _send(running, "Approvals/approve", "dan")
    awakeable = _until(lambda: http("POST", f"{running.url}/Mailbox/dan/peek").json(), stack=running)
    assert http("POST", f"{running.url}/Combos/reject_it", awakeable).status == 200
    rejected = _attach(running, iid)
    assert rejected.status == 500 and "rejected by a handler" in rejected.json()["message"]
