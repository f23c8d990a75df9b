"""The schema registry API of the admin port, through Confluent's own client and Avro serde.

The admin here is the real app on 127.0.0.1 with a runtime not connected to Kafka: the registry
answers from keystate's packaged schemas alone. Producing and consuming through a running stack
is in tests/e2e/test_kafka_client.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from confluent_kafka.schema_registry import Schema, SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer, AvroSerializer
from confluent_kafka.schema_registry.error import SchemaRegistryError
from confluent_kafka.serialization import MessageField, SerializationContext
from fastavro.schema import to_parsing_canonical_form

from keystate.ingress.admin import admin_app
from keystate.ingress.auth import BearerToken
from keystate.ingress.runtime import IngressRuntime, IngressSettings
from keystate.schemas._codec import AVRO_DIR, codec
from keystate.schemas.topics import Topics

# A prefix other than the default: the subjects must follow the topic names of this installation.
TOPICS = Topics("acme.")
REQUESTS = "acme.requests-value"
RESULTS = "acme.results-value"
DLQ = "acme.requests.dlq-value"
REQUEST_AVSC = (AVRO_DIR / "InvocationRequest.avsc").read_text()
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"

REQUEST = {
    "service": "Greeter",
    "handler": "greet",
    "key": None,
    "argument": b'"Ann"',
    "headers": {"correlation-id": "c-1"},
    "idempotency_key": None,
    "reply_topic": None,
    "delay_ms": None,
}

# The three ways an AvroSerializer finds its schema id: register it, take the subject's latest, look it up.
MODES = {
    "auto-register": ({"auto.register.schemas": True}, REQUEST_AVSC),
    "use-latest-version": ({"auto.register.schemas": False, "use.latest.version": True}, None),
    "lookup": ({"auto.register.schemas": False}, REQUEST_AVSC),
}


@pytest.fixture
async def admin(tmp_path: Path) -> AsyncIterator[TestClient]:
    settings = IngressSettings("127.0.0.1:1", TOPICS, state_dir=tmp_path)  # never connected
    async with TestClient(TestServer(admin_app(IngressRuntime(settings)), host="127.0.0.1")) as client:
        yield client


@pytest.fixture
def registry(admin: TestClient) -> SchemaRegistryClient:
    return SchemaRegistryClient({"url": str(admin.make_url("")).rstrip("/"), "max.retries": 0})


def _canonical(schema: str | dict[str, Any]) -> str:
    return str(to_parsing_canonical_form(json.loads(schema) if isinstance(schema, str) else schema))


async def _fails(call: Any, *args: Any) -> SchemaRegistryError:
    with pytest.raises(SchemaRegistryError) as caught:
        await asyncio.to_thread(call, *args)
    return caught.value


async def test_subjects_follow_the_topic_names_with_one_version_each(registry: SchemaRegistryClient) -> None:
    subjects = await asyncio.to_thread(registry.get_subjects)
    versions = await asyncio.to_thread(registry.get_versions, REQUESTS)
    first = await asyncio.to_thread(registry.get_version, REQUESTS, 1)
    latest = await asyncio.to_thread(registry.get_latest_version, RESULTS)
    dlq = await asyncio.to_thread(registry.get_latest_version, DLQ)

    assert subjects == sorted([REQUESTS, RESULTS, DLQ])
    assert versions == [1]
    assert (first.subject, first.version, first.schema_id) == (REQUESTS, 1, 301)
    assert first.schema.schema_str is not None
    assert _canonical(first.schema.schema_str) == _canonical(codec().schema_for_id(301))
    # InvocationResult got `correlation` (issue 11): version 2, id 304; version 1 (302) stays for old records.
    assert (latest.subject, latest.version, latest.schema_id) == (RESULTS, 2, 304)
    assert await asyncio.to_thread(registry.get_versions, RESULTS) == [1, 2]
    assert dlq.schema_id == 303


@pytest.mark.parametrize("mode", MODES)
async def test_the_avro_serializer_writes_requests_keystate_reads(registry: SchemaRegistryClient, mode: str) -> None:
    conf, schema = MODES[mode]
    serializer = AvroSerializer(registry, schema, conf=conf)

    data = await asyncio.to_thread(serializer, REQUEST, SerializationContext(TOPICS.requests, MessageField.VALUE))

    assert data is not None
    assert int.from_bytes(data[1:5], "big") == 301
    assert codec().decode_as("keystate.InvocationRequest", data) == REQUEST


@pytest.mark.parametrize("use_latest", [False, True])
async def test_the_avro_deserializer_reads_results_keystate_wrote(registry: SchemaRegistryClient, use_latest: bool) -> None:
    result = {
        "invocation_id": "inv_1abc",
        "target": {"service": "Greeter", "handler": "greet", "key": None, "service_type": "SERVICE", "handler_kind": "EXCLUSIVE"},
        "status": "SUCCEEDED",
        "output": b'"Hello Ann!"',
        "failure": None,
        "idempotency_key": None,
        "completed_at_ms": 1_700_000_000_000,
    }
    deserializer = AvroDeserializer(registry, conf={"use.latest.version": use_latest})
    data = codec().encode("keystate.InvocationResult", {**result, "correlation": {"key": b"K", "headers": {"correlation-id": "C"}}})
    old = codec().encode("keystate.InvocationResultV1", result)  # written before correlation existed

    decoded = await asyncio.to_thread(deserializer, data, SerializationContext(TOPICS.results, MessageField.VALUE))
    decoded_old = await asyncio.to_thread(deserializer, old, SerializationContext(TOPICS.results, MessageField.VALUE))

    assert decoded == {**result, "correlation": {"key": b"K", "headers": {"correlation-id": "C"}}}
    # The latest version reads the old record with the new field's default; by its own id, as written.
    assert decoded_old == ({**result, "correlation": None} if use_latest else result)


async def test_lookup_and_register_accept_keystates_schema_in_any_spelling(registry: SchemaRegistryClient) -> None:
    # No docs, no defaults' layout, other key order and spacing: the same schema in canonical form.
    respelled = json.loads(REQUEST_AVSC)
    respelled.pop("doc")
    for f in respelled["fields"]:
        f.pop("doc", None)
    respelled = {"fields": respelled["fields"], "namespace": "keystate", "name": "InvocationRequest", "type": "record"}
    text = json.dumps(respelled, indent=4)

    found = await asyncio.to_thread(registry.lookup_schema, REQUESTS, Schema(text, "AVRO"))
    registered = await asyncio.to_thread(registry.register_schema, REQUESTS, Schema(text, "AVRO"))
    served = await asyncio.to_thread(registry.get_schema, 301)

    assert (found.schema_id, found.subject, found.version) == (301, REQUESTS, 1)
    assert registered == 301
    assert served.schema_str is not None and _canonical(served.schema_str) == _canonical(REQUEST_AVSC)


async def test_register_refuses_another_schema_with_409_naming_what_to_do(registry: SchemaRegistryClient) -> None:
    other = json.loads(REQUEST_AVSC)
    other["fields"] = other["fields"][:4]  # a producer's own trimmed InvocationRequest
    result_schema = json.dumps(codec().schema_for_id(304))

    trimmed = await _fails(registry.register_schema, REQUESTS, Schema(json.dumps(other), "AVRO"))
    misplaced = await _fails(registry.register_schema, REQUESTS, Schema(result_schema, "AVRO"))

    assert (trimmed.http_status_code, trimmed.error_code) == (409, 409)
    assert "keystate.InvocationRequest" in trimmed.error_message and "use.latest.version" in trimmed.error_message
    assert (misplaced.http_status_code, misplaced.error_code) == (409, 409)
    assert "keystate.InvocationResult" in misplaced.error_message and RESULTS in misplaced.error_message


async def test_invalid_schemas_are_422_42201(registry: SchemaRegistryClient) -> None:
    not_json = await _fails(registry.register_schema, REQUESTS, Schema("{not json", "AVRO"))
    not_avro = await _fails(registry.lookup_schema, REQUESTS, Schema('{"type": "recrd", "name": "X"}', "AVRO"))
    protobuf = await _fails(registry.register_schema, REQUESTS, Schema('syntax = "proto3";', "PROTOBUF"))

    for error in (not_json, not_avro, protobuf):
        assert (error.http_status_code, error.error_code) == (422, 42201), error
    assert "PROTOBUF" in protobuf.error_message and "AVRO" in protobuf.error_message


async def test_unknown_subjects_versions_and_schemas_have_confluents_codes(registry: SchemaRegistryClient) -> None:
    unknown_subject = await _fails(registry.get_versions, "acme.requests-key")
    lookup_elsewhere = await _fails(registry.lookup_schema, "keystate.InvocationRequest", Schema(REQUEST_AVSC, "AVRO"))
    register_elsewhere = await _fails(registry.register_schema, "orders-value", Schema(REQUEST_AVSC, "AVRO"))
    no_version = await _fails(registry.get_version, REQUESTS, 2)
    no_schema = await _fails(registry.get_schema, 99999)
    other_schema = await _fails(registry.lookup_schema, RESULTS, Schema(REQUEST_AVSC, "AVRO"))

    for error in (unknown_subject, lookup_elsewhere, register_elsewhere):
        assert (error.http_status_code, error.error_code) == (404, 40401), error
        assert REQUESTS in error.error_message  # lists the subjects there are
    assert (no_version.http_status_code, no_version.error_code) == (404, 40402)
    assert (no_schema.http_status_code, no_schema.error_code) == (404, 40403)
    assert (other_schema.http_status_code, other_schema.error_code) == (404, 40403)


async def test_answers_are_schema_registry_json_and_bad_versions_are_42202(admin: TestClient) -> None:
    ok = await admin.get(f"/subjects/{REQUESTS}/versions/latest")
    minus_one = await admin.get(f"/subjects/{REQUESTS}/versions/-1")
    bad = await admin.get(f"/subjects/{REQUESTS}/versions/first")
    zero = await admin.get(f"/subjects/{REQUESTS}/versions/0")

    assert ok.status == 200 and ok.headers["Content-Type"].startswith(CONTENT_TYPE)
    assert (await minus_one.json())["id"] == 301
    for response in (bad, zero):
        assert response.status == 422 and response.headers["Content-Type"].startswith(CONTENT_TYPE)
        body = await response.json()
        assert body["error_code"] == 42202 and "latest" in body["message"]


async def test_schema_ids_stay_served_for_every_keystate_record(admin: TestClient) -> None:
    command = await admin.get("/schemas/ids/101")
    unknown = await admin.get("/schemas/ids/99999")
    not_a_number = await admin.get("/schemas/ids/abc")

    assert command.status == 200
    assert json.loads((await command.json())["schema"])["name"] == "InvokeCommand"
    assert unknown.status == 404 and (await unknown.json())["error_code"] == 40403
    assert not_a_number.status == 400 and "not a number" in (await not_a_number.json())["message"]


async def test_writes_the_registry_does_not_serve_are_refused_in_its_error_shape(registry: SchemaRegistryClient) -> None:
    delete = await _fails(registry.delete_subject, REQUESTS)
    compatibility = await _fails(registry.set_compatibility, REQUESTS, "NONE")

    for error in (delete, compatibility):
        assert error.http_status_code == 405 and error.error_code == 405, error
        assert "read" in error.error_message and "keystate" in error.error_message


async def test_with_an_admin_token_confluents_static_bearer_token_opens_it(tmp_path: Path) -> None:
    secret = "registry-admin-token-0123456789"
    settings = IngressSettings("127.0.0.1:1", TOPICS, state_dir=tmp_path, admin_token=BearerToken(secret, "$KEYSTATE_ADMIN_TOKEN"))
    async with TestClient(TestServer(admin_app(IngressRuntime(settings)), host="127.0.0.1")) as admin:
        url = str(admin.make_url("")).rstrip("/")
        # The client sends `Authorization: Bearer <token>` with these three settings (the cluster is required, unused).
        with_token = SchemaRegistryClient({
            "url": url,
            "bearer.auth.credentials.source": "STATIC_TOKEN",
            "bearer.auth.token": secret,
            "bearer.auth.logical.cluster": "keystate",
        })
        without = SchemaRegistryClient({"url": url, "max.retries": 0})

        latest = await asyncio.to_thread(with_token.get_latest_version, REQUESTS)
        refused = await _fails(without.get_latest_version, REQUESTS)

    assert latest.schema_id == 301
    assert refused.http_status_code == 401 and "Authorization: Bearer" in refused.error_message
