"""Shared fixtures: the real Kafka broker for integration tests (see kafka_fixture.py)."""

pytest_plugins = ["tests.kafka_fixture"]
