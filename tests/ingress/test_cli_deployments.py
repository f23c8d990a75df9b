"""`keystate deployments`: registers through the admin API and explains when it cannot."""

from __future__ import annotations

import asyncio
import re

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from keystate.cli.deployments import invocations_main, main

from ingress_support import COUNTER, GREETER, Deployment, handler, manifest, service


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
    # The handlers table: service, its type and each handler's kind as Restate's admin names them.
    assert _row(first, "Greeter", "Service", "greet", "Exclusive") and _row(first, "Greeter", "Service", "upload", "Exclusive")
    assert _row(first, "Counter", "VirtualObject", "add", "Exclusive") and _row(first, "Counter", "VirtualObject", "get", "Shared")
    assert _row(listing, deployment_id, deployment.uri, "active", "Greeter (Service), Counter (VirtualObject)")


def _row(text: str, *cells: str) -> bool:
    """True if one line of a rich table holds `cells` as consecutive columns."""
    pattern = r"\s*│\s*".join(re.escape(c) for c in cells)
    return any(re.search(pattern, line) for line in text.splitlines())


@pytest.mark.integration
async def test_describe_and_remove_a_deployment(
    admin: TestClient, deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    deployment.respond = lambda: web.json_response(manifest(service("Cli", "SERVICE", handler("run_it"))))
    admin_url = str(admin.make_url("")).rstrip("/")
    created = await (await admin.post("/deployments", json={"uri": deployment.uri})).json()
    dp = created["id"]
    capsys.readouterr()

    described = await asyncio.to_thread(main, ["describe", dp, "--admin", admin_url])
    out = capsys.readouterr().out
    assert described == 0
    assert f"{dp}  {deployment.uri}" in out and "transports: websocket" in out
    assert _row(out, "Cli", "Service", "run_it", "Exclusive", "application/json", "application/json", "yes")

    removed = await asyncio.to_thread(main, ["remove", dp, "--force", "--admin", admin_url])
    assert removed == 0 and f"removed deployment {dp}" in capsys.readouterr().out
    missing = await asyncio.to_thread(main, ["describe", dp, "--admin", admin_url])
    assert missing == 1
    assert f"the admin API answered 404: unknown deployment '{dp}'" in capsys.readouterr().err


async def test_remove_without_force_shows_the_refusal(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[str] = []

    async def refuse(request: web.Request) -> web.Response:
        seen.append(str(request.rel_url))
        if request.query.get("force") == "true":
            return web.Response(status=202)
        return web.json_response({"code": 409, "message": "deployment dp_x has 2 invocations pinned to it; use ?force=true"}, status=409)

    app = web.Application()
    app.router.add_delete("/deployments/{id}", refuse)
    async with TestServer(app, host="127.0.0.1") as server:
        url = str(server.make_url(""))
        refused = await asyncio.to_thread(main, ["--admin", url, "remove", "dp_x"])
        forced = await asyncio.to_thread(main, ["--admin", url, "remove", "dp_x", "--force"])

    assert (refused, forced) == (1, 0)
    assert "the admin API answered 409: deployment dp_x has 2 invocations pinned to it" in capsys.readouterr().err
    assert seen == ["/deployments/dp_x", "/deployments/dp_x?force=true"]


async def test_invocations_cancel_and_kill_patch_the_admin_api(capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[tuple[str, str]] = []

    async def act(request: web.Request) -> web.Response:
        seen.append((request.method, request.path))
        if request.match_info["id"] == "inv_bad":
            return web.json_response({"code": 400, "message": "not an invocation id: 'inv_bad'"}, status=400)
        return web.Response(status=202)

    app = web.Application()
    app.router.add_patch("/invocations/{id}/{action}", act)
    async with TestServer(app, host="127.0.0.1") as server:
        url = str(server.make_url(""))
        codes = [
            await asyncio.to_thread(invocations_main, ["--admin", url, action, invocation_id])
            for action, invocation_id in (("cancel", "inv_1"), ("kill", "inv_2"), ("kill", "inv_bad"))
        ]

    assert codes == [0, 0, 1]
    assert seen == [("PATCH", "/invocations/inv_1/cancel"), ("PATCH", "/invocations/inv_2/kill"), ("PATCH", "/invocations/inv_bad/kill")]
    captured = capsys.readouterr()
    assert "cancel of inv_1 requested" in captured.out and "kill of inv_2 requested" in captured.out
    assert "keystate invocations: the admin API answered 400: not an invocation id" in captured.err
