"""Idempotent calls, workflows and promises, cancellation, timers and combinators, as stories."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

import keystate
from keystate import Context, ObjectContext, TerminalError, WorkflowContext, WorkflowSharedContext
from keystate._machine import Machine, child_invocation_id
from keystate.schemas.ids import HandlerKind, InvocationId, InvocationTarget, ServiceType, idempotency_partition_key

from sdk_helpers import (
    NS, PARENT_ID, Driver, ack, completion, entries_of, entry, failure, input_entry, kinds, start, target, value,
)

CANCELLED = failure(409, "cancelled")
NOW = 1000.0
clock = lambda: NOW  # noqa: E731

svc = keystate.Service("Travel")
trip = keystate.VirtualObject("Trip")
wf = keystate.Workflow("Approval")
compensations: list[str] = []


@svc.handler()
async def reserve(ctx: Context, what: str) -> str:
    return f"reserved {what}"


@svc.handler()
async def notify(ctx: Context, text: str) -> None:
    return None


@svc.handler()
async def idempotent(ctx: Context) -> str:
    ctx.service_send(notify, "hi", idempotency_key="mail-1")
    ctx.object_send(book, "t1", "x", idempotency_key="book-1")
    ctx.workflow_send(approve, "w1", "go", idempotency_key="wf-1")
    return await ctx.service_call(reserve, "car", idempotency_key="car-1")


@svc.handler()
async def empty_key(ctx: Context) -> str:
    return await ctx.service_call(reserve, "car", idempotency_key="")


@trip.handler()
async def book(ctx: ObjectContext, what: str) -> str:
    try:
        hotel = await ctx.service_call(reserve, "hotel")
        await ctx.sleep(timedelta(hours=1))
        return hotel
    except TerminalError as exc:
        ctx.set("status", f"undone after {exc.status_code}")
        await ctx.run("refund", lambda: compensations.append("refund") or "refunded")
        ctx.service_send(notify, "your trip was cancelled")
        raise


@trip.handler()
async def stop_other(ctx: ObjectContext, invocation_id: str) -> str:
    call = ctx.service_call(reserve, "boat")
    call.cancel_invocation()
    ctx.cancel_invocation(invocation_id)
    ctx.service_send(notify, "x").cancel_invocation()
    try:
        return await call
    except TerminalError as exc:
        return f"call ended {exc.status_code}"


@svc.handler()
async def naps(ctx: Context) -> str:
    await keystate.gather(ctx.sleep(timedelta(seconds=3)), ctx.sleep(timedelta(seconds=1)),
                          ctx.sleep(timedelta(seconds=2)))
    return "rested"


@svc.handler()
async def awakeable_or_timeout(ctx: Context) -> str:
    awakeable_id, awk = ctx.awakeable(type_hint=str)
    match await keystate.select(result=awk, timeout=ctx.sleep(timedelta(seconds=30))):
        case ["result", text]:
            return f"got {text}"
        case ["timeout", _]:
            return "timed out"
    return "?"


@svc.handler()
async def first_two(ctx: Context) -> list:
    futures = [ctx.service_call(reserve, "a"), ctx.sleep(timedelta(seconds=1)), ctx.awakeable(type_hint=str)[1]]
    seen = []
    async for f in keystate.as_completed(*futures):
        seen.append(futures.index(f))
        if len(seen) == 2:
            break
    done, pending = await keystate.wait_completed(*futures)
    return [seen, [futures.index(f) for f in done], [futures.index(f) for f in pending]]


@wf.main()
async def approve(ctx: WorkflowContext, request: str) -> str:
    peeked = await ctx.promise("decision", type_hint=str).peek()
    match await keystate.select(
        decision=ctx.promise("decision", type_hint=str).value(), timeout=ctx.sleep(timedelta(days=1))
    ):
        case ["decision", decision]:
            result = f"{request}: {decision}"
        case _:
            result = f"{request}: expired"
    try:
        await ctx.promise("decision").resolve("too late")
    except TerminalError as exc:
        result += f" ({exc.status_code})"
    return f"{peeked} / {result}"


@wf.handler()
async def decide(ctx: WorkflowSharedContext, decision: str) -> str:
    if decision == "no":
        await ctx.promise("decision").reject("rejected by the approver", 403)
    else:
        await ctx.promise("decision", type_hint=str).resolve(decision)
    return "noted"


@wf.handler()
async def status(ctx: WorkflowSharedContext) -> str:
    try:
        return await ctx.promise("decision", type_hint=str).value()
    except TerminalError as exc:
        return f"failed {exc.status_code}: {exc.message}"


@svc.handler()
async def starts_workflow(ctx: Context) -> str:
    handle = ctx.workflow_send(approve, "w7", "pay rise")
    outcome = await ctx.workflow_call(approve, "w8", "holiday")
    return f"{await handle.invocation_id()} {outcome}"


@svc.handler()
async def wrong_kind(ctx: Context) -> str:
    return await ctx.service_call(approve, "x")


def wf_target(handler: str, kind: str, key: str = "w1") -> dict[str, Any]:
    return target("Approval", handler, key, "WORKFLOW", kind)


# ---- idempotent calls ---------------------------------------------------------------------------


def test_an_idempotent_call_is_routed_by_its_idempotency_key_and_carries_it() -> None:
    m = Machine()
    for name, record in (start(target("Travel", "idempotent")), input_entry()):
        m.notify_input(name, record)
    greeter = InvocationTarget("Travel", "reserve")
    index, callee = m.sys_call(greeter, b'"car"', idempotency_key="car-1")
    plain = child_invocation_id(PARENT_ID, index, greeter)
    parsed = InvocationId.parse(callee)
    assert parsed.partition_key == idempotency_partition_key(greeter, "car-1") != plain.partition_key
    assert parsed.random == plain.random  # the random part still comes from parent and index
    [(_, _, call)] = entries_of(m.take_output())
    assert (call["idempotency_key"], call["invocation_id"]) == ("car-1", callee)


async def test_calls_and_sends_from_handlers_carry_idempotency_keys_and_matching_ids() -> None:
    d = Driver(idempotent, suspend_after=0)
    d.feed(start(target("Travel", "idempotent")), input_entry())
    out = await d.finish()
    assert kinds(out) == ["1:SendEntry", "2:SendEntry", "3:SendEntry", "4:CallEntry", "SuspensionMessage"]
    for _, _, e in entries_of(out):
        tgt = InvocationTarget(e["target"]["service"], e["target"]["handler"], e["target"]["key"],
                               ServiceType(e["target"]["service_type"]), HandlerKind(e["target"]["handler_kind"]))
        expected = idempotency_partition_key(tgt, e["idempotency_key"])
        assert InvocationId.parse(e["invocation_id"]).partition_key == expected
    keys = [e["idempotency_key"] for _, _, e in entries_of(out)]
    assert keys == ["mail-1", "book-1", "wf-1", "car-1"]
    assert InvocationId.parse(entries_of(out)[1][2]["invocation_id"]).partition_key == idempotency_partition_key(
        InvocationTarget("Trip", "book", "t1", ServiceType.VIRTUAL_OBJECT), "ignored for keyed targets"
    )


async def test_an_empty_idempotency_key_is_refused() -> None:
    d = Driver(empty_key)
    d.feed(start(target("Travel", "empty_key")), input_entry())
    [(name, error)] = await d.finish()
    assert name == NS + "ErrorMessage" and "idempotency_key must be a non-empty string" in error["message"]


# ---- cancellation -------------------------------------------------------------------------------


async def test_cancelled_call_raises_409_and_the_handler_compensates_then_fails_409() -> None:
    compensations.clear()
    d = Driver(book, clock=clock)
    d.feed(start(target("Trip", "book", "t1", "VIRTUAL_OBJECT")), input_entry(b'"x"'))
    assert kinds(await d.settle()) == ["1:CallEntry"]
    d.feed(completion(1, CANCELLED))  # the processor cancels every waiting entry
    new = await d.settle()
    assert [(i, n) for i, n, _ in entries_of(new)] == [(2, "SetStateEntry"), (3, "RunEntry")]
    assert entries_of(new)[0][2] == {"key": "status", "value": b'"undone after 409"'}
    d.feed(ack(3))
    out = await d.finish()
    assert kinds(out)[-3:] == ["4:SendEntry", "5:OutputEntry", "EndMessage"]
    assert entries_of(out)[-1][2] == {"result": CANCELLED}
    assert compensations == ["refund"]


async def test_cancelled_sleep_raises_409_too() -> None:
    d = Driver(book, clock=clock)
    d.feed(start(target("Trip", "book", "t1", "VIRTUAL_OBJECT")), input_entry(b'"x"'))
    await d.settle()
    d.feed(completion(1, value(b'"reserved hotel"')))
    assert [n for _, n, _ in entries_of(await d.settle())] == ["SleepEntry"]
    d.feed(completion(2, CANCELLED))
    await d.settle()
    d.feed(ack(4))
    out = await d.finish()
    assert entries_of(out)[-1][2] == {"result": CANCELLED}


async def test_cancellation_over_request_response_replays_into_the_compensation() -> None:
    compensations.clear()
    tgt = target("Trip", "book", "t1", "VIRTUAL_OBJECT")
    first = Driver(book, clock=clock, request_response=True)
    first.feed(start(tgt), input_entry(b'"x"'))
    out = await first.finish()
    assert kinds(out) == ["1:CallEntry", "SuspensionMessage"]
    call = entries_of(out)[0][2]

    second = Driver(book, clock=clock, request_response=True)
    second.feed(start(tgt, 2), input_entry(b'"x"'), entry(1, "CallEntry", {**call, "result": CANCELLED}))
    out = await second.finish()
    assert kinds(out) == ["2:SetStateEntry", "3:RunEntry", "SuspensionMessage"]
    assert out[-1][1] == {"waiting_on": [3]}
    set_state, run = entries_of(out)[0][2], entries_of(out)[1][2]

    third = Driver(book, clock=clock, request_response=True)
    third.feed(
        start(tgt, 4), input_entry(b'"x"'), entry(1, "CallEntry", {**call, "result": CANCELLED}),
        entry(2, "SetStateEntry", set_state), entry(3, "RunEntry", run),
    )
    out = await third.finish()
    assert kinds(out) == ["4:SendEntry", "5:OutputEntry", "EndMessage"]
    assert entries_of(out)[-1][2] == {"result": CANCELLED}
    assert compensations == ["refund"]  # executed once, in the second attempt


async def test_cancel_invocation_journals_cancel_entries() -> None:
    other = "inv_someone_else"
    d = Driver(stop_other)
    d.feed(start(target("Trip", "stop_other", "t1", "VIRTUAL_OBJECT")), input_entry(f'"{other}"'.encode()))
    new = entries_of(await d.settle())
    assert [n for _, n, _ in new] == [
        "CallEntry", "CancelInvocationEntry", "CancelInvocationEntry", "SendEntry", "CancelInvocationEntry",
    ]
    call_id, send_id = new[0][2]["invocation_id"], new[3][2]["invocation_id"]
    assert [e["invocation_id"] for _, n, e in new if n == "CancelInvocationEntry"] == [call_id, other, send_id]
    d.feed(completion(1, CANCELLED))
    out = await d.finish()
    assert entries_of(out)[-1][2] == {"result": value(b'"call ended 409"')}


# ---- timers and combinators ---------------------------------------------------------------------


async def test_gathered_sleeps_are_concurrent_timers() -> None:
    d = Driver(naps, clock=clock, suspend_after=0)
    d.feed(start(target("Travel", "naps")), input_entry())
    out = await d.finish()
    assert [(i, e["wake_up_at_ms"]) for i, _, e in entries_of(out)] == [(1, 1_003_000), (2, 1_001_000), (3, 1_002_000)]
    assert out[-1] == (NS + "SuspensionMessage", {"waiting_on": [1, 2, 3]})

    resumed = Driver(naps, clock=lambda: NOW + 5)
    sleeps = [entry(i, "SleepEntry", e) for i, _, e in entries_of(out)]
    resumed.feed(start(target("Travel", "naps"), 4), input_entry(), *sleeps)
    await resumed.settle()
    resumed.feed(completion(2, value(b"")), completion(3, value(b"")))
    assert kinds(await resumed.settle()) == []  # still waiting for the longest one
    resumed.feed(completion(1, value(b"")))
    assert entries_of(await resumed.finish())[-1][2] == {"result": value(b'"rested"')}


async def test_awakeable_or_timeout_takes_the_awakeable() -> None:
    d = Driver(awakeable_or_timeout, clock=clock)
    d.feed(start(target("Travel", "awakeable_or_timeout")), input_entry())
    assert [n for _, n, _ in entries_of(await d.settle())] == ["AwakeableEntry", "SleepEntry"]
    d.feed(completion(1, value(b'"paid"')))
    await d.settle()
    d.feed(ack(3))
    out = await d.finish()
    assert entries_of(out)[-2][2] == {"name": "keystate:combinator", "result": value(b"[1]")}
    assert entries_of(out)[-1][2] == {"result": value(b'"got paid"')}


async def test_awakeable_or_timeout_times_out_and_a_rejection_raises() -> None:
    d = Driver(awakeable_or_timeout, clock=clock)
    d.feed(start(target("Travel", "awakeable_or_timeout")), input_entry())
    await d.settle()
    d.feed(completion(2, value(b"")))
    await d.settle()
    d.feed(ack(3))
    assert entries_of(await d.finish())[-1][2] == {"result": value(b'"timed out"')}

    r = Driver(awakeable_or_timeout, clock=clock)
    r.feed(start(target("Travel", "awakeable_or_timeout")), input_entry())
    await r.settle()
    r.feed(completion(1, failure(400, "declined")))
    await r.settle()
    r.feed(ack(3))
    assert entries_of(await r.finish())[-1][2] == {"result": failure(400, "declined")}


async def test_as_completed_and_wait_completed_follow_completion_order() -> None:
    d = Driver(first_two, clock=clock)
    d.feed(start(target("Travel", "first_two")), input_entry())
    assert [n for _, n, _ in entries_of(await d.settle())] == ["CallEntry", "SleepEntry", "AwakeableEntry"]
    d.feed(completion(3, value(b'"woke"')))
    await d.settle()
    d.feed(ack(4))
    await d.settle()
    d.feed(completion(2, value(b"")))
    await d.settle()
    d.feed(ack(5))
    await d.settle()
    d.feed(ack(6))
    out = await d.finish()
    decisions = [e["result"] for _, n, e in entries_of(out) if n == "RunEntry"]
    assert decisions == [value(b"[3]"), value(b"[2]"), value(b"[2,3]")]
    assert entries_of(out)[-1][2] == {"result": value(b"[[2,1],[1,2],[0]]")}


# ---- workflows and promises ---------------------------------------------------------------------


async def test_workflow_run_peeks_waits_for_the_decision_and_cannot_complete_it_twice() -> None:
    d = Driver(approve, clock=clock)
    d.feed(start(wf_target("approve", "WORKFLOW")), input_entry(b'"laptop"'))
    assert [n for _, n, _ in entries_of(await d.settle())] == ["PeekPromiseEntry"]
    d.feed(completion(1, value(b"")))  # empty Value: not resolved yet
    assert [n for _, n, _ in entries_of(await d.settle())] == ["GetPromiseEntry", "SleepEntry"]
    d.feed(completion(2, value(b'"yes"')))
    await d.settle()
    d.feed(ack(4))
    [(_, name, complete)] = entries_of(await d.settle())
    assert (name, complete["name"], complete["completion"]) == ("CompletePromiseEntry", "decision", value(b'"too late"'))
    d.feed(completion(5, failure(409, "promise decision is already completed")))
    out = await d.finish()
    assert entries_of(out)[-1][2] == {"result": value(b'"None / laptop: yes (409)"')}


async def test_workflow_run_suspends_on_its_promise_over_request_response() -> None:
    d = Driver(approve, clock=clock, request_response=True)
    d.feed(start(wf_target("approve", "WORKFLOW")), input_entry(b'"laptop"'))
    out = await d.finish()
    assert kinds(out) == ["1:PeekPromiseEntry", "SuspensionMessage"] and out[-1][1] == {"waiting_on": [1]}


async def test_shared_handler_resolves_rejects_and_reads_promises() -> None:
    d = Driver(decide)
    d.feed(start(wf_target("decide", "SHARED")), input_entry(b'"yes"'))
    [(_, name, e)] = entries_of(await d.settle())
    assert (name, e) == ("CompletePromiseEntry", {"name": "decision", "completion": value(b'"yes"'), "result": None})
    d.feed(completion(1, value(b"")))
    assert entries_of(await d.finish())[-1][2] == {"result": value(b'"noted"')}

    no = Driver(decide)
    no.feed(start(wf_target("decide", "SHARED")), input_entry(b'"no"'))
    [(_, _, e)] = entries_of(await no.settle())
    assert e["completion"] == failure(403, "rejected by the approver")
    no.feed(completion(1, failure(409, "already completed")))
    assert entries_of(await no.finish())[-1][2] == {"result": failure(409, "already completed")}

    rejected = Driver(status)
    rejected.feed(start(wf_target("status", "SHARED")), input_entry())
    await rejected.settle()
    rejected.feed(completion(1, failure(403, "rejected by the approver")))
    assert entries_of(await rejected.finish())[-1][2] == {"result": value(b'"failed 403: rejected by the approver"')}


async def test_workflow_call_and_send_target_the_run_handler_by_workflow_id() -> None:
    d = Driver(starts_workflow, suspend_after=0)
    d.feed(start(target("Travel", "starts_workflow")), input_entry())
    out = await d.finish()
    (_, _, send), (_, _, call) = entries_of(out)
    assert send["target"] == wf_target("approve", "WORKFLOW", "w7") and send["argument"] == b'"pay rise"'
    assert call["target"] == wf_target("approve", "WORKFLOW", "w8") and call["argument"] == b'"holiday"'
    assert InvocationId.parse(call["invocation_id"]).partition_key == InvocationTarget(
        "Approval", "approve", "w8", ServiceType.WORKFLOW
    ).service_id.partition_key  # type: ignore[union-attr]

    wrong = Driver(wrong_kind)
    wrong.feed(start(target("Travel", "wrong_kind")), input_entry())
    [(_, error)] = await wrong.finish()
    assert "belongs to a WORKFLOW: use ctx.workflow_call/workflow_send" in error["message"]


def test_workflow_declares_main_and_shared_handlers() -> None:
    assert {h.name: h.kind for h in wf.handlers.values()} == {
        "approve": HandlerKind.WORKFLOW, "decide": HandlerKind.SHARED, "status": HandlerKind.SHARED,
    }
    other = keystate.Workflow("Other")

    @other.main()
    async def run(ctx: WorkflowContext) -> None: ...

    async def run_again(ctx: WorkflowContext) -> None: ...

    with pytest.raises(ValueError, match="already has a main handler"):
        other.main()(run_again)
