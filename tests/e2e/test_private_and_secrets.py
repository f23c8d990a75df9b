"""Ingress-private handlers and secret headers end to end: real processor, ingress, deployment and broker."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from keystate.schemas._codec import codec
from keystate.schemas.topics import Topics

from harness import Stack, free_port, http
from results import read_all

pytestmark = pytest.mark.integration

PRIVATE_SERVICES = str(Path(__file__).with_name("private_services.py"))
SECRET = b"x-secret-123"
CREDENTIALS = {
    "Authorization": "Bearer x-secret-123",
    "Cookie": "session=x-secret-123-cookie",
    "X-Api-Key": "x-secret-123-key",
    "Proxy-Authorization": "Basic x-secret-123-proxy",
}


@pytest.fixture
def private(stack: Stack) -> Stack:
    stack.processor("a")
    stack.ingress()
    port = free_port()
    stack.deployment(PRIVATE_SERVICES, port)
    stack.register(f"http://127.0.0.1:{port}")
    return stack


def _until(check, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def test_private_handlers_are_refused_at_the_ingress_and_run_when_handlers_call_them(private: Stack) -> None:
    for path in ("Billing/settle", "Audit/record", "Account/acct-1/deposit", "Billing/settle/send"):
        refused = http("POST", f"{private.url}/{path}", 5, timeout=30)
        assert refused.status == 400, (path, refused.body, private.logs())
        assert refused.json()["message"].startswith("the invoked service is not public")

    # The public handler reaches all three by call, object call and send.
    assert http("POST", f"{private.url}/Billing/charge", 5, timeout=60).json() == ["settled 5", 5]
    # Account/balance is public inside a private object: it reads what the send's chain deposited.
    audited = _until(lambda: http("POST", f"{private.url}/Account/audit/balance", timeout=30).json() == 5)
    assert audited, private.logs()
    assert http("POST", f"{private.url}/Account/acct-1/balance", timeout=30).json() == 5

    services = {s["name"]: s for s in http("GET", f"{private.admin_url}/services").json()["services"]}
    assert services["Audit"]["ingress_private"] and services["Account"]["ingress_private"]
    assert {h["name"]: h["ingress_private"] for h in services["Billing"]["handlers"]} == {"charge": False, "settle": True}


def test_a_kafka_request_for_a_private_handler_gets_a_failure_result(private: Stack) -> None:
    topics = Topics(private.prefix)
    c = codec()
    producer = Producer({"bootstrap.servers": private.bootstrap})
    request = {"service": "Billing", "handler": "settle", "argument": b"5", "idempotency_key": "kafka-private-1"}
    producer.produce(topics.requests, c.encode("keystate.InvocationRequest", request))
    producer.produce(topics.requests, c.encode("keystate.InvocationRequest", {**request, "handler": "charge"}))
    producer.flush(10)

    def ours(records: list[dict]) -> list[dict]:
        return [r for r in records if r.get("idempotency_key") == "kafka-private-1" and "status" in r and "target" in r]

    results = read_all(private.bootstrap, topics.results, until=lambda rs: len(ours(rs)) >= 2)
    by_handler = {r["target"]["handler"]: r for r in ours(results)}
    assert set(by_handler) == {"settle", "charge"}, private.logs()
    refused = by_handler["settle"]
    assert refused["status"] == "FAILED" and refused["failure"]["code"] == 400
    assert refused["failure"]["message"].startswith("the invoked service is not public")
    assert by_handler["charge"]["status"] == "SUCCEEDED"


def _scan_topics(bootstrap: str, prefix: str) -> tuple[int, list[str]]:
    """Every record of every topic of `prefix` from the beginning (aborted ones too): how many, and where `SECRET` is."""
    names = [t for t in AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10).topics if t.startswith(prefix)]
    consumer = Consumer(
        {"bootstrap.servers": bootstrap, "group.id": "secret-scan", "enable.auto.commit": False, "isolation.level": "read_uncommitted"}
    )
    found: list[str] = []
    count = 0
    try:
        metadata = consumer.list_topics(timeout=10).topics
        assignment = [TopicPartition(t, p, 0) for t in names for p in metadata[t].partitions]
        ends = {(tp.topic, tp.partition): consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in assignment}
        consumer.assign(assignment)
        remaining = {k for k, end in ends.items() if end > 0}
        deadline = time.monotonic() + 60
        while remaining and time.monotonic() < deadline:
            for msg in consumer.consume(500, 0.5):
                if msg.error() is not None:
                    continue
                count += 1
                where = f"{msg.topic()}/{msg.partition()}@{msg.offset()}"
                raw = [msg.key() or b"", msg.value() or b""] + [k.encode() + (v or b"") for k, v in msg.headers() or []]
                if any(SECRET in part for part in raw):
                    found.append(where)
            # By position, not by the last record's offset: transaction markers take offsets too.
            for tp in consumer.position([TopicPartition(t, p) for t, p in remaining]):
                if tp.offset >= ends[(tp.topic, tp.partition)]:
                    remaining.discard((tp.topic, tp.partition))
        assert not remaining, f"could not read to the end of {sorted(remaining)}"
    finally:
        consumer.close()
    return count, found


def test_credentials_of_an_authenticated_call_are_in_no_kafka_record(private: Stack) -> None:
    seen = http("POST", f"{private.url}/Echo/headers", headers={**CREDENTIALS, "X-Trace": "t1"}, timeout=60)
    assert seen.status == 200, (seen.body, private.logs())
    assert seen.json().get("x-trace") == "t1"
    assert not {"authorization", "cookie", "x-api-key", "proxy-authorization"} & set(seen.json()), seen.json()
    # Through nested calls and a send, and with an idempotency key (more rows: dedup, replies).
    charged = http("POST", f"{private.url}/Billing/charge", 7, headers={**CREDENTIALS, "idempotency-key": "i-1"}, timeout=60)
    assert charged.json() == ["settled 7", 7]
    assert _until(lambda: http("POST", f"{private.url}/Account/audit/balance", timeout=30).json() == 7)
    # A service that asks for Authorization gets it (and so it is stored: a different, non-secret token here).
    vault = http("POST", f"{private.url}/Vault/headers", headers={**CREDENTIALS, "Authorization": "Bearer vault-token"})
    assert vault.json()["authorization"] == "Bearer vault-token" and "cookie" not in vault.json()

    count, found = _scan_topics(private.bootstrap, private.prefix)
    assert count > 20, count  # log, changelog, results: the scan read the records of these calls
    assert found == [], f"the secret is stored in {found}"
