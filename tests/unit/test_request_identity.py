"""Request identity: the key string format, signing (keystate.server.identity) and verifying (the SDK's)."""

from __future__ import annotations

import base64
import json
import logging
import multiprocessing
import os
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from keystate._identity import IdentityRejected, IdentityVerifier
from keystate.schemas.identity import (
    JWT_HEADER,
    SCHEME_HEADER,
    PublicKeyError,
    audience,
    b58decode,
    b58encode,
    parse_public_key,
    public_key_text,
)
from keystate.server.identity import (
    KEY_FILE_ENV,
    IdentityError,
    RequestIdentity,
    create_key_file,
    identity_key_path,
    load_identity,
)

NOW = 1_800_000_000.0
PATH = "/invoke/Greeter/greet"

# Test vectors of Restate's own request-identity tests (a throwaway key, its public key string and a
# token it signed at 1721662649 for /invoke/foo): keystate must read and write exactly these.
RESTATE_PEM = b"""-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIPe++4ZTPQDF81otpoU/mOGHC2vOAVp9WbiCblvn3nXO
-----END PRIVATE KEY-----"""
RESTATE_KEY = "publickeyv1_AfQwmwfgEZhrWpvv8N52SHpRtZqGGaFr4AZN6qtYWSiY"
RESTATE_TOKEN = (
    "eyJ0eXAiOiJKV1QiLCJhbGciOiJFZERTQSIsImtpZCI6InB1YmxpY2tleXYxX0FmUXdtd2ZnRVpocldwdnY4TjUyU0hwUnRacUdHYUZyNEFaTjZxdFlXU2lZIn0"
    ".eyJhdWQiOiIvaW52b2tlL2ZvbyIsImV4cCI6MTcyMTY2MjcwOSwiaWF0IjoxNzIxNjYyNjQ5LCJuYmYiOjE3MjE2NjI1ODl9"
    ".UBReG_9cdFQ5VcaJxAV0rM8U_zaNw9kMXJZt691SiI0SWw7Ucmz5Zz3wtmVUc1jrkNsnTDhNEvOFGEZoKXTMCQ"
)


def signed(identity: RequestIdentity, path: str = PATH, now: float = NOW) -> dict[str, str]:
    return {SCHEME_HEADER: "v1", JWT_HEADER: identity.token(path, now)}


def verifier(*identities: RequestIdentity, now: float = NOW) -> IdentityVerifier:
    return IdentityVerifier([i.public_key for i in identities], clock=lambda: now)


def rejection(v: IdentityVerifier, headers: dict[str, str], path: str = PATH) -> str:
    with pytest.raises(IdentityRejected) as caught:
        v.verify(headers, path)
    return str(caught.value)


# ---- the contract: key strings and audiences ---------------------------------------------------


def test_base58_round_trips_and_keeps_leading_zero_bytes() -> None:
    for data in (b"", b"\0", b"\0\0\x01", bytes(range(32)), b"\xff" * 32, os.urandom(32)):
        assert b58decode(b58encode(data)) == data
    assert b58encode(b"\0\0\x01") == "112"
    with pytest.raises(ValueError, match="'0' at position 1"):
        b58decode("10")


def test_public_key_strings_are_checked() -> None:
    raw = os.urandom(32)
    assert parse_public_key(public_key_text(raw)) == raw
    with pytest.raises(PublicKeyError, match="does not start with 'publickeyv1_'"):
        parse_public_key("ed25519:abc")
    with pytest.raises(PublicKeyError, match="decodes to 3 bytes"):
        parse_public_key("publickeyv1_" + b58encode(b"abc"))
    with pytest.raises(PublicKeyError, match="is not valid"):
        parse_public_key("publickeyv1_0OIl")


@pytest.mark.parametrize(
    ("path", "aud"),
    [
        ("/invoke/a/b", "/invoke/a/b"),
        ("/prefix/deep/invoke/a/b", "/invoke/a/b"),
        ("/discover", "/discover"),
        ("/prefix/discover", "/discover"),
        ("/invoke/a", "/invoke/a"),
        ("/foo/invoke", "/foo/invoke"),
        ("/invoke/a/b/", "/invoke/a/b/"),
        ("/", "/"),
        ("", ""),
    ],
)
def test_audience_is_the_path_from_invoke_or_discover_on(path: str, aud: str) -> None:
    assert audience(path) == aud


def test_restate_keys_and_tokens_read_and_write_the_same() -> None:
    identity = RequestIdentity.from_pem(RESTATE_PEM)
    assert identity.public_key == RESTATE_KEY
    assert identity.token("/invoke/foo", now=1721662649) == RESTATE_TOKEN
    IdentityVerifier([RESTATE_KEY], clock=lambda: 1721662649).verify(
        {SCHEME_HEADER: "v1", JWT_HEADER: RESTATE_TOKEN}, "/invoke/foo"
    )


# ---- signing and verifying ----------------------------------------------------------------------


def test_signed_request_passes_and_token_carries_restate_claims() -> None:
    identity = RequestIdentity.generate()
    headers = signed(identity)
    verifier(identity).verify(headers, PATH)
    verifier(identity).verify(headers, "/behind/a/prefix" + PATH)  # a deployment served under a prefix
    head, claims = (json.loads(base64.urlsafe_b64decode(p + "==")) for p in headers[JWT_HEADER].split(".")[:2])
    assert head == {"typ": "JWT", "alg": "EdDSA", "kid": identity.public_key}
    assert claims == {"aud": PATH, "exp": NOW + 60, "iat": NOW, "nbf": NOW - 60}


def test_any_of_several_keys_is_accepted() -> None:
    old, new = RequestIdentity.generate(), RequestIdentity.generate()
    both = verifier(old, new)
    both.verify(signed(old), PATH)
    both.verify(signed(new), PATH)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_the_kid_is_a_hint_and_the_signature_decides() -> None:
    trusted, other = ed25519.Ed25519PrivateKey.generate(), RequestIdentity.generate()
    trusted_text = RequestIdentity(trusted).public_key
    claims = _b64(json.dumps({"aud": PATH, "exp": NOW + 60, "iat": NOW, "nbf": NOW - 60}).encode())
    for kid in (other.public_key, "publickeyv1_unknown", None):
        head = _b64(json.dumps({"typ": "JWT", "alg": "EdDSA", **({"kid": kid} if kid else {})}).encode())
        token = f"{head}.{claims}.{_b64(trusted.sign(f'{head}.{claims}'.encode()))}"
        IdentityVerifier([other.public_key, trusted_text], clock=lambda: NOW).verify({SCHEME_HEADER: "v1", JWT_HEADER: token}, PATH)
        assert "not one of identity_keys" in rejection(verifier(other), {SCHEME_HEADER: "v1", JWT_HEADER: token})


def test_wrong_key_is_refused_and_names_the_signing_key() -> None:
    ours, theirs = RequestIdentity.generate(), RequestIdentity.generate()
    message = rejection(verifier(ours), signed(theirs))
    assert f"signed by {theirs.public_key}, which is not one of identity_keys" in message
    assert "keystate identity show" in message


def test_tampered_claims_or_signature_are_refused() -> None:
    identity = RequestIdentity.generate()
    header, claims, signature = signed(identity)[JWT_HEADER].split(".")
    forged = json.loads(base64.urlsafe_b64decode(claims + "=="))
    forged["aud"] = "/invoke/Bank/transfer"
    forged_claims = base64.urlsafe_b64encode(json.dumps(forged).encode()).rstrip(b"=").decode()
    v = verifier(identity)
    assert "not one of identity_keys" in rejection(v, {SCHEME_HEADER: "v1", JWT_HEADER: f"{header}.{forged_claims}.{signature}"})
    flipped = signature[:-2] + ("A" if signature[-2] != "A" else "B") + signature[-1]
    assert "not one of identity_keys" in rejection(v, {SCHEME_HEADER: "v1", JWT_HEADER: f"{header}.{claims}.{flipped}"})


def test_token_for_another_path_is_refused() -> None:
    identity = RequestIdentity.generate()
    message = rejection(verifier(identity), signed(identity, "/invoke/Greeter/greet"), "/invoke/Bank/transfer")
    assert "signed for another path than /invoke/Bank/transfer" in message


def test_expired_and_not_yet_valid_tokens_are_refused() -> None:
    identity = RequestIdentity.generate()
    headers = signed(identity, now=NOW)
    verifier(identity, now=NOW + 60).verify(headers, PATH)  # the last second of its validity
    assert "expired 1 s ago" in rejection(verifier(identity, now=NOW + 61), headers)
    assert "clocks" in rejection(verifier(identity, now=NOW + 61), headers)
    verifier(identity, now=NOW - 60).verify(headers, PATH)
    assert "not valid for another 1 s" in rejection(verifier(identity, now=NOW - 61), headers)


def test_missing_or_unknown_headers_are_refused_with_what_is_missing() -> None:
    identity = RequestIdentity.generate()
    v = verifier(identity)
    assert "no x-restate-signature-scheme header" in rejection(v, {})
    assert "unsigned" in rejection(v, {SCHEME_HEADER: "unsigned"})
    assert "is not v1" in rejection(v, {SCHEME_HEADER: "v2", JWT_HEADER: identity.token(PATH, NOW)})
    assert "no x-restate-jwt-v1 header" in rejection(v, {SCHEME_HEADER: "v1"})
    assert "not a JWT" in rejection(v, {SCHEME_HEADER: "v1", JWT_HEADER: "abc"})
    assert "not a well-formed JWT" in rejection(v, {SCHEME_HEADER: "v1", JWT_HEADER: "!!.??.**"})


def test_other_algorithms_are_refused_before_any_key_is_tried() -> None:
    identity = RequestIdentity.generate()
    _, claims, signature = identity.token(PATH, NOW).split(".")
    none_header = base64.urlsafe_b64encode(b'{"alg":"none","typ":"JWT"}').rstrip(b"=").decode()
    assert "not signed with EdDSA" in rejection(verifier(identity), {SCHEME_HEADER: "v1", JWT_HEADER: f"{none_header}.{claims}."})


def test_claims_are_checked_again_for_a_token_verified_before() -> None:
    identity = RequestIdentity.generate()
    headers = signed(identity)
    now = [NOW]
    v = IdentityVerifier([identity.public_key], clock=lambda: now[0])
    v.verify(headers, PATH)
    now[0] = NOW + 120
    assert "expired" in rejection(v, headers)
    now[0] = NOW
    assert "another path" in rejection(v, headers, "/invoke/Other/h")


def test_headers_reuse_a_token_for_a_few_seconds_per_path() -> None:
    now = [NOW]
    identity = RequestIdentity(ed25519.Ed25519PrivateKey.generate(), clock=lambda: now[0])
    first = identity.headers(PATH)
    assert identity.headers(PATH) is first
    assert identity.headers("/invoke/Other/h") is not first
    now[0] = NOW + 10
    renewed = identity.headers(PATH)
    assert renewed is not first
    verifier(identity, now=NOW + 10 + 50).verify(renewed, PATH)


def test_bad_identity_keys_fail_at_start() -> None:
    with pytest.raises(PublicKeyError, match="does not start with"):
        IdentityVerifier(["not-a-key"])
    with pytest.raises(TypeError, match="list of keys"):
        IdentityVerifier(RequestIdentity.generate().public_key)
    with pytest.raises(ValueError, match="identity_keys is empty"):
        IdentityVerifier([])


def test_repr_never_shows_the_private_key() -> None:
    identity = RequestIdentity.generate()
    assert repr(identity) == f"RequestIdentity({identity.public_key})"


# ---- the key file ---------------------------------------------------------------------------------


def test_key_is_generated_once_with_mode_0600_and_then_reused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = load_identity(state_dir=state)
    path = state / "identity.pem"
    assert first.path == path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert load_identity(state_dir=state).public_key == first.public_key
    assert [p.name for p in state.iterdir()] == ["identity.pem"]  # no temporary file left behind


def _create_in_child(path: str, queue: multiprocessing.Queue[str]) -> None:
    queue.put(create_key_file(Path(path)).public_key)


def test_processes_creating_the_key_at_once_all_get_the_one_that_was_published(tmp_path: Path) -> None:
    path = tmp_path / "identity.pem"
    context = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[str] = context.Queue()
    children = [context.Process(target=_create_in_child, args=(str(path), queue)) for _ in range(4)]
    for child in children:
        child.start()
    keys = {queue.get(timeout=30) for _ in children}
    for child in children:
        child.join(30)
    assert keys == {RequestIdentity.from_pem(path.read_bytes()).public_key}


def test_configured_key_file_must_exist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nowhere.pem"
    with pytest.raises(IdentityError, match="does not exist; create one with `keystate identity create"):
        load_identity(missing, state_dir=tmp_path)
    monkeypatch.setenv(KEY_FILE_ENV, str(missing))
    assert identity_key_path(None, tmp_path) == (missing, True)
    with pytest.raises(IdentityError, match=KEY_FILE_ENV):
        load_identity(state_dir=tmp_path)
    assert not (tmp_path / "identity.pem").exists()


def test_configured_key_file_is_read_and_a_loose_mode_is_warned_about(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "restate.pem"
    path.write_bytes(RESTATE_PEM)
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, "keystate.server.identity"):
        assert load_identity(path).public_key == RESTATE_KEY
    assert "chmod 600" in caplog.text


def test_key_files_that_are_not_unencrypted_ed25519_are_refused(tmp_path: Path) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    plain = serialization.PrivateFormat.PKCS8
    (tmp_path / "ec.pem").write_bytes(ec_key.private_bytes(serialization.Encoding.PEM, plain, serialization.NoEncryption()))
    with pytest.raises(IdentityError, match="holds another kind of key than ed25519"):
        load_identity(tmp_path / "ec.pem")
    encrypted = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, plain, serialization.BestAvailableEncryption(b"secret")
    )
    (tmp_path / "enc.pem").write_bytes(encrypted)
    with pytest.raises(IdentityError, match="is encrypted"):
        load_identity(tmp_path / "enc.pem")
    (tmp_path / "junk.pem").write_text("hello")
    with pytest.raises(IdentityError, match="is not a PEM private key"):
        load_identity(tmp_path / "junk.pem")
