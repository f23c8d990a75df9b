"""Retries: RetryableError, retry policies and service settings, and how the manifest declares them."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import keystate
from keystate import Context, InvocationRetryPolicy, RetryableError, RunOptions

from sdk_helpers import NS, Driver, ack, entries_of, failure, input_entry, start, target

svc = keystate.Service("Flaky")


@svc.handler()
async def rate_limited(ctx: Context) -> None:
    raise RetryableError("429 from the payment API", retry_after=timedelta(seconds=1, milliseconds=500))


@svc.handler()
async def retry_by_policy(ctx: Context) -> None:
    raise RetryableError("try again")


@svc.handler()
async def step_rate_limited(ctx: Context) -> str:
    def call_api() -> str:
        raise RetryableError("slow down", retry_after=timedelta(seconds=7))

    return await ctx.run_typed("api", call_api, RunOptions(max_attempts=2, initial_retry_interval=timedelta(seconds=1)))


async def test_retryable_error_fails_the_attempt_with_its_delay() -> None:
    d = Driver(rate_limited)
    d.feed(start(target("Flaky", "rate_limited")), input_entry())
    [(name, error)] = await d.finish()
    assert name == NS + "ErrorMessage"
    assert (error["code"], error["message"], error["retryable"], error["retry_after_ms"]) == (
        500, "429 from the payment API", True, 1500,
    )
    assert "RetryableError" in error["stacktrace"]


async def test_retryable_error_without_a_delay_leaves_it_to_the_policy() -> None:
    d = Driver(retry_by_policy)
    d.feed(start(target("Flaky", "retry_by_policy")), input_entry())
    [(_, error)] = await d.finish()
    assert error["retryable"] and error["retry_after_ms"] is None


async def test_retryable_error_in_a_run_overrides_the_step_interval_until_max_attempts() -> None:
    first = Driver(step_rate_limited)
    first.feed(start(target("Flaky", "step_rate_limited"), retry_count=0), input_entry())
    [(_, error)] = await first.finish()
    assert (error["retryable"], error["related_entry_index"], error["retry_after_ms"]) == (True, 1, 7000)

    last = Driver(step_rate_limited)
    last.feed(start(target("Flaky", "step_rate_limited"), retry_count=1), input_entry())
    await last.settle()
    last.feed(ack(1))
    out = await last.finish()
    assert entries_of(out)[0][2] == {"name": "api", "result": failure(500, "RetryableError: slow down")}
    assert entries_of(out)[1][2] == {"result": failure(500, "RetryableError: slow down")}


def test_retryable_error_is_not_terminal_and_rejects_negative_delays() -> None:
    err = RetryableError("x", retry_after=timedelta(milliseconds=20))
    assert not isinstance(err, keystate.TerminalError) and isinstance(err, Exception)
    assert (err.message, err.retry_after_ms, str(err)) == ("x", 20, "x")
    with pytest.raises(ValueError):
        RetryableError("x", retry_after=timedelta(seconds=-1))


POLICY = InvocationRetryPolicy(
    initial_interval=timedelta(milliseconds=100), factor=1.5, max_interval=timedelta(seconds=30), max_attempts=5,
    on_max_attempts="pause",
)


def declared() -> list[dict[str, Any]]:
    plain = keystate.Service("Plain")

    @plain.handler()
    async def ping(ctx: Context) -> str:
        return "pong"

    tuned = keystate.Service(
        "Tuned", invocation_retry_policy=POLICY, inactivity_timeout=timedelta(minutes=1),
        abort_timeout=timedelta(seconds=90), idempotency_retention=timedelta(hours=2),
    )

    @tuned.handler(invocation_retry_policy=InvocationRetryPolicy(max_attempts=1))
    async def once(ctx: Context) -> None: ...

    @tuned.handler()
    async def default(ctx: Context) -> None: ...

    obj = keystate.VirtualObject("Obj", abort_timeout=timedelta(seconds=5))

    @obj.handler(kind="shared", invocation_retry_policy=POLICY)
    async def look(ctx: keystate.ObjectSharedContext) -> None: ...

    flow = keystate.Workflow("Flow", invocation_retry_policy=InvocationRetryPolicy(factor=3.0))

    @flow.main(invocation_retry_policy=POLICY)
    async def run(ctx: keystate.WorkflowContext) -> None: ...

    @flow.handler()
    async def signal(ctx: keystate.WorkflowSharedContext) -> None: ...

    kept = keystate.Workflow("Kept", workflow_retention=timedelta(days=7), idempotency_retention=timedelta(hours=1))

    @kept.main()
    async def go(ctx: keystate.WorkflowContext) -> None: ...

    return keystate.manifest([plain, tuned, obj, flow, kept])["services"]


def test_manifest_declares_retry_policies_timeouts_and_retention() -> None:
    plain, tuned, obj, flow, kept = declared()
    policy_json = {
        "initialInterval": 100, "factor": 1.5, "maxInterval": 30_000, "maxAttempts": 5, "onMaxAttempts": "PAUSE",
    }
    assert set(plain) == {"name", "ty", "handlers"}  # nothing set: the server's defaults
    assert "retryPolicy" not in plain["handlers"][0]

    assert tuned["retryPolicy"] == policy_json
    assert (tuned["inactivityTimeout"], tuned["abortTimeout"], tuned["journalRetention"]) == (60_000, 90_000, 7_200_000)
    once, default = tuned["handlers"]
    assert once["retryPolicy"] == {
        "initialInterval": 50, "factor": 2.0, "maxInterval": 60_000, "maxAttempts": 1, "onMaxAttempts": "FAIL",
    }
    assert "retryPolicy" not in default

    assert obj["abortTimeout"] == 5000 and "journalRetention" not in obj and "retryPolicy" not in obj
    assert obj["handlers"][0]["retryPolicy"] == policy_json

    assert flow["retryPolicy"]["factor"] == 3.0 and flow["retryPolicy"]["maxAttempts"] is None
    assert flow["journalRetention"] == 86_400_000  # workflows keep their result a day by default
    assert flow["handlers"][0]["retryPolicy"] == policy_json and "retryPolicy" not in flow["handlers"][1]
    assert kept["journalRetention"] == 7 * 86_400_000  # the workflow retention, not the idempotency one


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_interval": timedelta(0)},
        {"factor": 0.5},
        {"max_attempts": 0},
        {"on_max_attempts": "kill"},
        {"initial_interval": timedelta(seconds=10), "max_interval": timedelta(seconds=1)},
    ],
)
def test_invalid_retry_policies_are_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        InvocationRetryPolicy(**kwargs)


def test_invalid_service_settings_are_refused() -> None:
    with pytest.raises(ValueError, match="inactivity_timeout"):
        keystate.Service("S", inactivity_timeout=timedelta(0))
    with pytest.raises(TypeError, match="InvocationRetryPolicy"):
        keystate.Service("S", invocation_retry_policy={"max_attempts": 3})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workflow_retention"):
        keystate.Workflow("W", workflow_retention=timedelta(seconds=-1))
