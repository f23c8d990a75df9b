"""The local KRaft broker of `keystate kafka`: lifecycle, clear start-up errors, and records through it."""

from __future__ import annotations

import re
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient

from keystate.cli.kafka import REPO, SINGLE_NODE_SETTINGS, BrokerExited, LocalKafka, PortInUse, main
from tests.e2e.harness import free_port
from tests.kafka_fixture import create_topic

pytestmark = pytest.mark.integration


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[LocalKafka]:
    """A broker of its own on free ports (not started); stopped after the test whatever happened."""
    kafka = LocalKafka(tmp_path / "run", port=0)
    yield kafka
    kafka.stop()


@pytest.fixture
def listening_port() -> Iterator[int]:
    """A port on 127.0.0.1 that something listens on."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


def test_start_status_stop(broker: LocalKafka) -> None:
    bootstrap = broker.start()

    status = broker.status()
    assert status.running and status.bootstrap == bootstrap
    assert status.nodes[0].pid is not None
    assert broker.start() == bootstrap  # already running: nothing new is launched
    assert broker.status().nodes[0].pid == status.nodes[0].pid

    broker.stop()
    assert not broker.status().running
    assert not (broker.run_dir / "kafka.pid").exists()
    broker.stop()  # idempotent


def test_cli_start_status_stop(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = str(tmp_path / "run")
    try:
        assert main(["start", "--port", "0", "--run-dir", run_dir]) == 0
        last_line = capsys.readouterr().out.strip().splitlines()[-1]
        assert last_line.startswith("KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:")
        assert main(["status", "--run-dir", run_dir]) == 0
    finally:
        assert main(["stop", "--run-dir", run_dir]) == 0
    assert main(["status", "--run-dir", run_dir]) == 3


def test_taken_port_is_named_with_the_fix(tmp_path: Path, listening_port: int) -> None:
    with pytest.raises(PortInUse) as caught:
        LocalKafka(tmp_path, port=listening_port).start()

    message = str(caught.value)
    assert str(listening_port) in message
    assert "--port" in message and "KEYSTATE_KAFKA_PORT" in message


def test_broker_that_exits_shows_its_log_tail(tmp_path: Path) -> None:
    broker = LocalKafka(tmp_path, port=free_port(), controller_port=free_port())  # same ports: data kept
    broker.start()
    broker.stop()
    meta = broker.run_dir / "data" / "meta.properties"
    meta.write_text(meta.read_text().replace("node.id=1", "node.id=7"))  # data of another node

    with pytest.raises(BrokerExited) as caught:
        broker.start()

    message = str(caught.value)
    assert "Stored node id 7 doesn't match" in message.splitlines()[1]  # Kafka's reason comes first
    assert "broker.log (last 40 lines)" in message
    assert not broker.status().running


def test_docker_compose_has_the_local_broker_settings() -> None:
    env = dict(re.findall(r'^\s+KAFKA_(\w+): "([^"]*)"', (REPO / "docker-compose.yml").read_text(), re.M))
    compose = {name.lower().replace("_", "."): value for name, value in env.items()}
    protocols = compose.pop("listener.security.protocol.map").replace(",EXTERNAL:PLAINTEXT", "")

    assert protocols == SINGLE_NODE_SETTINGS["listener.security.protocol.map"]
    assert {key: compose.get(key) for key in SINGLE_NODE_SETTINGS if key != "listener.security.protocol.map"} == {
        key: value for key, value in SINGLE_NODE_SETTINGS.items() if key != "listener.security.protocol.map"
    }


def test_records_round_trip(kafka_bootstrap: str, kafka_admin: AdminClient, unique_topic_prefix: str) -> None:
    topic = create_topic(kafka_admin, f"{unique_topic_prefix}bytes", partitions=2)
    sent = [(f"key-{i % 3}".encode(), bytes([i]) * (i + 1)) for i in range(20)]

    producer = Producer({"bootstrap.servers": kafka_bootstrap, "acks": "all", "enable.idempotence": True})
    for key, value in sent:
        producer.produce(topic, value, key)
    assert producer.flush(30) == 0

    received = _consume(kafka_bootstrap, topic, len(sent))
    assert sorted(received) == sorted(sent)


def _consume(bootstrap: str, topic: str, count: int, timeout: float = 30.0) -> list[tuple[bytes, bytes]]:
    consumer = Consumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"test-{uuid.uuid4().hex}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
    })
    consumer.subscribe([topic])
    records: list[tuple[bytes, bytes]] = []
    try:
        for _ in range(int(timeout)):
            for message in consumer.consume(num_messages=count, timeout=1.0):
                assert message.error() is None, message.error()
                records.append((message.key(), message.value()))
            if len(records) >= count:
                break
    finally:
        consumer.close()
    return records
