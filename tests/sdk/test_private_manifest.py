"""`ingress_private` and `forward_headers` in the SDK and how the discovery manifest declares them."""

from __future__ import annotations

from typing import Any

import pytest

import keystate
from keystate import Context, ObjectContext, WorkflowContext


def _manifest() -> dict[str, dict[str, Any]]:
    svc = keystate.Service("Billing", forward_headers=["Authorization"])
    obj = keystate.VirtualObject("Ledger", ingress_private=True)
    flow = keystate.Workflow("Flow", ingress_private=True)

    @svc.handler()
    async def charge(ctx: Context, amount: int) -> int:
        return amount

    @svc.handler(ingress_private=True)
    async def settle(ctx: Context) -> None:
        return None

    @obj.handler()
    async def post(ctx: ObjectContext) -> None:
        return None

    @obj.handler(kind="shared", ingress_private=False)
    async def read(ctx: ObjectContext) -> None:
        return None

    @flow.main(ingress_private=False)
    async def run(ctx: WorkflowContext) -> None:
        return None

    return {s["name"]: s for s in keystate.manifest([svc, obj, flow])["services"]}


def test_private_services_and_handlers_are_declared_with_restates_field() -> None:
    services = _manifest()
    billing = services["Billing"]
    assert "ingressPrivate" not in billing and billing["forwardHeaders"] == ["authorization"]
    assert {h["name"]: h.get("ingressPrivate") for h in billing["handlers"]} == {"charge": None, "settle": True}
    assert services["Ledger"]["ingressPrivate"] is True
    assert {h["name"]: h.get("ingressPrivate") for h in services["Ledger"]["handlers"]} == {"post": None, "read": False}
    assert services["Flow"]["ingressPrivate"] is True and services["Flow"]["handlers"][0]["ingressPrivate"] is False


def test_bad_settings_are_refused_when_declared() -> None:
    with pytest.raises(TypeError, match="ingress_private must be True or False"):
        keystate.Service("S", ingress_private="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="not a string"):
        keystate.Service("S", forward_headers="authorization")
    with pytest.raises(ValueError, match="not an HTTP header name"):
        keystate.Service("S", forward_headers=["bad header"])
    svc = keystate.Service("S")
    with pytest.raises(TypeError, match="ingress_private must be True, False or None"):

        @svc.handler(ingress_private=1)  # type: ignore[arg-type]
        async def h(ctx: Context) -> None:
            return None
