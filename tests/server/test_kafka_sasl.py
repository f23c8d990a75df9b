"""keystate's Kafka clients against a local broker with SASL/PLAIN: the right credentials work, wrong ones fail typed."""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Message

from keystate.cli import main
from keystate.ingress.runtime import IngressRuntime, IngressSettings
from keystate.schemas.topics import Topics
from keystate.server.errors import KafkaAuthenticationFailed
from keystate.server.kafka import AsyncProducer, KafkaSettings, TopicFollower
from keystate.server.kafka_security import KafkaSecurity
from keystate.server.topics import TopicSettings, ensure_topics
from tests.kafka_fixture import SaslBroker

pytestmark = pytest.mark.integration


def _security(broker: SaslBroker, password: str | None = None) -> KafkaSecurity:
    return KafkaSecurity(
        "SASL_PLAINTEXT", "PLAIN", broker.username, broker.password if password is None else password
    )


@pytest.fixture
def topics(kafka_sasl: SaslBroker) -> Topics:
    prefix = Topics(f"test.sasl.{uuid.uuid4().hex[:8]}.")
    ensure_topics(kafka_sasl.sasl_bootstrap, prefix, TopicSettings(partitions=2), security=_security(kafka_sasl))
    return prefix


async def test_producer_consumer_and_admin_work_with_the_right_credentials(kafka_sasl: SaslBroker, topics: Topics) -> None:
    settings = KafkaSettings(kafka_sasl.sasl_bootstrap, topics, security=_security(kafka_sasl))
    seen: list[Message] = []
    follower = TopicFollower(settings, topics.meta, seen.append, from_beginning=True)
    producer = AsyncProducer(settings)
    try:
        assert await asyncio.to_thread(producer.partitions, topics.log) == 2
        await follower.start(timeout=30)
        delivered = await asyncio.wait_for(producer.produce(topics.meta, b"hello", key=b"k"), 30)
        assert delivered.error() is None
        for _ in range(200):
            if seen:
                break
            await asyncio.sleep(0.05)
        assert [m.value() for m in seen] == [b"hello"]
    finally:
        follower.stop()
        await asyncio.to_thread(producer.close)


async def test_wrong_credentials_are_a_typed_error_that_names_the_settings(
    kafka_sasl: SaslBroker, topics: Topics, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "wrong-" + uuid.uuid4().hex
    settings = KafkaSettings(kafka_sasl.sasl_bootstrap, topics, security=_security(kafka_sasl, wrong))
    errors: list[KafkaAuthenticationFailed] = []
    with caplog.at_level(logging.INFO):
        with pytest.raises(KafkaAuthenticationFailed) as admin_error:
            ensure_topics(kafka_sasl.sasl_bootstrap, topics, security=settings.security, timeout=5)
        errors.append(admin_error.value)

        producer = AsyncProducer(settings)
        try:
            with pytest.raises(KafkaAuthenticationFailed) as producer_error:
                await asyncio.to_thread(producer.partitions, topics.log, 5)
            errors.append(producer_error.value)
        finally:
            await asyncio.to_thread(producer.close, 1)

        follower = TopicFollower(settings, topics.meta, lambda m: None, from_beginning=True)
        with pytest.raises(KafkaAuthenticationFailed) as consumer_error:
            await follower.start(timeout=30)
        follower.stop()
        errors.append(consumer_error.value)

    for error in errors:
        text = str(error)
        assert "Kafka refused keystate's credentials as SASL_PLAINTEXT (PLAIN as 'keystate-test')" in text
        assert "KAFKA_SASL_PASSWORD" in text and "Authentication failed" in text
        assert wrong not in text
    assert "Kafka refused keystate's credentials" in caplog.text  # logged once per client, at ERROR
    assert wrong not in caplog.text and kafka_sasl.password not in caplog.text


async def test_the_ingress_runs_on_the_sasl_listener(kafka_sasl: SaslBroker, topics: Topics, tmp_path: Path) -> None:
    # Every client of the ingress (producer, meta and results followers, read model, admin) authenticates.
    settings = IngressSettings(
        kafka_sasl.sasl_bootstrap, topics, state_dir=tmp_path, kafka_security=_security(kafka_sasl), start_timeout=30
    )
    runtime = IngressRuntime(settings)
    await runtime.start()
    try:
        for _ in range(300):
            if runtime.ready and runtime.invocations.ready:
                break
            await asyncio.sleep(0.05)
        assert runtime.ready and runtime.invocations.ready
    finally:
        await runtime.stop()


def test_the_topics_command_takes_the_kafka_flags(kafka_sasl: SaslBroker, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    secret = tmp_path / "kafka-password"
    secret.write_text(kafka_sasl.password + "\n")
    prefix = f"test.sasl-cli.{uuid.uuid4().hex[:8]}."
    flags = ["--bootstrap", kafka_sasl.sasl_bootstrap, "--prefix", prefix, "--partitions", "1",
             "--kafka-security-protocol", "SASL_PLAINTEXT", "--kafka-sasl-mechanism", "PLAIN",
             "--kafka-sasl-username", kafka_sasl.username, "--kafka-sasl-password-file", str(secret)]
    assert main(["topics", "create", *flags]) == 0
    assert "topics ready" in capsys.readouterr().out

    secret.write_text("not-the-password\n")
    assert main(["topics", "create", *flags]) == 1
    err = capsys.readouterr().err
    assert "Kafka refused keystate's credentials" in err and "not-the-password" not in err


async def test_a_processor_routes_a_request_on_the_sasl_listener(kafka_sasl: SaslBroker, topics: Topics) -> None:
    # The processor's transactional producer, group members, restore consumer and admin all authenticate.
    from confluent_kafka import Producer

    from keystate.processors.worker import ProcessorSettings, Worker
    from keystate.schemas._codec import codec
    from keystate.server.meta import MetaView, register

    settings = KafkaSettings(kafka_sasl.sasl_bootstrap, topics, security=_security(kafka_sasl))
    view, producer = MetaView(settings), AsyncProducer(settings)
    await view.start()
    greeter = {"name": "Greeter", "service_type": "SERVICE", "handlers": [{"name": "greet", "kind": "EXCLUSIVE"}]}
    deployment = {"deployment_id": "dp_sasl", "uri": "http://127.0.0.1:9", "transports": ["websocket"],
                  "protocol_version": 1, "created_at_ms": 0, "services": [greeter]}
    await register(view, producer, deployment)
    await asyncio.to_thread(producer.close)
    view.stop()
    request = {"service": "Greeter", "handler": "greet", "key": None, "argument": b"hi", "headers": {},
               "idempotency_key": None, "reply_topic": None, "delay_ms": None}
    plain = Producer(settings.producer_config())
    plain.produce(topics.requests, codec().encode("keystate.InvocationRequest", request), partition=0)
    assert plain.flush(30) == 0

    stop = asyncio.Event()
    worker = Worker(ProcessorSettings(kafka=settings, instance_id="sasl", group_id=f"{topics.prefix}processors"))
    task = asyncio.create_task(worker.run(stop))
    try:
        for _ in range(600):
            if worker.records >= 1 or task.done():
                break
            await asyncio.sleep(0.1)
        assert worker.records >= 1
    finally:
        stop.set()
        await task
