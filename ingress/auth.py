"""Bearer-token authentication of the ingress and the admin API, and the refusal to listen in the open without it.

Each listener has its own token (`$KEYSTATE_INGRESS_TOKEN` / `--ingress-token-file`,
`$KEYSTATE_ADMIN_TOKEN` / `--admin-token-file`); the file wins when both are given. Errors join the
ingress tree of `errors.py`:

```
IngressError
 ├── Unauthorized      401  no, a malformed, or the wrong bearer token (with WWW-Authenticate: Bearer)
 └── AuthSetupError    -    a token that cannot be used, or a non-loopback listener without one (at start)
```
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os
import stat
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .errors import IngressError

__all__ = [
    "ADMIN",
    "INGRESS",
    "AuthSetupError",
    "BearerToken",
    "Listener",
    "Unauthorized",
    "auth_middlewares",
    "check_listen",
    "is_loopback",
    "listen_refusal",
    "load_token",
]

log = logging.getLogger(__name__)

# Shorter tokens can be guessed by anyone who can send requests; this is only a warning.
_SHORT_TOKEN = 16
_MAKE_TOKEN = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


@dataclass(frozen=True, slots=True)
class Listener:
    """One of the two HTTP listeners, with the names of its settings for messages."""

    name: str
    env: str
    token_flag: str
    host_flag: str
    realm: str


INGRESS = Listener("ingress", "KEYSTATE_INGRESS_TOKEN", "--ingress-token-file", "--ingress-host", "keystate-ingress")
ADMIN = Listener("admin API", "KEYSTATE_ADMIN_TOKEN", "--admin-token-file", "--admin-host", "keystate-admin")


class Unauthorized(IngressError):
    """The request carries no, a malformed, or the wrong bearer token for this listener."""

    status = 401


class AuthSetupError(IngressError):
    """The authentication settings cannot be used; raised at start, never while serving."""


class BearerToken:
    """A secret bearer token; its repr names where it came from, never the token."""

    __slots__ = ("_secret", "source")

    def __init__(self, secret: str, source: str) -> None:
        if not secret:
            raise AuthSetupError(f"the token from {source} is empty; put the token in it, e.g. from {_MAKE_TOKEN}")
        # Header values cannot carry spaces or non-ASCII reliably: such a token could never be sent.
        if not all("!" <= char <= "~" for char in secret):
            raise AuthSetupError(
                f"the token from {source} contains spaces, control or non-ASCII characters; use printable "
                f"ASCII only, e.g. from {_MAKE_TOKEN}"
            )
        self._secret = secret.encode("ascii")
        self.source = source

    def matches(self, presented: str) -> bool:
        """Whether `presented` is this token, in time independent of where they differ."""
        return hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), self._secret)

    def __repr__(self) -> str:
        return f"BearerToken(from {self.source})"


def load_token(
    listener: Listener, file: Path | str | None = None, environ: Mapping[str, str] | None = None
) -> BearerToken | None:
    """The listener's token from `file` if given, else from its environment variable, else None (no authentication).

    The file wins over the variable: a flag on the command line is the more explicit of the two.
    Surrounding whitespace (the newline an editor adds) is not part of the token.
    """
    env = os.environ if environ is None else environ
    if file is not None:
        path = Path(file)
        try:
            text = path.read_text(encoding="utf-8")
            mode = path.stat().st_mode
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise AuthSetupError(
                f"cannot read the {listener.name} token file {path} ({reason}); give {listener.token_flag} "
                f"a readable UTF-8 file holding the token, or set ${listener.env} instead"
            ) from exc
        if listener.env in env:
            log.warning("%s %s is given and $%s is set: the file wins, $%s is ignored",
                        listener.token_flag, path, listener.env, listener.env)
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("the %s token file %s can be read by other users; restrict it with chmod 600 %s",
                        listener.name, path, path)
        secret, source = text.strip(), f"{listener.token_flag} {path}"
    elif listener.env in env:
        value = env[listener.env].strip()
        if not value:
            # Set but empty is most likely a secret that failed to load: do not serve in the open because of it.
            raise AuthSetupError(
                f"${listener.env} is set but empty; set it to the {listener.name} token, or unset it to serve "
                f"the {listener.name} without authentication (allowed on loopback only)"
            )
        secret, source = value, f"${listener.env}"
    else:
        return None
    token = BearerToken(secret, source)
    if len(secret) < _SHORT_TOKEN:
        log.warning("the %s token from %s has fewer than %d characters and may be guessed; make one with %s",
                    listener.name, source, _SHORT_TOKEN, _MAKE_TOKEN)
    return token


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine: 127.0.0.0/8, ::1 or localhost.

    Any other name could resolve to anything, so it counts as non-loopback, as do 0.0.0.0, :: and "".
    """
    name = host.strip().lower()
    if name == "localhost":
        return True
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def listen_refusal(listener: Listener, host: str, token: BearerToken | None) -> AuthSetupError | None:
    """The error refusing to serve `listener` on `host`, or None when it may: loopback, or a token is set."""
    if token is not None or is_loopback(host):
        return None
    return AuthSetupError(
        f"refusing to serve the {listener.name} on {host or 'every address'} without authentication: anyone "
        f"who can reach that address could use it. Set ${listener.env} or {listener.token_flag} FILE to require "
        f"a bearer token, listen on loopback only with {listener.host_flag} 127.0.0.1, or accept the risk "
        "with --insecure-listen"
    )


def check_listen(listener: Listener, host: str, token: BearerToken | None, *, insecure: bool = False) -> None:
    """Raise `listen_refusal`'s error; with `insecure` log a loud warning instead."""
    refusal = listen_refusal(listener, host, token)
    if refusal is None:
        return
    if not insecure:
        raise refusal
    log.warning(
        "INSECURE: the %s listens on %s WITHOUT AUTHENTICATION (--insecure-listen): anyone who can reach it can "
        "use it. Set $%s or %s FILE to require a token",
        listener.name, host or "every address", listener.env, listener.token_flag,
    )


def auth_middlewares(
    token: BearerToken | None, listener: Listener, *, open_paths: Collection[str] = ()
) -> list[Middleware]:
    """The middleware requiring `Authorization: Bearer <token>` on every path but GET `open_paths`; none without a token.

    Handlers then see the request without its Authorization header. Place it after `error_middleware`
    (refusals are JSON) and `limits_middleware` (it vouches for the headers being UTF-8), before any other.
    """
    if token is None:
        return []
    open_set = frozenset(open_paths)
    challenge = f'Bearer realm="{listener.realm}"'
    how = (
        f"send the header 'Authorization: Bearer <token>' with the {listener.name} token (set on the server by "
        f"${listener.env} or {listener.token_flag})"
    )

    def refuse(request: web.Request, reason: str, message: str, error: str | None) -> Unauthorized:
        log.info("refused %s %s on the %s from %s: %s", request.method, request.path, listener.name, request.remote, reason)
        header = challenge if error is None else f'{challenge}, error="{error}"'
        return Unauthorized(message, headers={"WWW-Authenticate": header})

    @web.middleware
    async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in open_set and request.method in ("GET", "HEAD"):
            return await handler(request)
        header = request.headers.get("Authorization")
        if header is None:
            raise refuse(request, "no Authorization header",
                         f"the {listener.name} requires authentication: {how}", None)
        scheme, _, presented = header.strip().partition(" ")
        presented = presented.strip()
        if scheme.lower() != "bearer" or not presented:
            raise refuse(request, "Authorization is not a bearer token",
                         f"the Authorization header is not of the form 'Bearer <token>'; {how}", "invalid_request")
        if not token.matches(presented):
            # RFC 6750: a token that is not valid is 401 invalid_token (403 would mean a valid token lacking rights).
            raise refuse(request, "wrong bearer token",
                         f"the bearer token is not the {listener.name} token; {how}", "invalid_token")
        # The token is keystate's credential, used up here: no handler sees it, no record stores it.
        headers = [(name, value) for name, value in request.headers.items() if name.lower() != "authorization"]
        return await handler(request.clone(headers=headers))

    return [bearer_auth]
