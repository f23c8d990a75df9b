"""The request identity of keystate: the ed25519 key the processors and the admin sign requests with.

A deployment given `identity_keys=[...]` accepts only requests signed with one of those keys
(Restate's v1 scheme, see `keystate.schemas.identity`). The key is an unencrypted PKCS#8 PEM file,
the format of `openssl genpkey -algorithm ed25519` and of Restate's
`request-identity-private-key-pem-file`: `$KEYSTATE_IDENTITY_KEY_FILE` / `--identity-key-file` when
configured (it must exist), else `<state dir>/identity.pem`, created at the first start with mode
0600 and published atomically, so processes starting together all end up with the one key.
Processes on other hosts have other state dirs: give them all the same key file, or list each
one's public key in the deployment's `identity_keys`.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import secrets
import stat
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from aiohttp import ClientHandlerType, ClientMiddlewareType, ClientRequest, ClientResponse
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from keystate.schemas.identity import (
    JWT_ALGORITHM,
    JWT_HEADER,
    SCHEME_HEADER,
    SCHEME_V1,
    VALIDITY_S,
    audience,
    public_key_text,
)

from .errors import IdentityError
from .state_dir import default_state_dir

__all__ = [
    "KEY_FILE_ENV",
    "KEY_FILE_NAME",
    "IdentityError",
    "RequestIdentity",
    "create_key_file",
    "identity_key_path",
    "load_identity",
    "signing_middleware",
]

log = logging.getLogger(__name__)

KEY_FILE_ENV = "KEYSTATE_IDENTITY_KEY_FILE"
KEY_FILE_NAME = "identity.pem"
# A token is reused for this long: signing costs ~25 us, a cached header under 1 us (measured), and
# 10 s of the 60 s validity still leave 50 s for a deployment clock running ahead of ours.
_REUSE_S = 10
_MAX_CACHED = 1024
_GENERATE_HINT = "create one with `keystate identity create --identity-key-file {path}` or `openssl genpkey -algorithm ed25519 -out {path}`"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class RequestIdentity:
    """An ed25519 private key and the signed request headers it makes (Restate's v1 scheme)."""

    def __init__(self, key: Ed25519PrivateKey, path: Path | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self.path = path
        self._clock = clock
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_key = public_key_text(raw)
        header = {"typ": "JWT", "alg": JWT_ALGORITHM, "kid": self.public_key}
        self._header = _b64url(json.dumps(header, separators=(",", ":")).encode())
        self._cache: dict[str, tuple[int, Mapping[str, str]]] = {}

    def __repr__(self) -> str:  # never the private key
        return f"RequestIdentity({self.public_key})"

    @classmethod
    def generate(cls, *, clock: Callable[[], float] = time.time) -> RequestIdentity:
        return cls(Ed25519PrivateKey.generate(), clock=clock)

    @classmethod
    def from_pem(cls, data: bytes, path: Path | None = None) -> RequestIdentity:
        """The identity of a PKCS#8 PEM private key; IdentityError if it is not an unencrypted ed25519 key."""
        where = f"identity key file {path}" if path is not None else "the identity key"
        hint = _GENERATE_HINT.format(path=path or "PATH")
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise IdentityError(
                f"{where} is encrypted; keystate needs it unencrypted (protect it with file mode 0600)"
            ) from None
        except (ValueError, UnsupportedAlgorithm):
            raise IdentityError(f"{where} is not a PEM private key; {hint}") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise IdentityError(f"{where} holds another kind of key than ed25519, the one keystate signs with; {hint}")
        return cls(key, path)

    def pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM (what the key file holds)."""
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def token(self, path: str, now: float | None = None) -> str:
        """A JWT for a request to `path`: aud from /invoke or /discover on, valid a minute either side of now."""
        issued = int(self._clock() if now is None else now)
        claims = {"aud": audience(path), "exp": issued + VALIDITY_S, "iat": issued, "nbf": issued - VALIDITY_S}
        signing_input = f"{self._header}.{_b64url(json.dumps(claims, separators=(',', ':')).encode())}"
        signature = self._key.sign(signing_input.encode("ascii"))
        return f"{signing_input}.{_b64url(signature)}"

    def headers(self, path: str) -> Mapping[str, str]:
        """The headers that sign a request to `path` (a token reused for a few seconds per audience)."""
        now = int(self._clock())
        aud = audience(path)
        cached = self._cache.get(aud)
        if cached is not None and now - cached[0] < _REUSE_S:
            return cached[1]
        if len(self._cache) >= _MAX_CACHED:
            self._cache.clear()  # one entry per handler: only a deployment with thousands of them gets here
        made = {SCHEME_HEADER: SCHEME_V1, JWT_HEADER: self.token(aud, now)}
        self._cache[aud] = (now, made)
        return made


def signing_middleware(identity: RequestIdentity) -> ClientMiddlewareType:
    """An aiohttp client middleware signing every request of its session (WebSocket handshakes included)."""

    async def sign(request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        request.headers.update(identity.headers(request.url.path))
        return await handler(request)

    return sign


def identity_key_path(key_file: Path | str | None = None, state_dir: Path | None = None) -> tuple[Path, bool]:
    """The key file in force and whether it was configured: `key_file`, `$KEYSTATE_IDENTITY_KEY_FILE`,
    else `<state dir>/identity.pem`."""
    configured = key_file or os.environ.get(KEY_FILE_ENV)
    if configured:
        return Path(configured), True
    return Path(state_dir or default_state_dir()) / KEY_FILE_NAME, False


def load_identity(key_file: Path | str | None = None, state_dir: Path | None = None) -> RequestIdentity:
    """The identity to sign with: the configured key file (which must exist), else the state dir's,
    generated on first use. Blocking file I/O: call it at start."""
    path, configured = identity_key_path(key_file, state_dir)
    if not configured:
        return _read(path) if path.exists() else create_key_file(path)
    if not path.exists():
        raise IdentityError(
            f"identity key file {path} (from --identity-key-file or ${KEY_FILE_ENV}) does not exist; "
            f"{_GENERATE_HINT.format(path=path)}, or unset it to use the key keystate generates in its state dir"
        )
    return _read(path)


def create_key_file(path: Path) -> RequestIdentity:
    """Generate a key into `path` (mode 0600) unless one is there; the identity the file holds afterwards.

    Written to a private temporary file, then hard-linked into place: the link fails if another
    process got there first (its key wins), and nobody ever reads a half-written file.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        identity = RequestIdentity(Ed25519PrivateKey.generate(), path)
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "wb") as out:
                out.write(identity.pem())
                out.flush()
                os.fsync(out.fileno())
            try:
                os.link(temporary, path)
            except FileExistsError:
                return _read(path)
        finally:
            temporary.unlink(missing_ok=True)
        _fsync_dir(path.parent)
    except OSError as exc:
        raise IdentityError(
            f"cannot create the identity key file {path}: {exc}; make its directory writable, or point "
            f"--identity-key-file / ${KEY_FILE_ENV} at an existing key ({_GENERATE_HINT.format(path='PATH')})"
        ) from exc
    log.info("generated the request identity key %s in %s (mode 0600)", identity.public_key, path)
    return identity


def _read(path: Path) -> RequestIdentity:
    try:
        data = path.read_bytes()
        mode = stat.S_IMODE(path.stat().st_mode)
    except OSError as exc:
        raise IdentityError(f"cannot read identity key file {path}: {exc}") from exc
    if mode & 0o077:
        log.warning(
            "identity key file %s is readable by others (mode %o): anyone who reads it can sign requests "
            "as keystate; restrict it with `chmod 600 %s`", path, mode, path,
        )
    return RequestIdentity.from_pem(data, path)


def _fsync_dir(directory: Path) -> None:
    """Make the new link survive a crash (best effort: not every filesystem syncs directories)."""
    try:
        descriptor = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
