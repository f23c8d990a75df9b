"""A deployment given identity_keys serves only requests signed with one of them (discovery included)."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

import keystate
from keystate import Context
from keystate.schemas._codec import codec
from keystate.server.identity import RequestIdentity, signing_middleware

from sdk_helpers import NS, input_entry, start, target

signed_svc = keystate.Service("Signed")
runs: list[str] = []

PROCESSOR = RequestIdentity.generate()
STRANGER = RequestIdentity.generate()


@signed_svc.handler()
async def hello(ctx: Context, name: str) -> str:
    runs.append(name)
    return f"hello {name}"


def _app() -> aiohttp.web.Application:
    return keystate.app([signed_svc], identity_keys=[PROCESSOR.public_key])


@pytest.fixture(autouse=True)
def _no_runs() -> None:
    runs.clear()


async def _client(identity: RequestIdentity | None) -> TestClient:
    middlewares = (signing_middleware(identity),) if identity is not None else ()
    client = TestClient(TestServer(_app()), middlewares=middlewares)
    await client.start_server()
    return client


@pytest.fixture
async def as_processor() -> AsyncIterator[TestClient]:
    client = await _client(PROCESSOR)
    yield client
    await client.close()


@pytest.fixture
async def as_stranger() -> AsyncIterator[TestClient]:
    client = await _client(STRANGER)
    yield client
    await client.close()


@pytest.fixture
async def unsigned() -> AsyncIterator[TestClient]:
    client = await _client(None)
    yield client
    await client.close()


async def _invoke_over_websocket(client: TestClient) -> list[str]:
    ws = await client.ws_connect("/invoke/Signed/hello")
    for name, record in (start(target("Signed", "hello")), input_entry(b'"ann"')):
        await ws.send_bytes(codec().encode(name, record))
    out = []
    async for msg in ws:
        out.append(codec().decode(msg.data)[0])
    return out


async def test_signed_discovery_and_invocation_pass(as_processor: TestClient) -> None:
    resp = await as_processor.get("/discover")
    assert resp.status == 200
    assert (await resp.json())["services"][0]["name"] == "Signed"
    assert await _invoke_over_websocket(as_processor) == [NS + "EntryMessage", NS + "EndMessage"]
    assert runs == ["ann"]


async def test_unsigned_requests_are_refused_with_401_and_what_is_missing(unsigned: TestClient) -> None:
    resp = await unsigned.get("/discover")
    assert resp.status == 401
    text = await resp.text()
    assert "no x-restate-signature-scheme header" in text and "identity_keys" in text
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await unsigned.ws_connect("/invoke/Signed/hello")
    assert refused.value.status == 401
    resp = await unsigned.post("/invoke/Signed/hello", data=b"", headers={"content-type": "application/octet-stream"})
    assert resp.status == 401
    assert runs == []


async def test_requests_signed_with_another_key_are_refused_and_run_no_handler(as_stranger: TestClient) -> None:
    resp = await as_stranger.get("/discover")
    assert resp.status == 401
    assert f"signed by {STRANGER.public_key}, which is not one of identity_keys" in await resp.text()
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await as_stranger.ws_connect("/invoke/Signed/hello")
    assert refused.value.status == 401
    assert runs == []


async def test_a_token_for_one_handler_does_not_open_another(unsigned: TestClient) -> None:
    headers = PROCESSOR.headers("/invoke/Signed/other")
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await unsigned.ws_connect("/invoke/Signed/hello", headers=headers)
    assert refused.value.status == 401
    assert runs == []


def test_identity_keys_are_checked_when_the_app_is_built() -> None:
    with pytest.raises(ValueError, match="does not start with 'publickeyv1_'"):
        keystate.app([signed_svc], identity_keys=["AAAA"])


def test_without_cryptography_identity_keys_say_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives.asymmetric.ed25519", None)
    with pytest.raises(ImportError, match=r"pip install 'keystate\[identity\]'"):
        keystate.app([signed_svc], identity_keys=[PROCESSOR.public_key])
    keystate.app([signed_svc])  # without identity_keys the SDK needs no cryptography
