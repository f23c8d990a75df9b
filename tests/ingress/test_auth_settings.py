"""Loading the tokens and refusing to listen in the open without one (no servers, no Kafka)."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from keystate.ingress.auth import ADMIN, INGRESS, AuthSetupError, BearerToken, check_listen, is_loopback, load_token

SECRET = "s3cret-token-0123456789abcdef"


def test_no_setting_means_no_token() -> None:
    assert load_token(ADMIN, None, {}) is None
    assert load_token(INGRESS, None, {"KEYSTATE_ADMIN_TOKEN": SECRET}) is None


def test_the_token_comes_from_the_environment() -> None:
    token = load_token(ADMIN, None, {"KEYSTATE_ADMIN_TOKEN": f" {SECRET}\n"})

    assert token is not None and token.matches(SECRET) and not token.matches(SECRET + "x")
    assert token.source == "$KEYSTATE_ADMIN_TOKEN"


def test_the_file_wins_over_the_environment(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    file = tmp_path / "admin.token"
    file.write_text(SECRET + "\n")
    file.chmod(0o600)

    with caplog.at_level(logging.WARNING):
        token = load_token(ADMIN, file, {"KEYSTATE_ADMIN_TOKEN": "the-other-one-0123456789"})

    assert token is not None and token.matches(SECRET) and not token.matches("the-other-one-0123456789")
    assert "$KEYSTATE_ADMIN_TOKEN is ignored" in caplog.text
    assert SECRET not in caplog.text and "the-other-one" not in caplog.text


def test_a_file_others_can_read_is_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    file = tmp_path / "ingress.token"
    file.write_text(SECRET)
    file.chmod(0o644)

    with caplog.at_level(logging.WARNING):
        assert load_token(INGRESS, file, {}) is not None

    assert f"chmod 600 {file}" in caplog.text


def test_an_unreadable_file_names_the_file_and_the_flag(tmp_path: Path) -> None:
    missing = tmp_path / "nope.token"

    with pytest.raises(AuthSetupError) as caught:
        load_token(ADMIN, missing, {})

    assert str(missing) in str(caught.value) and "--admin-token-file" in str(caught.value)


def test_empty_tokens_are_refused_not_taken_as_no_authentication(tmp_path: Path) -> None:
    empty = tmp_path / "empty.token"
    empty.write_text("\n")

    with pytest.raises(AuthSetupError, match=r"\$KEYSTATE_INGRESS_TOKEN is set but empty"):
        load_token(INGRESS, None, {"KEYSTATE_INGRESS_TOKEN": "  "})
    with pytest.raises(AuthSetupError, match="is empty"):
        load_token(INGRESS, empty, {})


def test_a_token_that_cannot_be_sent_in_a_header_is_refused_without_echoing_it() -> None:
    with pytest.raises(AuthSetupError) as caught:
        load_token(ADMIN, None, {"KEYSTATE_ADMIN_TOKEN": "two words-0123456789abc"})

    assert "printable ASCII" in str(caught.value) and "two words" not in str(caught.value)


def test_the_repr_never_shows_the_token() -> None:
    token = BearerToken(SECRET, "$KEYSTATE_ADMIN_TOKEN")

    assert SECRET not in repr(token) and "KEYSTATE_ADMIN_TOKEN" in repr(token)


def test_a_short_token_is_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        load_token(ADMIN, None, {"KEYSTATE_ADMIN_TOKEN": "short"})

    assert "may be guessed" in caplog.text and "short" not in caplog.text.replace("characters", "")


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.8.9.10", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("LOCALHOST", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.5", False),
        ("192.168.1.1", False),
        ("example.com", False),
        ("localhost.example.com", False),
        ("::ffff:127.0.0.1", False),  # a mapped address on a dual-stack socket: counted as open, to be safe
    ],
)
def test_what_counts_as_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_a_non_loopback_listener_without_a_token_is_refused_with_the_fix() -> None:
    with pytest.raises(AuthSetupError) as caught:
        check_listen(ADMIN, "0.0.0.0", None)

    message = str(caught.value)
    assert "refusing to serve the admin API on 0.0.0.0 without authentication" in message
    for fix in ("$KEYSTATE_ADMIN_TOKEN", "--admin-token-file", "--admin-host 127.0.0.1", "--insecure-listen"):
        assert fix in message


def test_loopback_or_a_token_may_listen() -> None:
    check_listen(INGRESS, "127.0.0.1", None)
    check_listen(INGRESS, "0.0.0.0", BearerToken(SECRET, "$KEYSTATE_INGRESS_TOKEN"))


def test_insecure_listen_allows_it_with_a_loud_warning(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        check_listen(INGRESS, "::", None, insecure=True)

    warning = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warning) == 1 and "WITHOUT AUTHENTICATION" in warning[0].getMessage()
    assert "KEYSTATE_INGRESS_TOKEN" in warning[0].getMessage()
