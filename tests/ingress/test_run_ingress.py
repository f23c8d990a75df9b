"""`run_ingress` serves both apps on their ports until cancelled."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from keystate.ingress.runtime import IngressSettings, run_ingress
from tests.e2e.harness import free_port

pytestmark = pytest.mark.integration


async def test_run_ingress_serves_until_cancelled(ingress_settings: IngressSettings) -> None:
    port, admin_port = free_port(), free_port()
    server = asyncio.create_task(run_ingress(ingress_settings, port=port, admin_port=admin_port))
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(300):
                try:
                    async with http.get(f"http://127.0.0.1:{admin_port}/health") as health:
                        if health.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    pass
                await asyncio.sleep(0.1)
            async with http.get(f"http://127.0.0.1:{admin_port}/health") as health:
                assert health.status == 200 and await health.json() == {"status": "ok"}
            async with http.post(f"http://127.0.0.1:{port}/Nobody/home", json=1) as missing:
                assert missing.status == 404
                assert (await missing.json())["code"] == 404
    finally:
        server.cancel()
        with pytest.raises(asyncio.CancelledError):
            await server
    async with aiohttp.ClientSession() as http:
        with pytest.raises(aiohttp.ClientConnectionError):
            await http.get(f"http://127.0.0.1:{port}/Nobody/home")
