"""Deployment lifecycle through the admin API and CLI (real broker): breaking changes, same-uri
re-registration, the state column, and which deployment becomes latest on removal."""

from __future__ import annotations

import asyncio
import re

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from keystate.cli.deployments import main
from keystate.ingress.runtime import IngressRuntime, IngressSettings

from ingress_support import Deployment, handler, manifest, service

pytestmark = pytest.mark.integration

# The topics are shared by the module's tests: each test names its own service.


def shop_v1(name: str) -> dict:
    return manifest(service(name, "VIRTUAL_OBJECT", handler("buy", "EXCLUSIVE"), handler("look", "SHARED")))


def shop_broken(name: str) -> dict:
    """Breaking for shop_v1: `look` disappears, `buy` becomes shared."""
    return manifest(service(name, "VIRTUAL_OBJECT", handler("buy", "SHARED")))


def shop_v2(name: str) -> dict:
    return manifest(
        service(name, "VIRTUAL_OBJECT", handler("buy", "EXCLUSIVE"), handler("look", "SHARED"), handler("sell", "EXCLUSIVE"))
    )


def serving(deployment: Deployment, body: dict) -> None:
    deployment.respond = lambda: web.json_response(body)


def other_uri(deployment: Deployment) -> str:
    """The same server under another uri: a new version served at a new address."""
    return deployment.uri.replace("127.0.0.1", "localhost")


async def ours(admin: TestClient, name: str) -> list[dict]:
    """The listed deployments that serve service `name`."""
    listed = (await (await admin.get("/deployments")).json())["deployments"]
    return [d for d in listed if any(s["name"] == name for s in d["services"])]


async def post(admin: TestClient, body: dict) -> tuple[int, dict]:
    response = await admin.post("/deployments", json=body)
    return response.status, await response.json()


async def test_a_breaking_change_is_refused_with_each_change_listed_unless_breaking(
    admin: TestClient, deployment: Deployment
) -> None:
    SHOP = "Shop0"
    serving(deployment, shop_v1(SHOP))
    status, first = await post(admin, {"uri": deployment.uri})
    assert status == 201
    serving(deployment, shop_broken(SHOP))

    status, refused = await post(admin, {"uri": other_uri(deployment)})

    assert status == 409, refused
    assert f"handler {SHOP}/buy changes kind from EXCLUSIVE to SHARED" in refused["message"]
    assert f"handler {SHOP}/look is removed" in refused["message"]
    assert "--breaking" in refused["message"] and '"breaking": true' in refused["message"]
    assert [d["id"] for d in await ours(admin, SHOP)] == [first["id"]]

    status, accepted = await post(admin, {"uri": other_uri(deployment), "breaking": True})

    assert status == 201 and accepted["id"] != first["id"]
    shop = await (await admin.get(f"/services/{SHOP}")).json()
    assert shop["deployment_id"] == accepted["id"]
    assert [(h["name"], h["ty"]) for h in shop["handlers"]] == [("buy", "Shared")]


async def test_the_cli_refuses_a_breaking_change_and_registers_it_with_breaking(
    admin: TestClient, deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    SHOP = "Shop1"
    admin_url = str(admin.make_url("")).rstrip("/")
    serving(deployment, shop_v1(SHOP))
    await post(admin, {"uri": deployment.uri})
    serving(deployment, shop_broken(SHOP))
    capsys.readouterr()

    refused = await asyncio.to_thread(main, ["register", other_uri(deployment), "--admin", admin_url])
    err = capsys.readouterr().err
    accepted = await asyncio.to_thread(main, ["register", other_uri(deployment), "--breaking", "--admin", admin_url])

    assert (refused, accepted) == (1, 0)
    assert "the admin API answered 409: the deployment at" in err and f"handler {SHOP}/look is removed" in err
    assert capsys.readouterr().out.startswith("registered deployment:\n")


async def test_a_changed_discovery_at_a_registered_uri_is_refused_and_forced_overwrites_it(
    admin: TestClient, deployment: Deployment, ingress_settings: IngressSettings, capsys: pytest.CaptureFixture[str]
) -> None:
    SHOP = "Shop2"
    serving(deployment, shop_v1(SHOP))
    _, first = await post(admin, {"uri": deployment.uri})
    serving(deployment, shop_v2(SHOP))

    status, refused = await post(admin, {"uri": deployment.uri})

    assert status == 409, refused
    assert f"already registered as deployment {first['id']}" in refused["message"]
    assert f"handler {SHOP}/sell added" in refused["message"] and "--force" in refused["message"]
    assert len(await ours(admin, SHOP)) == 1

    admin_url = str(admin.make_url("")).rstrip("/")
    capsys.readouterr()
    forced = await asyncio.to_thread(main, ["register", deployment.uri, "--force", "--admin", admin_url])

    assert forced == 0
    assert capsys.readouterr().out.startswith(f"overwrote (forced) deployment:\n{first['id']}  {deployment.uri}")
    assert [d["id"] for d in await ours(admin, SHOP)] == [first["id"]]
    shop = await (await admin.get(f"/services/{SHOP}")).json()
    assert shop["deployment_id"] == first["id"] and [h["name"] for h in shop["handlers"]] == ["buy", "look", "sell"]
    # Registering the same discovery again is the usual no-op.
    status, again = await post(admin, {"uri": deployment.uri})
    assert status == 200 and again["id"] == first["id"] and again["overwritten"] is False

    # A fresh runtime reads the overwritten record from keystate.meta.
    other = IngressRuntime(ingress_settings)
    await other.start()
    try:
        entry = other.meta.state.service(SHOP)
        assert entry is not None and entry.deployment_id == first["id"]
        assert [h["name"] for h in entry.metadata["handlers"]] == ["buy", "look", "sell"]
        assert [d for d, r in other.meta.state.deployments.items() if r["services"][0]["name"] == SHOP] == [first["id"]]
    finally:
        await other.stop()


async def test_the_state_column_follows_register_and_removal(
    admin: TestClient, deployment: Deployment, capsys: pytest.CaptureFixture[str]
) -> None:
    SHOP = "Shop3"
    serving(deployment, shop_v1(SHOP))
    _, v1 = await post(admin, {"uri": deployment.uri})
    assert (v1["state"], v1["latest_for"], v1["pinned_invocations"]) == ("active", [SHOP], 0)
    serving(deployment, shop_v2(SHOP))
    _, v2 = await post(admin, {"uri": other_uri(deployment)})

    states = {d["id"]: d["state"] for d in await ours(admin, SHOP)}
    assert states == {v1["id"]: "drained", v2["id"]: "active"}
    described = await (await admin.get(f"/deployments/{v1['id']}")).json()
    assert (described["state"], described["latest_for"], described["pinned_invocations"]) == ("drained", [], 0)

    admin_url = str(admin.make_url("")).rstrip("/")
    capsys.readouterr()
    assert await asyncio.to_thread(main, ["list", "--admin", admin_url]) == 0
    assert await asyncio.to_thread(main, ["describe", v1["id"], "--admin", admin_url]) == 0
    out = capsys.readouterr().out
    assert _row(out, v1["id"], deployment.uri, "drained") and _row(out, v2["id"], other_uri(deployment), "active")
    assert "state: drained: no longer latest and nothing pinned to it; safe to remove" in out

    # Removing the latest says which deployment becomes latest, in the body and in the CLI.
    removed = await admin.delete(f"/deployments/{v2['id']}")
    body = await removed.json()
    assert removed.status == 202
    assert body["latest"] == [{"service": SHOP, "deployment_id": v1["id"]}] and body["paused_invocations"] == []
    assert (await (await admin.get(f"/deployments/{v1['id']}")).json())["state"] == "active"

    assert await asyncio.to_thread(main, ["remove", v1["id"], "--admin", admin_url]) == 0
    out = capsys.readouterr().out
    assert f"removed deployment {v1['id']}\n  {SHOP}: no deployment serves it any more; register one" in out


async def test_removing_a_deployment_that_is_not_latest_names_no_successor(admin: TestClient, deployment: Deployment) -> None:
    SHOP = "Shop4"
    serving(deployment, shop_v1(SHOP))
    _, v1 = await post(admin, {"uri": deployment.uri})
    serving(deployment, shop_v2(SHOP))
    await post(admin, {"uri": other_uri(deployment)})

    removed = await admin.delete(f"/deployments/{v1['id']}")

    assert removed.status == 202 and (await removed.json())["latest"] == []


async def test_register_flags_must_be_booleans(admin: TestClient, deployment: Deployment) -> None:
    status, body = await post(admin, {"uri": deployment.uri, "force": "yes"})
    assert status == 400 and '"force" must be true or false' in body["message"]


def _row(text: str, *cells: str) -> bool:
    """True if one line of a rich table holds `cells` as consecutive columns."""
    pattern = r"\s*│\s*".join(re.escape(c) for c in cells)
    return any(re.search(pattern, line) for line in text.splitlines())
