"""The CLI's invocation filters: target prefixes, statuses and the SQL they make over sys_invocation."""

from __future__ import annotations

import pytest

from keystate.cli._admin import CliError
from keystate.cli._filters import (
    InvocationFilter,
    Target,
    count_sql,
    ids_sql,
    list_sql,
    parse_statuses,
    parse_target,
    where_sql,
)


@pytest.mark.parametrize(
    ("text", "target"),
    [
        ("Greeter", Target("Greeter")),
        ("Greeter/greet", Target("Greeter", "greet")),
        ("Counter/alice", Target("Counter", "alice")),
        ("Counter/alice/add", Target("Counter", "alice", "add")),
        ("Counter/a/b/add", Target("Counter", "a/b", "add")),
    ],
)
def test_target_prefixes(text: str, target: Target) -> None:
    assert parse_target(text) == target


@pytest.mark.parametrize("text", ["", "/greet", "Greeter/", "Counter//add"])
def test_an_empty_part_of_a_target_is_refused_with_the_forms_it_takes(text: str) -> None:
    with pytest.raises(CliError, match=r"is not a target: give a service \(Greeter\), service/handler"):
        parse_target(text)


def test_statuses_are_repeatable_comma_separated_any_case_and_aliased() -> None:
    assert parse_statuses(["Running,PAUSED", "backing_off", "paused", "failed"]) == (
        "running", "paused", "backing-off", "failed",
    )
    assert parse_statuses(None) == ()


def test_an_unknown_status_is_refused_with_the_known_ones() -> None:
    with pytest.raises(CliError, match=r"unknown status 'sleeping'; use one of pending, scheduled, ready, running"):
        parse_statuses(["sleeping"])


def test_no_filter_matches_everything() -> None:
    f = InvocationFilter()
    assert f.empty and where_sql(f) == ""
    assert count_sql(f) == "SELECT count(*) AS n FROM sys_invocation"


def test_a_two_part_target_is_a_handler_of_a_service_or_a_key_of_an_object() -> None:
    where = where_sql(InvocationFilter(target=parse_target("Counter/alice")))

    assert where == (
        " WHERE target_service_name = 'Counter' AND "
        "((target_service_ty = 'service' AND target_handler_name = 'alice') OR "
        "(target_service_ty <> 'service' AND target_service_key = 'alice'))"
    )


def test_filters_are_anded_and_statuses_ored() -> None:
    f = InvocationFilter(
        target=parse_target("Cart/c1/add"), statuses=("paused", "succeeded"), service="Cart", key="c1", deployment="dp_1"
    )

    assert where_sql(f) == (
        " WHERE target_service_name = 'Cart' AND target_service_key = 'c1' AND target_handler_name = 'add'"
        " AND target_service_name = 'Cart' AND target_service_key = 'c1' AND pinned_deployment_id = 'dp_1'"
        " AND (status = 'paused' OR (status = 'completed' AND completion_result = 'success'))"
    )


def test_quotes_in_user_values_cannot_end_the_literal() -> None:
    where = where_sql(InvocationFilter(key="o'; DROP TABLE x; --"))
    assert where == " WHERE target_service_key = 'o''; DROP TABLE x; --'"


def test_a_bulk_action_only_picks_invocations_it_can_act_on() -> None:
    f = InvocationFilter(service="Greeter")

    assert where_sql(f.for_action("purge")).endswith(" AND status IN ('completed')")
    assert where_sql(f.for_action("resume")).endswith(" AND status IN ('paused')")
    cancel = where_sql(f.for_action("cancel"))
    assert "'completed'" not in cancel and "'running'" in cancel and "'paused'" in cancel
    assert "'paused'" not in where_sql(f.for_action("pause"))


def test_list_is_newest_first_and_a_bulk_action_oldest_first_both_limited() -> None:
    f = InvocationFilter(service="S")
    assert list_sql(f, 5).endswith("FROM sys_invocation WHERE target_service_name = 'S' ORDER BY created_at DESC, id LIMIT 5")
    assert ids_sql(f, 7) == (
        "SELECT id, target, status FROM sys_invocation WHERE target_service_name = 'S' ORDER BY created_at, id LIMIT 7"
    )
