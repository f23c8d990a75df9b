"""Signed requests to deployments, end to end: processor and admin sign, a deployment with identity_keys verifies."""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from harness import Stack, free_port, http

pytestmark = pytest.mark.integration

SCRIPT = str(Path(__file__).with_name("_identity_services.py"))


def _keystate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "keystate.cli", *args], capture_output=True, text=True, timeout=60)


def _signed_deployment(stack: Stack, keys: list[str], ledger: Path, transport: str = "websocket") -> str:
    """Start the verifying deployment; its base URI once it answers (401 to the unsigned probe)."""
    port = free_port()
    env = {"KEYSTATE_TEST_IDENTITY_KEYS": ",".join(keys), "KEYSTATE_TEST_LEDGER": str(ledger), "KEYSTATE_TEST_TRANSPORTS": transport}
    proc = stack._python(f"deployment-{port}", [SCRIPT, str(port)], env)
    uri = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.alive(), proc.tail()
        try:
            probe = http("GET", f"{uri}/discover", timeout=2.0)
        except OSError:
            time.sleep(0.1)
            continue
        assert probe.status == 401, probe.body  # identity_keys set: unsigned discovery is refused
        return uri
    raise TimeoutError(proc.tail())


def _admin_key(stack: Stack) -> str:
    resp = http("GET", f"{stack.admin_url}/identity")
    assert resp.status == 200, resp.body
    body = resp.json()
    assert body["signature_scheme"] == "v1"
    (key,) = body["public_keys"]
    return str(key)


def _wait_for_failure(stack: Stack, invocation_id: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    seen: Any = None
    while time.monotonic() < deadline:
        resp = http("GET", f"{stack.admin_url}/invocations/{invocation_id}")
        if resp.status == 200:
            seen = resp.json()
            if seen["last_failure"] is not None:
                return dict(seen)
        time.sleep(0.2)
    raise AssertionError(f"no failure recorded for {invocation_id}: {seen}\n{stack.logs()}")


@pytest.mark.parametrize("transport", ["websocket", "request-response"])
def test_generated_key_signs_discovery_and_attempts_and_a_deployment_with_it_serves(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, transport: str
) -> None:
    state = tmp_path / "state"
    monkeypatch.setenv("KEYSTATE_STATE_DIR", str(state))
    stack.processor("a")
    stack.ingress()
    key = _admin_key(stack)
    key_file = state / "identity.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    shown = _keystate("identity", "show", "--state-dir", str(state))
    assert shown.returncode == 0 and shown.stdout.strip() == key, shown.stderr
    ledger = tmp_path / "ledger.txt"

    stack.register(_signed_deployment(stack, [key], ledger, transport))
    resp = http("POST", f"{stack.url}/Signed/hello", "ann")
    assert resp.status == 200, (resp.body, stack.logs())
    assert resp.json() == "hello ann"
    assert ledger.read_text().split() == ["ann"]
    assert key in (tmp_path / "processor-a.log").read_text()  # printed at start

    # A deployment that trusts another key refuses the admin's signed discovery.
    stranger = _keystate("identity", "create", "--identity-key-file", str(tmp_path / "stranger.pem"))
    other = _signed_deployment(stack, [stranger.stdout.strip()], tmp_path / "other-ledger.txt")
    refused = http("POST", f"{stack.admin_url}/deployments", {"uri": other})
    assert refused.status >= 400 and b"401" in refused.body, refused.body


def test_attempts_signed_with_a_key_the_deployment_does_not_trust_are_refused_and_run_nothing(
    stack: Stack, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The processor has its own key file; the admin (another state dir, as on another host) generated
    # another: the deployment trusts only the admin's, so registration works and every attempt is refused.
    monkeypatch.setenv("KEYSTATE_STATE_DIR", str(tmp_path / "admin-state"))
    processor_file = tmp_path / "processor.pem"
    created = _keystate("identity", "create", "--identity-key-file", str(processor_file))
    assert created.returncode == 0, created.stderr
    processor_key = created.stdout.strip()
    stack.processor("a", "--identity-key-file", str(processor_file))
    stack.ingress()
    admin_key = _admin_key(stack)
    assert admin_key != processor_key
    ledger = tmp_path / "ledger.txt"
    stack.register(_signed_deployment(stack, [admin_key], ledger))

    sent = http("POST", f"{stack.url}/Signed/hello/send", "bob")
    assert sent.status == 202, sent.body
    status = _wait_for_failure(stack, sent.json()["invocationId"])
    failure = json.dumps(status["last_failure"])
    assert "401" in failure, failure
    assert processor_key in failure  # the hint names the key to add to identity_keys
    assert status["status"] not in ("completed", "succeeded")
    assert not ledger.exists()  # no handler ran
