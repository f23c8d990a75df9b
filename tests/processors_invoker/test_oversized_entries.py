"""An entry over the invoker's payload limit fails its invocation for good, saying what and how big."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from keystate.processors.invoker import InvokerSettings
from keystate.schemas.limits import ENVELOPE_HEADROOM_BYTES
from tests.e2e.harness import Stack
from tests.processors_invoker.inprocess import call, processor_in_this_process

pytestmark = pytest.mark.integration

LIMIT = 64 * 1024


async def test_entries_over_the_payload_limit_fail_their_invocation_with_type_size_and_limit(
    services: tuple[Stack, Path],
) -> None:
    stack, _ = services
    # Over what a record may carry with this limit (the payload plus its envelope headroom), but
    # under the deployment's and the ingress's own (default) limit: only the invoker refuses it.
    big = "x" * (LIMIT + ENVELOPE_HEADROOM_BYTES + 1000)
    async with processor_in_this_process(stack, InvokerSettings(max_payload_bytes=LIMIT)):
        output = await call(stack, "Greeter/greet", big)
        state = await call(stack, "Mailbox/big/put", big)
        small = await call(stack, "Greeter/greet", "small")
    for response, entry in ((output, "OutputEntry"), (state, "SetStateEntry")):
        assert response.status == 500, response.body
        message = response.json()["message"]
        assert entry in message and f"payload limit of {LIMIT:,} bytes (max_payload_bytes)" in message, message
        size = int(re.search(r"log record of ([\d,]+) bytes", message).group(1).replace(",", ""))  # type: ignore[union-attr]
        assert size > LIMIT + ENVELOPE_HEADROOM_BYTES
    assert (small.status, small.json()) == (200, "Hello small!")
