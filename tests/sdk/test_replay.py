"""Handlers driven through the attempt driver without sockets: replay, suspension, determinism."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

import keystate
from keystate import Context, ObjectContext, RunOptions, TerminalError

from sdk_helpers import (
    NS, Driver, ack, completion, entries_of, entry, failure, input_entry, kinds, start, target, value,
)

svc = keystate.Service("Billing")
obj = keystate.VirtualObject("Counter")
calls = {"charge": 0}


def charge(amount: int) -> int:
    calls["charge"] += 1
    return amount * 2


@svc.handler()
async def pay(ctx: Context, amount: int) -> str:
    charged = await ctx.run("charge", charge, amount)
    return f"charged {charged}"


@svc.handler()
async def greet(ctx: Context, name: str) -> str:
    return f"Hello {name}!"


@svc.handler()
async def relay(ctx: Context, name: str) -> str:
    return await ctx.service_call(greet, name)


@svc.handler()
async def lucky(ctx: Context) -> dict:
    call = ctx.service_call(greet, "x")
    handle = ctx.object_send(add, "alice", 1)
    numbers = [ctx.random().randint(0, 10**9) for _ in range(3)]
    return {
        "call": await call.invocation_id(), "send": await handle.invocation_id(),
        "numbers": numbers, "uuid": str(ctx.uuid()), "greeting": await call,
    }


@obj.handler()
async def add(ctx: ObjectContext, n: int) -> int:
    count = (await ctx.get("count", type_hint=int) or 0) + n
    ctx.set("count", count)
    return count


@svc.handler()
async def flaky(ctx: Context) -> str:
    def boom() -> str:
        raise RuntimeError("card declined")

    return await ctx.run_typed("charge", boom, RunOptions(max_attempts=3, initial_retry_interval=timedelta(seconds=2)))


@svc.handler()
async def refuses(ctx: Context) -> str:
    def no() -> str:
        raise TerminalError("not allowed", 403)

    try:
        await ctx.run("check", no)
    except TerminalError as exc:
        return f"caught {exc.status_code}"
    return "unreachable"


@svc.handler()
async def swallow(ctx: Context) -> str:
    try:
        await ctx.service_call(greet, "x")
    except Exception:  # user code must not be able to eat a suspension
        return "swallowed"
    return "completed"


@svc.handler()
async def race(ctx: Context) -> str:
    match await keystate.select(greeting=ctx.service_call(greet, "x"), timeout=ctx.sleep(timedelta(seconds=5))):
        case ["greeting", text]:
            return text
        case ["timeout", _]:
            return "timed out"
    return "?"


@svc.handler()
async def both(ctx: Context) -> list:
    a, b = ctx.run("a", lambda: 1), ctx.run("b", lambda: 2)
    done = await keystate.gather(a, b)
    return [await f for f in done]


PAY = target("Billing", "pay")


async def test_fresh_run_journals_input_run_output() -> None:
    d = Driver(pay)
    d.feed(start(PAY), input_entry(b"21"))
    assert entries_of(await d.settle()) == [(1, "RunEntry", {"name": "charge", "result": value(b"42")})]
    d.feed(ack(1))
    out = await d.finish()
    assert kinds(out) == ["1:RunEntry", "2:OutputEntry", "EndMessage"]
    assert entries_of(out)[1][2] == {"result": value(b'"charged 42"')}


async def test_replayed_run_is_not_executed_again() -> None:
    calls["charge"] = 0
    d = Driver(pay)
    d.feed(start(PAY, 2), input_entry(b"21"), entry(1, "RunEntry", {"name": "charge", "result": value(b"42")}))
    out = await d.finish()
    assert calls["charge"] == 0
    assert kinds(out) == ["2:OutputEntry", "EndMessage"]
    assert entries_of(out)[0][2] == {"result": value(b'"charged 42"')}


async def test_mismatch_on_replay_fails_the_attempt() -> None:
    d = Driver(add)
    d.feed(
        start(target("Counter", "add", "alice", "VIRTUAL_OBJECT"), 2),
        input_entry(b"1"),
        entry(1, "RunEntry", {"name": "charge", "result": value(b"1")}),
    )
    [(name, error)] = await d.finish()
    assert name == NS + "ErrorMessage"
    assert error["message"] == "journal mismatch at entry 1: expected run 'charge', got get_state 'count'"
    assert error["code"] == 570 and error["retryable"]


async def test_waiting_on_an_incomplete_call_suspends() -> None:
    d = Driver(relay, suspend_after=0)
    d.feed(start(target("Billing", "relay")), input_entry(b'"bob"'))
    out = await d.finish()
    assert kinds(out) == ["1:CallEntry", "SuspensionMessage"]
    assert out[-1][1] == {"waiting_on": [1]}


async def test_suspension_cannot_be_swallowed_by_except_exception() -> None:
    d = Driver(swallow, suspend_after=0)
    d.feed(start(target("Billing", "swallow")), input_entry())
    out = await d.finish()
    assert kinds(out) == ["1:CallEntry", "SuspensionMessage"]


async def test_completion_message_resumes_the_handler() -> None:
    d = Driver(relay, suspend_after=5)
    d.feed(start(target("Billing", "relay")), input_entry(b'"bob"'))
    [(_, _, call)] = entries_of(await d.settle())
    assert call["target"]["service"] == "Billing" and call["argument"] == b'"bob"'
    d.feed(completion(1, value(b'"Hello bob!"')))
    out = await d.finish()
    assert kinds(out) == ["1:CallEntry", "2:OutputEntry", "EndMessage"]
    assert entries_of(out)[-1][2] == {"result": value(b'"Hello bob!"')}


async def test_callee_ids_and_random_are_the_same_on_every_attempt() -> None:
    first = Driver(lucky, suspend_after=0)
    first.feed(start(target("Billing", "lucky"), random_seed=1234), input_entry())
    out1 = await first.finish()
    assert kinds(out1) == ["1:CallEntry", "2:SendEntry", "SuspensionMessage"]
    call, send = entries_of(out1)[0][2], entries_of(out1)[1][2]

    # Attempt 2: the processor replays what it journaled, with the call completed meanwhile.
    second = Driver(lucky)
    second.feed(
        start(target("Billing", "lucky"), 3, random_seed=1234, retry_count=1),
        input_entry(),
        entry(1, "CallEntry", {**call, "result": value(b'"hi"')}),
        entry(2, "SendEntry", send),
    )
    out2 = await second.finish()
    assert kinds(out2) == ["3:OutputEntry", "EndMessage"]
    result = keystate.serde.JsonSerde().deserialize(entries_of(out2)[0][2]["result"][1]["value"])
    assert result["call"] == call["invocation_id"] and result["send"] == send["invocation_id"]
    assert result["call"] != result["send"]

    third = Driver(lucky)  # a third attempt draws the same numbers again
    third.feed(
        start(target("Billing", "lucky"), 3, random_seed=1234, retry_count=2),
        input_entry(),
        entry(1, "CallEntry", {**call, "result": value(b'"hi"')}),
        entry(2, "SendEntry", send),
    )
    assert await third.finish() == out2


async def test_object_state_get_and_set() -> None:
    d = Driver(add)
    d.feed(start(target("Counter", "add", "alice", "VIRTUAL_OBJECT"), state={"count": b"41"}), input_entry(b"1"))
    out = await d.finish()
    assert [(n, e) for _, n, e in entries_of(out)] == [
        ("GetStateEntry", {"key": "count", "value": b"41"}),
        ("SetStateEntry", {"key": "count", "value": b"42"}),
        ("OutputEntry", {"result": value(b"42")}),
    ]


async def test_failing_run_retries_the_attempt_until_max_attempts_then_fails_terminally() -> None:
    early = Driver(flaky)
    early.feed(start(target("Billing", "flaky"), retry_count=0), input_entry())
    [(name, error)] = await early.finish()
    assert name == NS + "ErrorMessage"
    assert error["retryable"] and error["related_entry_index"] == 1 and error["retry_after_ms"] == 2000
    assert "card declined" in error["message"] and "RuntimeError" in error["stacktrace"]

    last = Driver(flaky)
    last.feed(start(target("Billing", "flaky"), retry_count=2), input_entry())
    await last.settle()
    last.feed(ack(1))
    out = await last.finish()
    assert [(n, e) for _, n, e in entries_of(out)] == [
        ("RunEntry", {"name": "charge", "result": failure(500, "RuntimeError: card declined")}),
        ("OutputEntry", {"result": failure(500, "RuntimeError: card declined")}),
    ]


async def test_terminal_error_in_a_run_is_journaled_and_raised_after_the_ack() -> None:
    d = Driver(refuses)
    d.feed(start(target("Billing", "refuses")), input_entry())
    assert entries_of(await d.settle()) == [(1, "RunEntry", {"name": "check", "result": failure(403, "not allowed")})]
    d.feed(ack(1))
    out = await d.finish()
    assert entries_of(out)[-1][2] == {"result": value(b'"caught 403"')}


async def test_select_returns_the_first_completed_with_its_name() -> None:
    d = Driver(race, clock=lambda: 1000.0)
    d.feed(start(target("Billing", "race")), input_entry())
    new = entries_of(await d.settle())
    assert [n for _, n, _ in new] == ["CallEntry", "SleepEntry"]
    assert new[1][2] == {"wake_up_at_ms": 1_005_000, "fired": False}
    d.feed(completion(2, value(b"")))
    # Which branch won is journaled, so a replay that finds both completed takes the same branch.
    assert entries_of(await d.settle()) == [(3, "RunEntry", {"name": "keystate:combinator", "result": value(b"[2]")})]
    d.feed(ack(3))
    out = await d.finish()
    assert entries_of(out)[-1][2] == {"result": value(b'"timed out"')}


async def test_select_replays_the_journaled_winner_even_when_both_are_completed_now() -> None:
    call = {"target": target("Billing", "greet"), "argument": b'"x"', "headers": {}, "idempotency_key": None,
            "invocation_id": "inv_x", "result": value(b'"hello"')}
    d = Driver(race, clock=lambda: 1000.0)
    d.feed(
        start(target("Billing", "race"), 4), input_entry(),
        entry(1, "CallEntry", call),
        entry(2, "SleepEntry", {"wake_up_at_ms": 1_005_000, "fired": True}),
        entry(3, "RunEntry", {"name": "keystate:combinator", "result": value(b"[2]")}),
    )
    out = await d.finish()
    assert entries_of(out) == [(4, "OutputEntry", {"result": value(b'"timed out"')})]


async def test_select_suspends_on_every_branch() -> None:
    d = Driver(race, suspend_after=0)
    d.feed(start(target("Billing", "race")), input_entry())
    out = await d.finish()
    assert out[-1] == (NS + "SuspensionMessage", {"waiting_on": [1, 2]})


async def test_gather_runs_steps_concurrently_and_keeps_journal_order() -> None:
    d = Driver(both)
    d.feed(start(target("Billing", "both")), input_entry())
    await d.settle()
    d.feed(ack(1), ack(2))
    out = await d.finish()
    assert kinds(out) == ["1:RunEntry", "2:RunEntry", "3:OutputEntry", "EndMessage"]
    assert entries_of(out)[-1][2] == {"result": value(b"[1,2]")}


async def test_user_exception_is_a_retryable_error() -> None:
    bad = keystate.Service("Bad")

    @bad.handler()
    async def explode(ctx: Context) -> None:
        raise ValueError("nope")

    d = Driver(explode)
    d.feed(start(target("Bad", "explode")), input_entry())
    [(name, error)] = await d.finish()
    assert name == NS + "ErrorMessage"
    assert (error["code"], error["message"], error["retryable"]) == (500, "ValueError('nope')", True)
    assert "ValueError: nope" in error["stacktrace"]


async def test_shared_contexts_cannot_write_state() -> None:
    assert not hasattr(keystate.ObjectSharedContext, "set")
    assert not hasattr(keystate.WorkflowSharedContext, "clear")
    assert hasattr(keystate.WorkflowSharedContext, "promise") and hasattr(keystate.ObjectContext, "set")


async def test_workflow_promise_peek_and_resolve() -> None:
    wf = keystate.Workflow("Signup")

    @wf.main()
    async def run(ctx: keystate.WorkflowContext, email: str) -> str:
        before = await ctx.promise("link").peek()
        await ctx.promise("link").resolve("clicked")
        after = await ctx.promise("link", type_hint=str).value()
        return f"{before}->{after}"

    d = Driver(run)
    d.feed(start(target("Signup", "run", "w1", "WORKFLOW", "WORKFLOW")), input_entry(b'"a@b"'))
    assert [n for _, n, _ in entries_of(await d.settle())] == ["PeekPromiseEntry"]
    d.feed(completion(1, value(b"")))  # not resolved yet
    assert [n for _, n, _ in entries_of(await d.settle())] == ["CompletePromiseEntry"]
    d.feed(completion(2, value(b"")))
    assert [n for _, n, _ in entries_of(await d.settle())] == ["GetPromiseEntry"]
    d.feed(completion(3, value(b'"clicked"')))
    out = await d.finish()
    assert entries_of(out)[-1][2] == {"result": value(b'"None->clicked"')}


async def test_call_with_a_function_that_is_not_a_handler_is_a_clear_type_error() -> None:
    async def plain(ctx: Context) -> None: ...

    bad = keystate.Service("Bad2")

    @bad.handler()
    async def caller(ctx: Context) -> None:
        await ctx.service_call(plain, None)

    d = Driver(caller)
    d.feed(start(target("Bad2", "caller")), input_entry())
    [(_, error)] = await d.finish()
    assert "is not a keystate handler" in error["message"]


def test_handlers_must_be_async() -> None:
    with pytest.raises(TypeError, match="async"):
        keystate.Service("S").handler()(lambda ctx: None)  # type: ignore[arg-type]


async def test_pending_futures_are_released_when_the_attempt_ends() -> None:
    d = Driver(relay, suspend_after=0)
    d.feed(start(target("Billing", "relay")), input_entry(b'"bob"'))
    await d.finish()
    assert d.core.handler_task is not None and d.core.handler_task.done()
    await asyncio.sleep(0)
