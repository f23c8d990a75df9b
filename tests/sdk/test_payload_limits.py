"""The SDK refuses values over the payload limit with a TerminalError that names the value, its size and the limit."""

from __future__ import annotations

from typing import Any

import pytest

import keystate
from keystate import Context, ObjectContext, TerminalError, WorkflowSharedContext
from keystate.schemas._codec import codec
from keystate.schemas.limits import DEFAULT_MAX_PAYLOAD_BYTES, ENV_VAR, MAX_TEXT_BYTES

from sdk_helpers import (
    NS,
    Driver,
    ack,
    entries_of,
    entry,
    input_entry,
    kinds,
    start,
    target,
    value,
)

LIMIT = 4096
BIG = "x" * LIMIT  # JSON adds two quotes: LIMIT + 2 bytes

svc = keystate.Service("Payloads")
obj = keystate.VirtualObject("Blob")
wf = keystate.Workflow("Flow")


@svc.handler()
async def echo(ctx: Context, text: str) -> str:
    return text


@svc.handler()
async def big_run(ctx: Context, size: int) -> str:
    try:
        data = await ctx.run("big", lambda: "r" * size)
    except TerminalError as exc:
        return f"caught {exc.status_code}: {exc.message}"
    return f"got {len(data)}"


@svc.handler()
async def big_output(ctx: Context, size: int) -> str:
    return "o" * size


@svc.handler()
async def big_call(ctx: Context, text: str) -> str:
    try:
        return await ctx.service_call(echo, text)
    except TerminalError as exc:
        return f"caught: {exc.message}"


@svc.handler()
async def big_send_headers(ctx: Context, size: int) -> str:
    try:
        ctx.service_send(echo, "hi", headers={"x-big": "h" * size})
    except TerminalError as exc:
        return f"caught: {exc.message}"
    return "sent"


@svc.handler()
async def big_awakeable(ctx: Context, text: str) -> str:
    try:
        ctx.resolve_awakeable("awk_x_1", text)
    except TerminalError as exc:
        return f"caught: {exc.message}"
    return "resolved"


@svc.handler()
async def long_failure(ctx: Context, size: int) -> str:
    raise TerminalError("f" * size, 422)


@svc.handler()
async def long_crash(ctx: Context, size: int) -> str:
    raise ValueError("c" * size)


@obj.handler()
async def store(ctx: ObjectContext, text: str) -> str:
    ctx.set("blob", text)
    return "stored"


@obj.handler()
async def store_caught(ctx: ObjectContext, text: str) -> str:
    try:
        ctx.set("blob", text)
    except TerminalError as exc:
        return f"caught {exc.status_code}: {exc.message}"
    return "stored"


@wf.handler()
async def signal(ctx: WorkflowSharedContext, text: str) -> str:
    try:
        await ctx.promise("p").resolve(text)
    except TerminalError as exc:
        return f"caught: {exc.message}"
    return "resolved"


def _start(tgt: dict[str, Any], limit: int | None = LIMIT, known_entries: int = 1) -> tuple[str, dict[str, Any]]:
    name, record = start(tgt, known_entries)
    return name, {**record, "max_payload_bytes": limit}


def _json(text: str) -> bytes:
    return f'"{text}"'.encode()


async def _run(fn: Any, tgt: dict[str, Any], argument: bytes, limit: int | None = LIMIT) -> Driver:
    driver = Driver(fn)
    driver.feed(_start(tgt, limit), input_entry(argument))
    await driver.settle()
    return driver


def _output(driver: Driver) -> Any:
    [(_, _name, record)] = [e for e in entries_of(driver.output) if e[1] == "OutputEntry"]
    return record["result"]


def _says_too_big(message: str, what: str, size: int, limit: int = LIMIT) -> None:
    assert what in message
    assert f"is {size} bytes" in message
    assert f"limit of {limit} bytes" in message
    assert ENV_VAR in message


async def test_a_state_value_over_the_limit_is_refused_with_a_terminal_error() -> None:
    driver = await _run(store_caught, target("Blob", "store_caught", "k", "VIRTUAL_OBJECT"), _json(BIG))
    await driver.finish()

    assert kinds(driver.output) == ["1:OutputEntry", "EndMessage"]  # no SetStateEntry was journaled
    name, result = _output(driver)
    assert name == NS + "Value"
    message = result["value"].decode()
    assert message.startswith('"caught 500: ')
    _says_too_big(message, "the value of state key 'blob'", len("blob") + LIMIT + 2)


async def test_an_uncaught_refusal_fails_the_invocation() -> None:
    driver = await _run(store, target("Blob", "store", "k", "VIRTUAL_OBJECT"), _json(BIG))
    await driver.finish()

    name, result = _output(driver)
    assert name == NS + "Failure" and result["code"] == 500
    _says_too_big(result["message"], "the value of state key 'blob'", len("blob") + LIMIT + 2)


async def test_a_state_value_at_the_limit_is_journaled() -> None:
    text = "x" * (LIMIT - 2 - len("blob"))
    driver = await _run(store, target("Blob", "store", "k", "VIRTUAL_OBJECT"), _json(text))
    await driver.finish()

    assert kinds(driver.output) == ["1:SetStateEntry", "2:OutputEntry", "EndMessage"]


async def test_a_run_result_over_the_limit_is_journaled_as_a_terminal_failure() -> None:
    driver = await _run(big_run, target("Payloads", "big_run"), str(LIMIT).encode())
    [(index, name, record)] = entries_of(driver.output)
    assert name == "RunEntry"
    result_name, failure = record["result"]
    assert result_name == NS + "Failure" and failure["code"] == 500
    _says_too_big(failure["message"], "the result of ctx.run 'big'", LIMIT + 2)

    driver.feed(ack(index))
    await driver.finish()
    name, result = _output(driver)
    assert result["value"].decode().startswith('"caught 500: the result of ctx.run')


async def test_a_run_result_within_the_limit_is_journaled_as_a_value() -> None:
    driver = await _run(big_run, target("Payloads", "big_run"), str(LIMIT - 2).encode())
    [(_index, _name, record)] = entries_of(driver.output)
    assert record["result"] == value(_json("r" * (LIMIT - 2)))


async def test_an_output_over_the_limit_fails_the_invocation() -> None:
    driver = await _run(big_output, target("Payloads", "big_output"), str(LIMIT).encode())
    await driver.finish()

    name, result = _output(driver)
    assert name == NS + "Failure" and result["code"] == 500
    _says_too_big(result["message"], "the output of Payloads/big_output", LIMIT + 2)


async def test_a_call_argument_over_the_limit_is_refused_before_the_call_is_journaled() -> None:
    driver = await _run(big_call, target("Payloads", "big_call"), _json(BIG))
    await driver.finish()

    assert kinds(driver.output) == ["1:OutputEntry", "EndMessage"]
    _says_too_big(_output(driver)[1]["value"].decode(), "the argument of the call to Payloads/echo", LIMIT + 2)


async def test_headers_count_towards_a_send_argument() -> None:
    size = LIMIT - 5
    driver = await _run(big_send_headers, target("Payloads", "big_send_headers"), str(size).encode())
    await driver.finish()

    total = len(b'"hi"') + len("x-big") + size
    _says_too_big(_output(driver)[1]["value"].decode(), "the argument of the send to Payloads/echo (with its headers)", total)


async def test_an_awakeable_value_over_the_limit_is_refused() -> None:
    driver = await _run(big_awakeable, target("Payloads", "big_awakeable"), _json(BIG))
    await driver.finish()

    _says_too_big(_output(driver)[1]["value"].decode(), "the value resolving awakeable awk_x_1", LIMIT + 2)


async def test_a_promise_value_over_the_limit_is_refused() -> None:
    driver = await _run(signal, target("Flow", "signal", "w", "WORKFLOW", "SHARED"), _json(BIG))
    await driver.finish()

    _says_too_big(_output(driver)[1]["value"].decode(), "the value resolving promise 'p'", LIMIT + 2)


async def test_the_sdk_default_applies_when_the_processor_sends_no_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, "2048")
    driver = await _run(big_output, target("Payloads", "big_output"), b"3000", limit=None)
    await driver.finish()
    _says_too_big(_output(driver)[1]["message"], "the output", 3002, limit=2048)

    monkeypatch.delenv(ENV_VAR)
    driver = await _run(big_output, target("Payloads", "big_output"), b"3000", limit=None)
    await driver.finish()
    assert driver.machine.start is not None and driver.machine.start.max_payload_bytes == DEFAULT_MAX_PAYLOAD_BYTES
    assert _output(driver) == value(_json("o" * 3000))


async def test_a_journaled_entry_replays_even_if_the_limit_is_lower_now() -> None:
    # Journaled under a higher limit: replay must not diverge from what happened.
    tgt = target("Blob", "store", "k", "VIRTUAL_OBJECT")
    driver = Driver(store)
    driver.feed(
        _start(tgt, LIMIT, known_entries=2),
        input_entry(_json(BIG)),
        entry(1, "SetStateEntry", {"key": "blob", "value": _json(BIG)}),
    )
    await driver.finish()

    assert _output(driver) == value(_json("stored"))


async def test_long_failure_messages_and_stack_traces_are_cut() -> None:
    driver = await _run(long_failure, target("Payloads", "long_failure"), str(10 * MAX_TEXT_BYTES).encode())
    await driver.finish()
    _name, result = _output(driver)
    assert result["code"] == 422
    assert len(result["message"].encode()) <= MAX_TEXT_BYTES and "truncated" in result["message"]

    driver = await _run(long_crash, target("Payloads", "long_crash"), str(10 * MAX_TEXT_BYTES).encode())
    await driver.finish()
    [(_, error)] = [(n, r) for n, r in driver.output if n == NS + "ErrorMessage"]
    assert len(error["message"].encode()) <= MAX_TEXT_BYTES
    assert len(error["stacktrace"].encode()) <= MAX_TEXT_BYTES


def test_the_start_message_carries_the_limit_and_defaults_to_null() -> None:
    name, record = start(target("Payloads", "echo"))
    assert codec().decode(codec().encode(name, record))[1]["max_payload_bytes"] is None
    name, record = _start(target("Payloads", "echo"))
    assert codec().decode(codec().encode(name, record))[1]["max_payload_bytes"] == LIMIT
