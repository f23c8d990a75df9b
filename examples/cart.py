"""ShoppingCart (from the product docs): a virtual object per cart id; one writer at a time."""

from __future__ import annotations

from pydantic import BaseModel

from keystate import ObjectContext, ObjectSharedContext, VirtualObject

cart = VirtualObject("ShoppingCart")


class Item(BaseModel):
    product_id: str
    quantity: int
    price: float


@cart.handler("addItem")
async def add_item(ctx: ObjectContext, item: Item) -> int:
    """Appends to the cart; returns how many lines it has now."""
    items = await ctx.get("cart", type_hint=list[Item]) or []
    items.append(item)
    ctx.set("cart", items)
    return len(items)


@cart.handler("getTotal", kind="shared")
async def get_total(ctx: ObjectSharedContext) -> float:
    items = await ctx.get("cart", type_hint=list[Item]) or []
    return round(sum(i.price * i.quantity for i in items), 2)
