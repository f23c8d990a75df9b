"""Verifying the processor's signature on every request a deployment gets (`identity_keys`).

Restate's v1 scheme (see `keystate.schemas.identity`): `x-restate-signature-scheme: v1` and a
JWT in `x-restate-jwt-v1`, signed with ed25519 by one of the keys, for this request's path, and
valid now. Anything else is answered 401 with what was wrong; nothing is echoed but the path.
Needs the `cryptography` package: `pip install 'keystate[identity]'`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from keystate.schemas.identity import (
    JWT_ALGORITHM,
    JWT_HEADER,
    PUBLIC_KEY_PREFIX,
    SCHEME_HEADER,
    SCHEME_UNSIGNED,
    SCHEME_V1,
    audience,
    parse_public_key,
)

from .errors import IdentityRejected

__all__ = ["IdentityRejected", "IdentityVerifier", "identity_middleware"]

log = logging.getLogger("keystate.sdk")

_FIX = (
    "this deployment accepts only requests signed by keystate (it was given identity_keys); "
    "register it with a keystate whose public key is among them (keystate identity show, or GET /identity "
    "on the admin API)"
)
_MAX_VERIFIED = 1024
_BASE58 = frozenset("123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz")


def _b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class IdentityVerifier:
    """Checks requests against a list of `publickeyv1_...` keys; `clock` gives Unix seconds."""

    def __init__(self, keys: Iterable[str], *, clock: Callable[[], float] = time.time) -> None:
        if isinstance(keys, str):
            raise TypeError(f"identity_keys must be a list of keys, e.g. [{keys!r}], not a string")
        try:
            from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
        except ImportError:
            raise ImportError(
                "identity_keys needs the cryptography package: pip install 'keystate[identity]'"
            ) from None
        texts = list(keys)
        if not texts:
            raise ValueError(
                "identity_keys is empty: give at least one publickeyv1_... key, or leave identity_keys out "
                "to accept unsigned requests"
            )
        self.keys = tuple(texts)
        self._public = {t: Ed25519PublicKey.from_public_bytes(parse_public_key(t)) for t in texts}
        self._clock = clock
        # Tokens whose signature checked out: the processor reuses a token for a few seconds, and a
        # dict lookup is ~100x cheaper than an ed25519 verification. Claims are checked every time.
        self._verified: dict[str, dict[str, Any]] = {}

    def verify(self, headers: Mapping[str, str], path: str) -> None:
        """Return if the request to `path` is signed by one of the keys; else IdentityRejected."""
        scheme = headers.get(SCHEME_HEADER)
        if scheme is None:
            raise IdentityRejected(f"the request has no {SCHEME_HEADER} header; {_FIX}")
        if scheme == SCHEME_UNSIGNED:
            raise IdentityRejected(f"the request is unsigned ({SCHEME_HEADER}: {SCHEME_UNSIGNED}); {_FIX}")
        if scheme != SCHEME_V1:
            raise IdentityRejected(f"the {SCHEME_HEADER} header is not {SCHEME_V1}, the one scheme known here; {_FIX}")
        token = headers.get(JWT_HEADER)
        if not token:
            raise IdentityRejected(f"the request has no {JWT_HEADER} header with its signature; {_FIX}")
        claims = self._verified.get(token)
        if claims is None:
            claims = self._check_signature(token)
            if len(self._verified) >= _MAX_VERIFIED:
                self._verified.clear()
            self._verified[token] = claims
        self._check_claims(claims, audience(path))

    def _check_signature(self, token: str) -> dict[str, Any]:
        from cryptography.exceptions import InvalidSignature

        parts = token.split(".")
        if len(parts) != 3:
            raise IdentityRejected(f"the {JWT_HEADER} header is not a JWT (three dot-separated parts); {_FIX}")
        try:
            header = json.loads(_b64url_decode(parts[0]))
            claims = json.loads(_b64url_decode(parts[1]))
            signature = _b64url_decode(parts[2])
        except (ValueError, binascii.Error):
            raise IdentityRejected(f"the {JWT_HEADER} header is not a well-formed JWT; {_FIX}") from None
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise IdentityRejected(f"the {JWT_HEADER} header is not a well-formed JWT; {_FIX}")
        if header.get("alg") != JWT_ALGORITHM:
            raise IdentityRejected(f"the {JWT_HEADER} token is not signed with {JWT_ALGORITHM} (ed25519); {_FIX}")
        signed = f"{parts[0]}.{parts[1]}".encode("ascii")
        # The key the token names first (one verification instead of one per key); the kid is only a
        # hint: the signature decides.
        kid = header.get("kid")
        named = self._public.get(kid) if isinstance(kid, str) else None
        for key in ([named] if named is not None else []) + [k for k in self._public.values() if k is not named]:
            try:
                key.verify(signature, signed)
            except InvalidSignature:
                continue
            return claims
        raise IdentityRejected(f"the request is signed by {_kid(header)}, which is not one of identity_keys; {_FIX}")

    def _check_claims(self, claims: dict[str, Any], aud: str) -> None:
        for name in ("aud", "exp", "iat", "nbf"):
            if name not in claims:
                raise IdentityRejected(f"the {JWT_HEADER} token has no {name!r} claim; {_FIX}")
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if aud not in audiences:
            raise IdentityRejected(
                f"the {JWT_HEADER} token was signed for another path than {aud}; a token is valid for one path only"
            )
        exp, nbf = claims["exp"], claims["nbf"]
        if not _is_number(exp) or not _is_number(nbf):
            raise IdentityRejected(f"the {JWT_HEADER} token's exp and nbf must be numbers of seconds; {_FIX}")
        now = self._clock()
        if now > exp:
            raise IdentityRejected(
                f"the {JWT_HEADER} token expired {now - exp:.0f} s ago; tokens are valid for a minute: "
                "check that the clocks of the keystate processor and of this deployment agree"
            )
        if now < nbf:
            raise IdentityRejected(
                f"the {JWT_HEADER} token is not valid for another {nbf - now:.0f} s; "
                "check that the clocks of the keystate processor and of this deployment agree"
            )


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _kid(header: Mapping[str, Any]) -> str:
    """The token's key id for the message, if it is a well-formed public key string (never anything else)."""
    kid = header.get("kid")
    if isinstance(kid, str) and kid.startswith(PUBLIC_KEY_PREFIX) and len(kid) <= 64:
        if set(kid[len(PUBLIC_KEY_PREFIX) :]) <= _BASE58:
            return kid
    return "another key"


def identity_middleware(verifier: IdentityVerifier) -> Middleware:
    """An aiohttp middleware answering 401 to every request the verifier rejects (discovery included)."""

    @web.middleware
    async def check_identity(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            verifier.verify(request.headers, request.path)
        except IdentityRejected as exc:
            log.warning("refused %s %s from %s: %s", request.method, request.path, request.remote, exc)
            raise web.HTTPUnauthorized(text=str(exc)) from None
        return await handler(request)

    return check_identity
