"""The request/response transport over aiohttp's test server, the test acting as the processor."""

from __future__ import annotations

import sys
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

import keystate
from keystate import Context, ObjectContext, RetryableError, TerminalError
from keystate.schemas._codec import codec

from sdk_helpers import (
    NS, BatchProcessor, ack, completion, entries_of, entry, failure, input_entry, kinds, start, target, value,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples"))
import signup  # noqa: E402

BATCH_TYPE = "application/vnd.keystate.batch+avro"
shop = keystate.Service("Shop")
stock = keystate.VirtualObject("Stock")
executed: list[str] = []


@shop.handler()
async def hello(ctx: Context, name: str) -> str:
    return f"Hello {name}!"


@shop.handler()
async def checkout(ctx: Context, item: str) -> str:
    def reserve() -> str:
        executed.append("reserve")
        return f"r-{item}"

    def pay() -> int:
        executed.append("pay")
        return 42

    reservation = await ctx.run("reserve", reserve)
    payment = await ctx.run("pay", pay)
    greeting = await ctx.service_call(hello, item)
    return f"{reservation}/{payment}/{greeting}"


@shop.handler()
async def parallel(ctx: Context) -> list:
    a, b = ctx.run("a", lambda: 1), ctx.run("b", lambda: 2)
    await keystate.gather(a, b)
    return [await a, await b]


@shop.handler()
async def crash(ctx: Context) -> None:
    raise ValueError("broken")


@shop.handler()
async def throttled(ctx: Context) -> None:
    raise RetryableError("rate limited", retry_after=timedelta(seconds=3))


@shop.handler()
async def refuse(ctx: Context) -> None:
    raise TerminalError("no", 403)


@stock.handler()
async def take(ctx: ObjectContext, n: int) -> int:
    left = (await ctx.get("left", type_hint=int) or 0) - n
    ctx.set("left", left)
    return left


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    # A long suspend_after: request/response must not wait for it.
    application = keystate.app([shop, stock, signup.user_signup], suspend_after=timedelta(seconds=30))
    async with TestClient(TestServer(application)) as c:
        yield c


def batch(*messages: tuple[str, dict[str, Any]]) -> bytes:
    return codec().encode(NS + "MessageBatch", {"messages": [codec().encode(n, r) for n, r in messages]})


async def post(client: TestClient, path: str, body: bytes, content_type: str = BATCH_TYPE) -> aiohttp.ClientResponse:
    return await client.post(path, data=body, headers={"content-type": content_type})


async def test_a_handler_that_returns_answers_its_output_and_end(client: TestClient) -> None:
    p = BatchProcessor(client, target("Shop", "hello"), b'"ann"')
    out = await p.invoke()
    assert kinds(out) == ["1:OutputEntry", "EndMessage"]
    assert entries_of(out)[0][2] == {"result": value(b'"Hello ann!"')}


async def test_each_new_run_ends_the_attempt_suspended_on_it_and_is_never_executed_twice(client: TestClient) -> None:
    executed.clear()
    p = BatchProcessor(client, target("Shop", "checkout"), b'"tea"')

    out = await p.invoke()
    assert kinds(out) == ["1:RunEntry", "SuspensionMessage"]
    assert out[-1][1] == {"waiting_on": [1]}
    assert entries_of(out)[0][2] == {"name": "reserve", "result": value(b'"r-tea"')}

    out = await p.invoke()
    assert kinds(out) == ["2:RunEntry", "SuspensionMessage"] and out[-1][1] == {"waiting_on": [2]}

    began = time.monotonic()
    out = await p.invoke()
    assert kinds(out) == ["3:CallEntry", "SuspensionMessage"] and out[-1][1] == {"waiting_on": [3]}
    assert time.monotonic() - began < 5  # suspended at once, not after suspend_after (30 s)

    p.complete(3, value(b'"Hello tea!"'))  # as a CompletionMessage next to the journal
    out = await p.invoke()
    assert kinds(out) == ["4:OutputEntry", "EndMessage"]
    assert entries_of(out)[0][2] == {"result": value(b'"r-tea/42/Hello tea!"')}
    assert executed == ["reserve", "pay"]
    assert p.attempts == 4


async def test_concurrent_runs_are_journaled_in_one_attempt(client: TestClient) -> None:
    p = BatchProcessor(client, target("Shop", "parallel"))
    out = await p.invoke()
    assert kinds(out) == ["1:RunEntry", "2:RunEntry", "SuspensionMessage"]
    assert out[-1][1] == {"waiting_on": [1, 2]}
    out = await p.invoke()
    assert kinds(out) == ["3:OutputEntry", "EndMessage"] and entries_of(out)[0][2] == {"result": value(b"[1,2]")}


async def test_object_state_comes_with_the_start_message(client: TestClient) -> None:
    p = BatchProcessor(client, target("Stock", "take", "tea", "VIRTUAL_OBJECT"), b"2", state={"left": b"10"})
    out = await p.invoke()
    assert [(n, e) for _, n, e in entries_of(out)] == [
        ("GetStateEntry", {"key": "left", "value": b"10"}),
        ("SetStateEntry", {"key": "left", "value": b"8"}),
        ("OutputEntry", {"result": value(b"8")}),
    ]


async def test_failures_are_answered_200_with_an_error_message_or_a_failure_output(client: TestClient) -> None:
    [(name, error)] = await BatchProcessor(client, target("Shop", "crash")).invoke()
    assert name == NS + "ErrorMessage"
    assert (error["code"], error["retryable"], error["message"]) == (500, True, "ValueError('broken')")

    [(name, error)] = await BatchProcessor(client, target("Shop", "throttled")).invoke()
    assert name == NS + "ErrorMessage"
    assert (error["retryable"], error["retry_after_ms"], error["message"]) == (True, 3000, "rate limited")

    out = await BatchProcessor(client, target("Shop", "refuse")).invoke()
    assert entries_of(out) == [(1, "OutputEntry", {"result": failure(403, "no")})]


async def test_the_user_signup_example_end_to_end(
    client: TestClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = tmp_path / "outbox.txt"
    monkeypatch.setenv("KEYSTATE_SIGNUP_OUTBOX", str(outbox))
    run = BatchProcessor(
        client, target("UserSignup", "run", "u1", "WORKFLOW", "WORKFLOW"), b'{"name":"Ann","email":"ann@x.org"}'
    )
    assert kinds(await run.invoke()) == ["1:RunEntry", "SuspensionMessage"]  # create
    assert kinds(await run.invoke()) == ["2:RunEntry", "SuspensionMessage"]  # mail
    out = await run.invoke()
    assert kinds(out) == ["3:GetPromiseEntry", "SuspensionMessage"]
    assert entries_of(out)[0][2] == {"name": "email-link-clicked", "result": None}
    [secret] = outbox.read_text().split()
    assert run.attempts == 3 and len(secret) == 36  # mailed once, though the handler ran three times

    wrong = BatchProcessor(client, target("UserSignup", "click", "u1", "WORKFLOW", "SHARED"), b'"guess"')
    out = await wrong.invoke()
    assert entries_of(out) == [(1, "CompletePromiseEntry", {
        "name": "email-link-clicked", "completion": value(b'"guess"'), "result": None,
    })]
    wrong.complete(1, value(b""))  # the processor completed the promise with it
    assert kinds(await wrong.invoke()) == ["2:OutputEntry", "EndMessage"]

    late = BatchProcessor(client, target("UserSignup", "click", "u1", "WORKFLOW", "SHARED"), f'"{secret}"'.encode())
    await late.invoke()
    late.complete(1, failure(409, "promise email-link-clicked is already completed"))
    out = await late.invoke()
    assert entries_of(out)[-1][2] == {"result": failure(409, "promise email-link-clicked is already completed")}

    run.complete(3, value(b'"guess"'), in_journal=True)
    out = await run.invoke()
    assert entries_of(out) == [(4, "OutputEntry", {"result": value(b"false")})]

    # A second workflow id, clicked with the right secret, returns true.
    right = BatchProcessor(
        client, target("UserSignup", "run", "u2", "WORKFLOW", "WORKFLOW"), b'{"name":"Bo","email":"bo@x.org"}',
        random_seed=8,
    )
    for _ in range(3):
        await right.invoke()
    secret2 = outbox.read_text().split()[-1]
    assert secret2 != secret  # another invocation, another seed, another secret
    right.complete(3, value(f'"{secret2}"'.encode()), in_journal=True)
    assert entries_of(await right.invoke())[-1][2] == {"result": value(b"true")}


@pytest.mark.parametrize(
    ("body", "content_type", "status", "says"),
    [
        (b"\x07 not avro at all", BATCH_TYPE, 400, "is not a codec-encoded keystate.MessageBatch"),
        (codec().encode(NS + "EndMessage", {}), BATCH_TYPE, 400, "is a keystate.EndMessage, expected a keystate.MessageBatch"),
        (batch(), BATCH_TYPE, 400, "starts with nothing"),
        (batch(input_entry()), BATCH_TYPE, 400, "starts with keystate.EntryMessage"),
        (batch(start(target("Shop", "hello")), input_entry(b'"x"'), ack(0)), BATCH_TYPE, 400, "acks have no place"),
        (batch(start(target("Shop", "crash")), input_entry()), BATCH_TYPE, 400, "is for Shop/crash but was posted to /invoke/Shop/hello"),
        (batch(start(target("Shop", "hello"), 2), input_entry(b'"x"')), BATCH_TYPE, 400, "holds 1 of the 2 journal entries"),
        (batch(start(target("Shop", "hello")), input_entry(b'"x"'), completion(4, value(b""))), BATCH_TYPE, 400,
         "completion for entry 4"),
        (batch(start(target("Shop", "hello")), entry(0, "RunEntry", {"name": "x", "result": value(b"")})), BATCH_TYPE,
         400, "entry 0 must be an InputEntry"),
        (batch(start(target("Shop", "hello")), input_entry(b'"x"')), "application/json", 415, BATCH_TYPE),
    ],
)
async def test_bad_requests_get_a_clear_answer_and_the_app_keeps_serving(
    client: TestClient, body: bytes, content_type: str, status: int, says: str
) -> None:
    response = await post(client, "/invoke/Shop/hello", body, content_type)
    assert response.status == status
    assert says in await response.text()
    assert kinds(await BatchProcessor(client, target("Shop", "hello"), b'"ok"').invoke())[-1] == "EndMessage"


async def test_unknown_handler_is_404(client: TestClient) -> None:
    response = await post(client, "/invoke/Shop/nope", batch(start(target("Shop", "nope")), input_entry()))
    assert response.status == 404
    assert "unknown handler Shop/nope" in await response.text()


async def test_a_deployment_may_offer_request_response_only() -> None:
    application = keystate.app([shop], transports=["request-response"])
    async with TestClient(TestServer(application)) as c:
        assert (await (await c.get("/discover")).json())["transports"] == ["request-response"]
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await c.ws_connect("/invoke/Shop/hello")
        assert refused.value.status == 404
        response = await c.get("/invoke/Shop/hello")
        assert response.status == 404 and "does not offer the websocket transport" in await response.text()
        out = await BatchProcessor(c, target("Shop", "hello"), b'"rr"').invoke()
        assert entries_of(out)[0][2] == {"result": value(b'"Hello rr!"')}


async def test_a_deployment_may_offer_websocket_only() -> None:
    application = keystate.app([shop], transports=["websocket"])
    async with TestClient(TestServer(application)) as c:
        assert (await (await c.get("/discover")).json())["transports"] == ["websocket"]
        response = await post(c, "/invoke/Shop/hello", batch(start(target("Shop", "hello")), input_entry(b'"x"')))
        assert response.status == 404 and "does not offer the request-response transport" in await response.text()


@pytest.mark.parametrize(
    ("transports", "error"),
    [([], ValueError), (["carrier-pigeon"], ValueError), ("websocket", TypeError)],
)
def test_transports_are_validated(transports: Any, error: type[Exception]) -> None:
    with pytest.raises(error):
        keystate.app([shop], transports=transports)


async def test_default_app_offers_both_transports(client: TestClient) -> None:
    manifest = await (await client.get("/discover")).json()
    assert manifest["transports"] == ["websocket", "request-response"]


# ---- one story, both transports: the journal and output must not depend on the transport ----------


async def run_over_websocket(client: TestClient, tgt: dict[str, Any], argument: bytes,
                             answer: dict[str, tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    """A streaming processor: acks every entry, completes calls from `answer` (by callee handler)."""
    ws = await client.ws_connect(f"/invoke/{tgt['service']}/{tgt['handler']}")
    for name, record in (start(tgt), input_entry(argument)):
        await ws.send_bytes(codec().encode(name, record))
    journal: list[tuple[str, dict[str, Any]]] = []
    while True:
        msg = await ws.receive(timeout=3)
        if msg.type is not aiohttp.WSMsgType.BINARY:
            return journal
        name, record = codec().decode(msg.data)
        if name != NS + "EntryMessage":
            continue
        ename, erecord = record["entry"]["entry"]
        journal.append((ename, erecord))
        await ws.send_bytes(codec().encode(*ack(record["index"])))
        if ename == NS + "CallEntry":
            await ws.send_bytes(codec().encode(*completion(record["index"], answer[erecord["target"]["handler"]])))


async def run_over_post(client: TestClient, tgt: dict[str, Any], argument: bytes,
                        answer: dict[str, tuple[str, dict[str, Any]]]) -> list[tuple[str, dict[str, Any]]]:
    p = BatchProcessor(client, tgt, argument)
    for _ in range(10):
        out = await p.invoke()
        if out[-1][0] == NS + "EndMessage":
            break
        for index in out[-1][1].get("waiting_on", []):
            name, record = p.journal[index]
            if name == NS + "CallEntry":
                p.complete(index, answer[record["target"]["handler"]], in_journal=True)
    return [(n, {k: v for k, v in r.items() if k != "result"} if n == NS + "CallEntry" else r)
            for n, r in p.journal[1:]]


async def test_both_transports_journal_the_same_story(client: TestClient) -> None:
    executed.clear()
    answer = {"hello": value(b'"Hi!"')}
    streamed = await run_over_websocket(client, target("Shop", "checkout"), b'"pen"', answer)
    posted = await run_over_post(client, target("Shop", "checkout"), b'"pen"', answer)
    strip = [(n, {k: v for k, v in r.items() if k != "result"} if n == NS + "CallEntry" else r) for n, r in streamed]
    assert strip == posted
    assert [n.removeprefix(NS) for n, _ in posted] == ["RunEntry", "RunEntry", "CallEntry", "OutputEntry"]
    assert posted[-1][1] == {"result": value(b'"r-pen/42/Hi!"')}
    assert executed == ["reserve", "pay", "reserve", "pay"]  # once per story

