"""`@handler(accept=..., content_type=...)`: declared in the manifest as Restate does, honoured by the ingress."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

import keystate
from keystate import Context
from keystate.ingress.app import ingress_app
from keystate.ingress.runtime import IngressRuntime, IngressSettings
from keystate.schemas.topics import Topics
from keystate.serde import BytesSerde
from keystate.server.discovery import manifest_to_record

svc = keystate.Service("Docs")


@svc.handler(accept="text/*", content_type="text/plain", input_serde=BytesSerde(), output_serde=BytesSerde())
async def shout(ctx: Context, text: bytes) -> bytes:
    return text.upper()


@svc.handler()
async def plain(ctx: Context, name: str) -> str:
    return name


@svc.handler(content_type="application/vnd.docs.v1+json")
async def versioned(ctx: Context) -> dict[str, int]:
    return {"v": 1}


obj = keystate.VirtualObject("Notes")


@obj.handler(kind="shared", accept="application/*")
async def read(ctx: keystate.ObjectSharedContext, query: dict[str, Any]) -> str:
    return ""


wf = keystate.Workflow("Doc")


@wf.main(accept="text/markdown", content_type="text/html", input_serde=BytesSerde(), output_serde=BytesSerde())
async def render(ctx: keystate.WorkflowContext, md: bytes) -> bytes:
    return md


def _handlers(service: Any) -> dict[str, dict[str, Any]]:
    [spec] = keystate.manifest([service])["services"]
    return {h["name"]: h for h in spec["handlers"]}


def test_accept_and_content_type_are_the_manifests_input_and_output_content_types() -> None:
    handlers = _handlers(svc)
    assert (handlers["shout"]["input"], handlers["shout"]["output"]) == (
        {"contentType": "text/*"}, {"contentType": "text/plain"},
    )
    # Unset: the serde's content type, as before.
    assert (handlers["plain"]["input"], handlers["plain"]["output"]) == (
        {"contentType": "application/json"}, {"contentType": "application/json"},
    )
    # A handler without an argument still takes no body.
    assert (handlers["versioned"]["input"], handlers["versioned"]["output"]) == (
        {}, {"contentType": "application/vnd.docs.v1+json"},
    )
    assert _handlers(obj)["read"]["input"] == {"contentType": "application/*"}
    assert (_handlers(wf)["render"]["input"], _handlers(wf)["render"]["output"]) == (
        {"contentType": "text/markdown"}, {"contentType": "text/html"},
    )


def test_the_server_reads_them_into_the_deployment_record() -> None:
    record = manifest_to_record(keystate.manifest([svc]), "http://127.0.0.1:9", now_ms=1)
    [service] = record["services"]
    shout_rec = next(h for h in service["handlers"] if h["name"] == "shout")
    assert (shout_rec["input_content_type"], shout_rec["output_content_type"]) == ("text/*", "text/plain")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"accept": "json"}, "accept must be a media type"),
    ({"content_type": "text/*"}, "a wildcard like 'text/\\*' is not one"),
    ({"content_type": 3}, "content_type must be a media type"),
])
def test_malformed_media_types_are_refused_at_registration(kwargs: dict[str, Any], message: str) -> None:
    local = keystate.Service("Bad")
    with pytest.raises(ValueError, match=message):
        @local.handler(**kwargs)
        async def h(ctx: Context, x: str) -> str:
            return x


@pytest.fixture
async def ingress() -> AsyncIterator[TestClient]:
    # Never started: a request that passes the content-type check stops at the missing producer (503).
    runtime = IngressRuntime(IngressSettings("127.0.0.1:1", Topics("unit.")))
    record = manifest_to_record(keystate.manifest([svc]), "http://127.0.0.1:9", now_ms=1)
    runtime.meta.state.apply(record["deployment_id"], record)
    async with TestClient(TestServer(ingress_app(runtime), host="127.0.0.1")) as client:
        yield client


async def test_the_ingress_takes_what_the_handler_accepts_and_refuses_other_types(ingress: TestClient) -> None:
    for media in ("text/plain", "text/csv; charset=utf-8"):
        accepted = await ingress.post("/Docs/shout", data=b"hi", headers={"content-type": media})
        assert accepted.status == 503, media
    refused = await ingress.post("/Docs/shout", data=b"<hi/>", headers={"content-type": "application/xml"})
    assert refused.status == 400
    assert "text/*" in (await refused.json())["message"]
    refused_plain = await ingress.post("/Docs/plain", data=b"hi", headers={"content-type": "text/plain"})
    assert refused_plain.status == 400
