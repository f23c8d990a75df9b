"""Errors of the shared server plumbing.

ServerError
 +-- KafkaUnavailable     Kafka could not be reached, or refused an operation
 |    +-- KafkaAuthenticationFailed  the brokers refused the SASL/TLS credentials
 +-- KafkaSettingsError   the Kafka security settings are incomplete or contradict each other
 +-- TopicConfigError     existing topics do not match what keystate needs
 +-- MetaError            a deployment or service registration is invalid
 |    +-- RegistrationConflict  it would break callers or change what a registered uri serves
 +-- IdentityError        the request identity key file is missing, unreadable or not ed25519
"""

from __future__ import annotations


class ServerError(Exception):
    """Root of every error raised by `keystate.server`."""


class KafkaUnavailable(ServerError):
    """Kafka did not answer, or answered with an error; the message names the operation."""


class KafkaAuthenticationFailed(KafkaUnavailable):
    """The brokers refused keystate's credentials (SASL) or the TLS handshake failed."""


class KafkaSettingsError(ServerError):
    """The Kafka security settings cannot work as given; the message names the setting to fix."""


class TopicConfigError(ServerError):
    """An existing topic has a partition count or config keystate cannot work with."""


class MetaError(ServerError):
    """A deployment or its services cannot be registered; the message says how to fix it."""


class RegistrationConflict(MetaError):
    """A registration was refused: breaking changes, or a registered uri that now serves other code.

    The message lists what changed and names the flag that registers it anyway.
    """


class IdentityError(ServerError):
    """The identity key file is missing, unreadable or not an ed25519 key; the message says how to fix it."""
