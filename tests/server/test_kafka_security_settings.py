"""Kafka security settings: read from the environment or flags, checked for contradictions, never shown."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from keystate.cli.kafka_flags import add_kafka_security_args, kafka_security
from keystate.server.errors import KafkaSettingsError
from keystate.server.kafka import KafkaSettings
from keystate.server.kafka_security import ENV_VARS, KafkaSecurity, admin_config

PASSWORD = "pa55-never-shown"
SASL = {
    "KAFKA_SECURITY_PROTOCOL": "sasl_ssl",
    "KAFKA_SASL_MECHANISM": "scram-sha-512",
    "KAFKA_SASL_USERNAME": "keystate",
    "KAFKA_SASL_PASSWORD": PASSWORD,
}


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_VARS.values():
        monkeypatch.delenv(name, raising=False)


def test_without_settings_clients_speak_plaintext_as_before() -> None:
    security = KafkaSecurity.from_env({})
    assert security.protocol == "PLAINTEXT"
    assert security.client_config() == {}
    config = KafkaSettings("127.0.0.1:1").producer_config()
    assert not any(key.startswith(("security.", "sasl.", "ssl.")) for key in config)


def test_sasl_settings_reach_every_client_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SASL.items():
        monkeypatch.setenv(name, value)
    settings = KafkaSettings("broker:9093")
    expected = {
        "security.protocol": "sasl_ssl",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "keystate",
        "sasl.password": PASSWORD,
    }
    for config in (
        settings.producer_config(),
        settings.consumer_config(**{"group.id": "g"}),
        settings.admin_config(),
        admin_config("broker:9093"),
    ):
        assert expected.items() <= config.items()
    assert settings.producer_config()["error_cb"] is settings.watch


def test_the_password_is_in_no_repr_or_description(monkeypatch: pytest.MonkeyPatch) -> None:
    security = KafkaSecurity.from_env(SASL)
    assert PASSWORD not in repr(security)
    assert PASSWORD not in repr(KafkaSettings("broker:9093", security=security))
    assert security.describe() == "SASL_SSL (SCRAM-SHA-512 as 'keystate')"


def test_the_password_may_come_from_a_file(tmp_path: Path) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text(PASSWORD + "\n")
    env = {**SASL, "KAFKA_SASL_PASSWORD_FILE": str(secret)}
    del env["KAFKA_SASL_PASSWORD"]
    assert KafkaSecurity.from_env(env).client_config()["sasl.password"] == PASSWORD

    with pytest.raises(KafkaSettingsError, match="both KAFKA_SASL_PASSWORD and KAFKA_SASL_PASSWORD_FILE are set"):
        KafkaSecurity.from_env({**env, "KAFKA_SASL_PASSWORD": PASSWORD})
    secret.write_text("\n")
    with pytest.raises(KafkaSettingsError, match="is empty"):
        KafkaSecurity.from_env(env)
    with pytest.raises(KafkaSettingsError, match="cannot read the SASL password file"):
        KafkaSecurity.from_env({**env, "KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "missing")})


@pytest.mark.parametrize(
    ("env", "fragment"),
    [
        ({"KAFKA_SECURITY_PROTOCOL": "TLS"}, "use one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
        ({**SASL, "KAFKA_SASL_MECHANISM": ""}, "needs a SASL mechanism, but KAFKA_SASL_MECHANISM (--kafka-sasl-mechanism) is not set"),
        ({**SASL, "KAFKA_SASL_MECHANISM": "GSSAPI"}, "use one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
        ({**SASL, "KAFKA_SASL_USERNAME": ""}, "needs a username and password, but KAFKA_SASL_USERNAME is not set"),
        ({**SASL, "KAFKA_SASL_PASSWORD": ""}, "KAFKA_SASL_PASSWORD is not set"),
        ({**SASL, "KAFKA_SECURITY_PROTOCOL": ""}, "are set but KAFKA_SECURITY_PROTOCOL is PLAINTEXT; set it to SASL_SSL"),
        ({"KAFKA_SSL_CA_LOCATION": __file__}, "KAFKA_SSL_CA_LOCATION is set but KAFKA_SECURITY_PROTOCOL is PLAINTEXT"),
        ({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_LOCATION": "/no/such/ca.pem"}, "the CA file /no/such/ca.pem"),
    ],
)
def test_incomplete_or_contradicting_settings_say_what_to_set(env: dict[str, str], fragment: str) -> None:
    with pytest.raises(KafkaSettingsError) as info:
        KafkaSecurity.from_env(env)
    assert fragment in str(info.value)
    assert PASSWORD not in str(info.value)


def test_a_ca_file_goes_to_ssl_clients() -> None:
    security = KafkaSecurity.from_env({"KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SSL_CA_LOCATION": __file__})
    assert security.client_config() == {"security.protocol": "ssl", "ssl.ca.location": __file__}


def test_cli_flags_override_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in SASL.items():
        monkeypatch.setenv(name, value)
    secret = tmp_path / "pw"
    secret.write_text("from-the-file")
    parser = argparse.ArgumentParser()
    add_kafka_security_args(parser)
    args = parser.parse_args([
        "--kafka-security-protocol", "sasl_plaintext", "--kafka-sasl-mechanism", "plain",
        "--kafka-sasl-username", "other", "--kafka-sasl-password-file", str(secret),
    ])
    config = kafka_security(args).client_config()
    assert config == {
        "security.protocol": "sasl_plaintext", "sasl.mechanism": "PLAIN", "sasl.username": "other", "sasl.password": "from-the-file"
    }
    # No flag given: the environment's.
    assert kafka_security(parser.parse_args([])).client_config()["sasl.username"] == "keystate"


def test_the_cli_refuses_contradicting_settings_before_connecting(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    from keystate.cli import main

    monkeypatch.setenv("KAFKA_SASL_USERNAME", "keystate")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", PASSWORD)
    with caplog.at_level(logging.ERROR):
        assert main(["ingress", "--bootstrap", "127.0.0.1:1"]) == 2
    assert "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD are set but KAFKA_SECURITY_PROTOCOL is PLAINTEXT" in caplog.text
    assert PASSWORD not in caplog.text


def test_the_local_brokers_sasl_listener_is_configured_by_a_jaas_entry_per_user() -> None:
    from keystate.cli.kafka import LocalKafkaError
    from keystate.cli.kafka_sasl import parse_user, sasl_settings

    settings = sasl_settings({"alice": "a-pw", "bob": "b-pw"})
    assert settings["sasl.enabled.mechanisms"] == "PLAIN"
    assert settings["listener.name.sasl_plaintext.plain.sasl.jaas.config"] == (
        'org.apache.kafka.common.security.plain.PlainLoginModule required user_alice="a-pw" user_bob="b-pw";'
    )
    assert parse_user("alice:pw:with:colons") == ("alice", "pw:with:colons")
    for bad in ("alice", 'alice:pw"; evil=1', "al ice:pw", "alice:"):
        with pytest.raises(LocalKafkaError):
            parse_user(bad)
