"""pytest plugin: a Kafka broker for integration tests ($KAFKA_BOOTSTRAP_SERVERS, a local broker, or Docker)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from confluent_kafka.admin import AdminClient, NewTopic

from keystate.cli.kafka import JavaNotFound, LocalKafka, LocalKafkaError, MavenNotFound

__all__ = [
    "SaslBroker", "create_topic", "docker_problem", "kafka_admin", "kafka_bootstrap", "kafka_container", "kafka_sasl",
    "unique_topic_prefix",
]

HOW_TO_GET_A_BROKER = (
    "integration tests need Kafka: install a JDK 17+ and Maven (apt-get install openjdk-17-jre-headless maven) "
    "so the tests start a local broker, or start Docker, or set KAFKA_BOOTSTRAP_SERVERS to a running broker"
)


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Bootstrap servers: $KAFKA_BOOTSTRAP_SERVERS, else a local broker on free ports, else a Docker container."""
    configured = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if configured:
        yield configured
        return
    broker = LocalKafka(tmp_path_factory.mktemp("kafka"), port=0)
    try:
        bootstrap = broker.start()
    except (JavaNotFound, MavenNotFound) as exc:
        missing = str(exc)  # no local broker possible here: try Docker below
    except LocalKafkaError as exc:
        pytest.fail(f"the local Kafka broker did not start: {exc}", pytrace=False)
    else:
        try:
            yield bootstrap
        finally:
            broker.stop()
        return
    problem = docker_problem()
    if problem is not None:
        pytest.fail(f"{HOW_TO_GET_A_BROKER} (local broker: {missing}; {problem})", pytrace=False)
    yield from kafka_container()


def docker_problem() -> str | None:
    """Why no Docker engine can be used here (a sentence for a skip or failure), or None if one answers."""
    docker = shutil.which("docker")
    if docker is None:
        return "no Docker engine: the `docker` command is not on PATH"
    try:
        done = subprocess.run([docker, "info", "--format", "{{.ServerVersion}}"], capture_output=True, text=True,
                              timeout=20, check=False)
    except subprocess.TimeoutExpired:
        return "no Docker engine: `docker info` did not answer within 20 s"
    except OSError as exc:
        return f"no Docker engine: running {docker} failed: {exc}"
    if done.returncode != 0 or not done.stdout.strip():
        said = (done.stderr.strip() or done.stdout.strip()).splitlines()
        return f"no Docker engine answers `docker info`: {said[-1] if said else f'exit status {done.returncode}'}"
    return None


def kafka_container() -> Iterator[str]:
    """A KRaft broker in a container (testcontainers), for as long as the generator is not closed."""
    from testcontainers.community.kafka import KafkaContainer

    with KafkaContainer().with_kraft() as container:
        yield container.get_bootstrap_server()


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> AdminClient:
    """An AdminClient on the session's broker."""
    return AdminClient({"bootstrap.servers": kafka_bootstrap})


@pytest.fixture
def unique_topic_prefix(request: pytest.FixtureRequest) -> str:
    """A topic-name prefix no other test (or earlier run on the same broker) uses, e.g. 'test.produce.1a2b3c4d.'."""
    name = re.sub(r"[^a-zA-Z0-9_-]+", "-", request.node.name)[:60].strip("-")
    return f"test.{name}.{uuid.uuid4().hex[:8]}."


def create_topic(
    admin: AdminClient,
    name: str,
    partitions: int = 1,
    replication_factor: int = 1,
    config: dict[str, str] | None = None,
    timeout: float = 30.0,
) -> str:
    """Create a topic and wait until the broker confirms it; return its name."""
    topic = NewTopic(name, num_partitions=partitions, replication_factor=replication_factor, config=config or {})
    admin.create_topics([topic], operation_timeout=timeout)[name].result(timeout)
    return name


@dataclass(frozen=True)
class SaslBroker:
    """A local broker that also listens with SASL_PLAINTEXT (PLAIN) for one user."""

    bootstrap: str  # PLAINTEXT, no credentials (for test set-up)
    sasl_bootstrap: str  # SASL_PLAINTEXT: clients must authenticate as username/password
    username: str
    password: str


@pytest.fixture(scope="session")
def kafka_sasl(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SaslBroker]:
    """A broker of its own with a SASL_PLAINTEXT listener and a JAAS config; needs a JDK and Maven (else skipped)."""
    username, password = "keystate-test", f"pw-{uuid.uuid4().hex}"
    broker = LocalKafka(tmp_path_factory.mktemp("kafka-sasl"), port=0, sasl_users={username: password})
    try:
        bootstrap = broker.start()
    except (JavaNotFound, MavenNotFound) as exc:
        pytest.skip(f"a SASL broker needs a local broker: {exc}")
    except LocalKafkaError as exc:
        pytest.fail(f"the local SASL Kafka broker did not start: {exc}", pytrace=False)
    try:
        assert broker.sasl_bootstrap is not None
        yield SaslBroker(bootstrap, broker.sasl_bootstrap, username, password)
    finally:
        broker.stop()
