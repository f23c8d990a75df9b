"""The CLI against a token-protected admin API, and the listener flags of `keystate runtime|ingress`.

The admin API here is the real app on 127.0.0.1 with a runtime that is not connected to Kafka:
GET routes answer from the empty meta view; registering through a protected admin with a broker
is in tests/ingress/test_auth_kafka.py.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from keystate.cli import _parser, main as cli_main
from keystate.cli.deployments import invocations_main, main
from keystate.cli.runtime import IngressListen, ingress_listen
from keystate.ingress.admin import admin_app
from keystate.ingress.auth import ADMIN, BearerToken
from keystate.ingress.runtime import IngressRuntime, IngressSettings

SECRET = "cli-admin-token-0123456789abcdef"


@pytest.fixture(autouse=True)
def _no_token_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEYSTATE_ADMIN_TOKEN", raising=False)
    monkeypatch.delenv("KEYSTATE_INGRESS_TOKEN", raising=False)
    monkeypatch.delenv("KEYSTATE_ADMIN_URL", raising=False)


@pytest.fixture
async def admin_url(tmp_path: Path) -> AsyncIterator[str]:
    settings = IngressSettings("127.0.0.1:1", state_dir=tmp_path, admin_token=BearerToken(SECRET, f"${ADMIN.env}"))
    async with TestServer(admin_app(IngressRuntime(settings)), host="127.0.0.1") as server:
        yield str(server.make_url("")).rstrip("/")


async def test_the_token_from_the_environment_opens_a_protected_admin(
    admin_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KEYSTATE_ADMIN_TOKEN", SECRET)

    code = await asyncio.to_thread(main, ["--admin", admin_url, "list"])

    assert code == 0
    assert "no deployments registered" in capsys.readouterr().out


async def test_the_token_file_opens_a_protected_admin(
    admin_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    file = tmp_path / "admin.token"
    file.write_text(SECRET + "\n")
    monkeypatch.setenv("KEYSTATE_ADMIN_TOKEN", "a-stale-token-from-the-environment")

    top = await asyncio.to_thread(main, ["--admin", admin_url, "--admin-token-file", str(file), "list"])
    sub = await asyncio.to_thread(main, ["list", "--admin", admin_url, "--admin-token-file", str(file)])

    assert (top, sub) == (0, 0)
    assert "no deployments registered" in capsys.readouterr().out


async def test_without_a_token_the_cli_says_how_to_give_it(admin_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code = await asyncio.to_thread(main, ["--admin", admin_url, "describe", "dp_1"])

    assert code == 1
    err = capsys.readouterr().err
    assert "401" in err and "requires a token" in err
    assert "KEYSTATE_ADMIN_TOKEN" in err and "--admin-token-file" in err


async def test_a_wrong_token_is_refused_and_not_printed(
    admin_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KEYSTATE_ADMIN_TOKEN", "wrong-token-wrong-token-wrong")

    code = await asyncio.to_thread(invocations_main, ["--admin", admin_url, "cancel", "inv_1"])

    assert code == 1
    out = capsys.readouterr()
    assert "refused the admin token from $KEYSTATE_ADMIN_TOKEN" in out.err
    assert "wrong-token" not in out.err + out.out


async def test_an_unreadable_token_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "missing.token"

    code = await asyncio.to_thread(main, ["--admin", "http://127.0.0.1:1", "--admin-token-file", str(missing), "list"])

    assert code == 1
    assert f"cannot read the admin token file {missing}" in capsys.readouterr().err


async def test_the_token_is_not_sent_on_to_where_a_redirect_points(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    seen: list[str | None] = []

    async def elsewhere(request: web.Request) -> web.Response:
        seen.append(request.headers.get("Authorization"))
        return web.json_response({"deployments": []})

    other_app = web.Application()
    other_app.router.add_get("/deployments", elsewhere)
    async with TestServer(other_app, host="127.0.0.1") as other:
        target = str(other.make_url("/deployments"))

        async def redirect(request: web.Request) -> web.Response:
            raise web.HTTPTemporaryRedirect(target)

        app = web.Application()
        app.router.add_get("/deployments", redirect)
        async with TestServer(app, host="127.0.0.1") as server:
            monkeypatch.setenv("KEYSTATE_ADMIN_TOKEN", SECRET)
            code = await asyncio.to_thread(main, ["--admin", str(server.make_url("")), "list"])

    assert code == 1
    assert seen == []
    err = capsys.readouterr().err
    assert "redirect" in err and SECRET not in err


def _runtime_args(*extra: str) -> list[str]:
    return ["ingress", "--bootstrap", "127.0.0.1:1", *extra]


def test_a_non_loopback_listener_without_a_token_is_refused_before_connecting(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        assert cli_main(_runtime_args("--ingress-host", "0.0.0.0")) == 2
    assert "refusing to serve the ingress on 0.0.0.0 without authentication" in caplog.text
    assert "--insecure-listen" in caplog.text


def test_the_deprecated_host_flag_sets_both_listeners(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        assert cli_main(["runtime", "--bootstrap", "127.0.0.1:1", "--host", "::"]) == 2
    assert "--host is deprecated" in caplog.text
    assert "refusing to serve the ingress on ::" in caplog.text
    assert "refusing to serve the admin API on ::" in caplog.text


def _listen(*argv: str, environ: dict[str, str] | None = None) -> IngressListen:
    return ingress_listen(_parser().parse_args(["runtime", *argv]), environ or {})


def test_listener_hosts_default_to_loopback_and_host_is_an_alias() -> None:
    default = _listen()
    alias = _listen("--host", "127.0.0.2")
    explicit = _listen("--host", "127.0.0.2", "--admin-host", "localhost")

    assert (default.ingress_host, default.admin_host) == ("127.0.0.1", "127.0.0.1")
    assert (alias.ingress_host, alias.admin_host) == ("127.0.0.2", "127.0.0.2")
    assert (explicit.ingress_host, explicit.admin_host) == ("127.0.0.2", "localhost")


def test_a_token_or_insecure_listen_allows_a_non_loopback_listener(caplog: pytest.LogCaptureFixture) -> None:
    with_token = _listen("--admin-host", "0.0.0.0", environ={"KEYSTATE_ADMIN_TOKEN": SECRET})
    with caplog.at_level(logging.WARNING):
        insecure = _listen("--ingress-host", "0.0.0.0", "--insecure-listen")

    assert with_token.admin_token is not None and with_token.admin_token.matches(SECRET)
    assert with_token.ingress_token is None
    assert insecure.insecure and insecure.ingress_host == "0.0.0.0"
    # The loud warning is run_ingress's, when it binds (tests/ingress/test_auth_settings.py).
    assert "refusing" not in caplog.text


@pytest.mark.integration
def test_keystate_ingress_takes_its_tokens_from_the_file_and_the_environment(
    kafka_bootstrap: str, tmp_path: Path
) -> None:
    from keystate.schemas.topics import Topics
    from keystate.server.topics import TopicSettings, ensure_topics
    from tests.e2e.harness import Proc, free_port, http, wait_http

    prefix = f"test.cliauth.{uuid.uuid4().hex[:8]}."
    ensure_topics(kafka_bootstrap, Topics(prefix), TopicSettings(partitions=1))
    admin_file = tmp_path / "admin.token"
    admin_file.write_text(SECRET + "\n")
    admin_file.chmod(0o600)
    ingress_secret = "cli-ingress-token-0123456789abcdef"
    port, admin_port = free_port(), free_port()
    proc = Proc(
        "ingress",
        [sys.executable, "-m", "keystate.cli", "ingress", "--bootstrap", kafka_bootstrap, "--prefix", prefix,
         "--port", str(port), "--admin-port", str(admin_port), "--admin-token-file", str(admin_file),
         "--state-dir", str(tmp_path / "state")],
        tmp_path / "ingress.log",
        {"KEYSTATE_INGRESS_TOKEN": ingress_secret, "KEYSTATE_ADMIN_TOKEN": ""},  # the file wins over the variable
    )
    try:
        wait_http(f"http://127.0.0.1:{admin_port}/health", proc=proc)
        admin = f"http://127.0.0.1:{admin_port}/deployments"
        ingress = f"http://127.0.0.1:{port}/Greeter/greet"

        assert http("GET", admin).status == 401
        assert http("GET", admin, headers={"Authorization": f"Bearer {ingress_secret}"}).status == 401
        assert http("GET", admin, headers={"Authorization": f"Bearer {SECRET}"}).status == 200
        assert http("POST", ingress, "Ann").status == 401
        assert http("POST", ingress, "Ann", headers={"Authorization": f"Bearer {SECRET}"}).status == 401
        # Past authentication: no such service is registered.
        assert http("POST", ingress, "Ann", headers={"Authorization": f"Bearer {ingress_secret}"}).status == 404
    finally:
        proc.stop()
    log = proc.log_path.read_text()
    assert f"bearer token from --admin-token-file {admin_file}" in log
    assert "bearer token from $KEYSTATE_INGRESS_TOKEN" in log
    assert SECRET not in log and ingress_secret not in log


def test_an_empty_host_means_every_address_and_is_refused_without_a_token() -> None:
    from keystate.ingress.auth import AuthSetupError

    with pytest.raises(AuthSetupError, match="refusing to serve the ingress on every address"):
        _listen("--ingress-host", "")
