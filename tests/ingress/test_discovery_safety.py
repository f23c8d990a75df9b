"""Registration cannot be used to reach or read what the admin's network hides (SSRF), against real local servers."""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from keystate.server.address_policy import ALLOW_ENV, AddressNotAllowed, AddressPolicy, address_class
from keystate.server.discovery import discover
from keystate.server.errors import MetaError
from keystate.server.identity import create_key_file

from ingress_support import GREETER, Deployment, manifest

SECRET = "s3cr3t-instance-credentials-AKIAEXAMPLE"


class Target:
    """A local HTTP server that counts the requests it got and answers what the test sets."""

    def __init__(self) -> None:
        self.hits = 0
        self.respond: Callable[[], web.StreamResponse] = lambda: web.json_response(manifest(GREETER))
        self.server: TestServer | None = None
        self.headers: dict[str, str] = {}

    @property
    def uri(self) -> str:
        assert self.server is not None
        return str(self.server.make_url("")).rstrip("/")

    @property
    def port(self) -> int:
        assert self.server is not None and self.server.port is not None
        return self.server.port

    async def _any(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        self.headers = dict(request.headers)
        return self.respond()


@pytest.fixture
async def target() -> AsyncIterator[Target]:
    fake = Target()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", fake._any)
    fake.server = TestServer(app, host="127.0.0.1")
    await fake.server.start_server()
    try:
        yield fake
    finally:
        await fake.server.close()


async def _message(uri: str, *, timeout: float = 5.0, allow: AddressPolicy | None = None) -> str:
    with pytest.raises(MetaError) as info:
        await discover(uri, timeout=timeout, allow=allow)
    return str(info.value)


# --- redirects ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_a_redirecting_target_is_refused_and_not_followed(deployment: Deployment, target: Target, status: int) -> None:
    # The redirect points at a valid deployment: following it would register it.
    deployment.respond = lambda: web.Response(status=status, headers={"Location": f"{target.uri}/discover"}, text=SECRET)

    message = await _message(deployment.uri)

    assert f"answered HTTP {status}, a redirect" in message
    assert "register the final URL" in message
    assert SECRET not in message and target.uri not in message
    assert target.hits == 0


# --- addresses the policy refuses --------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "klass"),
    [
        ("169.254.169.254", "link-local"),  # cloud metadata
        ("[::ffff:169.254.169.254]", "link-local"),  # the same, spelled as IPv4-mapped IPv6
        ("[fe80::1]", "link-local"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("[fd00::1]", "private"),
        ("100.64.0.1", "private"),
        ("224.0.0.1", "multicast"),
        ("240.0.0.1", "reserved"),
    ],
)
async def test_private_and_link_local_addresses_are_refused_by_default(
    host: str, klass: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(ALLOW_ENV, raising=False)
    with pytest.raises(AddressNotAllowed) as info:
        await discover(f"http://{host}:9080", timeout=2.0)
    assert info.value.klass == klass
    assert f" {klass} address" in str(info.value) and "--deployment-allow" in str(info.value)


async def test_unspecified_address_is_refused_although_linux_connects_it_to_loopback(target: Target) -> None:
    # 0.0.0.0 reaches the local host; allowing loopback must not allow it.
    message = await _message(f"http://0.0.0.0:{target.port}", allow=AddressPolicy.parse("loopback"))
    assert "an unspecified address" in message
    assert target.hits == 0


async def test_a_name_that_resolves_to_a_refused_address_is_refused_without_leaking_its_body(target: Target) -> None:
    # Production policy without loopback; "localhost" resolves to loopback only at connect time.
    target.respond = lambda: web.Response(text=SECRET)
    for uri in (f"http://localhost:{target.port}", f"http://127.0.0.1:{target.port}"):
        with pytest.raises(AddressNotAllowed) as info:
            await discover(uri, timeout=5.0, allow=AddressPolicy.parse("public,10.0.0.0/8"))
        assert info.value.klass == "loopback"
        assert SECRET not in str(info.value)
    assert target.hits == 0


async def test_an_allow_list_entry_admits_exactly_its_range(target: Target) -> None:
    allow = AddressPolicy.parse("127.0.0.1/32")
    record = await discover(target.uri, timeout=5.0, allow=allow)
    assert record["uri"] == target.uri
    with pytest.raises(AddressNotAllowed):
        await discover(f"http://127.0.0.2:{target.port}", timeout=5.0, allow=allow)


async def test_the_environment_sets_the_default_policy(target: Target, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ALLOW_ENV, "public")
    with pytest.raises(AddressNotAllowed):
        await discover(target.uri, timeout=5.0)
    monkeypatch.setenv(ALLOW_ENV, "")  # empty: the default, loopback allowed
    assert (await discover(target.uri, timeout=5.0))["uri"] == target.uri


async def test_discovery_through_the_guarded_connector_is_still_signed(target: Target, tmp_path: Path) -> None:
    identity = create_key_file(tmp_path / "identity.pem")
    await discover(target.uri, timeout=5.0, identity=identity)
    signed = identity.headers("/discover")
    assert signed and all(target.headers.get(name) for name in signed)


# --- what the caller learns --------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 401, 403, 404, 500, 502])
async def test_the_targets_body_never_reaches_the_caller(target: Target, status: int) -> None:
    target.respond = lambda: web.Response(status=status, text=f"<html>{SECRET}</html>", reason=SECRET[:12])
    message = await _message(target.uri)
    assert SECRET not in message and SECRET[:12] not in message and "html" not in message
    if status != 200:
        assert f"answered HTTP {status};" in message


async def test_a_json_answer_is_quoted_in_errors_only_in_short_pieces(target: Target) -> None:
    long_secret = SECRET * 5
    target.respond = lambda: web.json_response(
        {"protocol": 1, "transports": ["websocket"], "services": [{"name": long_secret, "ty": long_secret, "handlers": []}]}
    )
    message = await _message(target.uri)
    assert "field 'ty' must be one of SERVICE, VIRTUAL_OBJECT, WORKFLOW" in message
    assert long_secret[:41] not in message


async def _closed_port() -> int:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = int(server.sockets[0].getsockname()[1])
    server.close()
    await server.wait_closed()
    return port


async def _serve(handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]) -> asyncio.Server:
    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def _garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(100)
    writer.write(b"SSH-2.0-OpenSSH_9.6 " + SECRET.encode() + b"\r\n\x00\xff\r\n\r\n")
    await writer.drain()
    writer.close()


async def _hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


async def _silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(5)
    writer.close()


async def test_closed_and_open_ports_give_the_caller_the_same_message() -> None:
    servers = {name: await _serve(handle) for name, handle in (("garbage", _garbage), ("hang-up", _hang_up), ("silent", _silent))}
    try:
        ports = {"closed": await _closed_port(), **{n: int(s.sockets[0].getsockname()[1]) for n, s in servers.items()}}
        messages = {}
        for name, port in ports.items():
            text = await _message(f"http://127.0.0.1:{port}", timeout=0.5)
            messages[name] = text.replace(str(port), "PORT")
        # TLS spoken to a plain server: a handshake failure looks the same too.
        plain = ports["garbage"]
        messages["tls"] = (await _message(f"https://127.0.0.1:{plain}", timeout=0.5)).replace(str(plain), "PORT")
        messages["tls"] = messages["tls"].replace("https://", "http://")
    finally:
        for server in servers.values():
            server.close()
    assert len(set(messages.values())) == 1, messages
    assert "could not reach the deployment at http://127.0.0.1:PORT" in messages["closed"]
    assert SECRET not in messages["garbage"] and "SSH" not in messages["garbage"]


async def test_an_unresolvable_name_gives_the_same_message_as_a_closed_port() -> None:
    closed = await _closed_port()
    by_port = (await _message(f"http://127.0.0.1:{closed}", timeout=1.0)).replace(f"127.0.0.1:{closed}", "HOST")
    by_name = (await _message("http://no-such-host.invalid:9080", timeout=1.0)).replace("no-such-host.invalid:9080", "HOST")
    assert by_port == by_name


# --- the policy itself -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("address", "klass"),
    [
        ("127.0.0.1", "loopback"), ("127.255.0.9", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
        ("0.0.0.0", "unspecified"), ("0.1.2.3", "unspecified"), ("::", "unspecified"),
        ("169.254.169.254", "link-local"), ("fe80::abcd", "link-local"),
        ("10.1.2.3", "private"), ("172.31.255.255", "private"), ("192.168.0.1", "private"), ("fc00::1", "private"),
        ("224.0.0.251", "multicast"), ("ff02::1", "multicast"),
        ("192.0.2.1", "reserved"), ("255.255.255.255", "reserved"),
        ("8.8.8.8", "public"), ("172.32.0.1", "public"), ("2606:4700::1111", "public"),
    ],
)
def test_address_classes(address: str, klass: str) -> None:
    assert address_class(ipaddress.ip_address(address)) == klass


def test_the_default_policy_allows_loopback_and_public_only() -> None:
    policy = AddressPolicy.from_env({})
    assert policy.describe() == "loopback,public"
    policy.check(ipaddress.ip_address("127.0.0.1"), "http://x")
    policy.check(ipaddress.ip_address("8.8.8.8"), "http://x")
    with pytest.raises(AddressNotAllowed):
        policy.check(ipaddress.ip_address("10.0.0.1"), "http://x")


def test_none_allows_nothing_and_a_bad_entry_says_what_is_accepted() -> None:
    with pytest.raises(AddressNotAllowed):
        AddressPolicy.parse("none").check(ipaddress.ip_address("8.8.8.8"), "http://x")
    with pytest.raises(MetaError, match=r"entry 'intranet' is neither an address class .* nor a CIDR range"):
        AddressPolicy.parse("loopback,intranet")
