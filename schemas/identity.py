"""The request-identity contract between processor and deployment: Restate's v1 signature scheme.

The processor signs each request to a deployment with its ed25519 key: a JWT (alg EdDSA, kid =
its public key) in `x-restate-jwt-v1`, with `x-restate-signature-scheme: v1`. The claims are
`aud` (the request path from `/invoke/...` or `/discover` on, whatever prefix the deployment's
URI has), `iat`, `nbf = iat - 60` and `exp = iat + 60` (seconds), so clocks may differ by up to a
minute. Public keys are written `publickeyv1_<base58 of the 32 raw bytes>`, as Restate does, so
a key from a Restate setup reads the same here. Pure: the signing and verifying live in
`keystate.server.identity` and `keystate._identity`.
"""

from __future__ import annotations

from .errors import PublicKeyError

__all__ = [
    "JWT_ALGORITHM",
    "JWT_HEADER",
    "PUBLIC_KEY_PREFIX",
    "SCHEME_HEADER",
    "SCHEME_UNSIGNED",
    "SCHEME_V1",
    "VALIDITY_S",
    "PublicKeyError",
    "audience",
    "b58decode",
    "b58encode",
    "parse_public_key",
    "public_key_text",
]

SCHEME_HEADER = "x-restate-signature-scheme"
SCHEME_V1 = "v1"
SCHEME_UNSIGNED = "unsigned"
JWT_HEADER = "x-restate-jwt-v1"
JWT_ALGORITHM = "EdDSA"
PUBLIC_KEY_PREFIX = "publickeyv1_"
# A token is valid from a minute before it was made to a minute after: the clock skew tolerated.
VALIDITY_S = 60
_KEY_BYTES = 32
_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"  # Bitcoin's base58
_DIGIT = {c: i for i, c in enumerate(_ALPHABET)}


def b58encode(data: bytes) -> str:
    """Base58 (Bitcoin alphabet); each leading zero byte becomes a leading '1'."""
    number = int.from_bytes(data, "big")
    digits = []
    while number:
        number, rest = divmod(number, 58)
        digits.append(_ALPHABET[rest])
    zeros = len(data) - len(data.lstrip(b"\0"))
    return "1" * zeros + "".join(reversed(digits))


def b58decode(text: str) -> bytes:
    """The bytes of a base58 string; ValueError names the first character outside the alphabet."""
    number = 0
    for position, char in enumerate(text):
        digit = _DIGIT.get(char)
        if digit is None:
            raise ValueError(f"character {char!r} at position {position} is not base58")
        number = number * 58 + digit
    zeros = len(text) - len(text.lstrip("1"))
    body = number.to_bytes((number.bit_length() + 7) // 8, "big") if number else b""
    return b"\0" * zeros + body


def public_key_text(raw: bytes) -> str:
    """`publickeyv1_<base58>` of a raw 32-byte ed25519 public key."""
    if len(raw) != _KEY_BYTES:
        raise PublicKeyError(f"an ed25519 public key has {_KEY_BYTES} bytes, got {len(raw)}")
    return PUBLIC_KEY_PREFIX + b58encode(raw)


def parse_public_key(text: str) -> bytes:
    """The raw 32 bytes of a `publickeyv1_...` string, or PublicKeyError saying what is wrong."""
    hint = "copy it from the processor's start log, `keystate identity show` or the admin's GET /identity"
    if not isinstance(text, str) or not text.startswith(PUBLIC_KEY_PREFIX):
        raise PublicKeyError(f"identity key {text!r} does not start with {PUBLIC_KEY_PREFIX!r}; {hint}")
    try:
        raw = b58decode(text[len(PUBLIC_KEY_PREFIX) :])
    except ValueError as exc:
        raise PublicKeyError(f"identity key {text!r} is not valid: {exc}; {hint}") from None
    if len(raw) != _KEY_BYTES:
        raise PublicKeyError(
            f"identity key {text!r} decodes to {len(raw)} bytes, an ed25519 public key has {_KEY_BYTES}; {hint}"
        )
    return raw


def audience(path: str) -> str:
    """The `aud` a request path is signed for: from its `/invoke/<service>/<handler>` or `/discover` on.

    A deployment served under a prefix (http://host/prefix) sees the same audience as one at the root.
    """
    segments = path.split("/")
    if len(segments) >= 4 and segments[-3] == "invoke":
        return "/" + "/".join(segments[-3:])
    if len(segments) >= 2 and segments[-1] == "discover":
        return "/discover"
    return path
