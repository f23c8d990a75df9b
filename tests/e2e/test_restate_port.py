"""A restate-sdk example ported by changing its imports runs end to end on a real keystate stack."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness import ROOT, Stack, free_port, http

pytestmark = pytest.mark.integration

EXAMPLE = ROOT / "examples" / "payments.py"
SERVE = str(Path(__file__).with_name("_restate_port_serve.py"))


def test_the_example_names_keystate_only_in_its_imports() -> None:
    code = [line for line in EXAMPLE.read_text().splitlines() if line and not line.startswith(("#", " "))]
    imports = [line for line in code if re.match(r"(import|from) keystate\b", line)]
    assert imports == [
        "import keystate as restate",
        "from keystate import Context, RunOptions, Service",
        "from keystate.exceptions import TerminalError",
    ]
    body = EXAMPLE.read_text().split('"""', 2)[2]  # past the module docstring
    assert [line for line in body.splitlines() if "keystate" in line and line not in imports] == []
    assert "args=(" in body and "retry_interval_factor=" in body and "accept=" in body


@pytest.fixture
def payments(stack: Stack) -> Stack:
    stack.processor("a")
    stack.ingress()
    port = free_port()
    stack.deployment(SERVE, port, name="payments")
    stack.register(f"http://127.0.0.1:{port}")
    return stack


def test_ported_restate_example_runs_its_steps_retries_and_content_types(payments: Stack) -> None:
    paid = http("POST", f"{payments.url}/Payments/pay", {"card": "4242424242424242", "amount_cents": 1250})
    assert paid.status == 200, payments.logs()
    # The gateway refused the first charge: the step was retried and the receipt is the second try's.
    assert paid.json() == {"receipt": "rcpt-4242-1250", "fraud_score": 1}

    refused = http("POST", f"{payments.url}/Payments/pay", {"card": "0000111122223333", "amount_cents": 5})
    assert refused.status == 402, refused.body
    assert "fraud score 90" in refused.json()["message"]

    memo = http("POST", f"{payments.url}/Payments/memo", b" paid in full \n", headers={"content-type": "text/plain"})
    assert (memo.status, memo.body) == (200, b"memo: paid in full")
    assert memo.headers["content-type"].startswith("text/plain")
    wrong = http("POST", f"{payments.url}/Payments/memo", b"<memo/>", headers={"content-type": "application/xml"})
    assert wrong.status == 400 and "text/plain" in wrong.json()["message"]
