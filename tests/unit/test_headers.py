"""The secret-header deny-list: its default, the setting, and stripping."""

from __future__ import annotations

import pytest

from keystate.schemas.errors import ContractError
from keystate.schemas.headers import DEFAULT_REDACT_HEADERS, redact_headers, strip_secrets


def test_the_default_names_the_usual_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEYSTATE_REDACT_HEADERS", raising=False)
    assert redact_headers() == DEFAULT_REDACT_HEADERS == {"authorization", "cookie", "proxy-authorization", "x-api-key"}


def test_the_setting_is_comma_separated_case_insensitive_and_may_be_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KEYSTATE_REDACT_HEADERS", " Authorization, X-Session ,")
    assert redact_headers() == {"authorization", "x-session"}
    assert redact_headers("") == frozenset()
    assert redact_headers(["Cookie"]) == {"cookie"}


def test_a_bad_name_says_how_to_write_the_setting() -> None:
    with pytest.raises(ContractError, match="comma-separated names"):
        redact_headers("authorization;cookie")


def test_strip_keeps_allowed_and_other_headers() -> None:
    headers = {"Authorization": "a", "COOKIE": "c", "x-trace": "t"}
    assert strip_secrets(headers, DEFAULT_REDACT_HEADERS) == {"x-trace": "t"}
    assert strip_secrets(headers, DEFAULT_REDACT_HEADERS, ["authorization"]) == {"Authorization": "a", "x-trace": "t"}
    assert strip_secrets(headers, frozenset()) == headers
