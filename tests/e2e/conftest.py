"""A keystate stack per test: topics on a fresh prefix, a processor, an ingress, the test services."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from keystate.schemas.topics import Topics
from keystate.server.topics import TopicSettings, ensure_topics

from harness import SERVICES_SCRIPT, Stack, free_port

PARTITIONS = 4


@pytest.fixture
def stack(kafka_bootstrap: str, unique_topic_prefix: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    ensure_topics(kafka_bootstrap, Topics(unique_topic_prefix), TopicSettings(partitions=PARTITIONS))
    s = Stack(kafka_bootstrap, unique_topic_prefix, tmp_path)
    try:
        yield s
    finally:
        s.stop()
        if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
            print(s.logs())


@pytest.fixture
def deployment_env(tmp_path: Path) -> dict[str, str]:
    return {
        "KEYSTATE_TEST_LEDGER": str(tmp_path / "ledger.txt"),
        "KEYSTATE_TEST_RELEASE": str(tmp_path / "release"),
        "KEYSTATE_SIGNUP_OUTBOX": str(tmp_path / "outbox.txt"),
    }


@pytest.fixture
def running(stack: Stack, deployment_env: dict[str, str]) -> Stack:
    """processor + ingress + the test services, registered."""
    stack.processor("a")
    stack.ingress()
    port = free_port()
    stack.deployment(SERVICES_SCRIPT, port, env=deployment_env)
    stack.register(f"http://127.0.0.1:{port}")
    return stack


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
