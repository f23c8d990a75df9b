"""The Docker paths: the testcontainers broker of the test fixture and docker-compose.yml, run wherever a Docker engine answers.

Where none answers (this project's CI machines) every test here is skipped with the reason
`docker info` gave, e.g. "Cannot connect to the Docker daemon at unix:///var/run/docker.sock".
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer

from keystate.schemas.topics import Topics
from keystate.server.topics import ensure_topics
from tests.kafka_fixture import docker_problem, kafka_container

pytestmark = [pytest.mark.integration, pytest.mark.docker]

REPO = Path(__file__).resolve().parents[2]
COMPOSE_PORTS = (19092, 8080, 9070, 9080)  # published by docker-compose.yml on 127.0.0.1


@pytest.fixture(scope="module")
def docker() -> str:
    problem = docker_problem()
    if problem is not None:
        pytest.skip(f"{problem}; the Docker tests (testcontainers broker, docker-compose.yml) run where one does")
    return str(shutil.which("docker"))


def test_testcontainers_broker_takes_keystates_topics_and_records(docker: str) -> None:
    containers = kafka_container()
    bootstrap = next(containers)
    try:
        topics = Topics(f"docker.{uuid.uuid4().hex[:8]}.")
        created = ensure_topics(bootstrap, topics)
        assert topics.requests in created
        producer = Producer({"bootstrap.servers": bootstrap})
        producer.produce(topics.requests, key=b"k", value=b"v")
        assert producer.flush(30) == 0
        consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "docker-test", "auto.offset.reset": "earliest"})
        consumer.subscribe([topics.requests])
        try:
            deadline = time.monotonic() + 60
            record = None
            while record is None and time.monotonic() < deadline:
                msg = consumer.poll(1.0)
                record = msg if msg is not None and msg.error() is None else None
            assert record is not None and (record.key(), record.value()) == (b"k", b"v")
        finally:
            consumer.close()
    finally:
        containers.close()


def _port_taken(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _http(method: str, url: str, body: object = None) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def _wait(url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if _http("GET", url)[0] == 200:
                return
        except OSError:
            pass
        time.sleep(2)
    raise TimeoutError(f"{url} did not answer within {timeout:g} s")


@pytest.fixture
def compose(docker: str) -> Iterator[list[str]]:
    if subprocess.run([docker, "compose", "version"], capture_output=True, timeout=30, check=False).returncode != 0:
        pytest.skip("the Docker engine answers but `docker compose` (the Compose v2 plugin) is missing")
    taken = [p for p in COMPOSE_PORTS if _port_taken(p)]
    if taken:
        pytest.skip(f"docker-compose.yml publishes fixed ports and 127.0.0.1:{taken} is taken (`make stop` frees a make dev)")
    cmd = [docker, "compose", "-f", str(REPO / "docker-compose.yml"), "-p", f"keystate-test-{uuid.uuid4().hex[:8]}"]
    subprocess.run([*cmd, "up", "-d"], check=True, timeout=900)
    try:
        yield cmd
    finally:
        logs = subprocess.run([*cmd, "logs", "--tail", "40"], capture_output=True, text=True, timeout=60, check=False)
        print(logs.stdout[-4000:])
        subprocess.run([*cmd, "down", "-v"], check=False, timeout=300)


@pytest.mark.timeout(1200)
def test_docker_compose_runs_keystate_with_the_examples(compose: list[str]) -> None:
    # The runtime and examples containers pip-install the checkout first: minutes on a cold cache.
    _wait("http://127.0.0.1:9070/health", timeout=900)
    _wait("http://127.0.0.1:9080/discover", timeout=300)
    status, body = _http("POST", "http://127.0.0.1:9070/deployments", {"uri": "http://examples:9080"})
    assert status in (200, 201), body
    status, body = _http("POST", "http://127.0.0.1:8080/Greeter/greet", "compose")
    assert (status, json.loads(body)) == (200, "Hello compose!")
