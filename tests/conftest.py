"""Shared fixtures: the real Kafka broker for integration tests (see kafka_fixture.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

pytest_plugins = ["tests.kafka_fixture"]


@pytest.fixture(autouse=True, scope="session")
def _state_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Processors started by tests (in-process or as subprocesses) keep their stores in a temporary directory."""
    if "KEYSTATE_STATE_DIR" in os.environ:
        yield
        return
    os.environ["KEYSTATE_STATE_DIR"] = str(tmp_path_factory.mktemp("keystate-state"))
    try:
        yield
    finally:
        os.environ.pop("KEYSTATE_STATE_DIR", None)
