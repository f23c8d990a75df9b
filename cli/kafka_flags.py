"""The `--kafka-*` security flags shared by every command that talks to Kafka."""

from __future__ import annotations

import argparse

from keystate.server.kafka_security import ENV_VARS, MECHANISMS, PROTOCOLS, KafkaSecurity

__all__ = ["add_kafka_security_args", "kafka_security"]


def add_kafka_security_args(parser: argparse.ArgumentParser) -> None:
    """Flags that override the KAFKA_* environment; there is no password flag (it would show in `ps`)."""
    group = parser.add_argument_group("Kafka security (each flag defaults to its environment variable, else PLAINTEXT)")
    group.add_argument("--kafka-security-protocol", type=str.upper, choices=PROTOCOLS,
                       help=f"${ENV_VARS['protocol']}")
    group.add_argument("--kafka-sasl-mechanism", type=str.upper, choices=MECHANISMS,
                       help=f"${ENV_VARS['sasl_mechanism']}")
    group.add_argument("--kafka-sasl-username", help=f"${ENV_VARS['sasl_username']}")
    group.add_argument("--kafka-sasl-password-file",
                       help=f"file holding the SASL password (${ENV_VARS['sasl_password_file']}; or ${ENV_VARS['sasl_password']})")
    group.add_argument("--kafka-ssl-ca-location", help=f"PEM file of the brokers' CA (${ENV_VARS['ssl_ca_location']})")


def kafka_security(args: argparse.Namespace) -> KafkaSecurity:
    """The settings from the flags, falling back to the environment. Raises `KafkaSettingsError`."""
    return KafkaSecurity.from_values(
        protocol=args.kafka_security_protocol,
        sasl_mechanism=args.kafka_sasl_mechanism,
        sasl_username=args.kafka_sasl_username,
        sasl_password_file=args.kafka_sasl_password_file,
        ssl_ca_location=args.kafka_ssl_ca_location,
    )
