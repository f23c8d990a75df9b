"""Shared fixtures: the real Kafka broker for integration tests (see kafka_fixture.py)."""

import os
from collections.abc import Iterator

import pytest

pytest_plugins = ["tests.kafka_fixture"]


@pytest.fixture(scope="session", autouse=True)
def _state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Ingresses the tests start (in process or as `keystate` processes) keep their state in a temp dir."""
    before = os.environ.get("KEYSTATE_STATE_DIR")
    os.environ["KEYSTATE_STATE_DIR"] = str(tmp_path_factory.mktemp("keystate-state"))
    yield
    if before is None:
        os.environ.pop("KEYSTATE_STATE_DIR", None)
    else:
        os.environ["KEYSTATE_STATE_DIR"] = before
