"""Handler input is checked against the declared type before the handler runs: a mismatch is a terminal 400."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Literal, Optional, TypedDict

import pytest

import keystate
from keystate import Context, ObjectContext
from keystate._conform import InputTypeError, conform

from sdk_helpers import NS, Driver, entries_of, input_entry, kinds, start, target

svc = keystate.Service("Typed")
obj = keystate.VirtualObject("TypedCounter")
ran: list[Any] = []


@dataclass
class Line:
    sku: str
    quantity: int = 1


@dataclass
class Order:
    lines: list[Line]
    note: str | None = None


class Point(TypedDict):
    x: float
    y: float


@obj.handler()
async def add(ctx: ObjectContext, delta: int) -> int:
    ran.append(delta)
    return delta + 1


@svc.handler()
async def total(ctx: Context, order: Order) -> int:
    ran.append(order)
    return sum(line.quantity for line in order.lines)


@svc.handler()
async def maybe(ctx: Context, value: Optional[int]) -> str:  # noqa: UP045 - typing.Union, not int | None
    ran.append(value)
    return repr(value)


@svc.handler()
async def untyped(ctx: Context, value) -> str:  # type: ignore[no-untyped-def]
    ran.append(value)
    return "ok"


@svc.handler()
async def broken(ctx: Context) -> None:
    raise ValueError("the database said no")


async def _run(fn: Any, service: str, handler: str, argument: bytes, key: str | None = None) -> list[tuple[str, dict]]:
    ran.clear()
    service_type = "SERVICE" if key is None else "VIRTUAL_OBJECT"
    d = Driver(fn)
    d.feed(start(target(service, handler, key, service_type)), input_entry(argument))
    return await d.finish()


def _failure(out: list[tuple[str, dict]]) -> dict[str, Any]:
    assert kinds(out) == ["1:OutputEntry", "EndMessage"], out
    [(_, _, output)] = entries_of(out)
    name, failure = output["result"]
    assert name == NS + "Failure", output
    return failure


@pytest.mark.parametrize(
    ("argument", "received"),
    [(b'"x"', "str 'x'"), (b"true", "bool True"), (b"1.5", "float 1.5"), (b"", "no value (null or an empty body)"), (b"null", "no value (null or an empty body)"), (b"[1]", "list [1]")],
)
async def test_input_of_the_wrong_type_is_a_terminal_400_before_the_handler_runs(argument: bytes, received: str) -> None:
    failure = _failure(await _run(add, "TypedCounter", "add", argument, key="k"))

    assert failure["code"] == 400
    assert "TypedCounter/add" in failure["message"]
    assert f"expected int, but received {received}" in failure["message"]
    assert ran == []


async def test_input_that_converts_is_passed_converted() -> None:
    out = await _run(add, "TypedCounter", "add", b"41.0", key="k")
    assert ran == [41] and type(ran[0]) is int
    [(_, _, output)] = entries_of(out)
    assert output["result"] == (NS + "Value", {"value": b"42"})


async def test_dataclass_fields_are_checked_and_nested_dataclasses_built() -> None:
    await _run(total, "Typed", "total", b'{"lines": [{"sku": "a", "quantity": 2}, {"sku": "b"}]}')
    assert ran == [Order([Line("a", 2), Line("b", 1)])]

    failure = _failure(await _run(total, "Typed", "total", b'{"lines": [{"sku": "a", "quantity": "two"}]}'))
    assert failure["code"] == 400 and "Typed/total" in failure["message"]
    assert "expected int at lines[0].quantity, but received str 'two'" in failure["message"]
    assert ran == []
    assert "unknown field 'colour'" in _failure(await _run(total, "Typed", "total", b'{"lines": [], "colour": 1}'))["message"]
    assert "with field 'lines', but it is missing" in _failure(await _run(total, "Typed", "total", b"{}"))["message"]


async def test_optional_input_accepts_an_empty_body_and_untyped_input_anything() -> None:
    await _run(maybe, "Typed", "maybe", b"")
    assert ran == [None]
    assert "expected int | None" in _failure(await _run(maybe, "Typed", "maybe", b'"x"'))["message"].replace("Optional[int]", "int | None")
    await _run(untyped, "Typed", "untyped", b'"anything"')
    assert ran == ["anything"]


@pytest.mark.parametrize(
    ("value", "hint", "expected"),
    [
        (1, float, 1.0),
        ([1, 2], tuple[int, ...], (1, 2)),
        ([1, "a"], tuple[int, str], (1, "a")),
        ({"1": "a"}, dict[int, str], {1: "a"}),
        ([1, 2, 2], set[int], {1, 2}),
        ("b", Literal["a", "b"], "b"),
        ({"x": 1, "y": 2.5}, Point, {"x": 1.0, "y": 2.5}),
        (1, int | str, 1),
        ("1", int | str, "1"),
        ([None, 3], list[Optional[int]], [None, 3]),  # noqa: UP045 - typing.Union is its own case
        ([None, 3], list[int | None], [None, 3]),
        ({"a": [1]}, dict[str, Any], {"a": [1]}),
    ],
)
def test_conform_converts_what_json_cannot_say(value: Any, hint: Any, expected: Any) -> None:
    assert conform(value, hint) == expected


@pytest.mark.parametrize(
    ("value", "hint", "fragment"),
    [
        ("x", Literal["a", "b"], "expected Literal['a', 'b']"),
        ([1, "a"], list[int], "expected int at [1], but received str 'a'"),
        ({"x": 1}, Point, "with field 'y', but it is missing"),
        ({"a": "b"}, dict[str, int], "expected int at ['a'], but received str 'b'"),
        ([1], tuple[int, int], "expected tuple[int, int], but received list [1]"),
        ("x" * 500, int, "..."),
    ],
)
def test_conform_says_what_was_expected_and_received(value: Any, hint: Any, fragment: str) -> None:
    with pytest.raises(InputTypeError) as caught:
        conform(value, hint)
    assert fragment in str(caught.value)
    assert len(str(caught.value)) < 200


async def test_a_failed_attempt_is_logged_as_a_warning_with_the_traceback(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="keystate.sdk"):
        out = await _run(broken, "Typed", "broken", b"")
    assert kinds(out) == ["ErrorMessage"]
    [record] = [r for r in caplog.records if "the database said no" in r.getMessage() or (r.exc_info and "the database said no" in str(r.exc_info[1]))]
    assert record.levelno == logging.WARNING
    assert record.exc_info is not None and isinstance(record.exc_info[1], ValueError)
    assert "Typed/broken" in record.getMessage()
