"""`keystate deployments`: registers through the admin API and explains when it cannot."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from keystate.cli.deployments import main

from ingress_support import COUNTER, GREETER, Deployment, manifest


def test_an_unreachable_admin_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["register", "http://localhost:9080", "--admin", "http://127.0.0.1:1"])

    assert code == 1
    err = capsys.readouterr().err
    assert "cannot reach the admin API at http://127.0.0.1:1" in err
    assert "is keystate running?" in err


async def test_an_admin_error_prints_its_message(capsys: pytest.CaptureFixture[str]) -> None:
    async def reject(request: web.Request) -> web.Response:
        return web.json_response({"code": 400, "message": "is the deployment running at http://x?"}, status=400)

    app = web.Application()
    app.router.add_post("/deployments", reject)
    async with TestServer(app, host="127.0.0.1") as server:
        code = await asyncio.to_thread(main, ["--admin", str(server.make_url("")), "register", "http://x"])

    assert code == 1
    assert "the admin API answered 400: is the deployment running at http://x?" in capsys.readouterr().err


@pytest.mark.integration
async def test_register_prints_the_id_and_services(
    admin: TestClient, deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    deployment.respond = lambda: web.json_response(manifest(GREETER, COUNTER))
    admin_url = str(admin.make_url("")).rstrip("/")

    code = await asyncio.to_thread(main, ["register", deployment.uri, "--admin", admin_url])
    again = await asyncio.to_thread(main, ["register", deployment.uri, "--admin", admin_url])
    listed = await asyncio.to_thread(main, ["list", "--admin", admin_url])

    assert (code, again, listed) == (0, 0, 0)
    out = capsys.readouterr().out
    first, second, listing = out.split("deployment:\n")[1], out.split("deployment:\n")[2], out
    assert out.startswith("registered deployment:\n")
    assert "already registered deployment:" in out
    deployment_id = first.split()[0]
    assert deployment_id.startswith("dp_") and second.split()[0] == deployment_id
    assert "  Greeter (SERVICE): greet, upload" in first
    assert "  Counter (VIRTUAL_OBJECT): add, get" in first
    assert f"{deployment_id}  {deployment.uri}" in listing
