"""Service settings on a real broker: durable in keystate.meta, read by every view, kept across re-registrations."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from keystate.ingress.runtime import IngressRuntime
from keystate.server.meta import MetaView

from ingress_support import Deployment, handler, manifest, service

pytestmark = pytest.mark.integration


async def test_settings_are_shared_through_keystate_meta_and_outlive_a_re_registration(
    admin: TestClient, deployment: Deployment, runtime: IngressRuntime
) -> None:
    tuned = service("Tuned", "SERVICE", handler("go"))
    deployment.respond = lambda: web.json_response(manifest(tuned))
    assert (await admin.post("/deployments", json={"uri": deployment.uri})).status == 201

    answer = await admin.patch("/services/Tuned", json={"public": False, "journal_retention": "PT2H"})
    assert answer.status == 200, await answer.text()
    body = await answer.json()
    assert (body["public"], body["journal_retention_ms"], body["overridden"]) == (False, 7_200_000, ["journal_retention_ms", "public"])
    # A second patch merges into the first.
    answer = await admin.patch("/services/Tuned", json={"inactivity_timeout": 90_000})
    body = await answer.json()
    assert (body["public"], body["journal_retention_ms"], body["inactivity_timeout_ms"]) == (False, 7_200_000, 90_000)

    # Another process reading keystate.meta from the beginning sees the same effective service.
    other = MetaView(runtime.settings.kafka)
    await other.start()
    try:
        entry = other.state.service("Tuned")
        assert entry is not None and entry.metadata["ingress_private"] is True and entry.journal_retention_ms() == 7_200_000
    finally:
        other.stop()

    # A changed deployment of the service (forced over the same uri) keeps the override.
    deployment.respond = lambda: web.json_response(manifest(service("Tuned", "SERVICE", handler("go"), handler("more"))))
    again = await admin.post("/deployments", json={"uri": deployment.uri, "force": True})
    assert again.status == 200, await again.text()
    shown = await (await admin.get("/services/Tuned")).json()
    assert [h["name"] for h in shown["handlers"]] == ["go", "more"]
    assert (shown["public"], shown["journal_retention_ms"], shown["inactivity_timeout_ms"]) == (False, 7_200_000, 90_000)
    assert all(h["ingress_private"] for h in shown["handlers"])
