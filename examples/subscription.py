"""SubscriptionService (from the product docs): a recurring payment, then one step per subscription.

Each `ctx.run` is journaled: if the process dies half-way, the retry replays the finished steps
instead of charging the card or creating a subscription twice.
"""

from __future__ import annotations

import logging

from pydantic import BaseModel

from keystate import Context, Service

log = logging.getLogger("examples.subscription")

subscription_service = Service("SubscriptionService")


class SubscriptionRequest(BaseModel):
    user_id: str
    credit_card: str
    subscriptions: list[str]


class SubscriptionResult(BaseModel):
    payment_ref: str
    subscriptions: list[str]


def create_recurring_payment(credit_card: str, payment_id: str) -> str:
    """Stands for the payment provider's API; the id makes the call idempotent on its side."""
    log.info("recurring payment %s on card ending %s", payment_id, credit_card[-4:])
    return f"pay-{payment_id}"


def create_subscription(user_id: str, subscription: str, payment_ref: str) -> str:
    """Stands for the subscription system's API."""
    log.info("subscription %s for %s paid by %s", subscription, user_id, payment_ref)
    return f"{user_id}:{subscription}"


@subscription_service.handler()
async def add(ctx: Context, req: SubscriptionRequest) -> SubscriptionResult:
    payment_id = str(ctx.uuid())
    payment_ref = await ctx.run("recurring payment", create_recurring_payment, req.credit_card, payment_id)
    created = []
    for subscription in req.subscriptions:
        created.append(
            await ctx.run(f"subscription {subscription}", create_subscription, req.user_id, subscription, payment_ref)
        )
    return SubscriptionResult(payment_ref=payment_ref, subscriptions=created)
