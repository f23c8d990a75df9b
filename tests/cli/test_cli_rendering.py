"""What the CLI's tables show: invocations, the journal timeline, state, services; rendered by rich to text."""

from __future__ import annotations

import base64
import json
import re

import pytest

from keystate.cli._admin import CliError, render_text, rows_table, short
from keystate.cli.invocations import invocation_summary, invocations_table, journal_timeline
from keystate.cli.services import config_table, parse_duration, services_table
from keystate.cli.state import apply_edits, document_of, state_of_document, state_table


def row(text: str, *cells: str) -> bool:
    """True if one line of `text` holds `cells` as consecutive table columns."""
    pattern = r"\s*[│┃]\s*".join(re.escape(c) for c in cells)
    return any(re.search(pattern, line) for line in text.splitlines())


INVOCATION = {
    "id": "inv_1abc",
    "target": "Cart/c1/checkout",
    "status": "paused",
    "completion_result": None,
    "attempt": 3,
    "retry_count": 2,
    "created_at": "2026-11-30T01:02:03.456Z",
    "modified_at": "2026-11-30T01:02:09.000Z",
    "pinned_deployment_id": "dp_9",
    "last_failure": "payment provider down",
    "last_failure_error_code": 500,
    "invoked_by": "service",
    "invoked_by_id": "inv_0parent",
    "idempotency_key": None,
}


def test_the_list_shows_status_outcome_failure_and_how_many_are_hidden() -> None:
    done = {**INVOCATION, "id": "inv_2", "status": "completed", "completion_result": "failure", "last_failure": None}

    text = render_text(invocations_table([INVOCATION, done], total=5)[0]) + render_text(invocations_table([INVOCATION, done], total=5)[1])

    assert row(text, "inv_1abc", "Cart/c1/checkout", "paused", "3", "2026-11-30T01:02:03.456Z")
    assert row(text, "dp_9", "[500] payment provider down")
    assert row(text, "inv_2", "Cart/c1/checkout", "completed (failure)")
    assert "2 invocations of 5 matching (raise --limit to see more)" in text


def test_the_summary_says_why_it_is_paused_and_who_called_it() -> None:
    lines = invocation_summary(INVOCATION)

    assert lines[0] == "inv_1abc  Cart/c1/checkout  paused"
    assert "  deployment: dp_9, attempt 3, retries 2" in lines
    assert "  invoked by: service inv_0parent" in lines
    assert "  paused: [500] payment provider down" in lines


def test_a_completed_failure_shows_its_message() -> None:
    lines = invocation_summary({**INVOCATION, "status": "completed", "completion_result": "failure",
                                "completion_failure": "[500] boom"})
    assert "  completed: failure: [500] boom" in lines
    assert not any(line.startswith("  paused") for line in lines)


def test_the_journal_timeline_is_in_index_order_with_calls_sleeps_and_values() -> None:
    entries = [
        {"id": "inv_1", "index": 2, "entry_type": "Call", "name": None, "completed": False,
         "invoked_target": "Payments/charge", "invoked_id": "inv_7", "entry_json": "{}"},
        {"id": "inv_1", "index": 0, "entry_type": "Input", "name": None, "completed": True,
         "entry_json": json.dumps({"value": {"item": "apple"}})},
        {"id": "inv_1", "index": 1, "entry_type": "Run", "name": "reserve", "completed": True,
         "entry_json": json.dumps({"name": "reserve", "value": "ok"})},
        {"id": "inv_1", "index": 3, "entry_type": "Sleep", "name": None, "completed": False,
         "sleep_wakeup_at": "2026-11-30T02:00:00.000Z", "entry_json": "{}"},
    ]

    text = render_text(journal_timeline(entries))

    assert "journal (4 entries)" in text
    assert row(text, "0", "Input", "", "✓", '{"value": {"item": "apple"}}')
    assert row(text, "1", "Run", "reserve", "✓", '{"value": "ok"}')
    assert row(text, "2", "Call", "", "…", "→ Payments/charge (inv_7)")
    assert row(text, "3", "Sleep", "", "…", "until 2026-11-30T02:00:00.000Z")
    order = [text.index(f"│ {kind}") for kind in ("Input", "Run", "Call", "Sleep")]
    assert order == sorted(order)


def test_a_sql_result_is_a_table_of_its_columns_in_order() -> None:
    text = render_text(rows_table([{"b": 1, "a": None, "c": True}, {"b": 2, "a": "x", "c": False}]))

    assert row(text, "b", "a", "c") and row(text, "1", "", "true") and row(text, "2", "x", "false")
    assert short("a  b\nc" * 40, 10) == "a b ca b …"


def test_state_shows_utf8_values_as_text_and_others_as_base64() -> None:
    text = render_text(state_table({"name": b'"bob"', "blob": b"\xff\x00"}))

    assert row(text, "name", '"bob"') and row(text, "blob", "(base64) /wA=")


def test_the_state_document_round_trips_and_keeps_unchanged_bytes() -> None:
    before = {"count": b"3", "spaced": b'{ "a" : 1 }', "blob": b"\xff\x00"}
    doc = document_of(before)
    assert doc == {"blob": {"$base64": "/wA="}, "count": 3, "spaced": {"a": 1}}

    doc["count"] = 4
    doc["new"] = ["x"]
    after = state_of_document(doc, before)

    assert after == {"count": b"4", "spaced": b'{ "a" : 1 }', "blob": b"\xff\x00", "new": b'["x"]'}
    assert state_of_document({}, before) == {}
    with pytest.raises(CliError, match="must be a JSON object"):
        state_of_document([1], before)


def test_set_takes_json_or_a_string_and_remove_drops_a_key() -> None:
    state = apply_edits({"a": b"1", "b": b"2"}, ["a=10", "name=bob", 'q="x"', "obj={\"k\": 1}"], ["b", "missing"])

    assert state == {"a": b"10", "name": b'"bob"', "q": b'"x"', "obj": b'{"k": 1}'}
    with pytest.raises(CliError, match="must look like key=value"):
        apply_edits({}, ["novalue"], [])
    assert base64.b64encode(state["a"]) == b"MTA="


@pytest.mark.parametrize(("text", "ms"), [("1d", 86_400_000), ("2h30m", 9_000_000), ("10s", 10_000), ("500ms", 500), ("1 h", 3_600_000)])
def test_durations_in_restates_form(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["", "10", "1y", "ten minutes", "5m garbage"])
def test_a_duration_that_is_not_one_is_refused_with_examples(text: str) -> None:
    with pytest.raises(CliError, match="is not a duration: write it like 1d, 2h30m"):
        parse_duration(text)


def test_services_and_their_settings() -> None:
    service = {
        "name": "Cart", "ty": "VirtualObject", "deployment_id": "dp_1", "ingress_private": False,
        "handlers": [{"name": "add", "ty": "Exclusive"}, {"name": "get", "ty": "Shared"}],
        "journal_retention_ms": 86_400_000, "inactivity_timeout_ms": 90_000, "abort_timeout_ms": None,
        "retry_policy": None,
    }

    listing = render_text(services_table([service]))
    config = render_text(config_table(service))

    assert row(listing, "Cart", "VirtualObject", "yes", "add, get", "dp_1")
    assert row(config, "journal retention", "1d") and row(config, "inactivity timeout", "1m30s")
    assert row(config, "abort timeout", "default") and row(config, "public", "yes")


def test_config_patch_sends_restates_fields_and_checks_durations_first() -> None:
    from keystate.cli.services import _parser, patch_body

    args = _parser().parse_args(
        ["config", "patch", "Cart", "--journal-retention", "1d", "--inactivity-timeout", "90s", "--public", "false"]
    )
    assert patch_body(args) == {"journal_retention": "1d", "inactivity_timeout": "90s", "public": False}
    with pytest.raises(CliError, match="is not a duration"):
        patch_body(_parser().parse_args(["config", "patch", "Cart", "--abort-timeout", "soon"]))
    with pytest.raises(CliError, match="nothing to change: give one of --public"):
        patch_body(_parser().parse_args(["config", "patch", "Cart"]))


def test_a_bulk_action_without_an_id_a_target_or_a_filter_asks_for_one(capsys: pytest.CaptureFixture[str]) -> None:
    from keystate.cli import main

    code = main(["invocations", "--admin", "http://127.0.0.1:1", "kill"])

    assert code == 1
    assert "name what to kill: an invocation id (inv_...), a target (svc, svc/handler, obj/key)" in capsys.readouterr().err


def test_every_group_is_wired_into_the_keystate_command(capsys: pytest.CaptureFixture[str]) -> None:
    from keystate.cli import main

    for group in ("invocations", "services", "state", "sql", "deployments"):
        with pytest.raises(SystemExit) as exited:
            main([group, "--help"])
        assert exited.value.code == 0
        assert f"usage: keystate {group}" in capsys.readouterr().out


def test_an_unreachable_admin_names_its_url(capsys: pytest.CaptureFixture[str]) -> None:
    from keystate.cli import main

    code = main(["sql", "--admin", "http://127.0.0.1:1", "SELECT 1"])

    assert code == 1
    err = capsys.readouterr().err
    assert "keystate sql: cannot reach the admin API at http://127.0.0.1:1" in err and "--admin" in err


def test_watch_refreshes_until_ctrl_c_and_then_exits_cleanly() -> None:
    import io

    from rich.console import Console

    from keystate.cli._admin import watch

    calls: list[int] = []

    def render() -> list[str]:
        calls.append(len(calls))
        if len(calls) == 3:
            raise KeyboardInterrupt
        return [f"refresh {len(calls)}"]

    out = Console(file=io.StringIO(), width=80)

    assert watch(render, 0.0, out) == 0
    assert calls == [0, 1, 2]
    assert "refresh" in out.file.getvalue()  # type: ignore[attr-defined]


async def test_a_foreign_servers_error_page_is_not_echoed(capsys: pytest.CaptureFixture[str]) -> None:
    import asyncio

    from aiohttp import web
    from aiohttp.test_utils import TestServer

    from keystate.cli import main

    async def page(request: web.Request) -> web.Response:
        return web.Response(status=500, text="<html>internal secret-ish page</html>")

    app = web.Application()
    app.router.add_get("/services", page)
    async with TestServer(app, host="127.0.0.1") as server:
        code = await asyncio.to_thread(main, ["services", "--admin", str(server.make_url("")), "list"])

    assert code == 1
    err = capsys.readouterr().err
    assert "answered 500: Internal Server Error (not the admin API's JSON error; is --admin the admin port" in err
    assert "secret-ish" not in err
