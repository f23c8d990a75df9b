"""The admin API against a real broker: register a deployment, list it, re-register idempotently."""

from __future__ import annotations

import json

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient
from fastavro import parse_schema

from keystate.ingress.runtime import IngressRuntime, IngressSettings

from ingress_support import COUNTER, GREETER, Deployment, handler, manifest, service

pytestmark = pytest.mark.integration


async def test_register_then_services_and_deployments_show_it(admin: TestClient, deployment: Deployment) -> None:
    deployment.respond = lambda: web.json_response(manifest(GREETER, COUNTER))

    response = await admin.post("/deployments", json={"uri": deployment.uri})

    assert response.status == 201
    created = await response.json()
    assert created["id"].startswith("dp_") and created["uri"] == deployment.uri
    assert [s["name"] for s in created["services"]] == ["Greeter", "Counter"]

    services = (await (await admin.get("/services")).json())["services"]
    by_name = {s["name"]: s for s in services}
    assert by_name["Counter"] == {
        "name": "Counter",
        "ty": "VirtualObject",
        "deployment_id": created["id"],
        "handlers": [
            {"name": "add", "ty": "Exclusive", "input_content_type": None, "output_content_type": None, "retry_policy": None,
             "ingress_private": False},
            {"name": "get", "ty": "Shared", "input_content_type": None, "output_content_type": None, "retry_policy": None,
             "ingress_private": False},
        ],
        "retry_policy": None,
        "inactivity_timeout_ms": None,
        "abort_timeout_ms": None,
        "journal_retention_ms": None,
        "idempotency_retention_ms": None,
        "workflow_completion_retention_ms": None,
        "public": True,
        "ingress_private": False,
        "forward_headers": [],
        "overridden": [],
    }
    one = await admin.get("/services/Greeter")
    assert one.status == 200 and (await one.json())["deployment_id"] == created["id"]

    listed = (await (await admin.get("/deployments")).json())["deployments"]
    assert created["id"] in {d["id"] for d in listed}
    got = await admin.get(f"/deployments/{created['id']}")
    assert got.status == 200
    detail = await got.json()
    assert detail["uri"] == deployment.uri and detail["created_at"].endswith("Z")


async def test_service_settings_from_the_manifest_are_shown(admin: TestClient, deployment: Deployment) -> None:
    spec = service("Tuned", "SERVICE", handler("go", retryPolicy={"maxAttempts": 2}))
    spec |= {"retryPolicy": {"initialInterval": 500, "onMaxAttempts": "PAUSE"}, "inactivityTimeout": 60_000, "journalRetention": 3_600_000}
    deployment.respond = lambda: web.json_response(manifest(spec) | {"transports": ["request-response"]})
    created = await (await admin.post("/deployments", json={"uri": deployment.uri})).json()

    assert created["transports"] == ["request-response"]
    tuned = await (await admin.get("/services/Tuned")).json()
    assert tuned["retry_policy"] == {
        "initial_interval_ms": 500, "factor": 2.0, "max_interval_ms": 10_000, "max_attempts": None, "on_max_attempts": "PAUSE"
    }
    assert tuned["handlers"][0]["retry_policy"]["max_attempts"] == 2
    assert (tuned["inactivity_timeout_ms"], tuned["abort_timeout_ms"], tuned["journal_retention_ms"]) == (60_000, None, 3_600_000)


async def test_re_registering_the_same_deployment_is_idempotent(admin: TestClient, deployment: Deployment) -> None:
    deployment.respond = lambda: web.json_response(manifest(service("Echo", "SERVICE", handler("echo"))))
    first = await admin.post("/deployments", json={"uri": deployment.uri})
    again = await admin.post("/deployments", json={"uri": deployment.uri + "/"})

    assert first.status == 201
    assert again.status == 200
    assert (await again.json())["id"] == (await first.json())["id"]
    listed = (await (await admin.get("/deployments")).json())["deployments"]
    assert sum(d["uri"] == deployment.uri for d in listed) == 1


def other_uri(deployment: Deployment) -> str:
    """The same server under another uri: a new version served at a new address."""
    return deployment.uri.replace("127.0.0.1", "localhost")


async def test_a_changed_deployment_at_a_new_uri_registers_anew_and_wins(
    admin: TestClient, deployment: Deployment, ingress_settings: IngressSettings
) -> None:
    deployment.respond = lambda: web.json_response(manifest(service("Shop", "SERVICE", handler("buy"))))
    first = await (await admin.post("/deployments", json={"uri": deployment.uri})).json()
    deployment.respond = lambda: web.json_response(manifest(service("Shop", "SERVICE", handler("buy"), handler("sell"))))
    second_response = await admin.post("/deployments", json={"uri": other_uri(deployment)})
    second = await second_response.json()

    assert second_response.status == 201 and second["id"] != first["id"]
    shop = await (await admin.get("/services/Shop")).json()
    assert shop["deployment_id"] == second["id"]
    assert [h["name"] for h in shop["handlers"]] == ["buy", "sell"]

    # A fresh runtime rebuilds the same view from keystate.meta alone.
    other = IngressRuntime(ingress_settings)
    await other.start()
    try:
        entry = other.meta.state.service("Shop")
        assert entry is not None and entry.deployment_id == second["id"]
        assert {first["id"], second["id"]} <= set(other.meta.state.deployments)
    finally:
        await other.stop()


async def test_delete_removes_a_deployment_and_its_services_fall_back(admin: TestClient, deployment: Deployment) -> None:
    deployment.respond = lambda: web.json_response(manifest(service("Mail", "SERVICE", handler("send_mail"))))
    first = await (await admin.post("/deployments", json={"uri": deployment.uri})).json()
    deployment.respond = lambda: web.json_response(manifest(service("Mail", "SERVICE", handler("send_mail"), handler("x"))))
    second = await (await admin.post("/deployments", json={"uri": other_uri(deployment)})).json()

    deleted = await admin.delete(f"/deployments/{second['id']}")

    assert deleted.status == 202
    assert (await admin.get(f"/deployments/{second['id']}")).status == 404
    assert (await (await admin.get("/services/Mail")).json())["deployment_id"] == first["id"]


async def test_an_unreachable_deployment_is_a_400_that_says_so(admin: TestClient) -> None:
    response = await admin.post("/deployments", json={"uri": "http://127.0.0.1:1"})

    assert response.status == 400
    body = await response.json()
    assert body["code"] == 400
    assert "could not reach the deployment at http://127.0.0.1:1" in body["message"]


@pytest.mark.parametrize(
    ("payload", "fragment"),
    [(b"not json", "the body must be JSON"), (b"[]", '"uri"'), (b'{"url": "x"}', '"uri"'), (b'{"uri": "ftp://x"}', "not an http(s) URL")],
)
async def test_a_bad_registration_body_is_a_400(admin: TestClient, payload: bytes, fragment: str) -> None:
    response = await admin.post("/deployments", data=payload, headers={"content-type": "application/json"})
    assert response.status == 400
    assert fragment in (await response.json())["message"]


async def test_unknown_deployment_and_service_are_404(admin: TestClient) -> None:
    for path in ("/deployments/dp_nope", "/services/Nope"):
        response = await admin.get(path)
        assert response.status == 404
        body = await response.json()
        assert body["code"] == 404 and "list" in body["message"]


async def test_health_is_ok_once_started(admin: TestClient, runtime: IngressRuntime) -> None:
    response = await admin.get("/health")
    assert response.status == 200
    assert await response.json() == {"status": "ok"}

    runtime.results.ready = False
    response = await admin.get("/health")
    assert response.status == 503
    assert (await response.json())["status"] == "starting"


async def test_schemas_are_served_like_a_schema_registry(admin: TestClient) -> None:
    response = await admin.get("/schemas/ids/101")
    assert response.status == 200
    schema = json.loads((await response.json())["schema"])
    assert schema["name"] == "InvokeCommand"
    parse_schema(schema)  # self-contained: any Avro tool can read it

    assert (await admin.get("/schemas/ids/99999")).status == 404
    assert (await admin.get("/schemas/ids/abc")).status == 400
