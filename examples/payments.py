"""Payments, written for restate-sdk and ported by changing the imports (the three lines below).

It was `import restate`, `from restate import ...` and `from restate.exceptions import ...`;
nothing else changed. Steps take their arguments as `ctx.run(name, fn, args=(...))`, a flaky
gateway is retried with `RunOptions(retry_interval_factor=...)`, and a text handler declares what
it accepts and answers with `accept=` / `content_type=`.
"""

from datetime import timedelta

import keystate as restate
from keystate import Context, RunOptions, Service
from keystate.exceptions import TerminalError

payments = Service("Payments")

# The payment gateway: refuses each charge the first time it sees it (a flaky network), and
# remembers receipts by idempotency key so a retried charge is not taken twice.
_gateway_seen: set[str] = set()
_receipts: dict[str, str] = {}


def charge(card: str, amount_cents: int, idempotency_key: str) -> str:
    if amount_cents <= 0:
        raise TerminalError(f"amount must be positive, got {amount_cents}", status_code=400)
    if idempotency_key not in _gateway_seen:
        _gateway_seen.add(idempotency_key)
        raise ConnectionError("payment gateway timed out")
    return _receipts.setdefault(idempotency_key, f"rcpt-{card[-4:]}-{amount_cents}")


def fraud_score(card: str, amount_cents: int) -> int:
    return 90 if card.startswith("0000") else min(amount_cents // 1000, 50)


@payments.handler()
async def pay(ctx: Context, request: dict) -> dict:
    card, amount = request["card"], request["amount_cents"]
    score = await ctx.run("fraud check", fraud_score, args=(card, amount))
    if score > 80:
        raise TerminalError(f"payment refused: fraud score {score}", status_code=402)
    key = str(ctx.uuid())
    receipt = await ctx.run_typed(
        "charge", charge,
        RunOptions(max_attempts=5, initial_retry_interval=timedelta(milliseconds=20), retry_interval_factor=2.0),
        card, amount, key,
    )
    return {"receipt": receipt, "fraud_score": score}


@payments.handler(accept="text/plain", content_type="text/plain",
                  input_serde=restate.serde.BytesSerde(), output_serde=restate.serde.BytesSerde())
async def memo(ctx: Context, text: bytes) -> bytes:
    line = await ctx.run("format", bytes.decode, args=(text, "utf-8"))
    return f"memo: {line.strip()}".encode()


app = restate.app([payments])
