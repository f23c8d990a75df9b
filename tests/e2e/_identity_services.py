"""A deployment that verifies request signatures: `python _identity_services.py PORT`.

$KEYSTATE_TEST_IDENTITY_KEYS: the accepted public keys, comma-separated; every handler run is
appended to $KEYSTATE_TEST_LEDGER, so a test can tell that a refused attempt ran nothing;
$KEYSTATE_TEST_TRANSPORTS: the transports offered (default both).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import keystate
from keystate import Context, Service

signed = Service("Signed")


@signed.handler()
async def hello(ctx: Context, name: str) -> str:
    def record() -> None:
        with open(os.environ["KEYSTATE_TEST_LEDGER"], "a") as ledger:
            ledger.write(name + "\n")

    await asyncio.to_thread(record)  # outside ctx.run on purpose: every attempt that runs the handler counts
    return f"hello {name}"


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    keys = os.environ["KEYSTATE_TEST_IDENTITY_KEYS"].split(",")
    transports = os.environ.get("KEYSTATE_TEST_TRANSPORTS", "websocket,request-response").split(",")
    keystate.serve([signed], port=int(sys.argv[1]), transports=transports, identity_keys=keys)
