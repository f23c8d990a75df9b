"""`keystate dev start` keeps librdkafka's native stderr chatter out of the terminal, in .run/dev.log."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from keystate.cli.dev import _stderr_into


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_librdkafka_chatter_goes_to_the_dev_log_not_the_terminal(tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    log = tmp_path / "dev.log"
    with _stderr_into(log):
        admin = AdminClient({"bootstrap.servers": f"127.0.0.1:{_closed_port()}"})
        with pytest.raises(KafkaException):
            admin.list_topics(timeout=1.5)
        del admin  # destroyed inside: its closing messages are written now
    os.write(2, b"after\n")
    err = capfd.readouterr().err
    assert "Connect to ipv4#127.0.0.1" in log.read_text()
    assert "rdkafka" not in err and err == "after\n"
