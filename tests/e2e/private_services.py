"""The deployment of the private-handler and secret-header tests: `python private_services.py PORT`."""

from __future__ import annotations

import logging
import sys
from datetime import timedelta

import keystate
from keystate import Context, ObjectContext, ObjectSharedContext

billing = keystate.Service("Billing")
audit = keystate.Service("Audit", ingress_private=True)
account = keystate.VirtualObject("Account", ingress_private=True)
echo = keystate.Service("Echo")
vault = keystate.Service("Vault", forward_headers=["authorization"])


@billing.handler()
async def charge(ctx: Context, amount: int) -> list[object]:
    """Public: reaches the private handlers by call, object call and send."""
    settled = await ctx.service_call(settle, amount)
    balance = await ctx.object_call(deposit, "acct-1", amount)
    ctx.service_send(record, amount)
    return [settled, balance]


@billing.handler(ingress_private=True)
async def settle(ctx: Context, amount: int) -> str:
    return f"settled {amount}"


@audit.handler()
async def record(ctx: Context, amount: int) -> None:
    ctx.object_send(deposit, "audit", amount)


@account.handler()
async def deposit(ctx: ObjectContext, amount: int) -> int:
    total = (await ctx.get("total", type_hint=int) or 0) + amount
    ctx.set("total", total)
    return total


@account.handler(kind="shared", ingress_private=False)
async def balance(ctx: ObjectSharedContext) -> int:
    return await ctx.get("total", type_hint=int) or 0


@echo.handler()
async def headers(ctx: Context) -> dict[str, str]:
    return ctx.request().headers


@vault.handler(name="headers")
async def vault_headers(ctx: Context) -> dict[str, str]:
    return ctx.request().headers


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keystate.serve([billing, audit, account, echo, vault], port=int(sys.argv[1]), suspend_after=timedelta(seconds=1))
