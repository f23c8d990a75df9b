"""The web UI's static files at `/ui/` on the admin API: served without a token, its API calls carry one.

The files (ingress/ui/) are plain HTML, CSS and ES modules with no build step, shipped as package
data. They hold no data of their own: everything they show comes from the admin API (`POST /query`,
`GET /services`, ...), which the browser calls with the admin token the user pasted. So the files are
open (`UI_PATHS` joins the admin's open paths) and the data stays behind the token.
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from .errors import NotFound

__all__ = ["UI_DIR", "UI_PATHS", "add_ui_routes"]

UI_DIR = Path(__file__).with_name("ui")
_CONTENT_TYPES = {
    ".html": "text/html",
    ".js": "text/javascript",  # browsers run ES modules only when served with a JavaScript type
    ".css": "text/css",
    ".svg": "image/svg+xml",
}
# Same-origin only: no inline script, no CDN, nothing loaded from elsewhere (machines may be offline).
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    # Revalidate each time: after an upgrade the browser must not mix old and new modules.
    "Cache-Control": "no-cache",
}


def _files() -> dict[str, tuple[str, bytes]]:
    """The servable files by URL name with their type and bytes, read once at import.

    A fixed table: no request path reaches the file system, and serving never blocks the loop.
    """
    if not UI_DIR.is_dir():
        return {}
    return {
        p.name: (_CONTENT_TYPES[p.suffix], p.read_bytes())
        for p in sorted(UI_DIR.iterdir())
        if p.is_file() and p.suffix in _CONTENT_TYPES
    }


_FILES = _files()
UI_PATHS: tuple[str, ...] = ("/ui", "/ui/", *(f"/ui/{name}" for name in _FILES))
"""The paths `add_ui_routes` serves: open on the admin even when it requires a token."""


def add_ui_routes(app: web.Application) -> None:
    """Serve the UI at `/ui/` (and redirect `/ui` there)."""
    app.router.add_get("/ui", _redirect)
    app.router.add_get("/ui/", _index)
    app.router.add_get("/ui/{name}", _file)


async def _redirect(request: web.Request) -> web.StreamResponse:
    # Relative links in index.html (app.js, app.css) resolve against /ui/, not against /. A relative
    # Location keeps working behind a proxy that serves the admin under a path of its own.
    return web.Response(status=301, headers={"Location": "ui/"})


async def _index(request: web.Request) -> web.StreamResponse:
    return _serve("index.html")


async def _file(request: web.Request) -> web.StreamResponse:
    return _serve(request.match_info["name"])


def _serve(name: str) -> web.StreamResponse:
    found = _FILES.get(name)
    if found is None:
        listing = ", ".join(_FILES) or "none: the package was installed without its ui/ files, reinstall keystate"
        raise NotFound(f"no UI file {name[:100]!r}; open the UI at /ui/ (its files: {listing})")
    content_type, body = found
    return web.Response(body=body, content_type=content_type, charset="utf-8", headers=_HEADERS)
