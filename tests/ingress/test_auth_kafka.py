"""`run_ingress` with both tokens against a real broker: the CLI registers through the protected admin, callers need the ingress token."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from keystate.cli.deployments import main as deployments_main
from keystate.ingress.auth import ADMIN, INGRESS, BearerToken
from keystate.ingress.runtime import IngressSettings, run_ingress

from ingress_support import GREETER, Deployment, manifest, read_log_record
from tests.e2e.harness import free_port

pytestmark = pytest.mark.integration

ADMIN_SECRET = "kafka-admin-token-0123456789abcdef"
INGRESS_SECRET = "kafka-ingress-token-0123456789abcdef"


@pytest.fixture
async def served(ingress_settings: IngressSettings) -> AsyncIterator[tuple[str, str]]:
    """(ingress URL, admin URL) of run_ingress with both tokens, on 127.0.0.1."""
    settings = dataclasses.replace(
        ingress_settings,
        admin_token=BearerToken(ADMIN_SECRET, f"${ADMIN.env}"),
        ingress_token=BearerToken(INGRESS_SECRET, f"${INGRESS.env}"),
    )
    port, admin_port = free_port(), free_port()
    server = asyncio.create_task(run_ingress(settings, "127.0.0.1", port, admin_port, admin_host="127.0.0.1"))
    admin_url = f"http://127.0.0.1:{admin_port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    # /health answers without a token: liveness probes carry none.
                    async with http.get(f"{admin_url}/health") as health:
                        if health.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
        yield f"http://127.0.0.1:{port}", admin_url
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server


async def test_cli_registers_with_the_token_and_callers_need_the_ingress_token(
    served: tuple[str, str],
    ingress_settings: IngressSettings,
    deployment: Deployment,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    ingress_url, admin_url = served
    deployment.respond = lambda: web.json_response(manifest(GREETER))
    monkeypatch.delenv("KEYSTATE_ADMIN_TOKEN", raising=False)

    refused = await asyncio.to_thread(deployments_main, ["--admin", admin_url, "register", deployment.uri])
    assert refused == 1
    assert "requires a token" in capsys.readouterr().err

    monkeypatch.setenv("KEYSTATE_ADMIN_TOKEN", ADMIN_SECRET)
    registered = await asyncio.to_thread(deployments_main, ["--admin", admin_url, "register", deployment.uri])
    assert registered == 0
    out = capsys.readouterr().out
    assert re.search(r"│\s*Greeter\s*│\s*Service\s*│\s*greet\s*│", out) and re.search(r"│\s*upload\s*│", out)

    send = f"{ingress_url}/Greeter/greet/send"
    async with aiohttp.ClientSession() as http:
        async with http.post(send, json="Ann") as missing:
            assert missing.status == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
        async with http.post(send, json="Ann", headers={"Authorization": f"Bearer {ADMIN_SECRET}"}) as admin_token:
            assert admin_token.status == 401
        async with http.post(send, json="Ann", headers={"Authorization": f"Bearer {INGRESS_SECRET}"}) as accepted:
            assert accepted.status == 202, await accepted.text()
            assert (await accepted.json())["status"] == "Accepted"
            invocation_id = (await accepted.json())["invocationId"]
        async with http.get(f"{admin_url}/services", headers={"Authorization": f"Bearer {INGRESS_SECRET}"}) as crossed:
            assert crossed.status == 401

    # The ingress token is keystate's credential: it reaches neither the handler nor the log.
    record = await asyncio.to_thread(
        read_log_record, ingress_settings.bootstrap, ingress_settings.topics.log, invocation_id
    )
    assert INGRESS_SECRET.encode() not in record.value()
    assert all(INGRESS_SECRET.encode() not in value for _, value in record.headers() or [])
