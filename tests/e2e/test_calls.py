"""Calls and sends through the ingress, against processes on the real broker."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from harness import Stack, http

pytestmark = pytest.mark.integration


def test_service_call_and_send(running: Stack) -> None:
    resp = http("POST", f"{running.url}/Greeter/greet", "bob")
    assert resp.status == 200, resp.body
    assert resp.json() == "Hello bob!"
    assert resp.headers["x-restate-id"].startswith("inv_")

    sent = http("POST", f"{running.url}/Greeter/greet/send", "ann")
    assert sent.status == 202
    body = sent.json()
    assert body["status"] == "Accepted"
    assert body["invocationId"] == sent.headers["x-restate-id"]


def test_object_state_and_shared_reads(running: Stack) -> None:
    assert http("POST", f"{running.url}/Counter/c1/add", 5).json() == 0
    assert http("POST", f"{running.url}/Counter/c1/add", 2).json() == 5
    assert http("POST", f"{running.url}/Counter/c1/get").json() == 7
    assert http("POST", f"{running.url}/Counter/other/get").json() == 0


def test_calls_between_services(running: Stack) -> None:
    resp = http("POST", f"{running.url}/Caller/greet_and_count", "zoe")
    assert resp.status == 200, running.logs()
    body = resp.json()
    assert body["greeting"] == "Hello zoe!"
    assert body["before"] == 0
    assert body["sent"].startswith("inv_")
    # The one-way send of 10 lands after the call's 1.
    for _ in range(100):
        if http("POST", f"{running.url}/Counter/zoe/get").json() == 11:
            break
    assert http("POST", f"{running.url}/Counter/zoe/get").json() == 11


def test_twenty_concurrent_exclusive_increments_see_each_old_value_once(running: Stack) -> None:
    with ThreadPoolExecutor(20) as pool:
        responses = list(pool.map(lambda _: http("POST", f"{running.url}/Counter/hot/add", 1), range(20)))
    assert [r.status for r in responses] == [200] * 20
    assert sorted(r.json() for r in responses) == list(range(20))
    assert http("POST", f"{running.url}/Counter/hot/get").json() == 20


def test_examples_shopping_cart_and_subscriptions(running: Stack) -> None:
    item = {"product_id": "p1", "quantity": 2, "price": 1.25}
    assert http("POST", f"{running.url}/ShoppingCart/cart-1/addItem", item).json() == 1
    assert http("POST", f"{running.url}/ShoppingCart/cart-1/addItem", {**item, "quantity": 1}).json() == 2
    assert http("POST", f"{running.url}/ShoppingCart/cart-1/getTotal").json() == 3.75

    request = {"user_id": "u1", "credit_card": "4111-1111", "subscriptions": ["news", "music"]}
    resp = http("POST", f"{running.url}/SubscriptionService/add", request)
    assert resp.status == 200, resp.body
    body = resp.json()
    assert body["payment_ref"].startswith("pay-")
    assert body["subscriptions"] == ["u1:news", "u1:music"]


def test_terminal_errors_and_unknown_targets(running: Stack) -> None:
    bad = http("POST", f"{running.url}/ShoppingCart/cart-2/addItem", {"product_id": "p"})
    assert bad.status == 400, bad.body
    assert set(bad.json()) == {"code", "message"}
    assert http("POST", f"{running.url}/Nope/x", 1).status == 404
    assert http("POST", f"{running.url}/Greeter/nope", 1).status == 404
    assert http("POST", f"{running.url}/Greeter/greet", b"x", {"content-type": "text/plain"}).status == 400
    json.dumps(bad.json())
