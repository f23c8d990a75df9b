"""How keystate's Kafka clients authenticate and encrypt: SASL and TLS settings for librdkafka.

Read from the environment (`KAFKA_SECURITY_PROTOCOL`, `KAFKA_SASL_MECHANISM`, `KAFKA_SASL_USERNAME`,
`KAFKA_SASL_PASSWORD` or `KAFKA_SASL_PASSWORD_FILE`, `KAFKA_SSL_CA_LOCATION`) or given explicitly
(the CLI's `--kafka-*` flags). The default is PLAINTEXT, which the local development broker speaks.
The password never appears in a repr, a log line or an error message.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException

from .errors import KafkaAuthenticationFailed, KafkaSettingsError

__all__ = ["AUTH_CODES", "ENV_VARS", "MECHANISMS", "PROTOCOLS", "AuthWatch", "KafkaSecurity", "admin_config", "auth_error", "list_topics"]

log = logging.getLogger(__name__)

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
# Mechanisms that need nothing but a username and password (GSSAPI and OAUTHBEARER need more: use `extra`).
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
ENV_VARS = {
    "protocol": "KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "KAFKA_SASL_MECHANISM",
    "sasl_username": "KAFKA_SASL_USERNAME",
    "sasl_password": "KAFKA_SASL_PASSWORD",
    "sasl_password_file": "KAFKA_SASL_PASSWORD_FILE",
    "ssl_ca_location": "KAFKA_SSL_CA_LOCATION",
}
# Error codes that mean the brokers refused who we are (SASL) or the TLS handshake failed.
AUTH_CODES = frozenset({KafkaError._AUTHENTICATION, KafkaError._SSL, KafkaError.SASL_AUTHENTICATION_FAILED})


@dataclass(frozen=True, slots=True)
class KafkaSecurity:
    """Security protocol, SASL mechanism and credentials, and the CA file to trust for TLS."""

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_ca_location: str | None = None

    def __post_init__(self) -> None:
        protocol = self.protocol.upper()
        object.__setattr__(self, "protocol", protocol)
        if protocol not in PROTOCOLS:
            raise KafkaSettingsError(
                f"{ENV_VARS['protocol']} (--kafka-security-protocol) is {self.protocol!r}; "
                f"use one of {', '.join(PROTOCOLS)}"
            )
        sasl = protocol.startswith("SASL_")
        if sasl:
            self._check_sasl()
        else:
            given = [ENV_VARS[name] for name in ("sasl_mechanism", "sasl_username", "sasl_password")
                     if getattr(self, name) is not None]
            if given:
                raise KafkaSettingsError(
                    f"{', '.join(given)} {'is' if len(given) == 1 else 'are'} set but {ENV_VARS['protocol']} is "
                    f"{protocol}; set it to SASL_SSL (or SASL_PLAINTEXT) to use SASL, or unset them"
                )
        if self.ssl_ca_location is not None and not protocol.endswith("SSL"):
            raise KafkaSettingsError(
                f"{ENV_VARS['ssl_ca_location']} is set but {ENV_VARS['protocol']} is {protocol}; "
                "set it to SSL or SASL_SSL to use TLS, or unset the CA file"
            )

    def _check_sasl(self) -> None:
        mechanism = (self.sasl_mechanism or "").upper()
        if mechanism not in MECHANISMS:
            got = "not set" if not self.sasl_mechanism else f"{self.sasl_mechanism!r}"
            raise KafkaSettingsError(
                f"{self.protocol} needs a SASL mechanism, but {ENV_VARS['sasl_mechanism']} (--kafka-sasl-mechanism) "
                f"is {got}; use one of {', '.join(MECHANISMS)}"
            )
        object.__setattr__(self, "sasl_mechanism", mechanism)
        missing = [ENV_VARS[name] for name in ("sasl_username", "sasl_password") if not getattr(self, name)]
        if missing:
            raise KafkaSettingsError(
                f"{self.protocol} with {mechanism} needs a username and password, but {' and '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not set (the password may also come from a file: "
                f"{ENV_VARS['sasl_password_file']} or --kafka-sasl-password-file)"
            )

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> KafkaSecurity:
        """The settings in the environment; PLAINTEXT when none is set."""
        return cls.from_values(environ=environ)

    @classmethod
    def from_values(
        cls,
        *,
        protocol: str | None = None,
        sasl_mechanism: str | None = None,
        sasl_username: str | None = None,
        sasl_password_file: str | Path | None = None,
        ssl_ca_location: str | Path | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> KafkaSecurity:
        """Explicit values (e.g. CLI flags) where given, else the environment's."""
        env = os.environ if environ is None else environ

        def pick(value: str | Path | None, name: str) -> str | None:
            if value is not None and str(value) != "":
                return str(value)
            return env.get(ENV_VARS[name]) or None

        password_file = pick(sasl_password_file, "sasl_password_file")
        password = env.get(ENV_VARS["sasl_password"]) or None
        if password_file is not None:
            if password is not None and sasl_password_file is None:
                raise KafkaSettingsError(
                    f"both {ENV_VARS['sasl_password']} and {ENV_VARS['sasl_password_file']} are set; set only one"
                )
            password = _read_secret(password_file)
        ca = pick(ssl_ca_location, "ssl_ca_location")
        if ca is not None and not Path(ca).is_file():
            raise KafkaSettingsError(
                f"the CA file {ca} ({ENV_VARS['ssl_ca_location']} or --kafka-ssl-ca-location) does not exist; "
                "give the PEM file of the CA that signed the brokers' certificates"
            )
        return cls(
            protocol=pick(protocol, "protocol") or "PLAINTEXT",
            sasl_mechanism=pick(sasl_mechanism, "sasl_mechanism"),
            sasl_username=pick(sasl_username, "sasl_username"),
            sasl_password=password,
            ssl_ca_location=ca,
        )

    def client_config(self) -> dict[str, Any]:
        """librdkafka properties for every client; empty for plain PLAINTEXT (librdkafka's default)."""
        if self.protocol == "PLAINTEXT":
            return {}
        config: dict[str, Any] = {"security.protocol": self.protocol.lower()}
        if self.protocol.startswith("SASL_"):
            config.update({
                "sasl.mechanism": self.sasl_mechanism,
                "sasl.username": self.sasl_username,
                "sasl.password": self.sasl_password,
            })
        if self.ssl_ca_location is not None:
            config["ssl.ca.location"] = self.ssl_ca_location
        return config

    def describe(self) -> str:
        """For logs and error messages: protocol, mechanism and user, never the password."""
        if self.protocol.startswith("SASL_"):
            return f"{self.protocol} ({self.sasl_mechanism} as {self.sasl_username!r})"
        return self.protocol


def admin_config(
    bootstrap: str, security: KafkaSecurity | None = None, *, watch: AuthWatch | None = None, **overrides: Any
) -> dict[str, Any]:
    """An AdminClient's config for `bootstrap` (security from the environment unless given)."""
    security = KafkaSecurity.from_env() if security is None else security
    config: dict[str, Any] = {"bootstrap.servers": bootstrap, **security.client_config()}
    if watch is not None:
        config["error_cb"] = watch
    return {**config, **overrides}


def auth_error(
    operation: str, exc: BaseException | KafkaError, watch: AuthWatch | None, client: Any = None
) -> KafkaAuthenticationFailed | None:
    """The typed error if `exc` (or a refusal `watch` saw lately) says Kafka refused the credentials, else None."""
    detail = exc.args[0] if isinstance(exc, KafkaException) and exc.args else exc
    code = detail.code() if isinstance(detail, KafkaError) else None
    refused = watch.failure(client) if watch is not None else None
    if refused is None and code in AUTH_CODES:
        refused = detail.str() if isinstance(detail, KafkaError) else str(detail)
    if refused is None:
        return None
    return watch.error(operation, refused) if watch is not None else _refused(operation, refused, "")


def _read_secret(path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise KafkaSettingsError(
            f"cannot read the SASL password file {path} ({exc.strerror}); "
            f"check {ENV_VARS['sasl_password_file']} or --kafka-sasl-password-file"
        ) from exc
    secret = text.rstrip("\r\n")
    if not secret:
        raise KafkaSettingsError(f"the SASL password file {path} is empty; put the password in it")
    return secret


class AuthWatch:
    """librdkafka's `error_cb` for keystate's clients: remembers the brokers' refusals of the credentials.

    librdkafka reports a refused SASL login or TLS handshake only as an error event; the request that
    then fails says just "transport failure". `failure()` lets the shell name the real cause. The
    event's text names broker and mechanism, never the password.
    """

    # A refusal older than this is no longer taken as the cause of a failure (credentials may be rotated).
    RECENT_S = 120.0

    def __init__(self, security: KafkaSecurity) -> None:
        self._security = security
        self._lock = threading.Lock()
        self._last: tuple[float, str] | None = None

    def __call__(self, error: KafkaError) -> None:
        if error.code() not in AUTH_CODES:
            return
        text = error.str()
        with self._lock:
            repeated = self._last is not None and self._last[1] == text
            self._last = (time.monotonic(), text)
        if not repeated:
            log.error("Kafka refused keystate's credentials (%s): %s", self._security.describe(), text)

    def failure(self, client: Any = None) -> str | None:
        """The brokers' recent refusal, if any; polls `client` (without waiting) to collect pending events."""
        if client is not None:
            try:
                client.poll(0)
            except (KafkaException, RuntimeError):
                pass  # a closed client has nothing left to report
        with self._lock:
            last = self._last
        if last is None or time.monotonic() - last[0] > self.RECENT_S:
            return None
        return last[1]

    def error(self, operation: str, detail: str) -> KafkaAuthenticationFailed:
        """The typed error for `operation`, refused with `detail` (the broker's words)."""
        return _refused(operation, detail, f"as {self._security.describe()} ")


def _refused(operation: str, detail: str, who: str) -> KafkaAuthenticationFailed:
    return KafkaAuthenticationFailed(
        f"{operation} failed: Kafka refused keystate's credentials {who}({detail}); "
        f"check {ENV_VARS['sasl_username']}, {ENV_VARS['sasl_password']} (or {ENV_VARS['sasl_password_file']}), "
        f"{ENV_VARS['sasl_mechanism']}, {ENV_VARS['protocol']} and {ENV_VARS['ssl_ca_location']} "
        "(or the matching --kafka-* flags)"
    )


# librdkafka's metadata request waits its whole timeout when the login is refused; ask in rounds this
# long so a refusal (reported between rounds) ends the wait within seconds.
_ROUND_S = 1.0


def list_topics(client: Any, operation: str, watch: AuthWatch | None, timeout: float, topic: str | None = None) -> Any:
    """`client.list_topics(topic)` within `timeout`; raises `KafkaAuthenticationFailed` as soon as a refusal shows.

    Other failures raise confluent-kafka's `KafkaException` once `timeout` has passed, as before.
    """
    deadline = time.monotonic() + timeout
    while True:
        remaining = deadline - time.monotonic()
        try:
            return client.list_topics(topic, timeout=max(0.05, min(_ROUND_S, remaining)))
        except KafkaException as exc:
            refused = auth_error(operation, exc, watch, client)
            if refused is not None:
                raise refused from exc
            if time.monotonic() >= deadline:
                raise
