"""POST /deployments refuses unsafe targets with a 400 that leaks nothing of them (real broker, real HTTP)."""

from __future__ import annotations

import dataclasses

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from keystate.ingress.runtime import IngressSettings
from keystate.server.address_policy import AddressPolicy

from ingress_support import Deployment

pytestmark = pytest.mark.integration

SECRET = "s3cr3t-from-an-internal-service"


@pytest.fixture
def ingress_settings(ingress_settings: IngressSettings) -> IngressSettings:
    # A production policy: no loopback, one private range.
    return dataclasses.replace(ingress_settings, deployment_allow=AddressPolicy.parse("public,10.20.0.0/16"))


async def test_registration_refuses_addresses_outside_the_allow_list(admin: TestClient, deployment: Deployment) -> None:
    deployment.respond = lambda: web.Response(text=SECRET)
    for uri in (deployment.uri, "http://169.254.169.254/latest/meta-data", "http://10.21.0.1:9080"):
        response = await admin.post("/deployments", json={"uri": uri})
        body = await response.json()
        assert response.status == 400, body
        assert "--deployment-allow" in body["message"] and SECRET not in body["message"]
    assert (await (await admin.get("/deployments")).json())["deployments"] == []
