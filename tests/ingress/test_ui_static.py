"""The web UI's files on the admin API (:9070/ui/): served without a token, with the right types, nothing else.

A real admin app on 127.0.0.1 with an admin token, its runtime not connected to Kafka: these
requests stop at the static files or at authentication. The pages in a real browser are
tests/e2e/test_ui_browser.py.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from keystate.ingress.admin import admin_app
from keystate.ingress.admin_ui import UI_DIR, UI_PATHS
from keystate.ingress.auth import ADMIN, BearerToken
from keystate.ingress.runtime import IngressRuntime, IngressSettings

SECRET = "admin-secret-0123456789abcdef"


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[TestClient]:
    settings = IngressSettings("127.0.0.1:1", state_dir=tmp_path, admin_token=BearerToken(SECRET, f"${ADMIN.env}"))
    async with TestClient(TestServer(admin_app(IngressRuntime(settings)), host="127.0.0.1")) as client:
        yield client


async def test_ui_redirects_to_the_folder_so_relative_links_resolve(admin: TestClient) -> None:
    response = await admin.get("/ui", allow_redirects=False)

    assert response.status == 301
    assert response.headers["Location"] == "ui/"


async def test_index_and_its_modules_are_served_without_a_token_with_their_types(admin: TestClient) -> None:
    index = await admin.get("/ui/")
    assert index.status == 200
    assert index.content_type == "text/html"
    html = await index.text()
    assert '<script type="module" src="app.js">' in html

    script = await admin.get("/ui/app.js")
    style = await admin.get("/ui/app.css")

    # Browsers refuse to run a module served with another type (and nosniff forbids guessing).
    assert (script.status, script.content_type) == (200, "text/javascript")
    assert (style.status, style.content_type) == (200, "text/css")
    assert script.headers["X-Content-Type-Options"] == "nosniff"
    assert "script-src 'self'" in script.headers["Content-Security-Policy"]


async def test_every_module_the_ui_imports_is_served(admin: TestClient) -> None:
    """A module missing from the package (or from package data) breaks the whole UI: follow every import."""
    seen: set[str] = set()
    todo = ["app.js"]
    while todo:
        name = todo.pop()
        response = await admin.get(f"/ui/{name}")
        assert response.status == 200, f"/ui/{name} answered {response.status}"
        seen.add(name)
        for imported in re.findall(r'from "\./([\w.-]+\.js)"', await response.text()):
            if imported not in seen:
                todo.append(imported)
    assert {"app.js", "api.js", "dom.js", "invocations.js", "journal.js", "state.js", "catalog.js"} <= seen


async def test_the_api_behind_the_ui_still_requires_the_token(admin: TestClient) -> None:
    response = await admin.post("/query", json={"query": "SELECT 1"})

    assert response.status == 401
    assert "KEYSTATE_ADMIN_TOKEN" in (await response.json())["message"]


async def test_an_unknown_ui_file_is_404_naming_the_ui(admin: TestClient) -> None:
    auth = {"Authorization": f"Bearer {SECRET}"}

    missing = await admin.get("/ui/nope.js", headers=auth)
    escaping = await admin.get("/ui/%2e%2e%2fadmin.py", headers=auth)

    assert missing.status == 404
    assert "/ui/" in (await missing.json())["message"]
    # Only the files read at start are served: a path out of the folder is never opened.
    assert escaping.status == 404


async def test_only_ui_paths_are_open_without_a_token(admin: TestClient) -> None:
    assert all(path == "/ui" or path.startswith("/ui/") for path in UI_PATHS)

    response = await admin.get("/ui/nope.js")

    assert response.status == 401


def test_the_ui_loads_nothing_from_other_hosts() -> None:
    """No CDN, no web fonts: the UI must work on a machine without internet access."""
    for path in UI_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", text), f"{path.name} loads from another host"
        assert not re.search(r"@import|url\(\s*[\"']?(https?:)?//", text), f"{path.name} loads CSS from another host"
        assert not re.search(r"from\s+[\"']https?://", text), f"{path.name} imports a module from another host"
