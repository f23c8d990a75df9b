"""The payload limit: how it is configured, the Kafka sizes derived from it, and the ingress's 413."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from aiohttp.test_utils import TestClient, TestServer
from confluent_kafka import Consumer, Producer

from keystate.cli import main as cli_main
from keystate.ingress.app import ingress_app
from keystate.ingress.runtime import IngressRuntime, IngressSettings
from keystate.schemas.limits import (
    DEFAULT_MAX_PAYLOAD_BYTES,
    ENV_VAR,
    MAX_PAYLOAD_BYTES_CEILING,
    MAX_TEXT_BYTES,
    MIN_PAYLOAD_BYTES,
    PayloadLimitError,
    headers_size,
    kafka_sizes,
    max_payload_bytes,
    payload_too_large,
    truncate_text,
)
from keystate.schemas.topics import Topics
from keystate.server.kafka import KafkaSettings
from keystate.server.topics import MAX_MESSAGE_BYTES, TopicSettings, topic_specs

MiB = 1024 * 1024


# ---- configuration -------------------------------------------------------------------------


def test_the_default_is_8_mib_and_the_environment_overrides_it() -> None:
    assert max_payload_bytes(environ={}) == DEFAULT_MAX_PAYLOAD_BYTES == 8 * MiB
    assert max_payload_bytes(environ={ENV_VAR: "33554432"}) == 32 * MiB
    assert max_payload_bytes(environ={ENV_VAR: " "}) == DEFAULT_MAX_PAYLOAD_BYTES
    # An explicit value (the CLI flag) wins over the environment.
    assert max_payload_bytes("2097152", environ={ENV_VAR: "33554432"}) == 2 * MiB


@pytest.mark.parametrize("bad", ["8MiB", "-1", "0", str(MIN_PAYLOAD_BYTES - 1), str(MAX_PAYLOAD_BYTES_CEILING + 1)])
def test_a_bad_limit_says_what_is_allowed(bad: str) -> None:
    with pytest.raises(PayloadLimitError, match=ENV_VAR):
        max_payload_bytes(environ={ENV_VAR: bad})
    with pytest.raises(PayloadLimitError, match="--max-payload-bytes"):
        max_payload_bytes(bad)


def test_settings_take_the_limit_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_VAR, str(2 * MiB))
    assert KafkaSettings("b:9092").max_payload_bytes == 2 * MiB
    assert TopicSettings().max_payload_bytes == 2 * MiB
    ingress = IngressSettings("b:9092")
    assert ingress.max_payload_bytes == ingress.max_body_bytes == ingress.kafka.max_payload_bytes == 2 * MiB


@pytest.mark.parametrize("build", [
    lambda n: KafkaSettings("b:9092", max_payload_bytes=n),
    lambda n: TopicSettings(max_payload_bytes=n),
    lambda n: IngressSettings("b:9092", max_payload_bytes=n),
])
def test_settings_refuse_a_limit_out_of_range(build) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PayloadLimitError, match="must be between"):
        build(MAX_PAYLOAD_BYTES_CEILING + 1)


def test_the_cli_refuses_a_bad_limit_before_connecting(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        assert cli_main(["ingress", "--bootstrap", "127.0.0.1:1", "--max-payload-bytes", "12"]) == 2
    assert "--max-payload-bytes is 12 bytes; it must be between" in caplog.text


# ---- Kafka sizes ---------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [MIN_PAYLOAD_BYTES, 64 * 1024, DEFAULT_MAX_PAYLOAD_BYTES, 32 * MiB, MAX_PAYLOAD_BYTES_CEILING])
def test_every_kafka_size_leaves_room_for_one_payload_and_its_envelope(limit: int) -> None:
    sizes = kafka_sizes(limit)
    assert sizes.record_bytes > limit
    assert sizes.producer_message_max_bytes > sizes.record_bytes
    # The broker sees the compressed batch: LZ4 may grow incompressible data by 1/255.
    assert sizes.topic_max_message_bytes >= sizes.producer_message_max_bytes + sizes.producer_message_max_bytes // 255
    assert sizes.producer_batch_size <= sizes.record_bytes
    assert sizes.consumer_max_partition_fetch_bytes >= sizes.topic_max_message_bytes
    assert sizes.consumer_fetch_max_bytes >= sizes.topic_max_message_bytes
    assert sizes.consumer_receive_message_max_bytes >= sizes.consumer_fetch_max_bytes + 512
    # A produce request has to fit the broker's socket.request.max.bytes (100 MiB by default).
    assert sizes.producer_message_max_bytes < 100 * MiB


@pytest.mark.parametrize("limit", [MIN_PAYLOAD_BYTES, DEFAULT_MAX_PAYLOAD_BYTES, MAX_PAYLOAD_BYTES_CEILING])
def test_librdkafka_accepts_the_client_configs(limit: int) -> None:
    settings = KafkaSettings("127.0.0.1:1", max_payload_bytes=limit)
    sizes = kafka_sizes(limit)
    producer_config = settings.producer_config(**{"transactional.id": "t"})
    consumer_config = settings.consumer_config(**{"group.id": "g"})
    assert producer_config["message.max.bytes"] == sizes.producer_message_max_bytes
    assert consumer_config["max.partition.fetch.bytes"] == sizes.consumer_max_partition_fetch_bytes
    # Building the clients runs librdkafka's own consistency checks of these sizes.
    Producer({**producer_config, "log_level": 0})
    Consumer({**consumer_config, "log_level": 0}).close()


def test_every_topic_is_created_for_the_limit() -> None:
    specs = topic_specs(Topics("t."), TopicSettings(max_payload_bytes=2 * MiB, replication_factor=3))
    expected = str(kafka_sizes(2 * MiB).topic_max_message_bytes)
    assert {s.name: s.config[MAX_MESSAGE_BYTES] for s in specs} == {s.name: expected for s in specs}
    assert all(s.config["min.insync.replicas"] == "2" for s in specs)


# ---- messages ------------------------------------------------------------------------------


def test_the_message_names_the_value_its_size_the_limit_and_the_setting() -> None:
    assert payload_too_large("the thing", 10, 10) is None
    message = payload_too_large("the thing", 11, 10)
    assert message is not None
    assert message.startswith("the thing is 11 bytes, over the payload limit of 10 bytes")
    assert ENV_VAR in message and "--max-payload-bytes" in message


def test_headers_count_in_utf8_bytes() -> None:
    assert headers_size(None) == 0
    assert headers_size({"ab": "cd", "é": "€"}) == 4 + 2 + 3


def test_long_texts_are_cut_with_a_note() -> None:
    assert truncate_text("short") == "short"
    cut = truncate_text("é" * MAX_TEXT_BYTES)
    assert len(cut.encode()) <= MAX_TEXT_BYTES
    assert cut.endswith(f"[truncated, {2 * MAX_TEXT_BYTES} bytes in all]")


# ---- the ingress ---------------------------------------------------------------------------

LIMIT = 4096


@pytest.fixture
async def client() -> AsyncIterator[TestClient]:
    # Never started: a request within the limit stops at the missing producer (503).
    from tests.ingress.ingress_support import GREETER, record

    runtime = IngressRuntime(IngressSettings("127.0.0.1:1", Topics("unit."), max_payload_bytes=LIMIT))
    rec = record("http://d:9080", GREETER)
    runtime.meta.state.apply(rec["deployment_id"], rec)
    async with TestClient(TestServer(ingress_app(runtime), host="127.0.0.1")) as c:
        yield c


async def _error(response) -> dict:  # type: ignore[no-untyped-def]
    assert response.content_type == "application/json"
    return await response.json()


async def test_a_body_over_the_limit_is_413_naming_the_limit_and_the_setting(client: TestClient) -> None:
    response = await client.post("/Greeter/greet", data=b"x" * (LIMIT + 1), headers={"content-type": "application/json"})
    assert response.status == 413
    body = await _error(response)
    assert body["code"] == 413
    assert "the request to /Greeter/greet (body and headers) is " in body["message"]
    assert f"over the payload limit of {LIMIT} bytes" in body["message"]
    assert ENV_VAR in body["message"] and "--max-payload-bytes" in body["message"]


async def test_a_chunked_body_over_the_limit_is_413_naming_the_setting(client: TestClient) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(3):
            yield b"x" * LIMIT

    response = await client.post("/Greeter/greet", data=chunks(), headers={"content-type": "application/json"})
    assert response.status == 413
    body = await _error(response)
    assert f"over the payload limit of {LIMIT} bytes" in body["message"] and ENV_VAR in body["message"]


async def test_headers_count_towards_the_limit(client: TestClient) -> None:
    headers = {"content-type": "application/json", "x-big": "h" * (LIMIT - 100)}
    response = await client.post("/Greeter/greet", data=b"y" * 200, headers=headers)
    assert response.status == 413
    assert "(body and headers)" in (await _error(response))["message"]


async def test_a_body_within_the_limit_passes_the_check(client: TestClient) -> None:
    response = await client.post("/Greeter/greet", data=b'"' + b"x" * (LIMIT // 2) + b'"', headers={"content-type": "application/json"})
    assert response.status == 503  # passed the limit, stopped at the missing Kafka producer
