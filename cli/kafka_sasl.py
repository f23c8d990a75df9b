"""A SASL_PLAINTEXT listener for the local broker: users and passwords in a JAAS config (PLAIN mechanism).

For tests and trying keystate's Kafka security settings locally. The node keeps its PLAINTEXT
listener (inter-broker traffic, and the readiness probe of ``cli/kafka.py``) and the KRaft controller
listener stays PLAINTEXT; clients that should authenticate connect to the SASL port.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from .kafka import LocalKafkaError

__all__ = ["SASL_LISTENER", "parse_user", "sasl_settings"]

SASL_LISTENER = "SASL_PLAINTEXT"
# Inside a JAAS value a quote or backslash would need escaping, and a user name becomes part of a key.
_NAME = re.compile(r"[A-Za-z0-9._-]+")
_PASSWORD = re.compile(r'[^"\\\s;]+')


def _checked(users: Mapping[str, str]) -> Mapping[str, str]:
    if not users:
        raise LocalKafkaError("a SASL listener needs at least one user: give NAME:PASSWORD")
    for name, password in users.items():
        if not _NAME.fullmatch(name):
            raise LocalKafkaError(f"SASL user name {name!r} may contain only letters, digits, '.', '_' and '-'")
        if not _PASSWORD.fullmatch(password):
            raise LocalKafkaError(f"the password of SASL user {name!r} must be non-empty without quotes, backslashes, ';' or spaces")
    return users


def sasl_settings(users: Mapping[str, str]) -> dict[str, str]:
    """server.properties entries that turn on PLAIN on the SASL_PLAINTEXT listener for `users`."""
    entries = " ".join(f'user_{name}="{password}"' for name, password in _checked(users).items())
    return {
        "listener.security.protocol.map": f"PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,{SASL_LISTENER}:{SASL_LISTENER}",
        "sasl.enabled.mechanisms": "PLAIN",
        f"listener.name.{SASL_LISTENER.lower()}.plain.sasl.jaas.config":
            f"org.apache.kafka.common.security.plain.PlainLoginModule required {entries};",
    }


def parse_user(text: str) -> tuple[str, str]:
    """`NAME:PASSWORD` from the command line."""
    name, sep, password = text.partition(":")
    if not sep:
        raise LocalKafkaError(f"--sasl-user takes NAME:PASSWORD, got {text.split(':')[0]!r} without a password")
    _checked({name: password})
    return name, password
