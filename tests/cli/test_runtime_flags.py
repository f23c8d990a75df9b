"""Flags of `keystate processor|ingress|runtime` that shape where results and replies go."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from keystate.cli import _parser, main as cli_main
from keystate.ingress.errors import IngressError
from keystate.ingress.runtime import IngressSettings, check_ingress_id


def test_ingress_results_default_to_public_and_can_be_private() -> None:
    assert _parser().parse_args(["processor"]).ingress_results == "public"
    assert _parser().parse_args(["runtime", "--ingress-results", "private"]).ingress_results == "private"


def test_ingress_results_come_from_the_environment_and_a_bad_value_is_refused(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("KEYSTATE_INGRESS_RESULTS", "private")
    assert _parser().parse_args(["processor"]).ingress_results == "private"
    monkeypatch.setenv("KEYSTATE_INGRESS_RESULTS", "secret")
    with caplog.at_level(logging.ERROR):
        code = cli_main(["processor", "--bootstrap", "127.0.0.1:1"])
    assert code == 2
    assert "must be public or private, not 'secret'" in caplog.text


def test_ingress_id_flag_names_the_reply_topic(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEYSTATE_INGRESS_ID", raising=False)
    args = _parser().parse_args(["ingress", "--ingress-id", "edge-1"])

    settings = IngressSettings("127.0.0.1:1", ingress_id=args.ingress_id)

    assert settings.reply_topic == "keystate.replies.edge-1"


def test_the_default_ingress_id_follows_the_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KEYSTATE_INGRESS_ID", raising=False)
    one = IngressSettings("127.0.0.1:1", state_dir=tmp_path / "a").ingress_id
    two = IngressSettings("127.0.0.1:1", state_dir=tmp_path / "b").ingress_id

    assert one != two


def test_a_bad_ingress_id_is_refused_before_anything_starts(caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(IngressError, match="--ingress-id"):
        check_ingress_id("no spaces")
    with caplog.at_level(logging.ERROR):
        code = cli_main(["ingress", "--bootstrap", "127.0.0.1:1", "--ingress-id", "no spaces"])

    assert code == 2
    assert "cannot name a topic" in caplog.text
