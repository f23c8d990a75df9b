"""`ctx.run` and `RunOptions` as restate-sdk 1.3 spells them: args=/kwargs=, retry intervals, max_duration."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import keystate
from keystate import Context, RunOptions

from sdk_helpers import NS, Driver, ack, entries_of, failure, input_entry, start, target, value

svc = keystate.Service("Steps")


def add(a: int, b: int, *, times: int = 1) -> int:
    return (a + b) * times


async def async_add(a: int, b: int, *, times: int = 1) -> int:
    return (a + b) * times


@svc.handler()
async def restate_args(ctx: Context) -> list[int]:
    first = await ctx.run("sum", add, args=(1, 2))
    second = await ctx.run("times", add, args=(1, 2), kwargs={"times": 3})
    third = await ctx.run("async", async_add, args=(2, 2), kwargs={"times": 2})
    return [first, second, third]


@svc.handler()
async def inline_args(ctx: Context) -> list[int]:
    # The older keystate forms keep working: arguments after the action, and run_typed.
    first = await ctx.run("inline", add, 4, 5)
    second = await ctx.run_typed("typed", add, RunOptions(max_attempts=2), 1, 1, times=5)
    third = await ctx.run("lambda", lambda: 7)
    return [first, second, third]


@svc.handler()
async def both_forms(ctx: Context) -> int:
    return await ctx.run("sum", add, 1, args=(1, 2))


async def _run_to_end(fn: Any, handler: str, acks: int) -> list[tuple[str, dict[str, Any]]]:
    d = Driver(fn)
    d.feed(start(target("Steps", handler)), input_entry())
    for index in range(1, acks + 1):
        await d.settle()
        d.feed(ack(index))
    return await d.finish()


async def test_run_passes_restate_args_and_kwargs_to_the_action() -> None:
    out = await _run_to_end(restate_args, "restate_args", 3)
    assert [(n, e) for _, n, e in entries_of(out)] == [
        ("RunEntry", {"name": "sum", "result": value(b"3")}),
        ("RunEntry", {"name": "times", "result": value(b"9")}),
        ("RunEntry", {"name": "async", "result": value(b"8")}),
        ("OutputEntry", {"result": value(b"[3,9,8]")}),
    ]


async def test_inline_arguments_run_typed_and_lambdas_still_work() -> None:
    out = await _run_to_end(inline_args, "inline_args", 3)
    assert entries_of(out)[-1][2] == {"result": value(b"[9,10,7]")}


async def test_arguments_given_both_ways_fail_the_attempt_with_a_message_saying_how_to_fix_it() -> None:
    d = Driver(both_forms)
    d.feed(start(target("Steps", "both_forms")), input_entry())
    [(name, error)] = await d.finish()
    assert name == NS + "ErrorMessage"
    assert "either after it or as args=(...), not both" in error["message"]


def flaky() -> str:
    raise RuntimeError("upstream down")


def _handler_with(options: RunOptions[str]) -> Any:
    local = keystate.Service("Retrying")

    @local.handler()
    async def step(ctx: Context) -> str:
        return await ctx.run_typed("call", flaky, options)

    return step


async def _error_after(options: RunOptions[str], retry_count: int, since_first_ms: int = 0) -> dict[str, Any]:
    d = Driver(_handler_with(options))
    d.feed(start(target("Retrying", "step"), retry_count=retry_count, duration_since_first_attempt_ms=since_first_ms),
           input_entry())
    [(name, error)] = await d.finish()
    assert name == NS + "ErrorMessage"
    return error


@pytest.mark.parametrize(("retry_count", "delay_ms"), [(0, 100), (1, 300), (2, 900), (3, 2000), (9, 2000)])
async def test_retry_interval_grows_by_the_factor_up_to_the_max_interval(retry_count: int, delay_ms: int) -> None:
    options: RunOptions[str] = RunOptions(
        initial_retry_interval=timedelta(milliseconds=100), retry_interval_factor=3.0,
        max_retry_interval=timedelta(seconds=2),
    )
    error = await _error_after(options, retry_count)
    assert (error["retryable"], error["related_entry_index"], error["retry_after_ms"]) == (True, 1, delay_ms)


async def test_a_factor_alone_starts_at_restates_default_interval_and_no_setting_leaves_it_to_the_policy() -> None:
    assert (await _error_after(RunOptions(retry_interval_factor=2.0), 2))["retry_after_ms"] == 200
    assert (await _error_after(RunOptions(max_attempts=10), 2))["retry_after_ms"] is None


async def _terminal_after(options: RunOptions[str], retry_count: int, since_first_ms: int) -> list[Any]:
    d = Driver(_handler_with(options))
    d.feed(start(target("Retrying", "step"), retry_count=retry_count, duration_since_first_attempt_ms=since_first_ms),
           input_entry())
    await d.settle()
    d.feed(ack(1))
    return entries_of(await d.finish())


@pytest.mark.parametrize("field", ["max_duration", "max_retry_duration"])
async def test_max_duration_turns_the_failure_terminal_once_the_invocation_is_that_old(field: str) -> None:
    options: RunOptions[str] = RunOptions(**{field: timedelta(seconds=30)})
    young = await _error_after(options, retry_count=4, since_first_ms=29_999)
    assert young["retryable"]
    entries = await _terminal_after(options, retry_count=5, since_first_ms=30_000)
    assert entries[0][2] == {"name": "call", "result": failure(500, "RuntimeError: upstream down")}
    assert entries[1][2] == {"result": failure(500, "RuntimeError: upstream down")}


async def test_run_takes_restates_max_retry_duration_keyword() -> None:
    local = keystate.Service("Old")

    @local.handler()
    async def step(ctx: Context) -> str:
        return await ctx.run("call", flaky, max_retry_duration=timedelta(seconds=1))

    d = Driver(step)
    d.feed(start(target("Old", "step"), retry_count=1, duration_since_first_attempt_ms=1000), input_entry())
    await d.settle()
    d.feed(ack(1))
    assert entries_of(await d.finish())[1][2] == {"result": failure(500, "RuntimeError: upstream down")}


@pytest.mark.parametrize("kwargs", [
    {"retry_interval_factor": 0.5}, {"retry_interval_factor": "2"}, {"max_retry_interval": timedelta(0)},
    {"max_duration": 5}, {"max_attempts": 0}, {"max_duration": timedelta(seconds=1), "max_retry_duration": timedelta(seconds=1)},
])
def test_invalid_run_options_are_refused_with_the_field_name(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="RunOptions"):
        RunOptions(**kwargs)
