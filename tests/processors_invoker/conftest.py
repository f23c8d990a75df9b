"""Real ingress and test deployment processes for tests that run a processor in their own process."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from keystate.schemas.topics import Topics
from keystate.server.topics import TopicSettings, ensure_topics
from tests.e2e.harness import SERVICES_SCRIPT, Stack, free_port


@pytest.fixture(scope="module")
def services(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Stack, Path]]:
    """Topics, an ingress and the test deployment (real processes), shared by a module's tests."""
    workdir = tmp_path_factory.mktemp("invoker")
    prefix = f"test.invoker.{os.urandom(4).hex()}."
    ensure_topics(kafka_bootstrap, Topics(prefix), TopicSettings(partitions=2))
    stack = Stack(kafka_bootstrap, prefix, workdir)
    try:
        stack.ingress()
        port = free_port()
        env = {"KEYSTATE_TEST_LEDGER": str(workdir / "ledger"), "KEYSTATE_TEST_RELEASE": str(workdir / "release")}
        stack.deployment(SERVICES_SCRIPT, port, env=env)
        stack.register(f"http://127.0.0.1:{port}")
        yield stack, workdir
    finally:
        stack.stop()
